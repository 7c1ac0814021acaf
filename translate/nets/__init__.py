"""Network families. Importing this package imports every module in it, so each family's
``@NETS.register(...)`` runs and no central list has to be kept in sync."""

from __future__ import annotations

import importlib
import pkgutil

from translate.nets.layers import init_weights, norm_layer

__all__ = ["init_weights", "norm_layer"]

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

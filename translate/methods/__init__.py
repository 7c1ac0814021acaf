"""Training methods, one module each; importing this package registers all of them."""

from __future__ import annotations

import importlib
import pkgutil

from translate.methods.base import Method
from translate.registry import METHODS

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")


def get_method(name: str) -> type[Method]:
    """The registered Method class for a recipe's ``method`` name."""
    return METHODS.get(name)

"""Network families. Importing this package imports every module in it, so each family's
``@NETS.register(...)`` runs and no central list has to be kept in sync."""

from __future__ import annotations

import importlib
import pkgutil

from torch import Tensor, nn

from translate.nets.layers import init_weights, norm_layer

__all__ = ["ExportedNet", "init_weights", "norm_layer"]


class ExportedNet(nn.Module):
    """For the type checker only (never built, no net derives from it): what docs/zoo-contract.md
    promises of the zoo's exported nets, which code outside them reads from a module the registry
    built by name (``cast(ExportedNet, wf.build("G"))``). Generators ``G`` have ``z_dim``,
    ``resolution``, ``channels`` and ``num_classes``; autoencoders ``AE`` ``z_dim``, ``resolution``,
    ``channels``, ``encode`` and ``decode`` (VAEs ``encode_dist`` too, DB-VAEs ``classify``)."""

    z_dim: int
    resolution: int
    channels: int
    num_classes: int

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def encode_dist(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def classify(self, x: Tensor) -> Tensor:
        raise NotImplementedError

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

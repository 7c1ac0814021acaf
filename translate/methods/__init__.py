"""Training methods, one module each; importing this package registers all of them."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

import torch

from translate.core.devices import Precision
from translate.core.files import KIND_COMMANDS
from translate.core.recipes import list_recipes, load_recipe
from translate.core.registry import METHODS
from translate.methods.base import Method

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")


def get_method(name: str) -> type[Method]:
    """The registered Method class for a recipe's ``method`` name."""
    return METHODS.get(name)


@dataclass
class ZooRow:
    recipe: str
    method: str
    kind: str
    params: int
    resolution: int
    commands: tuple[str, ...]


def zoo() -> list[ZooRow]:
    """Every shipped recipe: its model's exported parameter count, resolution and the commands for it."""
    rows = []
    cpu = torch.device("cpu")
    for name in list_recipes(aliases=False):
        recipe = load_recipe(name)
        cls = get_method(recipe.method)
        if getattr(recipe.model, "freeze_decoder", False) and not getattr(recipe.model, "init_decoder", ""):
            # the same networks as the recipe's, though their weights would come from a file (pSp)
            recipe = load_recipe(name, ["model.freeze_decoder=false"])
        method = cls(recipe, cpu, Precision("fp32", cpu), {"classes": ["a", "b"]})
        exported = method.export()
        kind = cls.model_kind()
        params = sum(p.numel() for net in exported.values() for p in net.parameters())
        classifier = ("classify", "debias") if hasattr(exported.get("AE"), "classify") else ()
        rows.append(ZooRow(name, recipe.method, kind, params, recipe.data.crop_size,
                           KIND_COMMANDS[kind] + classifier + ("train",)))
    return rows

"""Name -> builder registries, in the spirit of timm's ``register_model``.

A network family or a training method registers itself with a decorator where it is defined;
nothing else in the tree lists them. Importing :mod:`translate.nets` and :mod:`translate.methods`
imports every module in those folders, so a new file is found without edits elsewhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named builders with a decorator and a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise KeyError(unknown_name_message(self.kind, name, self._items))
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


def unknown_name_message(kind: str, name: str, known: Any) -> str:
    """One line naming the bad value, the closest valid one and the valid set."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; choose from: {', '.join(known)}"


NETS: Registry[Callable[..., Any]] = Registry("network")
"""Network builders: ``NETS.get("resnet_9blocks")(in_ch=3, out_ch=3, ngf=64, ...) -> nn.Module``."""

METHODS: Registry[type] = Registry("method")
"""Training methods (pix2pix, cyclegan, ...): classes implementing :class:`translate.methods.base.Method`."""


def create_net(name: str, **kwargs: Any) -> Any:
    """Build a registered network by name (the one entry point, as timm's create_model)."""
    import translate.nets  # noqa: F401  (registers every network family)

    return NETS.get(name)(**kwargs)

"""Name -> builder registries, in the spirit of timm's ``register_model``.

A network family or a training method registers itself with a decorator where it is defined;
nothing else in the tree lists them. Importing :mod:`translate.nets` and :mod:`translate.methods`
imports every module in those folders, so a new file is found without edits elsewhere.

What a network needs is registered with it (:class:`NetInfo`, as timm links a config to each
model): its role, the size multiple its input needs, the family whose nets it is trained beside,
and whether the reference's checkpoints load into it. Recipes, inference, ``translate import`` and
``translate zoo`` ask the registry; no other list of networks is kept.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
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


ROLES = {
    "translator": "image -> image generator",
    "generator": "latent -> image generator",
    "discriminator": "real/fake critic",
    "autoencoder": "image -> latent -> image",
}


@dataclass(frozen=True)
class NetInfo:
    """The facts about a registered network that code outside its file needs."""

    role: str  # a key of ROLES
    family: str  # nets are trained beside nets of their own family (a generator with its discriminators)
    size_multiple: int = 1  # each side of an input must be a multiple of this (translators)
    reference: bool = False  # layer for layer the reference's: `translate import` reads its checkpoints
    summary: str = ""  # the builder's first docstring line


class NetRegistry(Registry[Callable[..., Any]]):
    """Network builders with their :class:`NetInfo`; queries import :mod:`translate.nets` first, so
    every family has registered itself."""

    def __init__(self) -> None:
        super().__init__("network")
        self._info: dict[str, NetInfo] = {}

    def register(self, name: str, *, role: str, family: str, size_multiple: int = 1,  # type: ignore[override]
                 reference: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if role not in ROLES:
            raise ValueError(f"network {name!r}: role {role!r} is not one of {', '.join(ROLES)}")
        add = super().register(name)

        def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
            summary = (builder.__doc__ or "").strip().splitlines()
            self._info[name] = NetInfo(role, family, size_multiple, reference, summary[0] if summary else "")
            return add(builder)

        return deco

    def _load(self) -> None:
        importlib.import_module("translate.nets")

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        return super().get(name)

    def info(self, name: str) -> NetInfo:
        self._load()
        if name not in self._info:
            raise KeyError(unknown_name_message(self.kind, name, self._info))
        return self._info[name]

    def names(self, role: str | None = None, family: str | None = None, reference: bool | None = None
              ) -> list[str]:
        """Registered names, optionally only those of a role, a family, or reference compatibility."""
        self._load()
        return sorted(n for n, i in self._info.items()
                      if (role is None or i.role == role) and (family is None or i.family == family)
                      and (reference is None or i.reference == reference))

    def partners(self, name: str, role: str) -> list[str]:
        """The nets of ``role`` that ``name`` is trained beside (same family)."""
        return self.names(role=role, family=self.info(name).family)

    def __contains__(self, name: object) -> bool:
        self._load()
        return super().__contains__(name)


NETS = NetRegistry()
"""Network builders: ``NETS.get("resnet_9blocks")(in_ch=3, out_ch=3, ngf=64, ...) -> nn.Module``;
``NETS.info(name)`` says what it needs."""

METHODS: Registry[type] = Registry("method")
"""Training methods (pix2pix, cyclegan, ...): classes implementing :class:`translate.methods.base.Method`."""


def create_net(name: str, **kwargs: Any) -> Any:
    """Build a registered network by name (the one entry point, as timm's create_model)."""
    return NETS.get(name)(**kwargs)

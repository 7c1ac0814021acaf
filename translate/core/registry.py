"""Name -> builder registries, in the spirit of timm's ``register_model``.

A network family or a training method registers itself with a decorator where it is defined;
nothing else in the tree lists them. Importing :mod:`translate.nets` and :mod:`translate.methods`
imports every module in those folders, so a new file is found without edits elsewhere.

What a network needs is registered with it (:class:`NetInfo`, as timm links a config to each
model): its role, the size multiple its input needs, the family whose nets it is trained beside,
and whether the reference's checkpoints load into it. Recipes, inference, ``translate import`` and
``translate zoo`` ask the registry; no other list of networks is kept.

Encoders and decoders are the halves a composed translator is made of (``model.encoder`` and
``model.decoder`` of a recipe, nets/composed.py). An encoder says what code it ``gives``, a decoder
which codes it ``takes``: a pair fits when they meet, so the valid pairs follow from the entries.
Each says how the recipe sets its options (``options``) and which zoo weights it can start from
(``source``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from translate.methods.base import Method

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named builders with a decorator and a helpful error for unknown names."""

    def __init__(self, what: str, package: str = "") -> None:
        self.what = what  # what it holds, for messages: "network", "method"
        self.package = package  # imported before a query: its modules register themselves
        self._items: dict[str, T] = {}

    def _load(self) -> None:
        if self.package:
            importlib.import_module(self.package)

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise KeyError(unknown_name_message(self.what, name, self._items))
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items


def unknown_name_message(what: str, name: str, known: Any) -> str:
    """One line naming the bad value (a ``what``), the closest valid one and the valid set."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}; choose from: {', '.join(known)}"


ROLES = {
    "translator": "image -> image generator",
    "generator": "latent -> image generator",
    "discriminator": "real/fake critic",
    "autoencoder": "image -> latent -> image",
    "encoder": "image -> code, the first half of a composed translator",
    "decoder": "code -> image, the second half of a composed translator",
    "head": "features -> embeddings, a method's helper (CUT's projection heads)",
    "style_encoder": "image -> the latent code a multimodal translator takes (BicycleGAN's E)",
}

CODES = {
    "features": "a feature map at 1/4 of the image size (ResNet)",
    "skips": "the feature map of every level, for skip connections (U-Net)",
    "vector": "one vector per image (an AE/VAE code; a StyleGAN2 z)",
    "wplus": "one style vector per synthesis layer of a StyleGAN2 (W+)",
}


@dataclass(frozen=True)
class NetInfo:
    """The facts about a registered network that code outside its file needs."""

    role: str  # a key of ROLES
    family: str  # nets are trained beside nets of their own family (a generator with its discriminators)
    size_multiple: int | Callable[..., int] = 1  # each input side a multiple of this (or a rule of the kwargs)
    reference: bool = False  # layer for layer the reference's: `translate import` reads its checkpoints
    summary: str = ""  # the builder's first docstring line
    fixed_size: bool = False  # works at kwargs["resolution"] only (inputs are resized to it and back)
    gives: str = ""  # encoders: the code they emit (a key of CODES)
    takes: tuple[str, ...] = ()  # decoders: the codes they accept
    options: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # recipe context -> builder kwargs
    source: tuple[str, str, str] | None = None  # (zoo net, key prefix, recipe): weights it can start from
    parts: tuple[str, ...] = ()  # kwargs that are themselves net specs ({"net": ..., "kwargs": ...})
    recipe_init: bool = True  # model.init_type applies (False: it initialises itself, as StyleGAN2's)
    power_of_two: int = 0  # built for kwargs["resolution"], a power of two >= this (halving it to 4x4); 0: no rule
    latent: bool = False  # translators: forward(x, z) takes a latent z of size kwargs["nz"] beside the image


class NetRegistry(Registry[Callable[..., Any]]):
    """Network builders with their :class:`NetInfo`; queries import :mod:`translate.nets` first, so
    every family has registered itself."""

    def __init__(self) -> None:
        super().__init__("network", "translate.nets")
        self._info: dict[str, NetInfo] = {}

    def register(self, name: str, *, role: str, family: str, **facts: Any  # type: ignore[override]
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """``facts``: the other fields of :class:`NetInfo`."""
        if role not in ROLES:
            raise ValueError(f"network {name!r}: role {role!r} is not one of {', '.join(ROLES)}")
        if role in ("encoder", "decoder") and not name.endswith(f"_{role}"):
            raise ValueError(f"{role} {name!r}: name it <short>_{role}; recipes choose it as model.{role} = <short>")
        for code in (facts.get("gives") or "", *facts.get("takes", ())):
            if code and code not in CODES:
                raise ValueError(f"network {name!r}: code {code!r} is not one of {', '.join(CODES)}")
        add = super().register(name)

        def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
            summary = (builder.__doc__ or "").strip().splitlines()
            self._info[name] = NetInfo(role, family, summary=summary[0] if summary else "", **facts)
            return add(builder)

        return deco

    def info(self, name: str) -> NetInfo:
        self._load()
        if name not in self._info:
            raise KeyError(unknown_name_message(self.what, name, self._info))
        return self._info[name]

    def names(self, role: str | None = None, family: str | None = None, reference: bool | None = None,
              composite: bool | None = None) -> list[str]:
        """Registered names, optionally only those of a role, a family, reference compatibility, or
        whether they are built of other nets (``composite``)."""
        self._load()
        return sorted(n for n, i in self._info.items()
                      if (role is None or i.role == role) and (family is None or i.family == family)
                      and (reference is None or i.reference == reference)
                      and (composite is None or bool(i.parts) == composite))

    def accepts(self, name: str, option: str) -> bool:
        """Whether the builder of ``name`` takes keyword ``option`` (e.g. ``antialias``)."""
        return option in inspect.signature(self.get(name)).parameters

    def option(self, spec: dict[str, Any], option: str, default: Any = None) -> Any:
        """The ``option`` the net of ``spec`` is built with: given in its kwargs, else its builder's
        default (``default`` where the builder takes no such keyword)."""
        if option in spec.get("kwargs", {}):
            return spec["kwargs"][option]
        param = inspect.signature(self.get(spec["net"])).parameters.get(option)
        return default if param is None or param.default is inspect.Parameter.empty else param.default

    def short_names(self, role: str) -> list[str]:
        """Encoders or decoders as a recipe names them: ``psp`` for ``psp_encoder``."""
        return [n.removesuffix(f"_{role}") for n in self.names(role=role)]

    def pairs(self) -> list[tuple[str, str]]:
        """Every (encoder, decoder) that fits: the decoder takes the code the encoder gives."""
        return [(e, d) for e in self.short_names("encoder") for d in self.short_names("decoder")
                if self.info(f"{e}_encoder").gives in self.info(f"{d}_decoder").takes]

    def input_size(self, spec: dict[str, Any]) -> tuple[int, int | None]:
        """(multiple, fixed resolution or None) an input to the net of ``spec`` needs: its own facts
        and those of its parts (a composed net works at a fixed size when a part does)."""
        info, kwargs = self.info(spec["net"]), spec.get("kwargs", {})
        rule = info.size_multiple
        multiple = rule(**kwargs) if callable(rule) else rule
        fixed = kwargs.get("resolution") if info.fixed_size else None
        for part in info.parts:
            part_multiple, part_fixed = self.input_size(kwargs[part])
            multiple, fixed = math.lcm(multiple, part_multiple), fixed or part_fixed
        return multiple, fixed

    def partners(self, name: str, role: str) -> list[str]:
        """The nets of ``role`` that ``name`` is trained beside (same family)."""
        return self.names(role=role, family=self.info(name).family)


NETS = NetRegistry()
"""Network builders: ``NETS.get("resnet_9blocks")(in_ch=3, out_ch=3, ngf=64, ...) -> nn.Module``;
``NETS.info(name)`` says what it needs."""

METHODS: Registry[type[Method]] = Registry("method", "translate.methods")
"""Training methods (pix2pix, cyclegan, ...): classes implementing :class:`translate.methods.base.Method`."""


def create_net(name: str, **kwargs: Any) -> Any:
    """Build a registered network by name (the one entry point, as timm's create_model)."""
    return NETS.get(name)(**kwargs)

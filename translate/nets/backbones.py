"""A translator's generator from its recipe: a registered translator by name (``model.generator``),
or one composed of an encoder and a decoder (``model.encoder`` + ``model.decoder``).

The halves are registry entries (registry.py): which pairs fit, how the recipe sets their options,
which zoo weights they can start from are facts of the entries, so nothing here names a network.
``model.init_encoder`` / ``model.init_decoder`` start a half from a weights file: one that the half's
zoo model wrote (``translate train --recipe vae`` for a vae encoder), or a composed translator with
the same half. The file decides the half's size options; what the data fixes (channels,
resolution) must agree with the recipe, or the error says what the file holds. A half can be frozen
for the whole run (``model.freeze_*``) or for its first steps (``model.freeze_*_steps``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from torch import Tensor, nn

from translate.core.checkpoints import read_weights
from translate.core.errors import TranslateError
from translate.core.registry import NETS

if TYPE_CHECKING:
    from translate.methods.base import TranslatorModel
    from translate.nets.composed import Composed

PARTS = ("encoder", "decoder")
ANTIALIAS = ("antialias", "antialias_up")  # model options a generator may take (the CUT code's layout)
DATA_KEYS = {"channels": "image channels", "in_ch": "input channels", "out_ch": "output channels",
             "resolution": "resolution"}  # options the data fixes; the rest (widths, code sizes) the file decides


@dataclass
class Composition:
    """The generator's spec (as weights metadata keeps it) and the weights its halves start from."""

    spec: dict[str, Any]
    states: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    @property
    def composed(self) -> bool:
        return self.spec["net"] == "composed"


def pairs_text() -> str:
    return ", ".join(f"{e}+{d}" for e, d in NETS.pairs())


def compose(cfg: TranslatorModel, in_ch: int, out_ch: int, size: int, nz: int = 0) -> Composition:
    """What to build for a recipe's ``model`` section."""
    encoder, decoder = cfg.encoder, cfg.decoder
    antialias = {k: True for k in ANTIALIAS if getattr(cfg, k, False)}  # (kwargs of nets without them unchanged)
    if not encoder and not decoder:
        for k in antialias:
            if not NETS.accepts(cfg.generator, k):
                has = [n for n in NETS.names(role="translator", composite=False) if NETS.accepts(n, k)]
                raise TranslateError(f"model.{k} needs a generator that has it ({', '.join(has)}); "
                                     f"model.generator {cfg.generator} has not")
        latent = _latent(cfg.generator, nz)
        kwargs = {"in_ch": in_ch, "out_ch": out_ch, "ngf": cfg.ngf, "norm": cfg.norm, "dropout": cfg.dropout,
                  **latent, **antialias}
        return Composition({"net": cfg.generator, "kwargs": kwargs})
    if antialias:
        raise TranslateError(f"model.{next(iter(antialias))} is for model.generator; composed halves do not take it")
    if not encoder or not decoder:
        raise TranslateError(f"model.encoder and model.decoder go together (set both, or neither to use "
                             f"model.generator); pairs that fit: {pairs_text()}")
    if (encoder, decoder) not in NETS.pairs():
        gives = NETS.info(f"{encoder}_encoder").gives
        takes = NETS.info(f"{decoder}_decoder").takes
        raise TranslateError(f"model.encoder {encoder} gives a {gives} code, which model.decoder {decoder} does not "
                             f"take ({', '.join(takes)}); pairs that fit: {pairs_text()}")
    ctx = {"in_ch": in_ch + nz, "out_ch": out_ch, "size": size, "ngf": cfg.ngf, "norm": cfg.norm,
           "dropout": cfg.dropout, "z_dim": cfg.z_dim}
    for role in PARTS:
        if getattr(cfg, f"freeze_{role}") and not getattr(cfg, f"init_{role}"):
            raise TranslateError(f"model.freeze_{role} keeps the {role} as it starts: give it model.init_{role}=FILE "
                                 f"(trained weights), or set model.freeze_{role}=false to train it")
    states: dict[str, dict[str, Tensor]] = {}
    specs: dict[str, dict[str, Any]] = {}
    for role in ("decoder", "encoder"):  # the decoder first: an encoder may have to fit its code (pSp's W+)
        name = f"{getattr(cfg, role)}_{role}"
        options = NETS.info(name).options
        assert options is not None, f"{name} registers no options"  # every encoder and decoder does
        kwargs = options(ctx)
        if init := getattr(cfg, f"init_{role}"):
            kwargs, states[role] = _from_file(Path(init), role, name, kwargs)
        specs[role] = {"net": name, "kwargs": kwargs}
        ctx[role] = kwargs
    return Composition({"net": "composed", "kwargs": {**specs, "nz": nz}}, states)


def _latent(generator: str, nz: int) -> dict[str, int]:
    """The generator's latent kwarg: its size ``nz`` for a net that takes one (its own ``nz`` kwarg),
    nothing for one that does not, which a model with a latent (BicycleGAN) cannot use."""
    if NETS.info(generator).latent:
        return {"nz": nz}
    if nz:
        has = [n for n in NETS.names(role="translator") if NETS.info(n).latent]
        raise TranslateError(f"model.generator {generator} takes no latent code; this model needs one that does "
                             f"({', '.join(has)}), or model.encoder + model.decoder (z tiled at the input)")
    return {}


def _from_file(path: Path, role: str, name: str, needed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The half's kwargs and weights from ``path``, checked against what the recipe needs."""
    key = f"model.init_{role}"
    try:
        wf = read_weights(path)
    except TranslateError as e:
        raise TranslateError(f"{key}: {e}") from None
    info = NETS.info(name)
    found = None
    for net in wf.nets:
        spec = wf.arch[net]
        if spec["net"] == "composed" and spec["kwargs"][role]["net"] == name:
            found = net, spec["kwargs"][role]["kwargs"], f"{role}."
        elif info.source and spec["net"] == info.source[0]:
            found = net, spec["kwargs"], info.source[1]
        if found:
            break
    if found is None:
        holds = ", ".join(sorted({wf.arch[n]["net"] for n in wf.nets}))
        made = f" (written by the {wf.meta['method']} recipe)" if wf.meta.get("method") else ""
        start = (f"the weights of `translate train --recipe {info.source[2]}` ({info.source[0]}) or of "
                 if info.source else "the weights of ")
        raise TranslateError(f"{key} {path} holds {holds}{made}; a {name.removesuffix('_' + role)} {role} starts "
                             f"from {start}a translator composed with one")
    net, kwargs, prefix = found
    wrong = {k: (kwargs.get(k), v) for k, v in needed.items() if k in DATA_KEYS and kwargs.get(k) != v}
    if wrong:
        has = ", ".join(f"{DATA_KEYS[k]} {a}" for k, (a, _) in wrong.items())
        want = ", ".join(f"{DATA_KEYS[k]} {b}" for k, (_, b) in wrong.items())
        raise TranslateError(f"{key} {path} holds a {wf.arch[net]['net']} for {has}; this recipe needs {want} "
                             "(data.crop_size, model.input_nc / output_nc, or another file)")
    state = {k[len(prefix):]: v for k, v in wf.tensors[net].items() if k.startswith(prefix)}
    return dict(kwargs), state


def prepare(module: nn.Module, c: Composition, cfg: TranslatorModel, init: Callable[[nn.Module], None]
            ) -> list[tuple[list[nn.Parameter], int]]:
    """Initialise a newly built generator: the recipe's init where a half wants it and has no file,
    the files' weights, the frozen halves. Returns (parameters, steps) held for their first steps."""
    if not c.composed:
        init(module)
        return []
    held = []
    for role in PARTS:
        part = getattr(module, role)
        if role in c.states:
            missing, unexpected = part.load_state_dict(c.states[role], strict=False)
            if missing or unexpected:
                raise TranslateError(f"model.init_{role} {getattr(cfg, f'init_{role}')}: its weights do not fit a "
                                     f"{c.spec['kwargs'][role]['net']} (missing {len(missing)}, unexpected "
                                     f"{len(unexpected)} keys)")
        elif NETS.info(c.spec["kwargs"][role]["net"]).recipe_init:
            init(part)
        if getattr(cfg, f"freeze_{role}"):
            cast("Composed", module).freeze(role)  # c.composed: the generator is a Composed
        elif steps := getattr(cfg, f"freeze_{role}_steps"):
            held.append((list(part.parameters()), steps))
    return held

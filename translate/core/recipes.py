"""Recipes: TOML files validated into dataclasses.

A recipe has a ``method`` name and four sections. ``data`` and ``train`` are shared by every
method; ``model`` and ``loss`` are dataclasses that the method declares (``Method.ModelConfig``,
``Method.LossConfig``), so a new method brings its own keys without edits here. A method may add
sections of its own (``Method.Sections``, e.g. the DB-VAE's ``debias``), read as ``recipe.debias``.

Every value is checked against its field: type, allowed choices, lower bound. An unknown key or a
bad value raises :class:`RecipeError` with one line naming the key and, for unknown keys, the
nearest valid one. ``--set section.key=value`` overrides go through the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from translate import resource
from translate.core.errors import TranslateError
from translate.core.registry import METHODS, NETS

RECIPE_DIR = resource("recipes")
SECTIONS = ("data", "model", "train", "loss")
TOP_KEYS = ("method", "description")  # the keys outside any section


class RecipeError(TranslateError):
    """A recipe key or value is wrong; the message names it."""


def choice(default: Any, *choices: Any) -> Any:
    """A field restricted to ``choices`` (checked on load and on --set)."""
    return field(default=default, metadata={"choices": choices})


def registered(default: str, role: str, family: str | None = None, composite: bool | None = None,
               short: bool = False) -> Any:
    """A field naming a registered network of ``role`` (and ``family``): the valid names are asked
    of the registry when a recipe is checked, so a network registered later (a new file, or a test's
    toy) is accepted with no edit here. ``short``: encoders and decoders by their short name (``psp``
    for ``psp_encoder``), and "" for none."""
    def names() -> list[str]:
        if short:
            return ["", *NETS.short_names(role)]
        return NETS.names(role=role, family=family, composite=composite)

    return field(default=default, metadata={"choices": names, "role": role})


def at_least(default: Any, low: float) -> Any:
    """A numeric field that must be >= ``low``."""
    return field(default=default, metadata={"min": low})


@dataclass
class DataConfig:
    """Where images come from and how they are prepared (names as the reference's options)."""

    path: str = ""
    layout: str = choice("auto", "auto", "aligned", "paired_folders", "unaligned", "folder", "classes")
    load_size: int = at_least(286, 1)
    crop_size: int = at_least(256, 1)
    preprocess: str = choice("resize_and_crop", "resize_and_crop", "crop", "scale_width",
                             "scale_width_and_crop", "none")
    direction: str = choice("AtoB", "AtoB", "BtoA")
    flip: bool = True
    channels: int = choice(3, 1, 3)
    num_workers: int = at_least(2, 0)
    max_dataset_size: int = at_least(0, 0)  # 0: no limit
    degrade: str = choice("none", "none", "downsample4", "downsample8", "mask_half")  # pairs from single images
    positive: str = ""  # classifiers (dbvae): the positive class's subfolder; "" the first in sorted order
    # In the learning-rate decay epochs, resize straight to crop_size: whole images, no random crops
    # (the CUT code's fine-tuning phase; its unaligned dataset does so after n_epochs).
    whole_in_decay: bool = False

    def validate(self) -> None:
        if self.preprocess in ("resize_and_crop", "scale_width_and_crop") and self.load_size < self.crop_size:
            raise RecipeError(f"data.load_size ({self.load_size}) must be >= data.crop_size ({self.crop_size})"
                              f" for preprocess {self.preprocess!r}")


@dataclass
class TrainConfig:
    """The shared training loop's knobs."""

    epochs: int = at_least(100, 0)
    epochs_decay: int = at_least(100, 0)
    max_steps: int = at_least(0, 0)  # 0: no limit; otherwise stop after this many iterations
    batch_size: int = at_least(1, 1)  # per process, as the reference's --batch_size: global = this x processes
    lr: float = at_least(0.0002, 0.0)
    lr_scale: str = choice("none", "none", "linear", "sqrt")  # lr x processes (or its sqrt); none as the reference
    beta1: float = at_least(0.5, 0.0)
    beta2: float = at_least(0.999, 0.0)
    lr_policy: str = choice("linear", "linear", "step", "cosine", "constant")
    lr_decay_iters: int = at_least(50, 1)  # epochs between steps for lr_policy = "step"
    precision: str = choice("auto", "auto", "fp32", "bf16", "fp16")
    device: str = "auto"
    seed: int = 0
    log_every: int = at_least(10, 1)  # iterations between JSONL log lines
    sample_every: int = at_least(200, 0)  # iterations between sample grids (0: only at the end)
    save_every: int = at_least(5, 0)  # epochs between numbered checkpoints (0: only latest)
    keep_last: int = at_least(3, 0)  # numbered checkpoints kept, newest first (0: keep all)
    deterministic: bool = False  # CUDA: deterministic algorithms, no cuDNN autotuning (bit-exact resume, slower)
    n_samples: int = at_least(4, 1)  # images in each sample grid
    eval_every: int = at_least(0, 0)  # epochs between evaluations (val/ or test/ pairs; else FID below); 0: off
    eval_metric: str = choice("psnr", "psnr", "ssim", "l1")  # which one picks best.safetensors
    # unpaired methods and generators: FID/KID against testB/ (generators: the training images) with the FID
    # Inception weights file (pt_inception-2015-12-05-6726825d.pth); the lowest FID picks best.safetensors
    inception: str = ""
    eval_images: int = at_least(0, 0)  # testA/ images translated (generators: samples drawn); 0: all (as many)
    report_every: int = at_least(0, 0)  # epochs between report.html pages in the run folder, and one at the end; 0: off
    tensorboard: bool = False  # TensorBoard event files beside log.jsonl (the tensorboard extra)


@dataclass
class ModelConfig:
    """Base of a method's ``model`` section (its networks' names and sizes)."""


@dataclass
class LossConfig:
    """Base of a method's ``loss`` section (its objective's terms and weights)."""


@dataclass
class Recipe:
    """A whole, validated recipe. ``model`` and ``loss`` are the method's ModelConfig and LossConfig."""

    method: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    extra: dict[str, Any] = field(default_factory=dict)  # the method's own sections, by name

    def __getattr__(self, name: str) -> Any:
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
             for k, v in d.items()}
        return d | {k: dataclasses.asdict(v) for k, v in self.extra.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        """The resolved recipe as TOML (kept in every run folder)."""
        d = self.to_dict()
        lines = [f"method = {_toml_value(d['method'])}", f"description = {_toml_value(d['description'])}"]
        for section in (*SECTIONS, *self.extra):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in d[section].items()]
        return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def _section_classes(method: str) -> dict[str, type]:
    cls = METHODS.get(method)
    return {"data": DataConfig, "model": cls.ModelConfig, "train": TrainConfig, "loss": cls.LossConfig, **cls.Sections}


def _nearest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value: Any, f: dataclasses.Field) -> Any:
    """Check one value against its field; strings from --set are parsed to the field's type."""
    type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if type_name == "bool":
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                value = low in ("true", "1", "yes", "on")
            elif not isinstance(value, bool):
                raise ValueError
        elif type_name == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif type_name == "float":
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
        elif type_name == "str":
            if not isinstance(value, str):
                raise ValueError
        elif type_name.startswith("list"):
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, list):
                raise ValueError
    except (ValueError, TypeError, json.JSONDecodeError):
        raise RecipeError(f"{key}: expected {type_name}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if callable(choices):
        choices = choices()
    if choices and value not in choices:
        names = [str(c) or '""' for c in choices]
        raise RecipeError(f"{key}: {value!r} is not one of {', '.join(names)}{_nearest(str(value), names)}")
    minimum = f.metadata.get("min")
    if minimum is not None and value < minimum:
        raise RecipeError(f"{key}: must be >= {minimum}, got {value!r}")
    return value


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise RecipeError(f"[{section}] must be a table of key = value")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k not in fields:
            raise RecipeError(f"unknown key {section}.{k}{_nearest(k, list(fields))}")
        kwargs[k] = _coerce(f"{section}.{k}", v, fields[k])
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def parse_override(text: str, sections: tuple[str, ...] = SECTIONS) -> tuple[str, str, str]:
    """``"train.lr=1e-4"`` -> ``("train", "lr", "1e-4")``."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if "." not in key:
        if key in TOP_KEYS:
            return "", key, value.strip()
        raise RecipeError(f"--set {key}: expected section.key (sections: {', '.join(sections)})")
    section, name = key.split(".", 1)
    if section not in sections:
        raise RecipeError(f"--set {key}: unknown section {section!r}{_nearest(section, list(sections))}")
    return section, name, value.strip()


def recipe_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """Validate a parsed TOML dict (plus ``--set`` overrides) into a :class:`Recipe`."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for text in overrides or []:  # the method first: it decides which sections there are
        key, _, value = text.partition("=")
        if key.strip() in TOP_KEYS:
            raw[key.strip()] = value.strip()
    method = raw.get("method")
    if not isinstance(method, str) or not method:
        raise RecipeError("recipe has no 'method' (e.g. method = \"cyclegan\")")
    try:
        classes = _section_classes(method)
    except KeyError as e:
        raise RecipeError(f"method: {e.args[0]}") from None
    for text in overrides or []:
        section, name, value = parse_override(text, tuple(classes))
        if section:
            raw.setdefault(section, {})[name] = value
    for k in raw:
        if k not in (*classes, *TOP_KEYS):
            raise RecipeError(f"unknown key {k}{_nearest(k, [*classes, *TOP_KEYS])}")
    sections = {s: _build_section(s, cls, raw.get(s, {})) for s, cls in classes.items()}
    extra = {s: sections.pop(s) for s in list(sections) if s not in SECTIONS}
    return Recipe(method=method, description=str(raw.get("description", "")), **sections, extra=extra)


def find_recipe(name_or_path: str) -> Path:
    """A recipe name (``cyclegan``) or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise RecipeError(f"recipe file not found: {p}")
        return p
    candidate = RECIPE_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        names = list_recipes()
        raise RecipeError(f"unknown recipe {name_or_path!r}{_nearest(name_or_path, names)}; "
                          f"available: {', '.join(names)}")
    return candidate


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from None


def alias_of(name: str) -> str | None:
    """The recipe that ``name`` is another name for (a TOML holding only ``alias = "..."``), or None."""
    raw = _read(find_recipe(name))
    return raw["alias"] if set(raw) == {"alias"} else None


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe by name or path."""
    raw = _read(find_recipe(str(name_or_path)))
    if set(raw) == {"alias"}:
        return load_recipe(str(raw["alias"]), overrides)
    return recipe_from_dict(raw, overrides)


def list_recipes(aliases: bool = True) -> list[str]:
    """Shipped recipe names; ``aliases=False`` leaves out the other names of a recipe."""
    names = sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))
    return names if aliases else [n for n in names if alias_of(n) is None]


def recipe_from_json(text: str) -> Recipe:
    """Rebuild a recipe stored in a weights file's metadata."""
    return recipe_from_dict(json.loads(text))

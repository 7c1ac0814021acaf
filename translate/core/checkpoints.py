"""Weights files (safetensors + metadata) and training state, always written atomically.

A weights file holds the nets inference needs, under ``<net>.<param>`` keys, and metadata:

- ``format``: ``translate-weights/1``;
- ``arch``: JSON ``{net: {"net": registry name, "kwargs": {...}}}``, enough to rebuild each net;
- ``recipe``: the resolved recipe as JSON (empty for imported weights);
- ``nets``: JSON list of the net names, in export order;
- ``kind``: what the file is for (files.KIND_COMMANDS), read by :attr:`WeightsFile.kind` (files.weights_kind), so
  inference learns it without importing the training code (and a cached `translate run`, without torch).

So a weights file alone is enough to run a model. Training state (optimizers, schedulers, RNG,
image pool, step) lives beside it in ``<name>.state.pt``, written with torch.save and read with
``weights_only=True``, so nothing is ever unpickled.

A training run saves the two as one pair (:func:`save_checkpoint`): both written to temporary
names and read back, then the state renamed into place, then the weights. Both carry one
``save_id``; a kill between the two renames leaves a new state beside older weights, which
``--resume`` sees (:func:`pair_matches`) and mends by writing the weights again from the state.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from translate.core.devices import unwrap
from translate.core.errors import TranslateError
from translate.core.files import KIND_COMMANDS, TMP_SUFFIX, WEIGHTS_FORMAT, atomic_path, weights_kind
from translate.core.registry import create_net

FORMAT = WEIGHTS_FORMAT


def save_weights(path: str | Path, nets: dict[str, nn.Module], arch: dict[str, dict[str, Any]],
                 recipe_json: str = "", extra: dict[str, str] | None = None) -> Path:
    """Write ``nets`` to one safetensors file with the metadata that rebuilds them."""
    with atomic_path(path) as tmp:
        _write_weights(tmp, nets, arch, recipe_json, extra)
    return Path(path)


def _write_weights(path: Path, nets: dict[str, nn.Module], arch: dict[str, dict[str, Any]], recipe_json: str,
                   extra: dict[str, str] | None) -> None:
    tensors: dict[str, Tensor] = {}
    for name, net in nets.items():
        for key, value in unwrap(net).state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
    meta = {"format": FORMAT, "arch": json.dumps({n: arch[n] for n in nets}), "recipe": recipe_json,
            "nets": json.dumps(list(nets))}
    meta.update(extra or {})
    _write_bytes(path, safetensors_bytes(tensors, metadata=meta))


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write and flush to the disk. The libraries' own writers report a full disk as a RuntimeError
    ("unexpected pos 2935424 vs 2935316", torch.save) or a SafetensorError; serialised in memory
    first, a full disk is the OSError it is (errno ENOSPC), which the callers name."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _torch_bytes(obj: Any) -> memoryview:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def between_files(stage: str) -> None:
    """Called between the steps of :func:`save_checkpoint`; tests replace it to kill a process there."""


def save_checkpoint(weights: Path, state_path: Path, nets: dict[str, nn.Module], arch: dict[str, dict[str, Any]],
                    recipe_json: str, meta: dict[str, str], state: dict[str, Any]) -> str:
    """Weights and training state as one pair (see the module's text); returns their save id.
    Raises OSError as the filesystem does (a full disk, no permission); the pair in place before is
    then untouched."""
    save_id = uuid.uuid4().hex
    with atomic_path(weights) as weights_tmp:
        with atomic_path(state_path) as state_tmp:
            _write_weights(weights_tmp, nets, arch, recipe_json, {**meta, "save_id": save_id})
            between_files("weights written")
            _write_bytes(state_tmp, _torch_bytes({**state, "save_id": save_id}))
            between_files("state written")
            # Read both back before either replaces the last good pair (a short write shows here).
            if weights_save_id(weights_tmp) != save_id or _state_save_id(state_tmp) != save_id:
                raise OSError(f"the checkpoint written to {weights.parent} does not read back")
        between_files("state renamed")  # a kill here: new state, older weights (mended on --resume)
    return save_id


def weights_save_id(path: Path) -> str | None:
    """The ``save_id`` in a weights file's metadata, read without its tensors (None if unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("save_id")
    except Exception:
        return None


def _state_save_id(path: Path) -> str | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("save_id")
    except Exception:
        return None


def pair_matches(weights: Path, state: dict[str, Any]) -> bool:
    """Whether ``weights`` was saved with ``state`` (true for a state from before save ids)."""
    return "save_id" not in state or (weights.is_file() and weights_save_id(weights) == state["save_id"])


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in nested dicts, lists and tuples: about what saving them writes."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files a killed save left (``.latest.safetensors.x8k2j1q0.tmp`` ...)."""
    for tmp in folder.glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def with_article(word: str) -> str:
    """'a cyclegan', 'an imported', 'an ae'."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


@dataclass
class WeightsFile:
    """A parsed weights file: metadata plus tensors grouped by net."""

    path: Path
    arch: dict[str, dict[str, Any]]
    recipe_json: str
    nets: list[str]
    meta: dict[str, str]
    tensors: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    @property
    def recipe(self) -> dict[str, Any]:
        """The resolved recipe (``recipe_json``) as a dict; {} for imported weights or one that does not parse."""
        return _json_object(self.recipe_json)

    @property
    def info(self) -> dict[str, Any]:
        """What the method said of its model (``info``: classes, the positive class ...); {} where nothing."""
        return _json_object(self.meta.get("info", "{}"))

    @property
    def kind(self) -> str:
        """translator | generator | autoencoder (files.weights_kind)."""
        return weights_kind(self.meta, self.nets)

    def check_kind(self, command: str, hint: str = "") -> None:
        """One line when ``translate command`` does not apply to this kind of model."""
        if command not in KIND_COMMANDS[self.kind]:
            what = self.meta.get("method") or "imported"
            uses = hint or ", ".join(f"translate {c}" for c in KIND_COMMANDS[self.kind])
            raise TranslateError(f"`translate {command}` does not apply to {self.path.name}: it holds "
                                 f"{with_article(what)} {self.kind} (use {uses})")

    def build(self, name: str | None = None, device: torch.device | str = "cpu") -> nn.Module:
        """Rebuild net ``name`` (default: the first one) in eval mode with its weights loaded."""
        name = name or self.nets[0]
        if name not in self.arch:
            raise TranslateError(f"{self.path}: holds nets {', '.join(self.nets)}, not {name!r}")
        spec = self.arch[name]
        try:
            net = create_net(spec["net"], **spec["kwargs"])
        except (KeyError, TypeError) as e:
            raise TranslateError(f"{self.path}: cannot rebuild {name!r} ({e})") from None
        missing, unexpected = net.load_state_dict(self.tensors[name], strict=False)
        if missing or unexpected:
            raise TranslateError(f"{self.path}: weights of {name!r} do not fit its architecture "
                                 f"(missing {len(missing)}, unexpected {len(unexpected)} keys)")
        return net.to(device).eval()


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def read_weights(path: str | Path) -> WeightsFile:
    """Open a weights file, with a one-line error for anything that is not ours."""
    path = Path(path)
    if path.is_dir():
        latest = path / "latest.safetensors"
        hint = f" (a run folder: its latest weights are {latest})" if latest.is_file() else ""
        raise TranslateError(f"--weights {path} is a folder, not a weights file{hint}")
    if not path.is_file():
        raise TranslateError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception:
        hint = " (a reference .pth checkpoint? convert it with `translate import`)" if path.suffix in (
            ".pth", ".pt") else ""
        raise TranslateError(f"{path} is not a safetensors file{hint}") from None
    if meta.get("format") != FORMAT:
        raise TranslateError(f"{path} is a safetensors file but not a translate weights file "
                             "(no translate format in its metadata)")
    try:
        arch, nets = json.loads(meta["arch"]), json.loads(meta["nets"])
    except (KeyError, json.JSONDecodeError):
        raise TranslateError(f"{path}: damaged metadata (arch/nets)") from None
    tensors: dict[str, dict[str, Tensor]] = {n: {} for n in nets}
    for key, value in raw.items():
        net, _, param = key.partition(".")
        if net in tensors:
            tensors[net][param] = value
    return WeightsFile(path, arch, meta.get("recipe", ""), nets, meta, tensors)


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Training state for --resume (plain tensors, numbers, strings, lists and dicts only)."""
    with atomic_path(path) as tmp:
        _write_bytes(tmp, _torch_bytes(state))


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TranslateError(f"no training state at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TranslateError(f"{path}: cannot read training state ({type(e).__name__})") from None

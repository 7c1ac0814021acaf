"""Weights files (safetensors + metadata) and training state, always written atomically.

A weights file holds the nets inference needs, under ``<net>.<param>`` keys, and metadata:

- ``format``: ``translate-weights/1``;
- ``arch``: JSON ``{net: {"net": registry name, "kwargs": {...}}}``, enough to rebuild each net;
- ``recipe``: the resolved recipe as JSON (empty for imported weights);
- ``nets``: JSON list of the net names, in export order.

So a weights file alone is enough to run a model. Training state (optimizers, schedulers, RNG,
image pool, step) lives beside it in ``<name>.state.pt``, written with torch.save and read with
``weights_only=True``, so nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from translate.devices import unwrap
from translate.errors import TranslateError
from translate.registry import create_net

FORMAT = "translate-weights/1"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_weights(path: str | Path, nets: dict[str, nn.Module], arch: dict[str, dict[str, Any]],
                 recipe_json: str = "", extra: dict[str, str] | None = None) -> Path:
    """Write ``nets`` to one safetensors file with the metadata that rebuilds them."""
    tensors: dict[str, Tensor] = {}
    for name, net in nets.items():
        net = unwrap(net)
        for key, value in net.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
    meta = {"format": FORMAT, "arch": json.dumps({n: arch[n] for n in nets}), "recipe": recipe_json,
            "nets": json.dumps(list(nets))}
    meta.update(extra or {})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


@dataclass
class WeightsFile:
    """A parsed weights file: metadata plus tensors grouped by net."""

    path: Path
    arch: dict[str, dict[str, Any]]
    recipe_json: str
    nets: list[str]
    meta: dict[str, str]
    tensors: dict[str, dict[str, Tensor]] = field(default_factory=dict)

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
        arch = json.loads(meta["arch"])
        nets = json.loads(meta["nets"])
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
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TranslateError(f"no training state at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TranslateError(f"{path}: cannot read training state ({type(e).__name__})") from None

"""Who runs a network over images: torch (eager), or OpenVINO's CPU compiler.

A :class:`translate.inference.translator.Translator` calls ``engine(x[, z]) -> y`` on float tensors; here is
what the engine may be. ``auto`` picks the faster one as measured by bench/engines.py (2-core AMD
EPYC Zen5, batch 1, 256x256, fastest of 12 calls; AVX2 rows with oneDNN, MKL and ATen capped to AVX2):

| CPU | net | torch | OpenVINO |
|---|---|---|---|
| AVX512-BF16, bf16 | resnet_9blocks | 163 ms | 131 ms |
| AVX512-BF16, bf16 | unet_256 | 58 ms | 42 ms |
| AVX512-BF16, fp32 | resnet_9blocks | 322 ms | 255 ms |
| AVX512-BF16, fp32 | unet_256 | 101 ms | 51 ms |
| AVX2, fp32 | resnet_9blocks | 385 ms with our Winograd convs (616 without) | 469 ms |
| AVX2, fp32 | unet_256 | 137 ms (no conv Winograd takes) | 73 ms |

So: CUDA: torch. A CPU: OpenVINO, except where our Winograd convolutions apply (fp32 on a CPU
without native bf16, a net with 3x3 convs of 128+ channels: the ResNet generators), and torch
where OpenVINO is not installed or the precision is fp16.

OpenVINO gets the network from torch's tracing (``openvino.convert_model``, 2-6 s), with dynamic
batch and image size, so one compiled model serves every size `translate run` meets. The converted
model is kept on disk, keyed by the weights' content, the net's name and the versions of torch and
OpenVINO (:class:`EngineCache`), and OpenVINO keeps its compiled blobs beside it (its
``CACHE_DIR``): the second run of the same weights starts without tracing or compiling. An entry is
written under a temporary name with a manifest of its files' hashes, renamed into place, and
checked before use; a corrupted, stale or half-written entry is rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from translate.core.devices import DTYPES, cpu_bf16_native
from translate.core.errors import TranslateError

ENGINES = ("auto", "torch", "openvino")
FORMAT = 1  # of a cache entry; bump when what is stored changes
KEEP = 16  # cache entries kept, the most recently used (each about the size of its weights)


def openvino_version() -> str | None:
    """OpenVINO's version, or None where the package is not installed."""
    try:
        return str(_openvino().__version__)
    except ImportError:
        return None


def _openvino() -> Any:
    """``import openvino`` without the model converter its package imports for ``ov.convert_model``
    (openvino.tools.ovc, with its telemetry: 0.09-0.17 s of every run's start-up on a 2-core Zen5), which
    only a cache miss needs (then ``from openvino.tools.ovc import convert_model``). OpenVINO 2024-2026
    import it under ``try/except ImportError``; where a version does not, the plain import is taken."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    sys.modules["openvino.tools.ovc"] = None  # type: ignore[assignment]  # makes its import fail at once
    try:
        import openvino
    except ImportError:
        sys.modules.pop("openvino.tools.ovc", None)
        sys.modules.pop("openvino", None)
        import openvino
    finally:
        if "openvino.tools.ovc" in sys.modules and sys.modules["openvino.tools.ovc"] is None:
            del sys.modules["openvino.tools.ovc"]
    return openvino


def pick_engine(name: str, device: torch.device, precision: str, compile: bool = False,
                net: nn.Module | Callable[[], nn.Module] | None = None) -> str:
    """``auto`` -> the faster engine for ``device``, ``precision`` and ``net`` (see the module's
    text; a function giving the net: called only where the net decides); a named one is checked.
    ``compile`` (torch.compile) is torch's: auto then picks torch."""
    if name not in ENGINES:
        raise TranslateError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    if name == "openvino" and compile:
        raise TranslateError("--compile is torch.compile; OpenVINO compiles the network itself: drop --compile, "
                             "or use --engine torch")
    if name == "openvino":
        if device.type != "cpu":
            raise TranslateError(f"--engine openvino runs on the CPU; this run is on {device} (use --device cpu, "
                                 "or --engine torch)")
        if openvino_version() is None:
            raise TranslateError("--engine openvino needs the openvino package: pip install openvino")
        return name
    if name == "torch" or compile or device.type != "cpu" or precision not in ("fp32", "bf16"):
        return "torch"
    if openvino_version() is None:
        return "torch"
    # (imported here: translate.nets imports every network, 0.22 s that a run whose OpenVINO model
    # is cached never needs)
    from translate.nets.winograd import winograd_convs, winograd_pays

    if net is not None and winograd_pays(device, DTYPES[precision]) and winograd_convs(
            net if isinstance(net, nn.Module) else net()):
        return "torch"
    return "openvino"


def cache_root() -> Path:
    """``$TRANSLATE_CACHE``, else ``$XDG_CACHE_HOME/translate``, else ``~/.cache/translate``."""
    if os.environ.get("TRANSLATE_CACHE"):
        return Path(os.environ["TRANSLATE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "translate"


def net_id(net: nn.Module, name: str = "") -> str:
    """A hash of what ``net`` computes with: its class, every parameter and buffer, and ``name``."""
    return tensors_id(net.state_dict(), f"{type(net).__module__}.{type(net).__qualname__}:{name}")


def tensors_id(tensors: dict[str, Tensor], name: str) -> str:
    """A hash of ``name`` (what the tensors are weights of) and every tensor (names, dtypes, shapes,
    bytes). Not the weights file's bytes: safetensors writes its metadata in no fixed order, so the
    same weights saved twice differ (and a cache keyed by the file missed)."""
    h = hashlib.sha256(name.encode())
    for key, t in sorted(tensors.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class EngineCache:
    """One folder per converted model: ``model.xml`` + ``model.bin`` (OpenVINO's IR), ``manifest.json``
    (the key's parts and the files' hashes, written last) and ``blobs/`` (OpenVINO's compiled models)."""

    def __init__(self, root: Path, key: dict[str, str]) -> None:
        self.key = key
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        self.dir = root / "openvino" / digest

    @property
    def model(self) -> Path:
        return self.dir / "model.xml"

    def valid(self) -> bool:
        """The entry is whole and is the one for this key: its manifest names the key, and every file
        it lists has the hash it lists."""
        try:
            manifest = json.loads((self.dir / "manifest.json").read_text())
            ok = manifest["key"] == self.key and all(
                file_hash(self.dir / name) == digest for name, digest in manifest["files"].items())
            if ok:
                os.utime(self.dir / "manifest.json")  # used now: pruned last
            return ok
        except (OSError, ValueError, KeyError, TypeError):
            return False

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """A temporary folder beside the entry to write the model into; on success the manifest is
        written and the folder renamed into place (replacing a broken entry)."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.dir.name}.", dir=self.dir.parent))
        try:
            yield tmp
            files = {p.name: file_hash(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / "manifest.json").write_text(json.dumps({"key": self.key, "files": files}, indent=1))
            if self.dir.exists():
                shutil.rmtree(self.dir, ignore_errors=True)
            os.replace(tmp, self.dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune()

    def _prune(self) -> None:
        """Keep the ``KEEP`` entries used last (and no temporary folder of a crashed write older than a day)."""
        def used(entry: Path) -> float:
            try:
                return (entry / "manifest.json").stat().st_mtime
            except OSError:
                return 0.0

        entries = [p for p in self.dir.parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
        for old in sorted(entries, key=used, reverse=True)[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in self.dir.parent.glob(".*"):
            with contextlib.suppress(OSError):
                if tmp.is_dir() and tmp.stat().st_mtime < time.time() - 86400:
                    shutil.rmtree(tmp, ignore_errors=True)


@functools.cache
def _core() -> Any:
    """The process's one OpenVINO Core, kept for its life. A Core sets the thread's alternate signal
    stack when it compiles and puts the previous one back when it is freed: Cores made and freed in
    turn (one per model) left a freed stack in place, and the next signal handled on it (a child's
    SIGCHLD) killed the process with SIGSEGV (seen in the test suite: a score through OpenVINO, then
    DataLoader workers and a subprocess)."""
    return _openvino().Core()


class Compiled:
    """``module``'s forward compiled by OpenVINO for the CPU: called with tensors like the module, on
    any sizes of the ``dynamic`` dims (per input, their indices), it returns float32 tensors (one, or
    a tuple for several outputs). ``key`` names what the module is (weights, net, method); the model
    is converted from ``example`` once per key and cached (:class:`EngineCache`)."""

    def __init__(self, module: nn.Module | Callable[[], nn.Module], example: tuple[Tensor, ...],
                 dynamic: list[tuple[int, ...]], key: str, precision: str, threads: int | None = None,
                 root: Path | None = None) -> None:
        """``module``: or a function giving it, called only when the cache has no model for ``key``."""
        ov = _openvino()
        parts = {"key": key, "torch": torch.__version__, "openvino": ov.__version__, "format": str(FORMAT)}
        self.cache = EngineCache(root or cache_root(), parts)
        self.converted = not self.cache.valid()  # (a miss: converted now, cached for the next run)
        if self.converted:
            shapes = [ov.PartialShape([-1 if d in dims else n for d, n in enumerate(x.shape)])
                      for x, dims in zip(example, dynamic, strict=True)]
            # torch's tracer warns of every shape test it meets; the dims it may vary are the ones above
            module = module if isinstance(module, nn.Module) else module()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from openvino.tools.ovc import convert_model

                model = convert_model(module.float().eval(), example_input=example, input=shapes)
            with self.cache.writing() as tmp:
                ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)
        # OpenVINO's CPU plugin computes bf16 only where the CPU does (AVX512-BF16, AMX); elsewhere the
        # hint fails to compile (capped to AVX2: "Exception from core.cpp"), so it computes f32 there
        bf16 = precision == "bf16" and cpu_bf16_native()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
                  "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        blobs = {"CACHE_DIR": str(self.cache.dir / "blobs")}  # OpenVINO's own cache of the compiled model
        try:
            compiled = _core().compile_model(self.cache.model, "CPU", {**config, **blobs})
        except RuntimeError:  # a compiled blob OpenVINO cannot read: compile afresh, without it
            shutil.rmtree(self.cache.dir / "blobs", ignore_errors=True)
            compiled = _core().compile_model(self.cache.model, "CPU", config)
        self.request = compiled.create_infer_request()
        self.outputs = len(compiled.outputs)

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        result = self.request.infer([x.detach().float().contiguous().cpu().numpy() for x in inputs])
        # (the request reuses its output buffers: copied out before the next call)
        outs = tuple(torch.from_numpy(result[i].copy()) for i in range(self.outputs))
        return outs[0] if self.outputs == 1 else outs


class OpenVinoNet:
    """A translator's network compiled by OpenVINO, called as the torch net is: ``(x (N, C, H, W)[, z
    (N, nz)]) -> float32 (N, C', H, W)``, any batch and image size."""

    def __init__(self, net: nn.Module | Callable[[], nn.Module], weights_id: str, precision: str, nz: int = 0,
                 in_ch: int = 3, size: int = 64, fixed_size: bool = False, root: Path | None = None) -> None:
        """``net``: or a function giving it (called on a cache miss); ``size``: a side the net takes
        (traced at it); ``fixed_size``: the only one (a StyleGAN2 decoder)."""
        self.nz = nz
        x = torch.zeros(1, in_ch, size, size)
        image: tuple[int, ...] = (0,) if fixed_size else (0, 2, 3)  # the dynamic axes
        example, dynamic = ((x, torch.zeros(1, nz)), [image, (0,)]) if nz else ((x,), [image])
        self.compiled = Compiled(net, example, dynamic, weights_id, precision, root=root)
        self.converted, self.cache = self.compiled.converted, self.compiled.cache

    def __call__(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        if not self.nz:
            return self.compiled(x)  # type: ignore[return-value]
        return self.compiled(x, z if z is not None else x.new_zeros(x.shape[0], self.nz))  # type: ignore[return-value]


class _Method(nn.Module):
    """One method of a module as a forward, for conversion."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        self.module, self.name = module, name

    def forward(self, *inputs: Tensor) -> Any:
        return getattr(self.module, self.name)(*inputs)


class OpenVinoMethods:
    """A zoo model (an autoencoder, a classifier) whose methods run compiled by OpenVINO, each for any
    batch: ``examples`` maps a method's name to an example of its inputs. Other attributes (its
    channels, resolution) are the module's."""

    def __init__(self, module: nn.Module, examples: dict[str, tuple[Tensor, ...]], weights_id: str,
                 precision: str, root: Path | None = None) -> None:
        self._module = module
        self._compiled = {name: Compiled(_Method(module, name), example, [(0,)] * len(example),
                                         f"{weights_id}:{name}", precision, root=root)
                          for name, example in examples.items()}

    def __getattr__(self, name: str) -> Any:
        compiled = self.__dict__.get("_compiled", {})
        return compiled[name] if name in compiled else getattr(self.__dict__["_module"], name)

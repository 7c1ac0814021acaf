"""OpenVINO without torch: the package imported lean, the cache of converted models, and a cached
model compiled for the CPU. engines.py converts a torch network into this cache (tracing needs
torch); inference/cached.py runs a cached translator from here alone, so `translate run` with a
cached model never imports torch (1.4 s of its start-up on a 2-core Zen5).

A cache entry is keyed by what the network computes with (:func:`tensors_digest`: the weights'
names, dtypes, shapes and bytes, and the net's spec), the versions of torch and OpenVINO installed
and this format; the same key comes from the torch tensors (engines.tensors_id) and from the
weights file's bytes (inference/cached.py).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

FORMAT = 2  # of a cache entry; bump when what is stored changes (2: facts.json, versions as installed)
KEEP = 16  # cache entries kept, the most recently used (each about the size of its weights)


def openvino_version() -> str | None:
    """OpenVINO's version, or None where the package is not installed."""
    try:
        return str(import_openvino().__version__)
    except ImportError:
        return None


def import_openvino() -> Any:
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


def cache_root() -> Path:
    """``$TRANSLATE_CACHE``, else ``$XDG_CACHE_HOME/translate``, else ``~/.cache/translate``."""
    if os.environ.get("TRANSLATE_CACHE"):
        return Path(os.environ["TRANSLATE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "translate"


def cache_key(key: str) -> dict[str, str]:
    """The parts an entry is keyed by: ``key`` (what the model computes with), the installed torch
    (which traced it) and OpenVINO, and this format. Versions as installed (package metadata), so
    the key is the same in a process that has not imported torch."""
    return {"key": key, "torch": _version("torch"), "openvino": _version("openvino"), "format": str(FORMAT)}


def _version(package: str) -> str:
    """``package``'s installed version; where it has no metadata (a source tree on the path), the
    imported module's own (a process that has not imported it raises: cached.py then declines)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return str(sys.modules[package].__version__)


def tensors_digest(name: str, tensors: Iterable[tuple[str, str, tuple[int, ...], bytes | memoryview]]) -> str:
    """A hash of ``name`` (what the tensors are weights of) and every tensor, ``(key, torch dtype name,
    shape, raw little-endian bytes)``, in key order. Not the weights file's bytes: safetensors writes
    its metadata in no fixed order, so the same weights saved twice differ (and a cache keyed by the
    file missed)."""
    h = hashlib.sha256(name.encode())
    for key, dtype, shape, raw in sorted(tensors, key=lambda t: t[0]):
        h.update(f"{key}:{dtype}:{tuple(shape)}".encode())
        h.update(raw)
    return h.hexdigest()


def ov_threads() -> int | None:
    """OpenVINO's threads: ``OMP_NUM_THREADS`` where set (as torch takes it), else OpenVINO's own choice
    (for the LATENCY hint, the physical cores, as torch's default). Not ``torch.get_num_threads()``:
    a run without torch must pick the same, so both paths compile the same model (its blob is keyed
    by the settings); a ``torch.set_num_threads`` in the process no longer limits OpenVINO."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return None


def compile_cached(entry: EngineCache, bf16: bool, threads: int | None = None) -> Any:
    """The entry's model compiled for the CPU (from OpenVINO's blob beside it when there is one),
    computing in bf16 or f32. ``bf16`` only where the CPU computes it (AVX512-BF16, AMX): elsewhere
    the hint fails to compile (capped to AVX2: "Exception from core.cpp")."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "PERFORMANCE_HINT": "LATENCY"}
    threads = threads or ov_threads()
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    blobs = {"CACHE_DIR": str(entry.dir / "blobs")}  # OpenVINO's own cache of the compiled model
    try:
        return _core().compile_model(entry.model, "CPU", {**config, **blobs})
    except RuntimeError:  # a compiled blob OpenVINO cannot read: compile afresh, without it
        shutil.rmtree(entry.dir / "blobs", ignore_errors=True)
        return _core().compile_model(entry.model, "CPU", config)


def file_hash(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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

    def facts(self) -> dict[str, Any] | None:
        """What the entry's writer said a run needs to know of the model (``facts.json``), if it did;
        call after :meth:`valid`, which checked the file's hash."""
        try:
            facts = json.loads((self.dir / "facts.json").read_text())
            return facts if isinstance(facts, dict) else None
        except (OSError, ValueError):
            return None

    @contextlib.contextmanager
    def writing(self, facts: dict[str, Any] | None = None) -> Iterator[Path]:
        """A temporary folder beside the entry to write the model into; on success ``facts`` and the
        manifest are written and the folder renamed into place (replacing a broken entry)."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.dir.name}.", dir=self.dir.parent))
        try:
            yield tmp
            if facts is not None:
                (tmp / "facts.json").write_text(json.dumps(facts, sort_keys=True))
            files = {p.name: file_hash(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / "manifest.json").write_text(json.dumps({"key": self.key, "files": files}, indent=1))
            shutil.rmtree(self.dir, ignore_errors=True)  # a broken entry, if there is one
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
    return import_openvino().Core()



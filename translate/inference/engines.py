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
``CACHE_DIR``): the second run of the same weights starts without tracing or compiling, and
`translate run` then without torch (inference/cached.py). An entry is written under a temporary
name with a manifest of its files' hashes, renamed into place, and checked before use; a
corrupted, stale or half-written entry is rebuilt, never used (ov_cache.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from translate.core.devices import DTYPES, cpu_bf16_native
from translate.core.errors import TranslateError
from translate.inference.ov_cache import (
    EngineCache,
    cache_key,
    cache_root,
    compile_cached,
    import_openvino,
    openvino_version,
    tensors_digest,
)

ENGINES = ("auto", "torch", "openvino")
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
    if (name == "torch" or compile or device.type != "cpu" or precision not in ("fp32", "bf16")
            or openvino_version() is None):
        return "torch"
    # (imported here: translate.nets imports every network, 0.22 s that a run whose OpenVINO model
    # is cached never needs)
    from translate.nets.winograd import winograd_convs, winograd_pays

    if net is not None and winograd_pays(device, DTYPES[precision]) and winograd_convs(
            net if isinstance(net, nn.Module) else net()):
        return "torch"
    return "openvino"


def net_id(net: nn.Module, name: str = "") -> str:
    """A hash of what ``net`` computes with: its class, every parameter and buffer, and ``name``."""
    return tensors_id(net.state_dict(), f"{type(net).__module__}.{type(net).__qualname__}:{name}")


def tensors_id(tensors: dict[str, Tensor], name: str) -> str:
    """A hash of ``name`` (what the tensors are weights of) and every tensor (names, dtypes, shapes,
    bytes): :func:`translate.inference.ov_cache.tensors_digest` of torch tensors."""
    def raw(t: Tensor) -> bytes:
        t = t.detach().cpu().contiguous()
        return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""

    return tensors_digest(name, ((key, str(t.dtype), tuple(t.shape), raw(t)) for key, t in tensors.items()))


class Compiled:
    """``module``'s forward compiled by OpenVINO for the CPU: called with tensors like the module, on
    any sizes of the ``dynamic`` dims (per input, their indices), it returns float32 tensors (one, or
    a tuple for several outputs). ``key`` names what the module is (weights, net, method); the model
    is converted from ``example`` once per key and cached (:class:`EngineCache`)."""

    def __init__(self, module: nn.Module | Callable[[], nn.Module], example: tuple[Tensor, ...],
                 dynamic: list[tuple[int, ...]], key: str, precision: str, threads: int | None = None,
                 root: Path | None = None, facts: dict[str, Any] | None = None) -> None:
        """``module``: or a function giving it, called only when the cache has no model for ``key``;
        ``facts``: what a run needs to know of the model without torch, kept with it (cached.py)."""
        ov = import_openvino()
        self.cache = EngineCache(root or cache_root(), cache_key(key))
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
            with self.cache.writing(facts) as tmp:
                ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)
        compiled = compile_cached(self.cache, bf16=precision == "bf16" and cpu_bf16_native(), threads=threads)
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
                 in_ch: int = 3, size: int = 64, fixed_size: bool = False, root: Path | None = None,
                 facts: dict[str, Any] | None = None) -> None:
        """``net``: or a function giving it (called on a cache miss); ``size``: a side the net takes
        (traced at it); ``fixed_size``: the only one (a StyleGAN2 decoder); ``facts``: see Compiled."""
        self.nz = nz
        x = torch.zeros(1, in_ch, size, size)
        image: tuple[int, ...] = (0,) if fixed_size else (0, 2, 3)  # the dynamic axes
        example, dynamic = ((x, torch.zeros(1, nz)), [image, (0,)]) if nz else ((x,), [image])
        self.compiled = Compiled(net, example, dynamic, weights_id, precision, root=root, facts=facts)
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

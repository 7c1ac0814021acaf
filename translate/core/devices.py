"""Device choice, precision from what the hardware runs natively (decided here and nowhere else:
:func:`resolve_precision`), and distributed set-up."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from translate.core.errors import TranslateError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> this rank's CUDA device if there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TranslateError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TranslateError(f"device {name!r} asked for, but this machine has no usable CUDA GPU")
    return dev


def cpu_bf16_native() -> bool:
    """True where the CPU has native bf16 (AVX512-BF16 / AMX), as oneDNN reports it."""
    return _onednn("bf16")


def _onednn(dtype: str) -> bool:
    try:
        return bool(getattr(torch.ops.mkldnn, f"_is_mkldnn_{dtype}_supported")())
    except (AttributeError, RuntimeError):
        return False


def bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_native()
    return False


def fp16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        return _onednn("fp16")
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """Turn ``auto`` into fp32 / bf16 / fp16 for this device, for inference and training alike: bf16
    where the device computes it natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX), fp16 on
    an older GPU, fp32 elsewhere. Training on a 2-core Zen5 (AVX512-BF16): CycleGAN 3.43 s/it in bf16
    autocast against 6.82 in fp32 (bench/train_speed.py); on AVX2 bf16 is emulated, several times
    slower than fp32, and never picked."""
    if name != "auto":
        if name not in DTYPES:
            raise TranslateError(f"unknown precision {name!r}; choose from auto, {', '.join(DTYPES)}")
        return name
    return _auto(device)[0]


def precision_reason(asked: str, device: torch.device) -> str:
    """Why ``resolve_precision(asked, device)`` is what it is, for start-up lines."""
    return "as asked" if asked != "auto" else _auto(device)[1]


def _auto(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        return ("bf16", "auto: the GPU computes bf16") if torch.cuda.is_bf16_supported() else \
            ("fp16", "auto: this GPU has no bf16, fp16 with loss scaling")
    if device.type == "cpu":
        return ("bf16", "auto: this CPU computes bf16 natively; train.precision=fp32 for full precision") \
            if cpu_bf16_native() else ("fp32", "auto: this CPU has no native bf16 (emulated, it would be slower)")
    return "fp32", "auto"


def cpu_name() -> str:
    """The CPU's model name (for benchmark headers)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Let glibc keep the memory a training step frees for the next step, instead of handing it back
    to the kernel and taking it again page by page (each page zero-filled on its first touch).

    glibc serves allocations above 128 KiB with fresh mmaps and only raises that threshold as such
    blocks are freed, so a CPU training run's first steps page-fault through their activations: on a
    2-core Zen5, pix2pix bf16 took 0.86 s for its second step and ten steps to settle at 0.39; with
    the heap kept (mmap threshold 32 MiB, glibc's most; trimming above 1 GiB) 1.10M minor page faults
    in 20 steps became 0.89M and steps settled from the third, at 0.34-0.38 s (peak resident memory
    2.56 -> 2.67 GB). What jemalloc or tcmalloc preloaded would do, without a preload. Process-wide;
    a no-op (False) off glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
        ok &= libc.mallopt(_M_TOP_PAD, 64 * 2**20) == 1
    except (OSError, AttributeError):
        return False
    return bool(ok)


@contextlib.contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """Bit-exact runs on CUDA (``train.deterministic``): deterministic algorithms, no cuDNN autotuning.

    Without it a CUDA run is exact only up to the order of floating-point sums (cuDNN's algorithm
    choice, atomics in backward passes): a resumed CycleGAN run differed from an uninterrupted one
    in the 5th digit of a loss on an H200. The CPU is deterministic either way. Restores the
    previous settings on exit, so a library caller's process is left as it was.
    """
    if not on:
        yield
        return
    # cuBLAS needs a fixed workspace for reproducible results (read when CUDA starts; harmless later).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


def peak_gpu_bytes(device: torch.device) -> int:
    """The most memory this process's tensors held on ``device`` at once (0 off CUDA)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


@contextlib.contextmanager
def autotune(on: bool) -> Iterator[None]:
    """cuDNN's autotuner, for work whose shapes repeat (a training run's crops, a folder's batches):
    its search costs a few ms per shape and pays back at once. Never under deterministic
    algorithms (``deterministic`` turns it off for exact runs); restored on exit."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or (on and not torch.are_deterministic_algorithms_enabled())
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@dataclass
class Precision:
    """Autocast and (for fp16 on CUDA) loss scaling, so methods need not know which is in use; and a
    note of whether every gradient stepped was finite, which the Trainer's NaN guard reads."""

    name: str
    device: torch.device

    def __post_init__(self) -> None:
        use_scaler = self.name == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.grads_finite: torch.Tensor | None = None  # since the guard last took it (a device tensor)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.name == "fp32":
            yield
            return
        with torch.autocast(self.device.type, dtype=DTYPES[self.name]):
            yield

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """``retain_graph``: another backward through the same graph follows (BicycleGAN's latent loss)."""
        (self.scaler.scale(loss) if self.scaler else loss).backward(retain_graph=retain_graph)

    def step(self, optimizer: torch.optim.Optimizer, scaled: bool = True) -> None:
        """``optimizer.step()``, noting whether its gradients were all finite (on the device: no wait).
        ``scaled=False``: the backward was not loss-scaled (StyleGAN2's fp32 regularisers). With fp16's
        loss scaling the scaler itself skips a step whose gradients overflowed, as it should now and
        then, so those are not noted."""
        if self.scaler and scaled:
            self.scaler.step(optimizer)
            return
        ok = all_finite(p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None)
        self.grads_finite = ok if self.grads_finite is None else self.grads_finite & ok
        optimizer.step()

    def take_grads_finite(self) -> torch.Tensor | None:
        """Whether every gradient stepped since the last call was finite (None: none was stepped)."""
        ok, self.grads_finite = self.grads_finite, None
        return ok

    def update(self) -> None:
        """Call once per iteration after all optimizer steps."""
        if self.scaler:
            self.scaler.update()


def all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A bool tensor: no element of ``tensors`` is NaN or inf, read only when the caller wants (on
    CUDA, no wait). One fused pass per device and dtype: the check GradScaler makes (it multiplies by
    1, exactly). On pix2pix's 54M gradients on a 2-core Zen5 it takes 8 ms, where the max-norm took
    80 ms, 12% of a bf16 step."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    oks = []
    for (device, _), ts in groups.items():
        found = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(ts, found, torch.ones(1, device=device))
        oks.append(found[0] == 0)
    if not oks:
        return torch.tensor(True)
    return oks[0] if len(oks) == 1 else torch.stack([ok.cpu() for ok in oks]).all()


@dataclass
class Dist:
    """This process's place in a torch.distributed job (world size 1 when not launched so)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives run: the GPU for NCCL, the CPU for gloo

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``t`` summed over ranks (or their maximum, ``op="max"``), on the collectives' device."""
        if self.enabled:
            t = t.to(self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t

    def from_rank0(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``t`` on every rank, on the CPU (what must agree to the last bit, e.g. sampling weights)."""
        if not self.enabled:
            return t
        t = t.to(self.device)
        dist.broadcast(t, src=0)
        return t.cpu()


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(net, "module", net)


def close_distributed() -> None:
    """Leave the process group together: a rank that exits while a peer still holds the connection
    can make that peer abort (SIGABRT in gloo), failing a job that did all its work."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def ddp(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` wrapped for DistributedDataParallel training on ``device``."""
    # Batch statistics over the global batch, as one process would have them. PyTorch's
    # SyncBatchNorm runs on GPUs only; CPU processes (gloo) normalise over their own batch.
    cuda = device.type == "cuda"
    if cuda and any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in net.modules()):
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    # Methods call a net several times per step (CycleGAN's G_A: fake_B, rec_B, identity):
    # a static graph lets DDP reduce each parameter once per backward all the same.
    return DistributedDataParallel(net, device_ids=[device.index] if cuda else None, static_graph=True)


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that torchrun (or any launcher setting WORLD_SIZE) describes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                device if device.type == "cuda" else torch.device("cpu"))


def fitting(fn: Callable[[Any], Any], x: Any, note: Callable[[str], None] = lambda _: None,
            join: Callable[[Any, Any], Any] | None = None) -> Any:
    """``fn(x)`` for a batch ``x`` (a tensor or a list of images); where CUDA runs out of memory,
    ``fn`` of each half, joined by ``join`` (default: tensors, or dicts, tuples and lists of them,
    concatenated along the batch), down to one image, whose error is ``fn``'s to handle or raise.
    ``note`` hears each halving."""
    try:
        return fn(x)
    except torch.cuda.OutOfMemoryError:
        if len(x) == 1:
            raise
    # (outside the handler: the failed attempt's tensors are freed before the retry)
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    half = len(x) // 2
    note(f"out of GPU memory with {len(x)} images in a batch: trying {half} at a time")
    return (join or _join)(fitting(fn, x[:half], note, join), fitting(fn, x[half:], note, join))


def _join(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, dict):
        return {k: _join(a[k], b[k]) for k in a}
    return type(a)(_join(u, v) for u, v in zip(a, b, strict=True))

"""Contracts every recipe keeps, whatever its method: a few training steps under bf16 autocast (and
fp32) give finite losses and weights, a sample grid and a weights file that rebuilds, and every
convolution's bf16 gradients equal fp32's; a run stopped and resumed equals one that never stopped;
a misspelt key or a crop size the nets cannot take is one line.

Parametrised over ``list_recipes()``, so a new recipe is covered without an edit here. Sizes come from
conftest's ``tiny``; the few steps must reach each method's special phases (and the resumed run must
start inside them): those overrides are in ``SPECIAL``, with the check that they were reached.

The runs are on the CPU, with CUDA's autocast policy (``cuda_autocast_policy``). CPU autocast alone
does not take CUDA's dtype paths: both run convolutions and linear layers in bf16, but only CUDA's
runs upsampling, pow, rsqrt, softplus, group norm and sums in fp32 (torch 2.14). PGGAN's fade-in,
``lerp(upsampled skip, conv output)``, is fp32 with bf16 on CUDA, which lerp refuses (the crash at
step 600 of a GPU run), and bf16 with bf16 under CPU autocast, which passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, copy_first, plain, shared, tiny
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from typer.testing import CliRunner

from translate.cli.commands import app
from translate.core.checkpoints import load_state, read_weights
from translate.core.errors import TranslateError
from translate.core.recipes import list_recipes, load_recipe
from translate.methods import get_method
from translate.training.train import Trainer, resume

STEPS = 3


@dataclass
class Special:
    """Overrides one recipe needs beyond ``tiny`` (applied after it), and a check on the log that
    the phases they are for were reached."""

    overrides: list[str]
    reached: Callable[[list[dict]], bool] = lambda log: True


SPECIAL = {
    # 4x4 for 1 step, then 8x8 fades in over 3: steps 0-3 are (4, 1), (8, 0), (8, 1/3), (8, 2/3), so a
    # run resumed after step 3 (RESUME_AT) goes on mid fade-in.
    "pggan": Special(["model.start_resolution=4", "model.stable_steps=1", "model.fade_steps=3"],
                     lambda log: any(0 < r["alpha"] < 1 for r in log) and len({r["resolution"] for r in log}) > 1),
    # lazy R1 and path length on steps 0 and 2 (and 4, the resumed run's second); every batch style-mixed
    "stylegan2": Special(["loss.r1_interval=2", "loss.pl_interval=2", "loss.mixing_prob=1.0"],
                         lambda log: sum("R1" in r for r in log) == 2 and sum("PL" in r for r in log) == 2),
    # the KL weight rises over 4 steps: a resumed run needs the step counter back
    "vae": Special(["loss.kl_warmup_steps=4"], lambda log: any(0 < r["kl_weight"] < 1 for r in log)),
    # a decoder trained with the encoder (frozen, it would need a StyleGAN2 weights file)
    "psp": Special(["model.freeze_decoder=false"]),
    "beta-vae": Special(["loss.capacity_max=5", "loss.capacity_steps=4"],
                        lambda log: any(r["capacity"] > 0 for r in log)),
}

DATA = {  # data_kind -> (folder under ../shared/data, sub-folders, images copied from each)
    "paired": ("people2outline", ("train",), 4),
    "unpaired": ("horse2zebra", ("trainA", "trainB"), 4),
    "images": ("mnist", ("train/0", "train/1"), 4),
    "classes": ("mnist", ("train/0", "train/1"), 4),
}


# CUDA's autocast policy, op by op: AT_FORALL_* in ATen/autocast_mode.h of torch 2.14 (RNN cells and
# attention left out). "lower": floating inputs to bf16; "fp32": to fp32; "fp32_result": an unset dtype
# argument becomes fp32 (a bf16 sum gives fp32); "promote": to the widest input; "banned": an error.
CUDA_POLICY = {
    "lower": ["_convolution.deprecated", "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d",
              "conv_transpose2d.input", "conv_transpose3d.input", "convolution", "prelu", "addmm", "addmv", "addr",
              "matmul", "einsum", "mm", "mv", "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul",
              "linalg_multi_dot"],
    "fp32": ["acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
             "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus", "layer_norm",
             "native_layer_norm", "rms_norm", "group_norm", "frobenius_norm.dim", "nuclear_norm", "nuclear_norm.dim",
             "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
             "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
             "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
             "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
             "upsample_nearest1d", "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d",
             "upsample_nearest3d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
             "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa",
             "norm.Scalar", "norm.ScalarOpt_dim"],
    "fp32_result": ["prod", "prod.dim_int", "softmax.int", "log_softmax.int", "cumprod", "cumsum", "linalg_vector_norm",
                    "linalg_matrix_norm", "linalg_matrix_norm.str_ord", "sum", "sum.dim_IntList"],
    "promote": ["addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler", "index_put",
                "tensordot", "scatter_add"],
    "banned": ["binary_cross_entropy"],
    # CPU autocast casts these (autocast_mode.cpp) and CUDA's does not: they run as they come. Only
    # the ones a net here could meet (CycleGAN's ResNet pads by reflection); not linalg, fft, ...
    "as is": ["reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d", "replication_pad3d",
              "avg_pool3d", "max_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d", "max_unpool2d",
              "max_unpool3d", "fractional_max_pool2d", "fractional_max_pool3d", "grid_sampler_2d", "grid_sampler_3d",
              "cross_entropy_loss", "stack", "cat", "index_copy"],
}


def _cast_all(tree, dtype: torch.dtype):
    """Floating tensors (not fp64) in ``tree`` to ``dtype``, as autocast's cached_cast."""
    return tree_map(lambda t: t.to(dtype) if _eligible(t) else t, tree)


def _eligible(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _autocast_kernel(op, policy: str):
    """A kernel for the AutocastCPU key doing what CUDA's autocast does for ``op``."""
    after = torch._C._dispatch_keyset_full_after(torch._C.DispatchKey.AutocastCPU)
    dtype_at = next((i for i, a in enumerate(op._schema.arguments) if a.name == "dtype"), None)

    def run(keyset, *args, **kwargs):
        if policy == "as is":  # as CUDA's fall-through: nested ops still autocast
            return op.redispatch(keyset & after, *args, **kwargs)
        if policy == "banned":
            raise RuntimeError(f"{op} is unsafe to autocast (CUDA's autocast refuses it)")
        if policy == "lower":
            args, kwargs = _cast_all((args, kwargs), torch.get_autocast_dtype("cpu"))
        elif policy == "fp32":
            args, kwargs = _cast_all((args, kwargs), torch.float32)
        elif policy == "promote":
            found = [t.dtype for t in tree_flatten((args, kwargs))[0] if _eligible(t)]
            args, kwargs = _cast_all((args, kwargs), functools.reduce(torch.promote_types, found, found[0]))
        elif policy == "fp32_result" and _eligible(args[0]):
            if len(args) > dtype_at:
                args = (*args[:dtype_at], args[dtype_at] or torch.float32, *args[dtype_at + 1 :])
            elif kwargs.get("dtype") is None:
                kwargs = {**kwargs, "dtype": torch.float32}
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)):
            return op(*args, **kwargs)  # below autocast, as CUDA's kernels; autograd records the casts

    return run


@contextlib.contextmanager
def cuda_autocast_policy() -> Iterator[None]:
    """CPU autocast that casts as CUDA's: kernels of our own for the AutocastCPU dispatch key, taken
    away on exit (the CPU's own come back). Without it the PGGAN crash does not happen on the CPU."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        for policy, names in CUDA_POLICY.items():
            for name in names:
                base, _, overload = name.partition(".")
                op = getattr(getattr(torch.ops.aten, base), overload or "default")
                lib.impl(name, _autocast_kernel(op, policy), "AutocastCPU", with_keyset=True)
        yield
    finally:
        lib._destroy()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Nets this small gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    waiting made this file 4x slower (CycleGAN's case: 48 s with 2 threads, 12 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Callable[[str], Path]:
    """A small copy of the real data for a data kind, made once per kind."""
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            name, subs, n = DATA[kind]
            root = tmp_path_factory.mktemp(kind)
            for sub in subs:
                copy_first(shared(name, sub), root / sub, n)
            made[kind] = root
        return made[kind]

    return get


def test_cpu_autocast_takes_cudas_dtype_paths():
    """The policy is in force inside the context and gone after it; under it, the PGGAN fade-in's
    lerp of an upsampled and a convolved map gets fp32 and bf16, as on CUDA, and refuses them."""
    x, w = torch.randn(2, 3, 4, 4), torch.randn(3, 3, 3, 3)

    def dtypes() -> dict[str, torch.dtype]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = F.conv2d(x, w, padding=1)
            return {"conv": y.dtype, "upsample": F.interpolate(y, scale_factor=2).dtype,
                    "rsqrt": torch.rsqrt(y).dtype, "sum": y.sum().dtype, "pad": F.pad(y, (1,) * 4, "reflect").dtype}

    bf16, fp32 = torch.bfloat16, torch.float32
    cpu = {"conv": bf16, "upsample": bf16, "rsqrt": bf16, "sum": bf16, "pad": fp32}
    assert dtypes() == cpu
    with cuda_autocast_policy():
        assert dtypes() == {"conv": bf16, "upsample": fp32, "rsqrt": fp32, "sum": fp32, "pad": bf16}
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="expected dtype"):
            y = F.conv2d(x, w, padding=1)
            torch.lerp(F.interpolate(y[:, :, ::2, ::2], scale_factor=2), y, 0.5)
    assert dtypes() == cpu


class ConvGradients(TorchDispatchMode):
    """Records the gradient convolutions a bf16 run computes (shapes and settings), to compute each
    again from seeded inputs in bf16 and in fp32 and compare.

    A kernel that leaves part of its output unwritten gives whatever the memory held: it is filled
    with NaN and freed just before, so that shows. On a CPU with AVX512-BF16, torch 2.14.1's oneDNN
    did so for the padding taps of a 3x3 stride-2 conv of a 1x1 map (pSp's coarse style heads at
    32x32) in about half of all calls; the finite-weights check below caught it 6 runs in 8, this
    every time. Elsewhere (AVX2, where bf16 is emulated) it shows nothing wrong, as it should."""

    TOLERANCE = 0.05  # of the gradient's largest value; bf16's rounding: at most 0.007 over all recipes (Zen5)

    def __init__(self) -> None:
        super().__init__()
        self.calls: set[tuple] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default and args[1].dtype == torch.bfloat16:
            grad, x, w, *settings = args
            self.calls.add((tuple(grad.shape), tuple(x.shape), tuple(w.shape),
                            *(tuple(a) if isinstance(a, list) else a for a in settings)))
        return func(*args, **(kwargs or {}))

    def assert_bf16_equals_fp32(self) -> None:
        for grad_shape, x_shape, w_shape, *settings in sorted(self.calls):
            gen = torch.Generator().manual_seed(0)
            grad, x, w = (torch.randn(shape, generator=gen) for shape in (grad_shape, x_shape, w_shape))
            settings = [list(a) if isinstance(a, tuple) else a for a in settings]
            settings[-1] = [True, True, False]  # the input's and the weight's gradients
            want = torch.ops.aten.convolution_backward(grad, x, w, *settings)[:2]
            junk = torch.full((4 * max(grad.numel(), x.numel(), w.numel()),), float("nan"))
            del junk
            got = torch.ops.aten.convolution_backward(grad.bfloat16(), x.bfloat16(), w.bfloat16(), *settings)[:2]
            for what, g, ref in zip(("input", "weight"), got, want, strict=True):
                err = ((g.float() - ref).abs().nan_to_num(math.inf).max() / ref.abs().max().clamp_min(1e-6)).item()
                assert err < self.TOLERANCE, (f"bf16 {what} gradient of a conv {x_shape} * {w_shape} {settings[:-1]}"
                                              f" is off by {err:.3g} of its largest value")


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("name", list_recipes(aliases=False))
def test_recipe_trains_samples_and_exports(name, precision, data_root, tmp_path):
    method = load_recipe(name).method
    special = SPECIAL.get(name, Special([]))
    overrides = tiny(name, [f"train.max_steps={STEPS}", *special.overrides])
    data = data_root(get_method(method).data_kind)
    recipe = load_recipe(name, [*overrides, f"data.path={data}", f"train.precision={precision}"])
    with cuda_autocast_policy():
        trainer = Trainer(recipe, tmp_path / "run", quiet=True)
        assert trainer.precision.name == precision
        with ConvGradients() as convs:
            result = trainer.fit()  # the Trainer stops on a non-finite loss or gradient
        rows = trainer.method.sample(trainer.batches.fixed())
    convs.assert_bf16_equals_fp32()

    log = read_log(tmp_path / "run")
    assert result.step == STEPS and [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for r in log for v in r.values()), log
    assert special.reached(log), f"{name}: the overrides in SPECIAL no longer reach its phases: {log}"

    # autocast computes in bf16 but never changes what is stored (EMA copies and buffers included)
    for net_name, net in trainer.method.nets.items():
        for key, t in [*net.named_parameters(), *net.named_buffers()]:
            assert not t.is_floating_point() or t.dtype == torch.float32, (net_name, key, t.dtype)
            assert not t.is_floating_point() or bool(torch.isfinite(t).all()), (net_name, key)

    # the grid written at the end, and the rows behind it, under the same precision
    assert (tmp_path / "run" / "samples" / f"step_{STEPS:07d}.png").is_file()
    assert rows.ndim == 4 and rows.shape[1] in (1, 3) and rows.dtype == torch.float32
    assert bool(torch.isfinite(rows).all())

    # the weights file rebuilds every exported net with the trained values, in fp32
    weights = read_weights(result.weights)
    exported = trainer.method.export()
    assert sorted(weights.nets) == sorted(exported)
    for net_name, net in exported.items():
        rebuilt = weights.build(net_name).state_dict()
        for key, value in net.state_dict().items():
            assert rebuilt[key].dtype == value.dtype and torch.equal(rebuilt[key], value.cpu()), (net_name, key)


# 4 images at batch 2 are 2 steps an epoch: the split run stops mid-epoch (after step 3) and the resumed
# one crosses into the next epoch and the linear lr decay (epochs 1-2 of 3), with a numbered checkpoint
# each epoch and worker processes for the data (their random streams are part of the state); where
# there is an image pool, it fills and swaps. Keys a method does not have are left out (``tiny``).
RESUME = ["train.epochs=1", "train.epochs_decay=2", "train.save_every=1", "train.deterministic=true",
          "data.num_workers=1", "loss.pool_size=3"]
RESUME_AT, RESUME_STEPS = 3, 5


@pytest.mark.parametrize("name", list_recipes(aliases=False))
def test_resume_equals_an_uninterrupted_run(name, data_root, tmp_path):
    """Every method resumes exactly: its losses and every net of its state (discriminators, projection
    heads, EMA copies) equal to the bit, and the weights file too."""
    special = SPECIAL.get(name, Special([]))
    data = data_root(get_method(load_recipe(name).method).data_kind)
    common = [*tiny(name, [*RESUME, *special.overrides]), f"data.path={data}"]
    full, split = tmp_path / "full", tmp_path / "split"
    Trainer(load_recipe(name, [*common, f"train.max_steps={RESUME_STEPS}"]), full, quiet=True).fit()
    Trainer(load_recipe(name, [*common, f"train.max_steps={RESUME_AT}"]), split, quiet=True).fit()
    resume(split, [f"train.max_steps={RESUME_STEPS}"], quiet=True)

    a, b = read_log(full), read_log(split)
    assert [r["step"] for r in b] == list(range(1, RESUME_STEPS + 1))
    for ra, rb in zip(a, b, strict=True):
        ra.pop("images_per_s"), rb.pop("images_per_s")
        assert ra == rb
    na, nb = (load_state(run / "latest.state.pt")["nets"] for run in (full, split))
    assert sorted(na) == sorted(nb)
    for net in na:
        assert all(torch.equal(v, nb[net][k]) for k, v in na[net].items()), net
    wa, wb = (read_weights(run / "latest.safetensors").tensors for run in (full, split))
    assert sorted(wa) == sorted(wb)
    for net in wa:
        assert all(torch.equal(v, wb[net][k]) for k, v in wa[net].items()), net


@pytest.mark.parametrize("name", list_recipes())
def test_a_misspelt_key_is_one_line_naming_the_right_one(name, tmp_path):
    """`translate train --set <section>.<key with a letter left off>=1`, for each section the method
    declares (model, loss and its own): exit 1, one line, the key it meant."""
    cls = get_method(load_recipe(name).method)
    sections = {"model": cls.ModelConfig, "loss": cls.LossConfig, **getattr(cls, "Sections", {})}
    for section, config in sections.items():
        keys = [f.name for f in dataclasses.fields(config)]
        if not keys:
            continue
        key = max(keys, key=len)
        typo = key[:-1]
        assert typo not in keys
        res = CliRunner().invoke(app, ["train", "--recipe", name, "--data", str(tmp_path), "--out",
                                       str(tmp_path / "run"), "--set", f"{section}.{typo}=1"])
        line = assert_one_line_error(res, f"unknown key {section}.{typo} (did you mean '{key}'?)")
        assert plain(res.stderr).strip() == line and not res.stdout  # on stderr
    assert not (tmp_path / "run").exists()


BAD_CROP = re.compile(
    r"data\.crop_size (?P<size>\d+) "
    r"(must be a power of two >= \d+ for (?P<method>\S+) \(e\.g\. \d+( or \d+)?\)"
    r"|does not suit model\.\S+ \S+( \+ model\.decoder \S+)?: it (needs a multiple of \d+ \(or pick another generator\)"
    r"|works at (?P<fixed>\d+)x(?P=fixed) only \(set data\.crop_size=(?P=fixed)\)))")


@pytest.mark.parametrize("name", list_recipes(aliases=False))
def test_a_crop_size_the_nets_cannot_take_is_one_line(name, data_root, tmp_path):
    """30 (no power of two, and a multiple of no net's size multiple) and 2 (below every net's smallest):
    one line naming data.crop_size and what the method needs, before any net is built."""
    method = load_recipe(name).method
    data = data_root(get_method(method).data_kind)
    for size in (30, 2):
        over = [*tiny(name, SPECIAL.get(name, Special([])).overrides), f"data.path={data}",
                f"data.load_size={size}", f"data.crop_size={size}"]
        with pytest.raises(TranslateError) as e:
            Trainer(load_recipe(name, over), tmp_path / "run", quiet=True)
        m = BAD_CROP.fullmatch(str(e.value))
        assert m and int(m["size"]) == size and m["method"] in (None, method), str(e.value)
    assert not (tmp_path / "run").exists()

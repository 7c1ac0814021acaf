"""Import generators trained with the reference code (junyanz/pytorch-CycleGAN-and-pix2pix) and
with the CUT code (taesungp/contrastive-unpaired-translation), whose ResNet generator is the
reference's, anti-aliased by default.

Both save ``latest_net_G*.pth`` as a bare state dict. Our networks share their module layout, so
importing is: read the file safely, work out which architecture the tensors describe, build that
network and load the tensors under their own names. Only ``torch.load(..., weights_only=True)`` is
used, so a checkpoint can never run code on load.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch
from torch import Tensor, nn

from translate.core.errors import TranslateError, reason
from translate.core.registry import NETS, create_net

RESNET_BLOCKS = {6: "resnet_6blocks", 9: "resnet_9blocks"}
UNET_DEPTHS = {7: "unet_128", 8: "unet_256"}
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
MAX_LISTED_KEYS = 20

_RESNET_BLOCK_KEY = re.compile(r"^model\.(\d+)\.conv_block\.")
_BLUR_KEY = re.compile(r"^model\.(\d+)\.filt$")  # the CUT code's anti-aliasing filters


# --------------------------------------------------------------------------------------------- reading


def load_reference_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a reference checkpoint into a plain ``{key: tensor}`` dict.

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}``, and strips the
    ``module.`` prefix that DataParallel adds. Anything else is a :class:`TranslateError`.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise TranslateError(f"reference checkpoint {name} does not exist")
    if os.path.isdir(name):
        raise TranslateError(f"reference checkpoint {name} is a directory, not a .pth file")
    try:
        obj = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
            raise TranslateError(f"{name} holds pickled objects other than tensors and was refused "
                                 "(only plain state dicts are loaded, so no code can run)") from None
        raise TranslateError(f"{name} is not a PyTorch checkpoint ({reason(err)})") from None

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise TranslateError(f"{name} does not hold a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise TranslateError(f"{name} does not hold a state dict of tensors (e.g. entry {bad[0]!r} is not a tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


# --------------------------------------------------------------------------------------------- detection


def detect_arch(sd: dict[str, Tensor], arch: str | None = None, norm: str | None = None) -> dict[str, Any]:
    """Infer the generator from tensor names and shapes: ``{"net": name, "kwargs": {...}}``.

    ``kwargs`` holds ``in_ch``, ``out_ch``, ``ngf``, ``norm`` and ``dropout`` for
    :func:`translate.core.registry.create_net`. ``arch``/``norm``, when given, are checked against the
    tensors; a contradiction is a :class:`TranslateError` saying what the file holds.

    Limits that come from the format itself: instance norm has no parameters, so instance vs none
    is read from the conv biases (the reference only uses biases with instance norm); U-Net dropout
    has no parameters and does not shift any index, so it is reported as ``False`` (it is inactive
    in eval mode anyway).
    """
    generators = NETS.names(role="translator", reference=True)
    if arch is not None and arch not in generators:
        raise TranslateError(f"arch {arch!r} is not a reference generator; choose from: {', '.join(generators)}")
    if "model.down.0.weight" in sd:  # the BicycleGAN code's generator
        spec, found_norm = _detect_bicycle_unet(sd, norm)
    elif "model.model.0.weight" in sd:
        spec = _detect_unet(sd)
        found_norm = _detect_norm(sd, first_conv="model.model.0", first_norm="model.model.1.model.2")
    elif any(_RESNET_BLOCK_KEY.match(k) for k in sd) or "model.1.weight" in sd:
        spec = _detect_resnet(sd)
        found_norm = _detect_norm(sd, first_conv="model.1", first_norm="model.2")
    else:
        raise TranslateError("the checkpoint does not look like a reference generator (resnet_*/unet_*): "
                             f"no 'model.model.0.weight' or 'model.N.conv_block' keys (first key: {next(iter(sd))!r})")

    spec["kwargs"]["norm"] = found_norm
    if arch is not None and arch != spec["net"]:
        raise TranslateError(f"arch {arch!r} contradicts the checkpoint, which holds a {spec['net']} net")
    if norm is not None and norm != found_norm:
        raise TranslateError(f"norm {norm!r} contradicts the checkpoint, which holds {spec['net']} with norm "
                             f"{found_norm!r}")
    return spec


def _shape(sd: dict[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise TranslateError(f"the checkpoint lacks {key!r}, which every reference generator of its kind has")
    return tuple(sd[key].shape)


def _detect_resnet(sd: dict[str, Tensor]) -> dict[str, Any]:
    """The reference's ResNet generator, or the CUT code's: its anti-aliased downsamplings (a blur
    buffer ``filt`` after each of the two down convs, the CUT code's default) push the blocks from
    index 10 to 12; its anti-aliased upsamplings (``filt`` before each up conv) lengthen the tail."""
    blocks = sorted({int(m.group(1)) for k in sd if (m := _RESNET_BLOCK_KEY.match(k))})
    n_blocks = len(blocks)
    blurs = sorted({int(m.group(1)) for k in sd if (m := _BLUR_KEY.match(k))})
    first = blocks[0] if blocks else 10
    antialias = any(i < first for i in blurs)
    antialias_up = any(i > first for i in blurs)
    # Stem (indices 0-3) and two downsamplings (3 slots each, 4 anti-aliased) come first.
    start = 12 if antialias else 10
    if blocks != list(range(start, start + n_blocks)):
        raise TranslateError(f"the checkpoint's resnet blocks sit at unexpected indices {blocks}")
    if n_blocks not in RESNET_BLOCKS:
        raise TranslateError(f"the checkpoint holds a resnet generator with {n_blocks} blocks; "
                             f"only {', '.join(map(str, RESNET_BLOCKS))} are supported")
    ngf, in_ch = _shape(sd, "model.1.weight")[:2]
    # After the blocks: 2 x (convT, norm, relu) or 2 x (blur, conv, norm, relu), then pad, the output conv, tanh.
    out_ch = _shape(sd, f"model.{start + n_blocks + (8 if antialias_up else 6) + 1}.weight")[0]
    # Dropout sits between the two convs of a block and pushes the second one from 5 to 6. Without
    # dropout, slot 6 may still hold a (1-D) batch-norm weight, so look for a conv's 4-D one.
    second = sd.get(f"model.{start}.conv_block.6.weight")
    dropout = second is not None and second.dim() == 4
    kwargs = {"in_ch": in_ch, "out_ch": out_ch, "ngf": ngf, "dropout": dropout}
    kwargs.update({k: True for k, on in (("antialias", antialias), ("antialias_up", antialias_up)) if on})
    return {"net": RESNET_BLOCKS[n_blocks], "kwargs": kwargs}


def _detect_unet(sd: dict[str, Tensor]) -> dict[str, Any]:
    ngf, in_ch = _shape(sd, "model.model.0.weight")[:2]
    out_ch = _shape(sd, "model.model.3.weight")[1]  # ConvTranspose2d weight is (in, out, kh, kw)
    # Walk the nesting: the outermost block holds its child at index 1, middle blocks at index 3;
    # the innermost block is the one whose index 3 is its up-conv rather than a child.
    depth, prefix = 1, "model.model.1.model."
    while any(k.startswith(prefix) for k in sd):
        depth += 1
        prefix += "3.model."
    if depth not in UNET_DEPTHS:
        raise TranslateError(f"the checkpoint holds a U-Net with {depth} levels; only "
                             f"{', '.join(map(str, UNET_DEPTHS))} (unet_128, unet_256) are supported")
    kwargs = {"in_ch": in_ch, "out_ch": out_ch, "ngf": ngf, "dropout": False}
    return {"net": UNET_DEPTHS[depth], "kwargs": kwargs}


def _detect_norm(sd: dict[str, Tensor], first_conv: str, first_norm: str) -> str:
    """``first_conv`` is a conv whose bias follows the norm rule; ``first_norm`` is a norm slot
    (for the U-Net, its child's down-norm: the outermost block has none)."""
    # Batch norm is the only kind with a learnable weight. Running stats alone do not tell:
    # old reference checkpoints also store them for instance norm.
    if f"{first_norm}.weight" in sd:
        return "batch"
    return "instance" if f"{first_conv}.bias" in sd else "none"


# --------------------------------------------------------------------------------------------- import


def import_reference(path: str | os.PathLike[str], arch: str | None = None, norm: str | None = None
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """Build our network for a reference checkpoint and load its weights (strictly).

    Returns the network in eval mode and the spec from :func:`detect_arch`.
    """
    name = os.fspath(path)
    sd = load_reference_state_dict(name)
    spec = detect_arch(sd, arch=arch, norm=norm)
    return _load_strict(sd, spec, name), spec


def _load_strict(sd: dict[str, Tensor], spec: dict[str, Any], name: str) -> nn.Module:
    """Our network of ``spec`` with the checkpoint's tensors, every one in its place, in eval mode; a
    file that does not fit is one line naming the keys that did not."""
    net: nn.Module = create_net(spec["net"], **spec["kwargs"])
    mapped = _map_keys(sd, net)
    expected = net.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
                  for k, v in mapped.items() if k in expected and v.shape != expected[k].shape]
    parts = [f"{label}: {_list_keys(keys)}" for label, keys in (
        ("unmapped", [k for k in mapped if k not in expected]), ("missing", [k for k in expected if k not in mapped]),
        ("shape mismatch (file vs ours)", mismatched)) if keys]
    if parts:
        raise TranslateError(f"{name} does not fit {spec['net']} {spec['kwargs']}: " + "; ".join(parts))
    net.load_state_dict(mapped, strict=True)
    return net.eval()


def _map_keys(sd: dict[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    """Reference names are ours; only drop what the reference itself patches away on load.

    Reference checkpoints written while its instance norm tracked running statistics carry
    ``running_mean``/``running_var``/``num_batches_tracked`` for those layers; the current
    reference (and we) normalize per image and keep no such buffers. Batch-norm checkpoints from
    PyTorch < 0.4.1 lack ``num_batches_tracked``; it only counts steps, so it is filled with 0.
    """
    modules = dict(net.named_modules())
    expected = net.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        owner, _, leaf = key.rpartition(".")
        if not (key not in expected and leaf in RUNNING_STATS and isinstance(modules.get(owner), nn.InstanceNorm2d)):
            out[key] = value
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in out:
            out[key] = torch.zeros_like(value)
    return out


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return f"{shown} (and {more} more)" if more > 0 else shown


# --------------------------------------------------------------------------------------------- BicycleGAN
# The BicycleGAN code (junyanz/BicycleGAN) saves latest_net_G.pth and latest_net_E.pth as bare state
# dicts of its G_Unet_add_all and E_ResNet; translate/nets/bicyclegan.py has their layout.

BICYCLE_DEPTHS = {7: "bicycle_unet_128", 8: "bicycle_unet_256"}


def _detect_bicycle_unet(sd: dict[str, Tensor], norm: str | None) -> tuple[dict[str, Any], str]:
    """The BicycleGAN code's generator (z at every level): its levels nest as ``submodule``, its first
    down conv takes the image and z, the innermost one 8 ngf and z. Every conv there has a bias
    whatever the norm, so instance norm and none look alike (neither has parameters): ``norm`` says
    which, instance (the code's default) when not given. Its activation (--nl) has no parameters
    either: relu, the default; dropout is off at inference anyway."""
    depth, inner = 1, "model."
    while f"{inner}submodule.down.1.weight" in sd:
        depth, inner = depth + 1, inner + "submodule."
    if depth not in BICYCLE_DEPTHS:
        raise TranslateError(f"the checkpoint holds a BicycleGAN U-Net with {depth} levels; only "
                             f"{', '.join(map(str, BICYCLE_DEPTHS))} (its unet_128, unet_256) are supported")
    ngf, in_and_z = _shape(sd, "model.down.0.weight")[:2]
    nz = _shape(sd, f"{inner}down.1.weight")[1] - 8 * ngf
    bilinear = "model.up.3.weight" in sd  # (Upsample, ReflectionPad2d, Conv2d) instead of a ConvTranspose2d
    out_ch = _shape(sd, "model.up.3.weight")[0] if bilinear else _shape(sd, "model.up.1.weight")[1]
    # Batch norm has an affine weight (the second level's down norm); instance and none have nothing.
    found = "batch" if "model.submodule.down.2.weight" in sd else norm if norm in ("instance", "none") else "instance"
    kwargs = {"in_ch": in_and_z - nz, "out_ch": out_ch, "nz": nz, "ngf": ngf, "dropout": False,
              **({"upsample": "bilinear"} if bilinear else {})}
    return {"net": BICYCLE_DEPTHS[depth], "kwargs": kwargs}, found


def import_encoder(path: str | os.PathLike[str], generator: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """BicycleGAN's encoder E (the code's ``latest_net_E.pth``) for the imported ``generator`` spec:
    our ``e_resnet``, its depth (so its resolution, 8 x 2^depth) and norm read from the tensors,
    checked against the generator (its code size, E's channels those of G's output)."""
    name = os.fspath(path)
    g = generator["kwargs"]
    if not NETS.info(generator["net"]).latent:
        raise TranslateError(f"--encoder is for BicycleGAN generators; {generator['net']} takes no latent code")
    sd = load_reference_state_dict(name)
    if not {"fc.0.weight", "fcVar.0.weight", "conv.0.weight"} <= set(sd):
        raise TranslateError(f"{name} does not look like the BicycleGAN code's encoder E (E_ResNet: fc, fcVar and "
                             f"conv keys; first key: {next(iter(sd))!r})")
    blocks = sum(f"conv.{i}.shortcut.1.weight" in sd for i in range(1, 64))
    nef, in_ch = _shape(sd, "conv.0.weight")[:2]
    nz = _shape(sd, "fc.0.weight")[0]
    if "conv.1.conv.0.weight" in sd:  # a block's first layer: its norm, with an affine weight for batch norm
        norm = "batch"
    else:
        second = sd.get("conv.1.conv.1.weight")  # without a norm, the block's first conv moves up to 1
        norm = "none" if second is not None and second.dim() == 4 else "instance"
    if nz != g["nz"] or in_ch != g["out_ch"]:
        raise TranslateError(f"{name} encodes {in_ch}-channel images to {nz} numbers; the generator "
                             f"takes {g['nz']} and makes {g['out_ch']}-channel images: not its encoder")
    spec: dict[str, Any] = {"net": "e_resnet", "kwargs": {"in_ch": in_ch, "nz": nz, "nef": nef,
                                                          "resolution": 8 * 2 ** (blocks + 1),
                                                          "norm": norm}}
    return _load_strict(sd, spec, name), spec

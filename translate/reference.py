"""Import generators trained with the reference code (junyanz/pytorch-CycleGAN-and-pix2pix).

The reference saves ``latest_net_G*.pth`` as a bare state dict. Our networks share its module
layout, so importing is: read the file safely, work out which architecture the tensors describe,
build that network and load the tensors under their own names. Only ``torch.load(...,
weights_only=True)`` is used, so a checkpoint can never run code on load.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch
from torch import Tensor, nn

from translate.errors import TranslateError
from translate.registry import NETS, create_net

RESNET_BLOCKS = {6: "resnet_6blocks", 9: "resnet_9blocks"}
UNET_DEPTHS = {7: "unet_128", 8: "unet_256"}
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
MAX_LISTED_KEYS = 20

_RESNET_BLOCK_KEY = re.compile(r"^model\.(\d+)\.conv_block\.")


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
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise TranslateError(
                f"{name} holds pickled objects other than tensors and was refused "
                "(only plain state dicts are loaded, so no code can run)"
            ) from None
        raise TranslateError(f"{name} is not a PyTorch checkpoint ({_first_line(err)})") from None
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise TranslateError(f"{name} is not a PyTorch checkpoint ({_first_line(err)})") from None

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise TranslateError(f"{name} does not hold a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise TranslateError(
            f"{name} does not hold a state dict of tensors (e.g. entry {bad[0]!r} is not a tensor)"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


# --------------------------------------------------------------------------------------------- detection


def detect_arch(sd: dict[str, Tensor], arch: str | None = None, norm: str | None = None) -> dict[str, Any]:
    """Infer the generator from tensor names and shapes: ``{"net": name, "kwargs": {...}}``.

    ``kwargs`` holds ``in_ch``, ``out_ch``, ``ngf``, ``norm`` and ``dropout`` for
    :func:`translate.registry.create_net`. ``arch``/``norm``, when given, are checked against the
    tensors; a contradiction is a :class:`TranslateError` saying what the file holds.

    Limits that come from the format itself: instance norm has no parameters, so instance vs none
    is read from the conv biases (the reference only uses biases with instance norm); U-Net dropout
    has no parameters and does not shift any index, so it is reported as ``False`` (it is inactive
    in eval mode anyway).
    """
    generators = NETS.names(role="translator", reference=True)
    if arch is not None and arch not in generators:
        raise TranslateError(
            f"arch {arch!r} is not a reference generator; choose from: {', '.join(generators)}"
        )
    if "model.model.0.weight" in sd:
        spec = _detect_unet(sd)
        found_norm = _detect_norm(sd, first_conv="model.model.0", first_norm="model.model.1.model.2")
    elif any(_RESNET_BLOCK_KEY.match(k) for k in sd) or "model.1.weight" in sd:
        spec = _detect_resnet(sd)
        found_norm = _detect_norm(sd, first_conv="model.1", first_norm="model.2")
    else:
        raise TranslateError(
            "the checkpoint does not look like a reference generator (resnet_*/unet_*): "
            f"no 'model.model.0.weight' or 'model.N.conv_block' keys (first key: {next(iter(sd))!r})"
        )

    spec["kwargs"]["norm"] = found_norm
    if arch is not None and arch != spec["net"]:
        raise TranslateError(f"arch {arch!r} contradicts the checkpoint, which holds a {spec['net']} net")
    if norm is not None and norm != found_norm:
        raise TranslateError(
            f"norm {norm!r} contradicts the checkpoint, which holds {spec['net']} with norm {found_norm!r}"
        )
    return spec


def _shape(sd: dict[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise TranslateError(f"the checkpoint lacks {key!r}, which every reference generator of its kind has")
    return tuple(sd[key].shape)


def _detect_resnet(sd: dict[str, Tensor]) -> dict[str, Any]:
    blocks = sorted({int(m.group(1)) for k in sd if (m := _RESNET_BLOCK_KEY.match(k))})
    n_blocks = len(blocks)
    # Stem (indices 0-3) and two downsamplings (4-9) come first, so blocks start at 10.
    if blocks != list(range(10, 10 + n_blocks)):
        raise TranslateError(f"the checkpoint's resnet blocks sit at unexpected indices {blocks}")
    if n_blocks not in RESNET_BLOCKS:
        raise TranslateError(
            f"the checkpoint holds a resnet generator with {n_blocks} blocks; "
            f"only {', '.join(map(str, RESNET_BLOCKS))} are supported"
        )
    ngf, in_ch = _shape(sd, "model.1.weight")[:2]
    # After the blocks: 2 x (convT, norm, relu), then pad, the output conv, tanh.
    out_ch = _shape(sd, f"model.{10 + n_blocks + 7}.weight")[0]
    # Dropout sits between the two convs of a block and pushes the second one from 5 to 6. Without
    # dropout, slot 6 may still hold a (1-D) batch-norm weight, so look for a conv's 4-D one.
    second = sd.get("model.10.conv_block.6.weight")
    dropout = second is not None and second.dim() == 4
    kwargs = {"in_ch": in_ch, "out_ch": out_ch, "ngf": ngf, "dropout": dropout}
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
        raise TranslateError(
            f"the checkpoint holds a U-Net with {depth} levels; only {', '.join(map(str, UNET_DEPTHS))} "
            "(unet_128, unet_256) are supported"
        )
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


def import_reference(
    path: str | os.PathLike[str], arch: str | None = None, norm: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Build our network for a reference checkpoint and load its weights (strictly).

    Returns the network in eval mode and the spec from :func:`detect_arch`.
    """
    name = os.fspath(path)
    sd = load_reference_state_dict(name)
    if any(k.endswith(".filt") for k in sd):
        raise TranslateError(f"{name}: a generator with anti-aliased down/upsampling (its blur 'filt' buffers: the "
                             "CUT code's default); the reference's layout imports, e.g. CUT trained with "
                             "--no_antialias --no_antialias_up")
    spec = detect_arch(sd, arch=arch, norm=norm)
    net: nn.Module = create_net(spec["net"], **spec["kwargs"])
    mapped = _map_keys(sd, net)

    expected = net.state_dict()
    unmapped = [k for k in mapped if k not in expected]
    missing = [k for k in expected if k not in mapped]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in mapped.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if unmapped or missing or mismatched:
        parts = [
            f"{label}: {_list_keys(keys)}"
            for label, keys in (
                ("unmapped", unmapped),
                ("missing", missing),
                ("shape mismatch (file vs ours)", mismatched),
            )
            if keys
        ]
        raise TranslateError(f"{name} does not fit {spec['net']} {spec['kwargs']}: " + "; ".join(parts))
    net.load_state_dict(mapped, strict=True)
    return net.eval(), spec


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
        if (
            key not in expected
            and leaf in RUNNING_STATS
            and isinstance(modules.get(owner), nn.InstanceNorm2d)
        ):
            continue
        out[key] = value
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in out:
            out[key] = torch.zeros_like(value)
    return out


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return f"{shown} (and {more} more)" if more > 0 else shown

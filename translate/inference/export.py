"""`translate export`: a weights file's network as ONNX or TorchScript, checked after export.

What is exported is the network itself, in fp32 and eval mode:

- a translator (pix2pix, CycleGAN's ``G_A``/``G_B`` by ``--direction``, psp, bicyclegan, imported
  weights): ``image`` (N, C, H, W) in [-1, 1] -> ``output`` (N, C', H, W); batch and image size are
  dynamic where the network allows (sides a multiple of its registry entry's; a network of one
  size, such as pSp's, takes exactly that size); a BicycleGAN generator takes ``z`` (N, nz) as well;
- a zoo generator (dcgan, cgan, pggan, stylegan2): ``z`` (N, z_dim) (and ``label`` (N,) int64 for a
  class-conditional one) -> images; dynamic batch.

The check runs the exported model on a real image (or seeded latents) at another batch and, where the
network allows, another size than the one traced, and compares with PyTorch: TorchScript with torch,
ONNX with onnxruntime when it is installed (``pip install 'translate[export]'``); without it the file
is written and a line says the check was skipped.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from translate import resource
from translate.core.checkpoints import read_weights
from translate.core.errors import TranslateError
from translate.core.files import atomic_path, list_images
from translate.core.images import read_rgb, resize_u8, to_gray, to_signed
from translate.inference.plan import pick_generator
from translate.inference.translator import input_size, io_channels

if TYPE_CHECKING:
    from translate.nets import ExportedNet

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-3  # max |exported - PyTorch| on [-1, 1] outputs (fp32; kernels differ in summation order)


@dataclass
class ExportSummary:
    path: Path
    format: str
    net: str
    inputs: list[str]
    checked: bool
    max_error: float | None = None
    note: str = ""


def _example_image(size: tuple[int, int], channels: int) -> Tensor:
    """A real photo (the README's examples) as a (1, C, H, W) input in [-1, 1]."""
    files = list_images(resource("examples") / "photos")
    if files:
        img = resize_u8(read_rgb(files[0]), size)
    else:  # an installed package without the examples: a smooth synthetic image
        yy, xx = torch.meshgrid(torch.linspace(0, 255, size[0]), torch.linspace(0, 255, size[1]), indexing="ij")
        img = torch.stack([yy, xx, (yy + xx) / 2]).to(torch.uint8)
    return to_signed(to_gray(img) if channels == 1 else img)[None]  # (luma, as training reads images)


def prepare(weights: str | Path, direction: str = "AtoB") -> tuple[nn.Module, tuple[Tensor, ...], tuple[Tensor, ...],
                                                                   list[str], dict[str, dict[int, str]], str]:
    """(module, traced inputs, check inputs, input names, dynamic axes, net name) for a weights file: the
    net itself, called with the inputs in order (a generator ``z`` (, ``label``); a translator ``image``
    (, ``z``))."""
    wf = read_weights(weights)
    kind = wf.kind
    if kind == "autoencoder":
        raise TranslateError(f"`translate export` takes translators and the zoo's generators; {Path(weights).name} "
                             "holds an autoencoder")
    g = torch.Generator().manual_seed(0)
    if kind == "generator":
        G = cast("ExportedNet", wf.build("G"))
        z1, z2 = (torch.randn(n, G.z_dim, generator=g) for n in (2, 3))
        if getattr(G, "num_classes", 0):
            labels = [torch.arange(n) % G.num_classes for n in (2, 3)]
            return (G, (z1, labels[0]), (z2, labels[1]), ["z", "label"], {"z": {0: "batch"},
                    "label": {0: "batch"}, "output": {0: "batch"}}, "G")
        return G, (z1,), (z2,), ["z"], {"z": {0: "batch"}, "output": {0: "batch"}}, "G"
    name = pick_generator(wf.nets, wf.path, direction)
    net = wf.build(name).eval()
    multiple, fixed = input_size(wf.arch[name])
    in_ch, _ = io_channels(wf.arch[name])
    if fixed:
        sizes = [(fixed, fixed)] * 2
        axes = {"image": {0: "batch"}, "output": {0: "batch"}}
    else:
        side = max(multiple, 64)
        sizes = [(side, side), (side + multiple, 2 * side)]  # the check runs at another size
        axes = {"image": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "height", 3: "width"}}
    traced = _example_image(sizes[0], in_ch).repeat(2, 1, 1, 1)
    check = _example_image(sizes[1], in_ch).repeat(3, 1, 1, 1)
    nz = int(getattr(net, "nz", 0))
    if nz:
        axes["z"] = {0: "batch"}
        return (net, (traced, torch.randn(2, nz, generator=g)),
                (check, torch.randn(3, nz, generator=g)), ["image", "z"], axes, name)
    return net, (traced,), (check,), ["image"], axes, name


def export(weights: str | Path, out: str | Path, fmt: str = "onnx", direction: str = "AtoB") -> ExportSummary:
    """Write the network of ``weights`` to ``out`` as ``fmt`` and check the file against PyTorch."""
    if fmt not in FORMATS:
        raise TranslateError(f"--format must be onnx or torchscript, not {fmt!r}")
    module, example, check, names, axes, name = prepare(weights, direction)
    out = Path(out)
    with warnings.catch_warnings(), torch.no_grad():  # the tracers' notes on Python-side constants and
        warnings.simplefilter("ignore")  # InstanceNorm's input statistics; the check below says the file is right
        expected = module(*check).float()
        if fmt == "torchscript":
            with atomic_path(out) as tmp:
                torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(tmp))
            got = torch.jit.load(str(out))(*check).float()
        else:
            if importlib.util.find_spec("onnx") is None:
                raise TranslateError("ONNX export needs the onnx package: pip install 'translate[export]'")
            with atomic_path(out) as tmp:
                torch.onnx.export(module, example, str(tmp), input_names=names, output_names=["output"],
                                  dynamic_axes=axes, opset_version=17, dynamo=False)
            if importlib.util.find_spec("onnxruntime") is None:
                return ExportSummary(out, fmt, name, names, False, note="onnxruntime is not installed: the file is "
                                     "written but not checked (pip install 'translate[export]')")
            import onnxruntime as ort

            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, check, strict=True)})[0])
    err = float((got.float() - expected).abs().max())
    if not err <= TOLERANCE:  # NaN fails too
        out.unlink(missing_ok=True)
        raise TranslateError(f"the exported model's output differs from PyTorch's by {err:.2e} (tolerance "
                             f"{TOLERANCE:.0e}); nothing was kept")
    return ExportSummary(out, fmt, name, names, True, err)


def describe(s: ExportSummary) -> str:
    check = (f"checked: max difference to PyTorch {s.max_error:.1e} on a real input at another batch size"
             if s.checked else s.note)
    return f"wrote {s.path} ({s.format}, {s.net}; inputs {', '.join(s.inputs)}); {check}"

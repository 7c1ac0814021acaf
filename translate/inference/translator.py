"""A generator prepared for inference, and what its weights say about its inputs.

``load_translator`` reads a weights file into a :class:`Translator`: the net in the precision its
device runs best, with its size multiple, fixed resolution, channels and latent met here so callers
pass any RGB batch. ``launch_batch`` translates one batch of uint8 images of a size without waiting
for the result. `translate run`, `translate eval`, export and interpolation all go through here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.checkpoints import WeightsFile, read_weights
from translate.core.devices import DTYPES
from translate.core.errors import TranslateError, reason
from translate.core.images import read_named, resize_u8, to_gray, to_signed, to_u8
from translate.core.recipes import list_recipes, load_recipe
from translate.core.registry import METHODS, NETS
from translate.inference.engines import OpenVinoNet, pick_engine, tensors_id
from translate.inference.plan import DEFAULT_WEIGHTS, padded, pick_generator

if TYPE_CHECKING:
    from translate.nets.bicyclegan import EResNet

def input_size(spec: dict[str, Any]) -> tuple[int, int | None]:
    """(multiple, fixed resolution or None) the net's inputs need, from its registry entry (and its parts')."""
    if spec["net"] not in NETS:
        raise TranslateError(f"the weights' network {spec['net']!r} is not one this version knows "
                             f"(translators: {', '.join(NETS.names(role='translator'))})")
    return NETS.input_size(spec)


def io_channels(spec: dict[str, Any]) -> tuple[int, int]:
    """(input, output) image channels of a translator's spec; a composed one's from its halves."""
    kw = spec.get("kwargs", {})
    if "encoder" in kw and "decoder" in kw:
        return io_channels(kw["encoder"])[0] - kw.get("nz", 0), io_channels(kw["decoder"])[1]
    return kw.get("in_ch", kw.get("channels", 3)), kw.get("out_ch", kw.get("channels", 3))


class Translator:
    """A generator prepared for inference: eval, weights in the chosen precision, then what makes
    it faster on its device (each measured; bench/net_variants.py).

    Low precision means the whole net in bf16/fp16, not autocast: on a 2-core Zen4 CPU a bf16
    resnet_9blocks ran 0.83 img/s that way against 0.62 with autocast (fp32 0.37), with the same
    output (48 dB PSNR to fp32). Memory format: plain NCHW everywhere. On an H200 (torch 2.11,
    bf16, resnet_9blocks at 256x256) NCHW ran 1,320 img/s at batch 64 against 998 for
    channels_last: InstanceNorm works on NCHW and converted each layer's input back and forth.
    On the CPU channels_last slowed bf16 (-10%) and was no gain for fp32. CUDA graphs of each batch
    shape gained 0-2% at batch 16-128 there (the kernels, not their launches, take the time), so
    they are not used. ``winograd``: the CPU's 3x3 convolutions in fp32 as Winograd F(4x4, 3x3),
    fewer multiplications for the same sums (nets/winograd.py).

    What the net's weights fix is met here, so callers pass any RGB batch: ``resolution`` (a net that
    works at one size, as a StyleGAN2 decoder): images are resized to it and the outputs back;
    ``in_ch`` / ``out_ch`` 1: grayscale in (ITU-R 601 luma, as training's), gray repeated out;
    ``nz`` > 0: the net takes a latent z (BicycleGAN), zeros unless one is given; ``encoder``: the
    net that gives an example image's z (BicycleGAN's E, for ``--style``), kept in fp32.

    ``engine`` ``openvino``: the net compiled by OpenVINO for the CPU (engines.py; ``weights_id``
    keys its cache, ``example`` is a size it takes), which then takes fp32 inputs and computes in
    ``precision``; a net it cannot convert falls back to torch with a ``note`` when ``fallback``
    (an engine picked by auto), else is one line. Tiles, which patch the net's InstanceNorm
    layers, run on the same net in torch (:meth:`eager`).
    """

    def __init__(self, net: nn.Module | Callable[[], nn.Module], device: torch.device, precision: str,
                 compile: bool = False, *, channels_last: bool = False, winograd: bool | None = None,
                 resolution: int | None = None, in_ch: int = 3, out_ch: int = 3, nz: int | None = None,
                 encoder: nn.Module | None = None, engine: str = "torch", weights_id: str = "", example: int = 64,
                 fallback: bool = False, multiple: int = 1) -> None:
        """``net``: the network, or a function that builds it (with ``nz`` given): then OpenVINO,
        finding its model in the cache, starts without building it (0.2-0.3 s of a 2-3 s start-up).
        ``multiple``: the side its inputs need a multiple of, kept with an OpenVINO model for runs
        that start from the cache without torch (inference/cached.py)."""
        self.device, self.precision, self.engine, self.note = device, precision, engine, ""
        self.encoder = encoder.to(device).eval().requires_grad_(False) if encoder is not None else None
        self.resolution, self.in_ch, self.out_ch = resolution, in_ch, out_ch
        self._build = net if isinstance(net, nn.Module) else functools.cache(net)
        self.nz = int(getattr(net, "nz", 0)) if nz is None else nz
        self.channels_last = channels_last
        self._eager: Translator | None = None
        self._settings: dict[str, Any] = {"channels_last": channels_last, "winograd": winograd,
                                          "resolution": resolution, "in_ch": in_ch, "out_ch": out_ch, "nz": self.nz}
        if engine == "openvino":
            self.dtype, self.winograd = torch.float32, False
            try:
                facts = {"multiple": multiple, "resolution": resolution, "in_ch": in_ch, "out_ch": out_ch,
                         "nz": self.nz}
                self.net: Any = OpenVinoNet(self._built, weights_id, precision, nz=self.nz, in_ch=in_ch, size=example,
                                            fixed_size=resolution is not None, facts=facts)
                return
            except Exception as e:  # (OpenVINO's converter raises many kinds)
                if not fallback:
                    raise TranslateError(f"OpenVINO cannot compile this network ({reason(e)}); use --engine torch") \
                        from None
                self.engine, self.note = "torch", f"OpenVINO cannot compile this network ({reason(e)}): torch runs it"
        self.dtype = DTYPES[precision]
        from translate.nets.winograd import use_winograd, winograd_pays  # (here: see engines.pick_engine)

        self.winograd = winograd_pays(device, self.dtype) if winograd is None else winograd
        net = self._built().to(device, self.dtype)  # (_built: in eval mode, without gradients)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.winograd:
            use_winograd(net)
        self._build = net
        self.net = torch.compile(net) if compile else net

    def _built(self) -> nn.Module:
        net = self._build if isinstance(self._build, nn.Module) else self._build()
        return net.eval().requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The torch network (built now if the engine did not need it)."""
        return self._built()

    def eager(self) -> Translator:
        """This translator run by torch (itself, or, for another engine, one made once from its net)."""
        if self.engine == "torch":
            return self
        if self._eager is None:
            self._eager = Translator(self.module, self.device, self.precision, **self._settings)
            self._eager.encoder = self.encoder
        return self._eager

    @torch.inference_mode()
    def __call__(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """float [-1, 1] (N, 3, H, W) on the device (and a latent (nz,) or (N, nz)) -> float32 (N, 3, H, W)."""
        size = tuple(x.shape[-2:])
        if self.in_ch == 1 and x.shape[1] == 3:
            x = to_signed(to_gray(to_u8(x)))  # as training reads its images (core/images.model_input)
        if self.resolution and size != (self.resolution,) * 2:
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bicubic", antialias=True, align_corners=False)
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.nz:
            z = x.new_zeros(self.nz) if z is None else z.to(x.device, x.dtype)
            y = self.net(x, z.expand(x.shape[0], self.nz)).float()
        else:
            y = self.net(x).float()
        if tuple(y.shape[-2:]) != size:
            y = F.interpolate(y, size=size, mode="bicubic", antialias=True, align_corners=False)
        return y.expand(-1, 3, -1, -1) if y.shape[1] == 1 else y


def load_translator(weights: Path | None, direction: str, device: torch.device, precision: str,
                    compile: bool = False, engine: str = "torch", **prepare: bool) -> tuple[Translator, int, str]:
    """Weights file -> (Translator, size multiple, net name). ``engine``: auto, torch or openvino
    (engines.pick_engine decides auto; a net OpenVINO cannot take then falls back to torch)."""
    if weights is None and not DEFAULT_WEIGHTS.is_file():
        raise TranslateError(f"no --weights given and the shipped default model is missing ({DEFAULT_WEIGHTS})")
    wf = read_weights(weights or DEFAULT_WEIGHTS)
    wf.check_kind("run", hint="translate sample")
    name = pick_generator(wf.nets, wf.path, direction)
    spec = wf.arch[name]
    build = functools.cache(lambda: wf.build(name))
    asked, engine = engine, pick_engine(engine, device, precision, compile=compile, net=build)
    multiple, fixed = input_size(spec)
    in_ch, out_ch = io_channels(spec)
    # OpenVINO's cache is keyed by the file's tensors, so a cached model starts without building the net
    weights_id = tensors_id(wf.tensors[name], json.dumps(spec, sort_keys=True)) if engine != "torch" else ""
    tr = Translator(build, device, precision, compile, resolution=fixed, in_ch=in_ch, out_ch=out_ch,
                    nz=int(NETS.option(spec, "nz", 0)), encoder=_style_encoder(wf), engine=engine,
                    weights_id=weights_id, example=fixed or max(64, multiple), fallback=asked == "auto",
                    multiple=1 if fixed else multiple, **prepare)
    return tr, 1 if fixed else multiple, name  # a fixed-size net resizes: no padding


def _style_encoder(wf: WeightsFile) -> nn.Module | None:
    """The weights' encoder of example images (BicycleGAN's E), if they carry one."""
    names = [n for n in wf.nets if wf.arch[n]["net"] in NETS and NETS.info(wf.arch[n]["net"]).role == "style_encoder"]
    return wf.build(names[0]) if names else None


def latents(tr: Translator, samples: int, seed: int | None, style: Path | None = None) -> list[Tensor | None]:
    """One latent per output of each image: the same ``samples`` latents for every image, so the
    k-th outputs share a style and a rerun with the seed gives the same files. One sample without a
    seed: z = 0, the prior's mean. ``style``: the one latent of that example image (:func:`style_code`).
    A model without a latent: [None]."""
    if style is not None:
        if samples > 1 or seed is not None:
            raise TranslateError("--style gives one latent, the example's code: drop --samples and --seed "
                                 "(or drop --style to draw latents)")
        return [style_code(tr, style)]
    if not tr.nz:
        if samples > 1 or seed is not None:
            raise TranslateError(f"--samples and --seed need a model with a latent code; this one gives one "
                                 f"translation per input (recipes with one: {', '.join(latent_recipes())})")
        return [None]
    if samples == 1 and seed is None:
        return [torch.zeros(tr.nz)]
    return list(torch.randn(samples, tr.nz, generator=torch.Generator().manual_seed(seed or 0)))


@torch.inference_mode()
def style_code(tr: Translator, example: Path) -> Tensor:
    """The code of an example image for every input (BicycleGAN's E, its mean: the BicycleGAN code's
    encode mode): the image as training read its targets (gray if E takes one channel), resized to
    E's resolution (bicubic, antialiased, as data.load_size resizes), in fp32."""
    if not tr.nz:
        raise TranslateError(f"--style needs a model with a latent code; this one gives one translation per input "
                             f"(recipes with one: {', '.join(latent_recipes())})")
    E = cast("EResNet | None", tr.encoder)  # the only style_encoder
    if E is None:
        raise TranslateError("--style needs the model's encoder E, which these weights do not hold (weights of "
                             "`translate train --recipe bicyclegan` do; an import needs `--encoder latest_net_E.pth`)")
    rgb = read_named(example, "--style")
    img = to_gray(rgb) if E.in_ch == 1 else rgb
    x = to_signed(resize_u8(img, (E.resolution, E.resolution)))[None].to(tr.device)
    return E(x)[0][0].float()


def latent_recipes() -> list[str]:
    """Shipped recipes whose model takes a latent beside the image (a ``model.nz``)."""
    return [n for n in list_recipes() if "nz" in {f.name for f in dataclasses.fields(
        METHODS.get(load_recipe(n).method).ModelConfig)}]


def pad_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Pad (N, C, h, w) at the bottom/right to ``size``: reflect where possible, else replicate."""
    ph, pw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


@dataclass
class Launched:
    """A batch handed to the device: its uint8 output is on its way to (pinned) host memory."""

    host: Tensor  # (N, 3, H, W) uint8, padded size
    sizes: list[tuple[int, int]]
    done: Any = None  # a CUDA event recorded after the copy; None on the CPU

    def result(self) -> list[Tensor]:
        """Wait for the copy; uint8 (3, h, w) per image, cropped back to its own size."""
        if self.done is not None:
            self.done.synchronize()
        return [self.host[i, :, :h, :w] for i, (h, w) in enumerate(self.sizes)]


def launch_batch(tr: Translator, rgbs: list[Tensor] | Tensor, multiple: int, z: Tensor | None = None) -> Launched:
    """Queue the translation of images of one padded size (a list, or a stacked (N, 3, h, w)
    tensor) without waiting for it: on CUDA the host goes on to prepare the next batch while the
    device computes and copies this one back."""
    sizes = [tuple(r.shape[-2:]) for r in rgbs]
    size = padded(sizes[0], multiple)
    if isinstance(rgbs, Tensor):
        x = pad_to(to_signed(rgbs.to(tr.device, non_blocking=True)), size)
    else:
        x = torch.cat([pad_to(to_signed(r.to(tr.device, non_blocking=True))[None], size) for r in rgbs])
    y = to_u8(tr(x, z))
    if y.device.type != "cuda":
        return Launched(y.cpu(), sizes)
    host = torch.empty(y.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(y, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return Launched(host, sizes, done)


"""The contract between a method (pix2pix, cyclegan, ...) and the one training loop.

A method owns its networks, optimizers and losses, and one ``train_step``. The Trainer owns
everything else (devices, precision, distributed wrapping, data, schedules, checkpoints, logging),
so every method gets those without code of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from translate.devices import DTYPES, Precision
from translate.errors import TranslateError
from translate.recipes import Recipe, at_least, choice, registered
from translate.registry import NETS, create_net


@dataclass
class TranslatorModel:
    """Networks of an image-to-image translator (names as the reference's options; any registered
    translator, and any discriminator of its family). Or a generator composed of a registered
    encoder and decoder (``encoder`` + ``decoder``, see translate/backbones.py), whose halves may
    start from zoo weights files and be frozen."""

    generator: str = registered("resnet_9blocks", role="translator", composite=False)
    discriminator: str = registered("basic", role="discriminator", family="image")
    n_layers_D: int = at_least(3, 1)
    ngf: int = at_least(64, 1)
    ndf: int = at_least(64, 1)
    norm: str = choice("instance", "instance", "batch", "none")
    init_type: str = choice("normal", "normal", "xavier", "kaiming", "orthogonal")
    init_gain: float = at_least(0.02, 0.0)
    dropout: bool = False
    input_nc: int = at_least(3, 1)
    output_nc: int = at_least(3, 1)
    encoder: str = registered("", role="encoder", short=True)  # "" with decoder "": model.generator
    decoder: str = registered("", role="decoder", short=True)
    init_encoder: str = ""  # a weights file to start the encoder from (e.g. of `translate train --recipe vae`)
    init_decoder: str = ""  # (e.g. of `translate train --recipe stylegan2`)
    freeze_encoder: bool = False  # never trained
    freeze_decoder: bool = False
    freeze_encoder_steps: int = at_least(0, 0)  # not trained for the first N steps
    freeze_decoder_steps: int = at_least(0, 0)
    z_dim: int = at_least(64, 1)  # code size of ae/vae encoders and of a stylegan2 decoder's z and w


class Method:
    """Base class. Subclasses set the class attributes and implement the three methods.

    ``nets`` (all networks, saved for resume) and ``optimizers`` are filled by ``__init__``;
    ``export_names`` lists the nets inference needs (saved in the weights file).
    """

    ModelConfig: ClassVar[type] = TranslatorModel
    LossConfig: ClassVar[type]
    data_kind: ClassVar[str] = "paired"  # what open_dataset must provide: "paired" | "unpaired"
    export_names: ClassVar[tuple[str, ...]] = ()
    world_size: int = 1  # processes training together (set by the Trainer); each takes train.batch_size images
    steps_done: int = 0  # steps before the coming one (set by the Trainer)

    @property
    def global_batch(self) -> int:
        """Images per step over all processes, for rules stated in images (e.g. StyleGAN2's EMA half-life)."""
        return self.recipe.train.batch_size * self.world_size

    def __init__(self, recipe: Recipe, device: torch.device, precision: Precision,
                 info: dict[str, Any] | None = None) -> None:
        self.recipe, self.device, self.amp = recipe, device, precision
        self.info = dict(info or {})  # facts about the data (e.g. class names), kept in weights metadata
        self.nets: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.held: list[tuple[list[nn.Parameter], int]] = []  # (parameters, steps): see hold_frozen
        self.check_size(recipe.data.crop_size)

    def check_size(self, size: int) -> None:
        """The generator's down-sampling decides which training sizes work; say so up front."""
        m = self.recipe.model
        if not hasattr(m, "generator"):
            return
        c = self.composition()
        multiple, fixed = NETS.input_size(c.spec)
        what = (f"model.encoder {m.encoder} + model.decoder {m.decoder}" if c.composed
                else f"model.generator {m.generator}")
        if fixed and size != fixed:
            raise TranslateError(f"data.crop_size {size} does not suit {what}: it works at {fixed}x{fixed} only "
                                 f"(set data.crop_size={fixed})")
        if size % multiple:
            raise TranslateError(f"data.crop_size {size} does not suit {what}: it needs a multiple of {multiple} "
                                 "(or pick another generator)")

    def composition(self, in_ch: int | None = None, out_ch: int | None = None) -> Any:
        """What the recipe's generator is (translate/backbones.py); read once, files included."""
        from translate.backbones import compose

        m = self.recipe.model
        key = (in_ch or m.input_nc, out_ch or m.output_nc)
        cache = self.__dict__.setdefault("_compositions", {})
        if key not in cache:
            cache[key] = compose(m, *key, self.recipe.data.crop_size, getattr(m, "nz", 0))
        return cache[key]

    def build_generator(self, name: str, in_ch: int, out_ch: int) -> nn.Module:
        """The recipe's generator (``model.generator``, or ``model.encoder`` + ``model.decoder`` with
        their init files and freezing) for ``in_ch`` -> ``out_ch`` images."""
        from translate.backbones import prepare

        c = self.composition(in_ch, out_ch)

        def start(module: nn.Module) -> None:
            self.held += prepare(module, c, self.recipe.model, self._init)

        return self.build(name, c.spec["net"], init=False, start=start, **c.spec["kwargs"])

    def hold_frozen(self) -> None:
        """Drop the gradients of halves frozen for their first steps (call before the optimizer
        steps): Adam then leaves them exactly as they are, moments included."""
        for params, steps in self.held:
            if self.steps_done < steps:
                for p in params:
                    p.grad = None

    # --- what subclasses implement -------------------------------------------------------------
    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One iteration on a batch of augmented tensors in [-1, 1]; returns detached scalar losses."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows for the sample grid: (N, C, H, k*W) in [-1, 1]."""
        raise NotImplementedError

    # --- shared helpers ------------------------------------------------------------------------
    @torch.no_grad()
    def paired_rows(self, batch: dict[str, Tensor], name: str = "G") -> Tensor:
        """Sample-grid rows of input | translation | target, for paired translation."""
        G = self.net(name)
        G.eval()
        with self.amp.autocast():
            fake = G(batch["A"]).float()
        G.train()
        return torch.cat([as_rgb(batch["A"]), as_rgb(fake), as_rgb(batch["B"])], -1)

    def arch(self, name: str) -> dict[str, Any]:
        """How to rebuild net ``name`` (kept in weights metadata): registry name and kwargs."""
        return self._arch[name]

    def _init(self, module: nn.Module) -> None:
        from translate.nets import init_weights

        init_weights(module, self.recipe.model.init_type, self.recipe.model.init_gain)

    def build(self, name: str, net: str, init: bool = True, start: Any = None, **kwargs: Any) -> nn.Module:
        """Create a registered network, initialise it as the recipe says (or with ``start(module)``)
        and move it to the device."""
        from translate.nets.winograd import use_winograd, winograd_pays

        module = create_net(net, **kwargs)
        if init:
            self._init(module)
        if start is not None:
            start(module)
        self._arch = getattr(self, "_arch", {})
        self._arch[name] = {"net": net, "kwargs": kwargs}
        module = module.to(self.device)
        if winograd_pays(self.device, DTYPES[self.amp.name]):
            use_winograd(module)  # the same sums in fewer multiplications: nets/winograd.py
        if self.device.type == "cuda":
            # channels_last for training, though inference runs NCHW (infer.Translator): on an H200
            # at batch 1 (bf16 AMP, torch 2.11) NCHW training with cuDNN's autotuner was slower,
            # CycleGAN 9.97 img/s against 11.49 and pix2pix 16.9 against 27.7.
            module = module.to(memory_format=torch.channels_last)
        self.nets[name] = module
        return module

    def adam(self, *modules: nn.Module) -> torch.optim.Optimizer:
        """Adam over the given nets. The fused kernel: on the CPU PyTorch's default is a per-tensor
        loop, 9x slower on pix2pix's 54M-parameter U-Net (149 ms vs 16.5 ms per step)."""
        t = self.recipe.train
        params = [p for m in modules for p in m.parameters() if p.requires_grad]  # not frozen halves
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused or None)

    def net(self, name: str) -> nn.Module:
        """Net ``name`` without its DDP wrapper: for sampling on rank 0 alone, where a wrapped forward
        would wait for the other ranks (buffer broadcast) and hang."""
        return getattr(self.nets[name], "module", self.nets[name])

    def export(self) -> dict[str, nn.Module]:
        """The nets inference needs, unwrapped from DDP."""
        return {n: self.net(n) for n in self.export_names}

    def extra_state(self) -> dict[str, Any]:
        """Method state beyond nets and optimizers (e.g. the image pool), for exact resume."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def wrap(self, fn: Any) -> None:
        """Apply ``fn`` (e.g. a DDP wrapper) to every trainable net; methods read nets via self.nets."""
        for name, net in self.nets.items():
            if any(p.requires_grad for p in net.parameters()):
                self.nets[name] = fn(net)


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    """Freeze discriminators while the generator steps (saves their parameter gradients)."""
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def as_rgb(x: Tensor) -> Tensor:
    """Grayscale or other channel counts shown as 3-channel images in sample grids."""
    x = x.float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]

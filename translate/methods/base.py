"""The contract between a method (pix2pix, cyclegan, ...) and the one training loop.

A method owns its networks, optimizers and losses, and one ``train_step``. The Trainer owns
everything else (devices, precision, distributed wrapping, data, schedules, checkpoints, logging),
so every method gets those without code of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast, get_args, get_origin

import torch
from torch import Tensor, nn

from translate.core import recipes
from translate.core.devices import DTYPES, Precision, unwrap
from translate.core.errors import TranslateError
from translate.core.recipes import Recipe, at_least, choice, registered
from translate.core.registry import NETS, create_net
from translate.nets import winograd
from translate.nets.backbones import Composition, compose, prepare
from translate.nets.layers import init_weights, power_of_two

ModelT = TypeVar("ModelT", bound=recipes.ModelConfig)
LossT = TypeVar("LossT", bound=recipes.LossConfig)
SAMPLE_COLUMNS = 8  # images per row of a generator's sample grid


@dataclass
class TranslatorModel(recipes.ModelConfig):
    """Networks of an image-to-image translator (names as the reference's options; any registered
    translator, and any discriminator of its family). Or a generator composed of a registered
    encoder and decoder (``encoder`` + ``decoder``, see translate/nets/backbones.py), whose halves may
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
    antialias: bool = False  # blur-pool downsampling in G and D (the CUT code's default; not the reference's)
    antialias_up: bool = False  # blur upsampling + conv in G, instead of transposed convs
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


class Method(Generic[ModelT, LossT]):
    """Base class. Subclasses set the class attributes and implement ``setup``, ``train_step`` and
    ``sample`` (unless input | output of the first exported net | target suits).

    ``nets`` (all networks, saved for resume) and ``optimizers`` are filled by ``setup``;
    ``export_names`` lists the nets inference needs (saved in the weights file), ``export_from`` the
    nets exported under another's name (an average of G as ``G``). ``cfg`` and ``loss_cfg`` are the
    recipe's model and loss sections, typed by the subclass: ``Method[Pix2PixModel, ...]``.
    """

    ModelConfig: ClassVar[type[recipes.ModelConfig]] = TranslatorModel  # (set from the type parameters)
    LossConfig: ClassVar[type[recipes.LossConfig]]
    _params: ClassVar[tuple[Any, ...]] = ()  # the (model, loss) type arguments; TypeVars where still open
    Sections: ClassVar[dict[str, type]] = {}  # sections of its own (e.g. the DB-VAE's debias): recipe.<name>
    data_kind: ClassVar[str] = "paired"  # what open_dataset must provide: "paired" | "unpaired" | "images" | "classes"
    export_names: ClassVar[tuple[str, ...]] = ("G",)
    export_from: ClassVar[dict[str, str]] = {}
    world_size: int = 1  # processes training together (set by the Trainer); each takes train.batch_size images
    steps_done: int = 0  # steps before the coming one (set by the Trainer)

    @property
    def global_batch(self) -> int:
        """Images per step over all processes, for rules stated in images (e.g. StyleGAN2's EMA half-life)."""
        return self.recipe.train.batch_size * self.world_size

    def __init__(self, recipe: Recipe, device: torch.device, precision: Precision,
                 info: dict[str, Any] | None = None) -> None:
        self.recipe, self.device, self.amp = recipe, device, precision
        self.cfg, self.loss_cfg = cast(ModelT, recipe.model), cast(LossT, recipe.loss)  # recipes.py built these types
        self.info = dict(info or {})  # facts about the data (e.g. class names), kept in weights metadata
        self.nets: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.held: list[tuple[list[nn.Parameter], int]] = []  # (parameters, steps): see hold_frozen
        self.notes: list[str] = []  # said once at the start of training (e.g. a loss term that is off, and why)
        self._arch: dict[str, dict[str, Any]] = {}
        self.check_size(recipe.data.crop_size)
        self.setup()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """``ModelConfig`` and ``LossConfig`` from the class's type parameters (``Method[Pix2PixModel,
        Pix2PixLoss]``, or a generic parent's, as the VAE's ``Autoencoder[VAELoss]``), so no method
        restates them; a parameter still open (a TypeVar) stands for its bound."""
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Method):
                given = dict(zip(vars(origin)["__parameters__"], get_args(base), strict=True))
                cls._params = tuple(given.get(p, p) for p in origin._params)
                bound = [cast(Any, p.__bound__ if isinstance(p, TypeVar) else p) for p in cls._params]
                cls.ModelConfig, cls.LossConfig = bound

    def setup(self) -> None:
        """Subclasses build their nets and optimizers here (``self.recipe``, ``cfg``, ``loss_cfg``,
        ``device``, ``amp`` and ``info`` are set)."""

    def check_size(self, size: int) -> None:
        """The generator's down-sampling decides which training sizes work; say so up front."""
        cfg = self.recipe.model
        if not isinstance(cfg, TranslatorModel):
            return
        c = self.composition()
        multiple, fixed = NETS.input_size(c.spec)
        what = (f"model.encoder {cfg.encoder} + model.decoder {cfg.decoder}" if c.composed
                else f"model.generator {cfg.generator}")
        if fixed and size != fixed:
            raise TranslateError(f"data.crop_size {size} does not suit {what}: it works at {fixed}x{fixed} only "
                                 f"(set data.crop_size={fixed})")
        if size % multiple:
            raise TranslateError(f"data.crop_size {size} does not suit {what}: it needs a multiple of {multiple} "
                                 "(or pick another generator)")

    # --- what subclasses implement -------------------------------------------------------------
    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One iteration on a batch of augmented tensors in [-1, 1]; returns detached scalar losses."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows for the sample grid: (N, C, H, k*W) in [-1, 1]. Here input | output of the first exported
        net (a translation, a reconstruction) | target, where the data has targets."""
        with self.evaluating(self.export_names[0]) as (net,):
            out = net(batch["A"]).float()
        return side_by_side(batch["A"], out, *([batch["B"]] if "B" in batch else []))

    # --- building ------------------------------------------------------------------------------
    def build(self, name: str, net_name: str, init: bool | None = None,
              start: Callable[[nn.Module], None] | None = None, **kwargs: Any) -> nn.Module:
        """Create registered network ``net_name`` as ``name``, initialise it as the recipe says (where its
        registry entry lets ``model.init_type`` apply, or ``init`` says) or with ``start(module)``, and
        move it to the device."""
        info, size = NETS.info(net_name), kwargs.get("resolution")
        if info.power_of_two and size is not None:
            check_power_of_two(size, self.recipe.method, info.power_of_two)
        module = create_net(net_name, **kwargs)
        if info.recipe_init if init is None else init:
            self._init(module)
        if start is not None:
            start(module)
        self._arch[name] = {"net": net_name, "kwargs": kwargs}
        module = module.to(self.device)
        # (through the module: tests/peers.py turns it off for the parity tests)
        if winograd.winograd_pays(self.device, DTYPES[self.amp.name]):
            winograd.use_winograd(module)  # the same sums in fewer multiplications: nets/winograd.py
        if self.device.type == "cuda":
            # channels_last for training, though inference runs NCHW (translator.Translator): on an H200
            # at batch 1 (bf16 AMP, torch 2.11) NCHW training with cuDNN's autotuner was slower,
            # CycleGAN 9.97 img/s against 11.49 and pix2pix 16.9 against 27.7.
            module = module.to(memory_format=torch.channels_last)
        self.nets[name] = module
        return module

    # The helpers below serve translators, whose model section is a TranslatorModel.
    def _init(self, module: nn.Module) -> None:
        cfg = cast(TranslatorModel, self.recipe.model)
        init_weights(module, cfg.init_type, cfg.init_gain)

    def composition(self, in_ch: int | None = None, out_ch: int | None = None) -> Composition:
        """What the recipe's generator is (translate/nets/backbones.py); read once, files included."""
        cfg = cast(TranslatorModel, self.recipe.model)
        key = (in_ch or cfg.input_nc, out_ch or cfg.output_nc)
        cache = self.__dict__.setdefault("_compositions", {})
        if key not in cache:
            cache[key] = compose(cfg, *key, self.recipe.data.crop_size, getattr(cfg, "nz", 0))
        return cache[key]

    def build_generator(self, name: str, in_ch: int, out_ch: int) -> nn.Module:
        """The recipe's generator (``model.generator``, or ``model.encoder`` + ``model.decoder`` with
        their init files and freezing) for ``in_ch`` -> ``out_ch`` images."""
        c = self.composition(in_ch, out_ch)

        def start(module: nn.Module) -> None:
            self.held += prepare(module, c, cast(TranslatorModel, self.recipe.model), self._init)

        return self.build(name, c.spec["net"], init=False, start=start, **c.spec["kwargs"])

    def build_discriminator(self, name: str, in_ch: int) -> nn.Module:
        """The recipe's discriminator (``model.discriminator``) for ``in_ch``-channel images."""
        cfg = cast(TranslatorModel, self.recipe.model)
        antialias: dict[str, Any] = {"antialias": True} if cfg.antialias else {}
        if antialias and not NETS.accepts(cfg.discriminator, "antialias"):
            has = [n for n in NETS.names(role="discriminator", family="image") if NETS.accepts(n, "antialias")]
            raise TranslateError(f"model.antialias needs a discriminator that has it ({', '.join(has)}); "
                                 f"model.discriminator {cfg.discriminator} has not")
        return self.build(name, cfg.discriminator, in_ch=in_ch, ndf=cfg.ndf, n_layers=cfg.n_layers_D, norm=cfg.norm,
                          **antialias)

    def adam(self, *names: str, lazy: int = 0) -> torch.optim.Optimizer:
        """Adam over the nets ``names``. The fused kernel: on the CPU PyTorch's default is a per-tensor
        loop, 9x slower on pix2pix's 54M-parameter U-Net (149 ms vs 16.5 ms per step). ``lazy``: k when a
        regulariser also steps them every k steps (StyleGAN2): lr and betas x k / (k + 1), as if it did not."""
        train, ratio = self.recipe.train, lazy / (lazy + 1) if lazy else 1.0
        params = [p for name in names for p in self.nets[name].parameters() if p.requires_grad]  # not frozen halves
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.Adam(params, lr=train.lr * ratio, betas=(train.beta1**ratio, train.beta2**ratio),
                                fused=fused or None)

    def descend(self, loss: Tensor, *names: str) -> None:
        """A step of the optimizers ``names`` down ``loss``: their gradients zeroed, the backward, the
        halves frozen for their first steps held (:meth:`hold_frozen`), the steps."""
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)
        self.amp.backward(loss)
        self.hold_frozen()
        for name in names:
            self.amp.step(self.optimizers[name])

    def fixed_noise(self, *shape: int) -> Tensor:
        """N(0, I) latents of ``shape`` for sample grids, from their own generator seeded by ``train.seed``:
        grids stay comparable over training, and the global RNG is left alone."""
        g = torch.Generator().manual_seed(self.recipe.train.seed)
        return torch.randn(*shape, generator=g).to(self.device)

    def hold_frozen(self) -> None:
        """Drop the gradients of halves frozen for their first steps (call before the optimizer
        steps): Adam then leaves them exactly as they are, moments included."""
        for params, steps in self.held:
            if self.steps_done < steps:
                for p in params:
                    p.grad = None

    @contextmanager
    def evaluating(self, *names: str) -> Iterator[list[nn.Module]]:
        """Nets ``names`` unwrapped (see :meth:`net`) in eval mode, under autocast; training again after."""
        nets = [self.net(name) for name in names]
        for net in nets:
            net.eval()
        try:
            with self.amp.autocast():
                yield nets
        finally:
            for net in nets:
                net.train()

    # --- what the Trainer reads ----------------------------------------------------------------
    def arch(self, name: str) -> dict[str, Any]:
        """How to rebuild net ``name`` (kept in weights metadata): registry name and kwargs."""
        return self._arch[name]

    def net(self, name: str) -> nn.Module:
        """Net ``name`` without its DDP wrapper: for sampling on rank 0 alone, where a wrapped forward
        would wait for the other ranks (buffer broadcast) and hang."""
        return unwrap(self.nets[name])

    def export(self) -> dict[str, nn.Module]:
        """The nets inference needs, unwrapped from DDP."""
        return {n: self.net(self.export_from.get(n, n)) for n in self.export_names}

    @classmethod
    def model_kind(cls) -> str:
        """What its weights file holds (files.KIND_COMMANDS): an autoencoder (``AE``), a
        generator (a method of images without pairs), or a translator."""
        if "AE" in cls.export_names:
            return "autoencoder"
        return "generator" if cls.data_kind in ("images", "classes") else "translator"

    def extra_state(self) -> dict[str, Any]:
        """Method state beyond nets and optimizers (e.g. the image pool), for exact resume."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def wrap(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        """Apply ``fn`` (e.g. a DDP wrapper) to every trainable net; methods read nets via self.nets."""
        for name, net in self.nets.items():
            if any(p.requires_grad for p in net.parameters()):
                self.nets[name] = fn(net)


Method._params = vars(Method)["__parameters__"]  # (ModelT, LossT)


def make_average(G: nn.Module, average: nn.Module) -> nn.Module:
    """``average`` (the same architecture) made a copy of ``G`` that only :func:`update_average`
    changes: G's weights, eval mode, no gradients (so Method.wrap leaves it out of DDP)."""
    average.load_state_dict(G.state_dict())
    average.eval()
    set_requires_grad([average], False)
    return average


@torch.no_grad()
def update_average(average: nn.Module, G: nn.Module, beta: float) -> None:
    """average <- beta * average + (1 - beta) * G for the parameters; buffers (a phase, w_avg, fixed
    noise) copied: the exponential moving average of the generator that PGGAN and StyleGAN2 sample
    and export."""
    for p_avg, p in zip(average.parameters(), G.parameters(), strict=True):
        p_avg.copy_(torch.lerp(p, p_avg, beta))
    for b_avg, b in zip(average.buffers(), G.buffers(), strict=True):
        b_avg.copy_(b)


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    """Freeze discriminators while the generator steps (saves their parameter gradients)."""
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def check_power_of_two(size: int, what: str, minimum: int = 16, example: str = "32 or 64") -> None:
    """Nets that halve the image down to 4x4 (or double it up from there) need a power-of-two crop."""
    if not power_of_two(size, minimum):
        raise TranslateError(f"data.crop_size {size} must be a power of two >= {minimum} for {what} (e.g. {example})")


def side_by_side(*images: Tensor) -> Tensor:
    """Sample-grid rows: batches of images (N, C, H, W) left to right, as RGB (grayscale repeated)."""
    return torch.cat([x.float().expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.float()[:, :3] for x in images], -1)


def in_rows(images: Tensor, columns: int = SAMPLE_COLUMNS) -> Tensor:
    """Sample-grid rows of ``columns`` images each, from (rows * columns, C, H, W) images."""
    return side_by_side(*images.unflatten(0, (-1, columns)).unbind(1))

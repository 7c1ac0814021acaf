"""DCGAN (Radford et al. 2016): an unconditional GAN of transposed-conv generator and conv discriminator.

Losses: the non-saturating GAN loss (``gan_mode = "vanilla"``: D minimises softplus(-D(real)) +
softplus(D(fake)), G minimises softplus(-D(fake))), or hinge / least squares. The class-conditional
variant (``cgan``) subclasses this method: everything here already handles labels when
``num_classes > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from translate.errors import TranslateError
from translate.losses import GANLoss
from translate.methods.base import Method, as_rgb, set_requires_grad
from translate.recipes import at_least, choice
from translate.registry import METHODS

SAMPLE_COLUMNS = 8  # images per row of the sample grid
MAX_SAMPLE_ROWS = 32  # a class-conditional grid shows at most this many classes, one per row


@dataclass
class DCGANModel:
    z_dim: int = at_least(100, 1)
    ngf: int = at_least(64, 1)  # generator width next to the image; doubles towards 4x4, at most 8 ngf
    ndf: int = at_least(64, 1)  # discriminator width next to the image; likewise
    norm_D: str = choice("batch", "batch", "none")


@dataclass
class DCGANLoss:
    gan_mode: str = choice("vanilla", "vanilla", "hinge", "lsgan")  # vanilla: non-saturating softplus


@METHODS.register("dcgan")
class DCGAN(Method):
    """Unconditional DCGAN on every image under the folder. Exports ``G``."""

    ModelConfig = DCGANModel
    LossConfig = DCGANLoss
    data_kind = "images"
    export_names = ("G",)

    def __init__(self, recipe, device, precision, info=None) -> None:
        super().__init__(recipe, device, precision, info)
        m, d = recipe.model, recipe.data
        self.num_classes = self.count_classes()
        common = {"resolution": d.crop_size, "channels": d.channels, "num_classes": self.num_classes}
        self.build("G", "dcgan_g", init=False, z_dim=m.z_dim, ngf=m.ngf, **common)
        self.build("D", "dcgan_d", init=False, ndf=m.ndf, norm=m.norm_D, **common)
        self.optimizers = {"G": self.adam(self.nets["G"]), "D": self.adam(self.nets["D"])}
        self.gan = GANLoss(recipe.loss.gan_mode)
        self.fixed_z, self.fixed_labels = self._fixed_noise()

    def count_classes(self) -> int:
        """0: unconditional. ``cgan`` returns the number of class subfolders."""
        return 0

    def check_size(self, size: int) -> None:
        """The nets double / halve the resolution between 4x4 and the image."""
        if size < 16 or size & (size - 1):
            raise TranslateError(f"data.crop_size {size} must be a power of two >= 16 for "
                                 f"{self.recipe.method} (e.g. 32 or 64)")

    def _fixed_noise(self) -> tuple[Tensor, Tensor | None]:
        """The sample grid's latents, from their own generator so grids are comparable over training.

        Unconditional: ``train.n_samples`` rows of distinct z. Conditional: one row per class, the
        same z in every row, so a column shows one z across the classes.
        """
        g = torch.Generator().manual_seed(self.recipe.train.seed)
        z_dim = self.recipe.model.z_dim
        if not self.num_classes:
            z = torch.randn(self.recipe.train.n_samples * SAMPLE_COLUMNS, z_dim, generator=g)
            return z.to(self.device), None
        rows = min(self.num_classes, MAX_SAMPLE_ROWS)
        z = torch.randn(SAMPLE_COLUMNS, z_dim, generator=g).repeat(rows, 1)
        labels = torch.arange(rows).repeat_interleave(SAMPLE_COLUMNS)
        return z.to(self.device), labels.to(self.device)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G, D = self.nets["G"], self.nets["D"]
        opt_G, opt_D = self.optimizers["G"], self.optimizers["D"]
        real = batch["A"]
        n = real.shape[0]
        real_labels = batch["label"] if self.num_classes else None
        fake_labels = (torch.randint(0, self.num_classes, (n,), device=real.device) if self.num_classes
                       else None)
        z = torch.randn(n, self.recipe.model.z_dim, device=real.device)
        with self.amp.autocast():
            fake = G(z, fake_labels)

        # Discriminator: real -> real, generated -> fake.
        set_requires_grad([D], True)
        opt_D.zero_grad(set_to_none=True)
        with self.amp.autocast():
            d_real = self.gan(D(real, real_labels), True)
            d_fake = self.gan(D(fake.detach(), fake_labels), False)
        self.amp.backward(d_real + d_fake)
        self.amp.step(opt_D)

        # Generator: make D call its images real.
        set_requires_grad([D], False)
        opt_G.zero_grad(set_to_none=True)
        with self.amp.autocast():
            g_gan = self.gan(D(fake, fake_labels), True, for_discriminator=False)
        self.amp.backward(g_gan)
        self.amp.step(opt_G)
        self.amp.update()
        return {"G": g_gan.detach(), "D_real": d_real.detach(), "D_fake": d_fake.detach()}

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows of ``SAMPLE_COLUMNS`` images from the fixed latents (real images are not shown)."""
        G = self.export()["G"]  # unwrapped: a DDP forward on rank 0 alone would wait for the others
        G.eval()
        with self.amp.autocast():
            images = G(self.fixed_z, self.fixed_labels).float()
        G.train()
        rows = images.shape[0] // SAMPLE_COLUMNS
        _, c, h, w = images.shape
        images = images.view(rows, SAMPLE_COLUMNS, c, h, w).permute(0, 2, 3, 1, 4)
        return as_rgb(images.reshape(rows, c, h, SAMPLE_COLUMNS * w))

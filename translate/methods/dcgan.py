"""DCGAN (Radford et al. 2016): an unconditional GAN of transposed-conv generator and conv discriminator.

Losses: the non-saturating GAN loss (``gan_mode = "vanilla"``: D minimises softplus(-D(real)) +
softplus(D(fake)), G minimises softplus(-D(fake))), or hinge / least squares. The class-conditional
variant (``cgan``) subclasses this method: everything here already handles labels when
``num_classes > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from translate.core.losses import GANLoss
from translate.core.recipes import LossConfig, ModelConfig, at_least, choice
from translate.core.registry import METHODS
from translate.methods.base import SAMPLE_COLUMNS, Method, in_rows, set_requires_grad

MAX_SAMPLE_ROWS = 32  # a class-conditional grid shows at most this many classes, one per row


@dataclass
class DCGANModel(ModelConfig):
    z_dim: int = at_least(100, 1)
    ngf: int = at_least(64, 1)  # generator width next to the image; doubles towards 4x4, at most 8 ngf
    ndf: int = at_least(64, 1)  # discriminator width next to the image; likewise
    norm_D: str = choice("batch", "batch", "none")


@dataclass
class DCGANLoss(LossConfig):
    gan_mode: str = choice("vanilla", "vanilla", "hinge", "lsgan")  # vanilla: non-saturating softplus


@METHODS.register("dcgan")
class DCGAN(Method[DCGANModel, DCGANLoss]):
    """Unconditional DCGAN on every image under the folder. Exports ``G``."""

    data_kind = "images"

    def setup(self) -> None:
        cfg, data = self.cfg, self.recipe.data
        self.num_classes = self.count_classes()
        common: dict[str, Any] = {"resolution": data.crop_size, "channels": data.channels,
                                  "num_classes": self.num_classes}
        self.build("G", "dcgan_g", z_dim=cfg.z_dim, ngf=cfg.ngf, **common)
        self.build("D", "dcgan_d", ndf=cfg.ndf, norm=cfg.norm_D, **common)
        self.optimizers = {"G": self.adam("G"), "D": self.adam("D")}
        self.gan = GANLoss(self.loss_cfg.gan_mode)
        self.fixed_z, self.fixed_labels = self._fixed_latents()

    def count_classes(self) -> int:
        """0: unconditional. ``cgan`` returns the number of class subfolders."""
        return 0

    def _fixed_latents(self) -> tuple[Tensor, Tensor | None]:
        """The sample grid's latents (and labels). Unconditional: ``train.n_samples`` rows of distinct z.
        Conditional: one row per class, the same z in every row, so a column shows one z across the classes."""
        if not self.num_classes:
            return self.fixed_noise(self.recipe.train.n_samples * SAMPLE_COLUMNS, self.cfg.z_dim), None
        rows = min(self.num_classes, MAX_SAMPLE_ROWS)
        labels = torch.arange(rows, device=self.device).repeat_interleave(SAMPLE_COLUMNS)
        return self.fixed_noise(SAMPLE_COLUMNS, self.cfg.z_dim).repeat(rows, 1), labels

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G, D = self.nets["G"], self.nets["D"]
        real = batch["A"]
        n = real.shape[0]
        real_labels = batch["label"] if self.num_classes else None
        fake_labels = (torch.randint(0, self.num_classes, (n,), device=real.device) if self.num_classes
                       else None)
        z = torch.randn(n, self.cfg.z_dim, device=real.device)
        with self.amp.autocast():
            fake = G(z, fake_labels)

        # Discriminator: real -> real, generated -> fake.
        set_requires_grad([D], True)
        with self.amp.autocast():
            d_real = self.gan(D(real, real_labels), True)
            d_fake = self.gan(D(fake.detach(), fake_labels), False)
        self.descend(d_real + d_fake, "D")

        # Generator: make D call its images real.
        set_requires_grad([D], False)
        with self.amp.autocast():
            g_gan = self.gan(D(fake, fake_labels), True, for_discriminator=False)
        self.descend(g_gan, "G")
        self.amp.update()
        return {"G": g_gan.detach(), "D_real": d_real.detach(), "D_fake": d_fake.detach()}

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows of ``SAMPLE_COLUMNS`` images from the fixed latents (real images are not shown)."""
        with self.evaluating("G") as (G,):
            images = G(self.fixed_z, self.fixed_labels).float()
        return in_rows(images)

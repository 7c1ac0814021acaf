"""pix2pix (Isola et al. 2017): a conditional GAN on paired images, plus L1 to the target.

D sees (input, output) pairs stacked on channels and judges patches; G minimises the GAN loss
plus ``lambda_l1`` times the L1 distance to the real target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from translate.core.losses import GAN_MODES, GANLoss, gradient_penalty
from translate.core.recipes import LossConfig, at_least, choice, registered
from translate.core.registry import METHODS
from translate.methods.base import Method, TranslatorModel, set_requires_grad


@dataclass
class Pix2PixModel(TranslatorModel):
    generator: str = registered("unet_256", role="translator")
    norm: str = choice("batch", "instance", "batch", "none")
    dropout: bool = True


@dataclass
class Pix2PixLoss(LossConfig):
    gan_mode: str = choice("vanilla", *GAN_MODES)
    lambda_l1: float = at_least(100.0, 0.0)
    lambda_gp: float = at_least(10.0, 0.0)  # gradient penalty weight, used with gan_mode = "wgangp"


@METHODS.register("pix2pix")
class Pix2Pix(Method[Pix2PixModel, Pix2PixLoss]):
    """Paired translation A -> B. Exports ``G``."""

    def setup(self) -> None:
        self.build_generator("G", self.cfg.input_nc, self.cfg.output_nc)
        self.build_discriminator("D", self.cfg.input_nc + self.cfg.output_nc)  # judges (input, output) pairs
        self.optimizers = {"G": self.adam("G"), "D": self.adam("D")}
        self.gan = GANLoss(self.loss_cfg.gan_mode)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G, D = self.nets["G"], self.nets["D"]
        real_a, real_b = batch["A"], batch["B"]
        with self.amp.autocast():
            fake_b = G(real_a)

        # Discriminator: real pairs -> real, generated pairs -> fake.
        set_requires_grad([D], True)
        real_ab = torch.cat([real_a, real_b], 1)
        fake_ab = torch.cat([real_a, fake_b.detach().to(real_a.dtype)], 1)
        with self.amp.autocast():
            d_fake = self.gan(D(fake_ab), False)
            d_real = self.gan(D(real_ab), True)
            loss_d = (d_fake + d_real) * 0.5
            if self.loss_cfg.gan_mode == "wgangp":
                loss_d = loss_d + gradient_penalty(D, real_ab, fake_ab, self.loss_cfg.lambda_gp)
        self.descend(loss_d, "D")

        # Generator: fool D, stay close to the target in L1.
        set_requires_grad([D], False)
        with self.amp.autocast():
            g_gan = self.gan(D(torch.cat([real_a, fake_b], 1)), True, for_discriminator=False)
        g_l1 = F.l1_loss(fake_b.float(), real_b.float())
        self.descend(g_gan + g_l1 * self.loss_cfg.lambda_l1, "G")
        self.amp.update()
        return {"G_GAN": g_gan.detach(), "G_L1": g_l1.detach(), "D_real": d_real.detach(),
                "D_fake": d_fake.detach()}

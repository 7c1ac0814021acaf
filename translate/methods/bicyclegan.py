"""BicycleGAN, "Toward Multimodal Image-to-Image Translation" (Zhu et al. 2017): pix2pix with a latent
code, so one input has many plausible outputs.

The generator takes a latent z beside the input (tiled over the image and stacked on its channels,
the paper's "add to input"); a VAE encoder E maps a target image to q(z|B). Two cycles train them:

- cVAE-GAN (B -> z -> B): z drawn from E(B) must let G rebuild B from A (L1, ``lambda_l1``), and
  q(z|B) stays near N(0, I) (KL, ``lambda_kl``); D judges the rebuilt images.
- cLR-GAN (z -> B -> z): from a random z ~ N(0, I), G's output must look real to a second
  discriminator D2, and E must recover that z from it (L1 on the mean, ``lambda_z``). As in the
  paper, the latent loss trains G alone: E sees its output with its own weights held fixed.

``translate run --samples N --seed S`` then draws N latents and writes N translations of each input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from translate.devices import Precision
from translate.losses import GAN_MODES, GANLoss
from translate.methods.base import Method, TranslatorModel, check_power_of_two, set_requires_grad, side_by_side
from translate.methods.vae import kl_to_standard_normal
from translate.recipes import LossConfig, Recipe, at_least, choice, registered
from translate.registry import METHODS

SAMPLE_LATENTS = 3  # random-z columns in the sample grid


@dataclass
class BicycleGANModel(TranslatorModel):
    encoder: str = registered("unet", role="encoder", short=True)
    decoder: str = registered("unet", role="decoder", short=True)
    nz: int = at_least(8, 1)  # latent size
    nef: int = at_least(64, 1)  # width of E's first conv
    conditional_D: bool = False  # D sees (A, B) pairs instead of B alone (the paper's default: B alone)


@dataclass
class BicycleGANLoss(LossConfig):
    gan_mode: str = choice("lsgan", *GAN_MODES)
    lambda_l1: float = at_least(10.0, 0.0)  # rebuild B from E(B)'s z
    lambda_kl: float = at_least(0.01, 0.0)  # q(z|B) towards N(0, I)
    lambda_z: float = at_least(0.5, 0.0)  # recover a random z from G's output


@METHODS.register("bicyclegan")
class BicycleGAN(Method[BicycleGANModel, BicycleGANLoss]):
    """Multimodal paired translation A -> B. Exports ``G`` (takes an optional z)."""

    ModelConfig = BicycleGANModel
    LossConfig = BicycleGANLoss
    data_kind = "paired"
    export_names = ("G",)

    def __init__(self, recipe: Recipe, device: torch.device, precision: Precision,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__(recipe, device, precision, info)
        cfg = self.cfg
        self.build_generator("G", cfg.input_nc, cfg.output_nc)
        self.build("E", "vae_encoder", init=False, channels=cfg.output_nc, resolution=recipe.data.crop_size,
                   z_dim=cfg.nz, nf=cfg.nef)
        d_in = cfg.input_nc + cfg.output_nc if cfg.conditional_D else cfg.output_nc
        for name in ("D", "D2"):  # one for each cycle, as the paper's default
            self.build_discriminator(name, d_in)
        self.optimizers = {"G": self.adam("G"), "E": self.adam("E"), "D": self.adam("D", "D2")}
        self.gan = GANLoss(self.loss_cfg.gan_mode)
        self.fixed_z = self.fixed_noise(SAMPLE_LATENTS, cfg.nz)

    def check_size(self, size: int) -> None:
        super().check_size(size)
        check_power_of_two(size, "bicyclegan (its encoder E halves the target down to 4x4)")

    def _judged(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a, b], 1) if self.cfg.conditional_D else b

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G, E, D, D2 = (self.nets[k] for k in ("G", "E", "D", "D2"))
        loss_cfg = self.loss_cfg
        real_a, real_b = batch["A"], batch["B"]
        z_random = torch.randn(real_a.shape[0], self.cfg.nz, device=real_a.device)
        with self.amp.autocast():
            mu, logvar = E(real_b, logvar=True)
            z_encoded = mu.float() + torch.exp(0.5 * logvar.float()) * torch.randn_like(mu, dtype=torch.float32)
            fake_encoded = G(real_a, z_encoded)
            fake_random = G(real_a, z_random)

        # D judges the rebuilt images, D2 those from random latents.
        set_requires_grad([D, D2], True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        with self.amp.autocast():
            real = self._judged(real_a, real_b)
            d_real = self.gan(D(real), True) + self.gan(D2(real), True)
            d_fake = (self.gan(D(self._judged(real_a, fake_encoded.detach().to(real_a.dtype))), False)
                      + self.gan(D2(self._judged(real_a, fake_random.detach().to(real_a.dtype))), False))
        self.amp.backward((d_real + d_fake) * 0.5)
        self.amp.step(self.optimizers["D"])

        # G and E: fool both, rebuild B, keep q(z|B) near the prior; G alone: make z recoverable.
        set_requires_grad([D, D2], False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        self.optimizers["E"].zero_grad(set_to_none=True)
        with self.amp.autocast():
            g_gan = (self.gan(D(self._judged(real_a, fake_encoded)), True, for_discriminator=False)
                     + self.gan(D2(self._judged(real_a, fake_random)), True, for_discriminator=False))
            E_plain = self.net("E")  # E's weights fixed for the latent loss: its gradient reaches G only
            fixed = {k: v.detach() for k, v in E_plain.named_parameters()}
            mu_random = functional_call(E_plain, fixed, (fake_random,))
        l1 = F.l1_loss(fake_encoded.float(), real_b.float())
        kl = kl_to_standard_normal(mu, logvar)
        z_l1 = F.l1_loss(mu_random.float(), z_random)
        self.amp.backward(g_gan + l1 * loss_cfg.lambda_l1 + kl * loss_cfg.lambda_kl + z_l1 * loss_cfg.lambda_z)
        self.hold_frozen()
        self.amp.step(self.optimizers["G"])
        self.amp.step(self.optimizers["E"])
        self.amp.update()
        return {"G_GAN": g_gan.detach(), "G_L1": l1.detach(), "kl": kl.detach(), "z_L1": z_l1.detach(),
                "D_real": d_real.detach(), "D_fake": d_fake.detach()}

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows of input | target | rebuilt from E(target)'s mean | three fixed random latents."""
        a, b = batch["A"], batch["B"]
        with self.evaluating("G", "E") as (G, E):
            outs = [G(a, E(b).float()).float()]
            outs += [G(a, z.expand(a.shape[0], -1)).float() for z in self.fixed_z]
        return side_by_side(a, b, *outs)

"""BicycleGAN, "Toward Multimodal Image-to-Image Translation" (Zhu et al. 2017): pix2pix with a latent
code, so one input has many plausible outputs. The step is the BicycleGAN code's (junyanz/BicycleGAN,
models/bicycle_gan_model.py), equal to it to the bit (tests/test_parity_bicyclegan.py).

The generator G takes a latent z beside the input (tiled and concatenated at every level of its
U-Net, the code's default); an encoder E maps a target image to q(z|B) = N(mu, exp(logvar)). Each
batch is split in two: the first half trains both cycles, the second gives D2 its real images.

- cVAE-GAN (B -> z -> B): z drawn from E(B) must let G rebuild B from A (L1, ``lambda_l1``); q(z|B)
  stays near N(0, I) (KL, summed over the batch and the code, ``lambda_kl``); D judges the rebuilt B.
- cLR-GAN (z -> B -> z): from a random z ~ N(0, I), G's output must look real to D2, and E must
  recover z from it (L1 on the mean, ``lambda_z``). This latent loss trains G alone: its gradient
  goes through E to G, E's weights are held fixed for it.

G and E step first, then D and D2 on the fakes made before that step. ``translate run --samples N
--seed S`` draws N latents and writes N translations of each input; ``--style EXAMPLE`` uses E's
mean code of one example image for every input (the code's encode mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from translate.core.errors import TranslateError
from translate.core.losses import GAN_MODES, GANLoss
from translate.core.recipes import LossConfig, at_least, choice, registered
from translate.core.registry import METHODS, NETS
from translate.methods.base import Method, TranslatorModel, set_requires_grad, side_by_side

SAMPLE_LATENTS = 3  # random-z columns in the sample grid
ENCODER = "e_resnet"  # E, the code's E_ResNet (netE resnet_256 / resnet_128: its depth follows data.crop_size)


@dataclass
class BicycleGANModel(TranslatorModel):
    generator: str = registered("bicycle_unet_256", role="translator", composite=False)
    discriminator: str = registered("basic_256_multi", role="discriminator", family="bicyclegan")
    nz: int = at_least(8, 1)  # latent size
    nef: int = at_least(64, 1)  # width of E's first conv
    num_Ds: int = at_least(2, 1)  # scales of each discriminator (D and D2)
    conditional_D: bool = False  # D sees (A, B) pairs instead of B alone (the code's default: B alone)


@dataclass
class BicycleGANLoss(LossConfig):
    gan_mode: str = choice("lsgan", *GAN_MODES)
    lambda_l1: float = at_least(10.0, 0.0)  # rebuild B from E(B)'s z
    lambda_kl: float = at_least(0.01, 0.0)  # q(z|B) towards N(0, I)
    lambda_z: float = at_least(0.5, 0.0)  # recover a random z from G's output
    lambda_gan_vae: float = at_least(1.0, 0.0)  # D on the rebuilt B, the cVAE-GAN's (the code's lambda_GAN)
    lambda_gan_lr: float = at_least(1.0, 0.0)  # D2 on a random z's output, the cLR-GAN's (lambda_GAN2)


@METHODS.register("bicyclegan")
class BicycleGAN(Method[BicycleGANModel, BicycleGANLoss]):
    """Multimodal paired translation A -> B. Exports ``G`` (takes an optional z) and ``E`` (an
    example image's code, for ``translate run --style``)."""

    export_names = ("G", "E")

    def setup(self) -> None:
        cfg = self.cfg
        if self.recipe.train.batch_size % 2:
            raise TranslateError(f"train.batch_size {self.recipe.train.batch_size} must be even for bicyclegan: the "
                                 "first half of each batch trains both cycles, the second gives D2 its real images "
                                 "(e.g. 2, the BicycleGAN code's default)")
        # Built in the code's order (G, D, D2, E), so one seed gives the code's initial weights.
        self.build_generator("G", cfg.input_nc, cfg.output_nc)
        d_in = cfg.input_nc + cfg.output_nc if cfg.conditional_D else cfg.output_nc
        for name in ("D", "D2"):  # one for each cycle
            self.build(name, cfg.discriminator, in_ch=d_in, ndf=cfg.ndf, norm=cfg.norm, num_D=cfg.num_Ds)
        self.build("E", ENCODER, in_ch=cfg.output_nc, nz=cfg.nz, nef=cfg.nef, resolution=self.recipe.data.crop_size,
                   norm=cfg.norm)
        self.optimizers = {name: self.adam(name) for name in ("G", "E", "D", "D2")}
        self.gan = GANLoss(self.loss_cfg.gan_mode)
        self.fixed_z = self.fixed_noise(SAMPLE_LATENTS, cfg.nz)

    def check_size(self, size: int) -> None:
        super().check_size(size)
        cfg = self.cfg
        multiple, _ = NETS.input_size({"net": cfg.discriminator, "kwargs": {"num_D": cfg.num_Ds}})
        if size % multiple:
            raise TranslateError(f"data.crop_size {size} does not suit model.discriminator {cfg.discriminator} at "
                                 f"{cfg.num_Ds} scales: it needs a multiple of {multiple} (or fewer model.num_Ds)")

    def _judged(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a, b.to(a.dtype)], 1) if self.cfg.conditional_D else b

    def _gan(self, scales: list[Tensor], real: bool, for_discriminator: bool = True) -> Tensor:
        """The GAN loss summed over a discriminator's scales (the code's GANLoss)."""
        return sum(self.gan(pred, real, for_discriminator) for pred in scales)

    def _draw(self, n: int) -> Tensor:
        """n latents ~ N(0, I) from torch's CPU generator, on any device (as the code's get_z_random)."""
        return torch.randn(n, self.cfg.nz).to(self.device)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G, E, D, D2 = (self.nets[k] for k in ("G", "E", "D", "D2"))
        lc = self.loss_cfg
        half = max(1, batch["A"].shape[0] // 2)
        real_a, real_b = batch["A"][:half], batch["B"][:half]  # both cycles
        other_a, other_b = batch["A"][half:], batch["B"][half:]  # D2's real images (and As for conditional_D)
        if not len(other_a):  # an epoch's last batch of one image (every image is used): it serves both
            other_a, other_b = real_a, real_b

        with self.amp.autocast():
            mu, logvar = (t.float() for t in E(real_b))
            z_encoded = self._draw(half).mul(torch.exp(logvar * 0.5)).add(mu)  # eps, then z_random: the code's order
            z_random = self._draw(half)
            fake_encoded = G(real_a, z_encoded)
            fake_random = G(real_a, z_random)
            # E's code of the random output, E's weights held: for z_L1 only (none when it weighs 0, as the code)
            mu_random = self._fixed(self.net("E"), fake_random).float() if lc.lambda_z > 0 else z_random

        # G and E: fool D and D2, rebuild B, keep q(z|B) near the prior.
        set_requires_grad([D, D2], False)
        self.optimizers["E"].zero_grad(set_to_none=True)
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self.amp.autocast():
            g_gan = self._gan(D(self._judged(real_a, fake_encoded)), True, for_discriminator=False)
            g_gan2 = self._gan(D2(self._judged(real_a, fake_random)), True, for_discriminator=False)
        kl = torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) * -0.5  # a sum over batch and code, as the code's
        l1 = F.l1_loss(fake_encoded.float(), real_b.float())
        loss = g_gan * lc.lambda_gan_vae + g_gan2 * lc.lambda_gan_lr + l1 * lc.lambda_l1 + kl * lc.lambda_kl
        # G alone: make z recoverable. The code runs it as a second backward through the retained graph
        # and adds to G's gradients; under DDP, which reduces each gradient once per backward, it is
        # one backward of the sum (the same gradient, rounded differently).
        z_l1 = F.l1_loss(mu_random, z_random)
        if self.world_size > 1:
            self.amp.backward(loss + z_l1 * lc.lambda_z)
        else:
            self.amp.backward(loss, retain_graph=lc.lambda_z > 0)
            if lc.lambda_z > 0:
                self.amp.backward(z_l1 * lc.lambda_z)
        self.hold_frozen()
        self.amp.step(self.optimizers["E"])
        self.amp.step(self.optimizers["G"])

        # D judges the rebuilt images, D2 those from random latents (both made before G's step).
        set_requires_grad([D, D2], True)
        d = self._d_step("D", D, self._judged(real_a, fake_encoded), self._judged(real_a, real_b))
        d2 = self._d_step("D2", D2, self._judged(real_a, fake_random), self._judged(other_a, other_b))
        self.amp.update()
        return {"G_GAN": g_gan.detach(), "D": d, "G_GAN2": g_gan2.detach(), "D2": d2, "G_L1": l1.detach(),
                "z_L1": z_l1.detach(), "kl": kl.detach()}

    @staticmethod
    def _fixed(E: nn.Module, x: Tensor) -> Tensor:
        """E's mean code of ``x`` with its weights taken as constants: gradients reach x, not E."""
        weights = {k: v.detach() for k, v in E.named_parameters()}
        return functional_call(E, weights, (x,))[0]

    def _d_step(self, name: str, D: nn.Module, fake: Tensor, real: Tensor) -> Tensor:
        """One discriminator step: fake + real (no halving, as the code's backward_D)."""
        with self.amp.autocast():
            pred_fake, pred_real = D(fake.detach()), D(real)
            loss = self._gan(pred_fake, False) + self._gan(pred_real, True)
        self.descend(loss, name)
        return loss.detach()

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows of input | target | rebuilt from E(target)'s mean | three fixed random latents."""
        a, b = batch["A"], batch["B"]
        with self.evaluating("G", "E") as (G, E):
            outs = [G(a, E(b)[0].float()).float()]
            outs += [G(a, z.expand(a.shape[0], -1)).float() for z in self.fixed_z]
        return side_by_side(a, b, *outs)

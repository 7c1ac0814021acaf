"""Progressive GAN (Karras et al. 2018): G and D grow together from 4x4 to ``data.crop_size``.

The schedule counts iterations: ``stable_steps`` at ``start_resolution``, then for each doubling
``fade_steps`` during which the new blocks are blended in (alpha 0 -> 1) and ``stable_steps`` at the
new size; the last size trains until the run ends. Real images are average-pooled to the current
size and, during a fade-in, blended with their half-size version exactly as the networks blend,
so D compares like with like. Adam's moments are reset when a new size starts (as the official
code's ``reset_opt_for_new_lod``): the old statistics describe a different network.

Loss: WGAN-GP as in the paper (one D step per G step, gradient penalty ``lambda_gp`` and drift
``epsilon_drift * D(real)^2`` to keep the critic's scores near 0), with Adam betas (0, 0.99) set in
the recipe. The step counter is in ``extra_state``; the phase is a function of it (and is also
kept in the nets' buffers), so ``--resume`` goes on at the same size and alpha.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from translate.errors import TranslateError
from translate.losses import gradient_penalty
from translate.methods.base import Method, as_rgb, set_requires_grad
from translate.nets.pggan import num_levels
from translate.recipes import at_least, choice
from translate.registry import METHODS

SAMPLE_COLUMNS = 8  # images per row of the sample grid


@dataclass
class PGGANModel:
    z_dim: int = at_least(512, 1)
    fmap_base: int = at_least(8192, 1)  # width at stage s (4x4 is stage 1): min(fmap_base / 2**s, fmap_max)
    fmap_max: int = at_least(512, 1)
    start_resolution: int = choice(4, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    fade_steps: int = at_least(600, 0)  # iterations blending a new size in (alpha 0 -> 1)
    stable_steps: int = at_least(600, 1)  # iterations at each size once faded in


@dataclass
class PGGANLoss:
    lambda_gp: float = at_least(10.0, 0.0)
    epsilon_drift: float = at_least(0.001, 0.0)


def phase_at(step: int, start_level: int, last_level: int, fade: int, stable: int) -> tuple[int, float]:
    """(level, alpha) used by iteration ``step`` (0-based): the start level stable, then per level
    ``fade`` iterations with alpha = i / fade and ``stable`` at alpha 1; the last level stays."""
    if step < stable or start_level == last_level:
        return start_level, 1.0
    grown, into = divmod(step - stable, fade + stable)
    level = start_level + 1 + grown
    if level > last_level:
        return last_level, 1.0
    return level, into / fade if into < fade else 1.0


@METHODS.register("pggan")
class PGGAN(Method):
    """Unconditional progressive GAN on a folder of images. Exports ``G``."""

    ModelConfig = PGGANModel
    LossConfig = PGGANLoss
    data_kind = "images"
    export_names = ("G",)

    def __init__(self, recipe, device, precision, info=None) -> None:
        super().__init__(recipe, device, precision, info)
        m, size, ch = recipe.model, recipe.data.crop_size, recipe.data.channels
        self.build("G", "pggan_g", init=False, z_dim=m.z_dim, resolution=size, channels=ch,
                   fmap_base=m.fmap_base, fmap_max=m.fmap_max)
        self.build("D", "pggan_d", init=False, resolution=size, channels=ch, fmap_base=m.fmap_base,
                   fmap_max=m.fmap_max)
        self.optimizers = {"G": self.adam(self.nets["G"]), "D": self.adam(self.nets["D"])}
        self.levels = (num_levels(m.start_resolution) - 1, num_levels(size) - 1)
        self.step = 0
        self._set_phase(*self.phase())
        g = torch.Generator().manual_seed(recipe.train.seed)
        self.fixed_z = torch.randn(recipe.train.n_samples * SAMPLE_COLUMNS, m.z_dim, generator=g).to(device)

    def check_size(self, size: int) -> None:
        start = self.recipe.model.start_resolution
        if size < 8 or size & (size - 1):
            raise TranslateError(f"data.crop_size {size} must be a power of two >= 8 for pggan (e.g. 32)")
        if start > size:
            raise TranslateError(f"model.start_resolution {start} is above data.crop_size {size}")

    def phase(self) -> tuple[int, float]:
        """(level, alpha) of the next iteration; level 0 is 4x4."""
        m = self.recipe.model
        return phase_at(self.step, *self.levels, m.fade_steps, m.stable_steps)

    def _set_phase(self, level: int, alpha: float) -> None:
        for net in self.nets.values():
            net.set_phase(level, alpha)

    def _reals(self, x: Tensor, level: int, alpha: float) -> Tensor:
        """Real images at the current size, blended with their half-size version while fading in."""
        size = 4 * 2**level
        x = F.adaptive_avg_pool2d(x, (size, size)) if x.shape[-1] != size else x
        if level > 0 and alpha < 1.0:
            low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
            x = torch.lerp(low, x, alpha)
        return x

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G, D = self.nets["G"], self.nets["D"]
        opt_G, opt_D = self.optimizers["G"], self.optimizers["D"]
        loss = self.recipe.loss
        level, alpha = self.phase()
        if level != G.phase[0]:
            for opt in (opt_G, opt_D):
                opt.state.clear()
        self._set_phase(level, alpha)
        real = self._reals(batch["A"], level, alpha)
        z = torch.randn(real.shape[0], self.recipe.model.z_dim, device=real.device)
        with self.amp.autocast():
            fake = G(z, upsample=False)

        # Critic: raise D(real), lower D(fake); gradient penalty; drift keeps D(real) near 0.
        set_requires_grad([D], True)
        opt_D.zero_grad(set_to_none=True)
        fake_d = fake.detach().to(real.dtype)
        with self.amp.autocast():
            d_real, d_fake = D(real).float(), D(fake_d).float()
            gp = gradient_penalty(D, real, fake_d, loss.lambda_gp)
            loss_d = d_fake.mean() - d_real.mean() + gp + loss.epsilon_drift * d_real.pow(2).mean()
        self.amp.backward(loss_d)
        self.amp.step(opt_D)

        # Generator: raise the (updated) critic's score of the same fakes.
        set_requires_grad([D], False)
        opt_G.zero_grad(set_to_none=True)
        with self.amp.autocast():
            loss_g = -D(fake).float().mean()
        self.amp.backward(loss_g)
        self.amp.step(opt_G)
        self.amp.update()
        self.step += 1
        phase = torch.tensor([4.0 * 2**level, alpha], device=real.device)
        return {"G": loss_g.detach(), "D": loss_d.detach(), "W_dist": (d_real.mean() - d_fake.mean()).detach(),
                "GP": gp.detach(), "resolution": phase[0], "alpha": phase[1]}

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """``n_samples`` rows of ``SAMPLE_COLUMNS`` images from fixed noise, at the current size
        upsampled to ``crop_size``."""
        G = self.nets["G"]
        G.eval()
        with self.amp.autocast():
            fake = G(self.fixed_z).float()
        G.train()
        n, c, h, w = fake.shape
        rows = fake.reshape(n // SAMPLE_COLUMNS, SAMPLE_COLUMNS, c, h, w).permute(0, 2, 3, 1, 4)
        return as_rgb(rows.reshape(-1, c, h, SAMPLE_COLUMNS * w))

    def extra_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))

    def wrap(self, fn: Any) -> None:
        """The nets grow, so the set of parameters used changes with the phase; the Trainer's DDP
        (static graph) would not know. Say so instead of failing inside DDP."""
        raise TranslateError("pggan does not train on several processes yet: its growing nets need DDP "
                             "with find_unused_parameters (run it on one device)")


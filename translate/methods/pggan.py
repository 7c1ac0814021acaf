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

Samples, export and `translate sample` use ``G_ema``, the exponential moving average of G's
weights (``loss.ema_beta`` 0.999 per step, the official code's ``G_smoothing``: its ``Gs``), as the
paper's images were made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.errors import TranslateError
from translate.core.losses import gradient_penalty
from translate.core.recipes import LossConfig, ModelConfig, at_least, choice
from translate.core.registry import METHODS
from translate.methods.base import (
    SAMPLE_COLUMNS,
    Method,
    check_power_of_two,
    in_rows,
    make_average,
    set_requires_grad,
    update_average,
)
from translate.nets.pggan import PhaseMixin, num_levels


@dataclass
class PGGANModel(ModelConfig):
    z_dim: int = at_least(512, 1)
    fmap_base: int = at_least(8192, 1)  # width at stage s (4x4 is stage 1): min(fmap_base / 2**s, fmap_max)
    fmap_max: int = at_least(512, 1)
    start_resolution: int = choice(4, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    fade_steps: int = at_least(600, 0)  # iterations blending a new size in (alpha 0 -> 1)
    stable_steps: int = at_least(600, 1)  # iterations at each size once faded in


@dataclass
class PGGANLoss(LossConfig):
    lambda_gp: float = at_least(10.0, 0.0)
    epsilon_drift: float = at_least(0.001, 0.0)
    ema_beta: float = at_least(0.999, 0.0)  # G_ema <- beta G_ema + (1 - beta) G after every step


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
class PGGAN(Method[PGGANModel, PGGANLoss]):
    """Unconditional progressive GAN on a folder of images. Exports ``G`` (the moving average G_ema)."""

    data_kind = "images"
    export_from = {"G": "G_ema"}  # the averaged generator, under the name inference looks for

    def setup(self) -> None:
        cfg, crop_size = self.cfg, self.recipe.data.crop_size
        sizes: dict[str, Any] = {"resolution": crop_size, "channels": self.recipe.data.channels,
                                 "fmap_base": cfg.fmap_base, "fmap_max": cfg.fmap_max}
        G = self.build("G", "pggan_g", z_dim=cfg.z_dim, **sizes)
        self.build("D", "pggan_d", **sizes)
        make_average(G, self.build("G_ema", "pggan_g", z_dim=cfg.z_dim, **sizes))
        self.optimizers = {"G": self.adam("G"), "D": self.adam("D")}
        self.levels = (num_levels(cfg.start_resolution) - 1, num_levels(crop_size) - 1)
        self.step = 0
        self._set_phase(*self.phase())
        self.fixed_z = self.fixed_noise(self.recipe.train.n_samples * SAMPLE_COLUMNS, cfg.z_dim)

    def check_size(self, size: int) -> None:
        check_power_of_two(size, "pggan", 8, "32")
        start = self.cfg.start_resolution
        if start > size:
            raise TranslateError(f"model.start_resolution {start} is above data.crop_size {size}")

    def phase(self) -> tuple[int, float]:
        """(level, alpha) of the next iteration; level 0 is 4x4."""
        return phase_at(self.step, *self.levels, self.cfg.fade_steps, self.cfg.stable_steps)

    def _set_phase(self, level: int, alpha: float) -> None:
        for net in self.nets.values():  # never DDP-wrapped (see wrap)
            cast(PhaseMixin, net).set_phase(level, alpha)

    def _reals(self, x: Tensor, level: int, alpha: float) -> Tensor:
        """Real images at the current size, blended with their half-size version while fading in."""
        side = 4 * 2**level
        x = F.adaptive_avg_pool2d(x, (side, side)) if x.shape[-1] != side else x
        if level > 0 and alpha < 1.0:
            low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
            x = torch.lerp(low, x, alpha)
        return x

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G, D = self.nets["G"], self.nets["D"]
        level, alpha = self.phase()
        if level != cast(PhaseMixin, G).phase[0]:
            for opt in self.optimizers.values():
                opt.state.clear()
        self._set_phase(level, alpha)
        real = self._reals(batch["A"], level, alpha)
        z = torch.randn(real.shape[0], self.cfg.z_dim, device=real.device)
        with self.amp.autocast():
            fake = G(z, upsample=False)

        # Critic: raise D(real), lower D(fake); gradient penalty; drift keeps D(real) near 0.
        set_requires_grad([D], True)
        fake_d = fake.detach().to(real.dtype)
        with self.amp.autocast():
            d_real, d_fake = D(real).float(), D(fake_d).float()
            gp = gradient_penalty(D, real, fake_d, self.loss_cfg.lambda_gp)
            loss_d = d_fake.mean() - d_real.mean() + gp + self.loss_cfg.epsilon_drift * d_real.pow(2).mean()
        self.descend(loss_d, "D")

        # Generator: raise the (updated) critic's score of the same fakes.
        set_requires_grad([D], False)
        with self.amp.autocast():
            loss_g = -D(fake).float().mean()
        self.descend(loss_g, "G")
        self.amp.update()
        update_average(self.nets["G_ema"], G, self.loss_cfg.ema_beta)
        self.step += 1
        phase = torch.tensor([4.0 * 2**level, alpha], device=real.device)
        return {"G": loss_g.detach(), "D": loss_d.detach(), "W_dist": (d_real.mean() - d_fake.mean()).detach(),
                "GP": gp.detach(), "resolution": phase[0], "alpha": phase[1]}

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """``n_samples`` rows of ``SAMPLE_COLUMNS`` images from fixed noise, at the current size
        upsampled to ``crop_size``."""
        with self.amp.autocast():  # (G_ema is always in eval mode)
            images = self.nets["G_ema"](self.fixed_z).float()
        return in_rows(images)

    def extra_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))

    def wrap(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        """The nets grow, so the set of parameters used changes with the phase; the Trainer's DDP
        (static graph) would not know. Say so instead of failing inside DDP."""
        raise TranslateError("pggan does not train on several processes yet: its growing nets need DDP "
                             "with find_unused_parameters (run it on one device)")


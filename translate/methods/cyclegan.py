"""CycleGAN (Zhu et al. 2017): unpaired translation with two generators and cycle consistency.

G_A: A -> B and G_B: B -> A, judged by D_A (on B images) and D_B (on A images) as in the
reference. Translating there and back must return the input (cycle loss, ``lambda_cycle``); fed an
image of its own output domain, a generator should leave it alone (identity loss,
``lambda_identity`` times ``lambda_cycle``). Discriminators see fakes through a pool of past ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.errors import TranslateError
from translate.core.losses import GAN_MODES, GANLoss, ImagePool, gradient_penalty
from translate.core.recipes import LossConfig, at_least, choice
from translate.core.registry import METHODS
from translate.methods.base import Method, TranslatorModel, set_requires_grad, side_by_side


@dataclass
class CycleGANLoss(LossConfig):
    gan_mode: str = choice("lsgan", *GAN_MODES)
    lambda_cycle: float = at_least(10.0, 0.0)  # the reference's lambda_A = lambda_B
    lambda_identity: float = at_least(0.5, 0.0)  # relative to lambda_cycle, as in the reference
    pool_size: int = at_least(50, 0)
    lambda_gp: float = at_least(10.0, 0.0)  # gradient penalty weight, used with gan_mode = "wgangp"


@METHODS.register("cyclegan")
class CycleGAN(Method[TranslatorModel, CycleGANLoss]):
    """Unpaired translation both ways. Exports ``G_A`` (A to B) and ``G_B`` (B to A)."""

    data_kind = "unpaired"
    export_names = ("G_A", "G_B")

    def setup(self) -> None:
        a_nc, b_nc, loss_cfg = self.cfg.input_nc, self.cfg.output_nc, self.loss_cfg
        if loss_cfg.lambda_identity > 0 and a_nc != b_nc:
            raise TranslateError("loss.lambda_identity needs model.input_nc == model.output_nc "
                                 "(set loss.lambda_identity=0)")
        self.build_generator("G_A", a_nc, b_nc)
        self.build_generator("G_B", b_nc, a_nc)
        self.build_discriminator("D_A", b_nc)
        self.build_discriminator("D_B", a_nc)
        self.optimizers = {"G": self.adam("G_A", "G_B"), "D": self.adam("D_A", "D_B")}
        self.gan = GANLoss(loss_cfg.gan_mode)
        self.pool_a = ImagePool(loss_cfg.pool_size, seed=self.recipe.train.seed)
        self.pool_b = ImagePool(loss_cfg.pool_size, seed=self.recipe.train.seed + 1)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G_A, G_B, D_A, D_B = (self.nets[k] for k in ("G_A", "G_B", "D_A", "D_B"))
        real_a, real_b = batch["A"], batch["B"]
        lam, lam_idt = self.loss_cfg.lambda_cycle, self.loss_cfg.lambda_cycle * self.loss_cfg.lambda_identity

        # Generators: fool both discriminators, keep cycles and identities.
        set_requires_grad([D_A, D_B], False)
        with self.amp.autocast():
            fake_b = G_A(real_a)
            rec_a = G_B(fake_b)
            fake_a = G_B(real_b)
            rec_b = G_A(fake_a)
            g_a = self.gan(D_A(fake_b), True, for_discriminator=False)
            g_b = self.gan(D_B(fake_a), True, for_discriminator=False)
            idt_a = G_A(real_b) if lam_idt > 0 else None
            idt_b = G_B(real_a) if lam_idt > 0 else None
        cycle_a = F.l1_loss(rec_a.float(), real_a.float())
        cycle_b = F.l1_loss(rec_b.float(), real_b.float())
        zero = real_a.new_zeros(())
        idt_loss_a = F.l1_loss(idt_a.float(), real_b.float()) if idt_a is not None else zero
        idt_loss_b = F.l1_loss(idt_b.float(), real_a.float()) if idt_b is not None else zero
        self.descend(g_a + g_b + (cycle_a + cycle_b) * lam + (idt_loss_a + idt_loss_b) * lam_idt, "G")

        # Discriminators: real vs. a fake drawn through the pool of past fakes.
        set_requires_grad([D_A, D_B], True)
        d_a = self._d_loss(D_A, real_b, self.pool_b.query(fake_b.float()))
        d_b = self._d_loss(D_B, real_a, self.pool_a.query(fake_a.float()))
        self.descend(d_a + d_b, "D")
        self.amp.update()
        return {"G_A": g_a.detach(), "G_B": g_b.detach(), "cycle_A": cycle_a.detach(),
                "cycle_B": cycle_b.detach(), "idt_A": idt_loss_a.detach(), "idt_B": idt_loss_b.detach(),
                "D_A": d_a.detach(), "D_B": d_b.detach()}

    def _d_loss(self, D: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        with self.amp.autocast():
            loss_d = (self.gan(D(real), True) + self.gan(D(fake.detach()), False)) * 0.5
            if self.loss_cfg.gan_mode == "wgangp":
                loss_d = loss_d + gradient_penalty(D, real, fake, self.loss_cfg.lambda_gp)
        return loss_d

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows of real_A | fake_B | rec_A | real_B | fake_A | rec_B."""
        with self.evaluating("G_A", "G_B") as (G_A, G_B):
            fake_b = G_A(batch["A"])
            rec_a = G_B(fake_b)
            fake_a = G_B(batch["B"])
            rec_b = G_A(fake_a)
        return side_by_side(batch["A"], fake_b, rec_a, batch["B"], fake_a, rec_b)

    def extra_state(self) -> dict[str, Any]:
        return {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.pool_a.load_state_dict(state["pool_a"], self.device)
        self.pool_b.load_state_dict(state["pool_b"], self.device)

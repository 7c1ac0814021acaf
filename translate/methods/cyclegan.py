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
from torch import Tensor

from translate.errors import TranslateError
from translate.losses import GAN_MODES, GANLoss, ImagePool, gradient_penalty
from translate.methods.base import Method, TranslatorModel, as_rgb, set_requires_grad
from translate.recipes import at_least, choice
from translate.registry import METHODS


@dataclass
class CycleGANLoss:
    gan_mode: str = choice("lsgan", *GAN_MODES)
    lambda_cycle: float = at_least(10.0, 0.0)  # the reference's lambda_A = lambda_B
    lambda_identity: float = at_least(0.5, 0.0)  # relative to lambda_cycle, as in the reference
    pool_size: int = at_least(50, 0)
    lambda_gp: float = at_least(10.0, 0.0)  # gradient penalty weight, used with gan_mode = "wgangp"


@METHODS.register("cyclegan")
class CycleGAN(Method):
    """Unpaired translation both ways. Exports ``G_A`` (A to B) and ``G_B`` (B to A)."""

    ModelConfig = TranslatorModel
    LossConfig = CycleGANLoss
    data_kind = "unpaired"
    export_names = ("G_A", "G_B")

    def __init__(self, recipe, device, precision, info=None) -> None:
        super().__init__(recipe, device, precision, info)
        m, loss = recipe.model, recipe.loss
        if loss.lambda_identity > 0 and m.input_nc != m.output_nc:
            raise TranslateError("loss.lambda_identity needs model.input_nc == model.output_nc "
                                 "(set loss.lambda_identity=0)")
        d = {"ndf": m.ndf, "n_layers": m.n_layers_D, "norm": m.norm}
        self.build_generator("G_A", m.input_nc, m.output_nc)
        self.build_generator("G_B", m.output_nc, m.input_nc)
        self.build("D_A", m.discriminator, in_ch=m.output_nc, **d)
        self.build("D_B", m.discriminator, in_ch=m.input_nc, **d)
        n = self.nets
        self.optimizers = {"G": self.adam(n["G_A"], n["G_B"]), "D": self.adam(n["D_A"], n["D_B"])}
        self.gan = GANLoss(loss.gan_mode)
        self.pool_a = ImagePool(loss.pool_size, seed=recipe.train.seed)
        self.pool_b = ImagePool(loss.pool_size, seed=recipe.train.seed + 1)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        n, loss = self.nets, self.recipe.loss
        G_A, G_B, D_A, D_B = n["G_A"], n["G_B"], n["D_A"], n["D_B"]
        real_a, real_b = batch["A"], batch["B"]
        lam, lam_idt = loss.lambda_cycle, loss.lambda_cycle * loss.lambda_identity

        # Generators: fool both discriminators, keep cycles and identities.
        set_requires_grad([D_A, D_B], False)
        self.optimizers["G"].zero_grad(set_to_none=True)
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
        loss_g = g_a + g_b + (cycle_a + cycle_b) * lam + (idt_loss_a + idt_loss_b) * lam_idt
        self.amp.backward(loss_g)
        self.hold_frozen()
        self.amp.step(self.optimizers["G"])

        # Discriminators: real vs. a fake drawn through the pool of past fakes.
        set_requires_grad([D_A, D_B], True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        d_a = self._d_loss(D_A, real_b, self.pool_b.query(fake_b.float()))
        d_b = self._d_loss(D_B, real_a, self.pool_a.query(fake_a.float()))
        self.amp.backward(d_a + d_b)
        self.amp.step(self.optimizers["D"])
        self.amp.update()
        return {"G_A": g_a.detach(), "G_B": g_b.detach(), "cycle_A": cycle_a.detach(),
                "cycle_B": cycle_b.detach(), "idt_A": idt_loss_a.detach(), "idt_B": idt_loss_b.detach(),
                "D_A": d_a.detach(), "D_B": d_b.detach()}

    def _d_loss(self, D, real: Tensor, fake: Tensor) -> Tensor:
        with self.amp.autocast():
            out = (self.gan(D(real), True) + self.gan(D(fake.detach()), False)) * 0.5
            if self.recipe.loss.gan_mode == "wgangp":
                out = out + gradient_penalty(D, real, fake, self.recipe.loss.lambda_gp)
        return out

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows of real_A | fake_B | rec_A | real_B | fake_A | rec_B."""
        G_A, G_B = self.net("G_A"), self.net("G_B")
        G_A.eval()
        G_B.eval()
        with self.amp.autocast():
            fake_b = G_A(batch["A"])
            rec_a = G_B(fake_b)
            fake_a = G_B(batch["B"])
            rec_b = G_A(fake_a)
        G_A.train()
        G_B.train()
        cols = [batch["A"], fake_b, rec_a, batch["B"], fake_a, rec_b]
        return torch.cat([as_rgb(c) for c in cols], -1)

    def extra_state(self) -> dict[str, Any]:
        return {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.pool_a.load_state_dict(state["pool_a"], self.device)
        self.pool_b.load_state_dict(state["pool_b"], self.device)

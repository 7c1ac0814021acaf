"""CUT and FastCUT, "Contrastive Learning for Unpaired Image-to-Image Translation" (Park, Efros, Zhang,
Zhu 2020): one generator, one discriminator, no cycle.

The output must look like domain B to D (LSGAN), and each patch of the output must correspond to the
patch of the input at the same place more than to any other patch of that input: PatchNCE. The
generator's own encoder embeds both; features of several of its layers (``model.nce_layers``, as the
CUT code numbers the ResNet generator's layers) are sampled at ``model.num_patches`` positions,
projected by a two-layer MLP per layer and compared with a temperature ``loss.nce_t``.

CUT adds the same loss on B images through the generator (``loss.nce_idt``, an identity term) with
``lambda_nce`` 1; FastCUT drops it for ``lambda_nce`` 10 and flip-equivariance: half of the steps
flip the generator's input, and the output's features are flipped back before they are compared
with those of the unflipped input.

The networks are the CUT code's defaults: anti-aliased down- and upsampling in G and D
(``model.antialias``, ``model.antialias_up``), with which ``nce_layers`` 0, 4, 8, 12, 16 are the
padded input, the first two downsampling convs (full and half resolution) and residual blocks 1
and 5. tests/test_parity.py checks the steps against the CUT code's; docs/fidelity.md lists what
differs and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from translate.core.errors import TranslateError
from translate.core.losses import GAN_MODES, GANLoss, patch_nce
from translate.core.recipes import LossConfig, at_least, choice
from translate.core.registry import METHODS
from translate.methods.base import Method, TranslatorModel, set_requires_grad, side_by_side

if TYPE_CHECKING:
    from translate.nets.resnet import ResnetGenerator


@dataclass
class CUTModel(TranslatorModel):
    nce_layers: list[int] = field(default_factory=lambda: [0, 4, 8, 12, 16])
    num_patches: int = at_least(256, 1)
    netF_nc: int = at_least(256, 1)  # width of the projection heads


@dataclass
class CUTLoss(LossConfig):
    gan_mode: str = choice("lsgan", *GAN_MODES)
    lambda_gan: float = at_least(1.0, 0.0)
    lambda_nce: float = at_least(1.0, 0.0)
    nce_idt: bool = True  # PatchNCE on B -> G(B) too (CUT); false for FastCUT
    nce_t: float = at_least(0.07, 1e-6)
    flip_equivariance: bool = False  # FastCUT


@METHODS.register("cut")
class CUT(Method[CUTModel, CUTLoss]):
    """Unpaired translation A -> B with PatchNCE. Exports ``G``."""

    data_kind = "unpaired"

    def setup(self) -> None:
        cfg = self.cfg
        if cfg.encoder or cfg.decoder or not cfg.generator.startswith("resnet"):
            raise TranslateError("cut takes its PatchNCE features from a ResNet generator's layers: use "
                                 "model.generator=resnet_9blocks or resnet_6blocks")
        G = self.build_generator("G", cfg.input_nc, cfg.output_nc)
        depth = len(cast("ResnetGenerator", G).model)  # a resnet_* generator (checked above)
        if not cfg.nce_layers or not all(0 <= i < depth for i in cfg.nce_layers):
            raise TranslateError(f"model.nce_layers {cfg.nce_layers}: layers of {cfg.generator} are 0 to {depth - 1}")
        with torch.no_grad():
            feats = G(torch.zeros(1, cfg.input_nc, 64, 64, device=self.device), layers=cfg.nce_layers)
        self.build("F", "patch_mlp", channels=[f.shape[1] for f in feats], nc=cfg.netF_nc)
        self.build_discriminator("D", cfg.output_nc)
        self.optimizers = {"G": self.adam("G"), "F": self.adam("F"), "D": self.adam("D")}
        self.gan = GANLoss(self.loss_cfg.gan_mode)

    def nce(self, src: Tensor, tgt: Tensor, flipped: bool) -> Tensor:
        """PatchNCE between ``src`` and its translation ``tgt`` times ``lambda_nce``, averaged over the
        layers (summed in the CUT code's order); ``flipped``: ``tgt`` was made from ``src`` mirrored,
        so its features are mirrored back to line up."""
        cfg, G, F_ = self.cfg, self.nets["G"], self.nets["F"]
        feat_q = G(tgt, layers=cfg.nce_layers)
        if flipped:  # FastCUT: the output's features back in the input's orientation
            feat_q = [f.flip(3) for f in feat_q]
        feat_k = G(src, layers=cfg.nce_layers)
        k, ids = F_(feat_k, cfg.num_patches)
        q, _ = F_(feat_q, cfg.num_patches, ids)
        lam, t = self.loss_cfg.lambda_nce, self.loss_cfg.nce_t
        # nce_layers is not empty (checked in __init__): a Tensor, never sum's start 0
        total = cast(Tensor, sum((patch_nce(qi, ki, t) * lam).mean() for qi, ki in zip(q, k, strict=True)))
        return total / len(q)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G, D = self.nets["G"], self.nets["D"]
        loss_cfg = self.loss_cfg
        real_a, real_b = batch["A"], batch["B"]
        n = real_a.shape[0]
        real = torch.cat([real_a, real_b]) if loss_cfg.nce_idt else real_a  # one pass for both, as the CUT code
        flipped = loss_cfg.flip_equivariance and bool(torch.rand(()) < 0.5)
        if flipped:  # FastCUT: only G's input; D's real B and the NCE keys stay as they are
            real = real.flip(3)
        with self.amp.autocast():
            fakes = G(real)
        fake_b, idt_b = fakes[:n], fakes[n:]  # (idt_b empty without nce_idt)

        set_requires_grad([D], True)
        with self.amp.autocast():
            d_fake = self.gan(D(fake_b.detach()), False)
            d_real = self.gan(D(real_b), True)
        self.descend((d_fake + d_real) * 0.5, "D")

        set_requires_grad([D], False)
        with self.amp.autocast():
            g_gan = self.gan(D(fake_b), True, for_discriminator=False) * loss_cfg.lambda_gan
            nce = self.nce(real_a, fake_b, flipped)
            nce_y = self.nce(real_b, idt_b, flipped) if loss_cfg.nce_idt else None
        nce_both = (nce + nce_y) * 0.5 if nce_y is not None else nce
        self.descend(g_gan + nce_both, "G", "F")
        self.amp.update()
        losses = {"G_GAN": g_gan.detach(), "NCE": nce.detach(), "D_real": d_real.detach(), "D_fake": d_fake.detach()}
        if nce_y is not None:
            losses["NCE_Y"] = nce_y.detach()
        return losses

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows of A | G(A) | B | G(B)."""
        with self.evaluating("G") as (G,):
            fake, idt = G(batch["A"]).float(), G(batch["B"]).float()
        return side_by_side(batch["A"], fake, batch["B"], idt)

"""pSp, "Encoding in Style" (Richardson et al. 2021): translation into a pretrained StyleGAN2.

A feature-pyramid encoder maps the input image to one style per synthesis layer (W+) of a StyleGAN2
that the zoo trained (``model.init_decoder``) and that stays frozen; only the encoder learns. The
loss pulls the output to the target, L2 plus L1 (the paper's perceptual and identity terms need
pretrained networks and are left out), plus a regulariser keeping the styles near the generator's
average w, where its images look like its training data: the mean over the batch of the norm of
all of an image's offsets from w_avg (``lambda_w``, the paper's w_norm_lambda). One framework for
super-resolution, inpainting, sketch- or segmentation-to-image: only the paired data changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from translate.devices import Precision
from translate.methods.base import Method, TranslatorModel
from translate.recipes import LossConfig, Recipe, at_least, registered
from translate.registry import METHODS


@dataclass
class PSPModel(TranslatorModel):
    encoder: str = registered("psp", role="encoder", short=True)
    decoder: str = registered("stylegan2", role="decoder", short=True)
    freeze_decoder: bool = True  # the paper's: the generator is pretrained and kept


@dataclass
class PSPLoss(LossConfig):
    lambda_l2: float = at_least(1.0, 0.0)
    lambda_l1: float = at_least(1.0, 0.0)
    lambda_w: float = at_least(0.005, 0.0)  # the norm of the styles' offsets from w_avg


@METHODS.register("psp")
class PSP(Method[PSPModel, PSPLoss]):
    """Paired translation A -> B through a StyleGAN2's W+. Exports ``G`` (encoder + generator)."""

    ModelConfig = PSPModel
    LossConfig = PSPLoss
    data_kind = "paired"
    export_names = ("G",)

    def __init__(self, recipe: Recipe, device: torch.device, precision: Precision,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__(recipe, device, precision, info)
        self.build_generator("G", self.cfg.input_nc, self.cfg.output_nc)
        self.optimizers = {"G": self.adam("G")}

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G, opt, loss_cfg = self.nets["G"], self.optimizers["G"], self.loss_cfg
        real_a, real_b = batch["A"], batch["B"]
        opt.zero_grad(set_to_none=True)
        with self.amp.autocast():
            fake_b, code = G(real_a, return_code=True)
        fake, real = fake_b.float(), real_b.float()
        l2, l1 = F.mse_loss(fake, real), F.l1_loss(fake, real)
        # W+ offsets (N, layers, w_dim), or a vector code (an ae/vae encoder's z, the decoder's z): its
        # norm; feature maps of resnet/unet halves are not latents and are left alone
        w_norm = code.float().flatten(1).norm(dim=1).mean() if isinstance(code, Tensor) and code.dim() <= 3 \
            else real.new_zeros(())
        self.amp.backward(l2 * loss_cfg.lambda_l2 + l1 * loss_cfg.lambda_l1 + w_norm * loss_cfg.lambda_w)
        self.hold_frozen()
        self.amp.step(opt)
        self.amp.update()
        return {"L2": l2.detach(), "L1": l1.detach(), "w_norm": w_norm.detach()}

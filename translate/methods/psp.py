"""pSp, "Encoding in Style" (Richardson et al. 2021): translation into a pretrained StyleGAN2.

A feature-pyramid encoder maps the input image to one style per synthesis layer (W+) of a StyleGAN2
that the zoo trained (``model.init_decoder``) and that stays frozen; only the encoder learns. The
loss pulls the output to the target, L2 plus L1, plus the paper's perceptual term LPIPS(alex) x 0.8
where a local AlexNet weights file is given (``loss.lpips_weights``; the face identity term needs a
face-recognition network and is left out), plus a regulariser keeping the styles near the generator's
average w, where its images look like its training data: the mean over the batch of the norm of
all of an image's offsets from w_avg (``lambda_w``, the paper's w_norm_lambda). One framework for
super-resolution, inpainting, sketch- or segmentation-to-image: only the paired data changes.
The generator draws random noise while it trains (the official ``randomize_noise``), constant noise
when it translates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from translate.core.losses import load_lpips
from translate.core.recipes import LossConfig, at_least, registered
from translate.core.registry import METHODS
from translate.methods.base import Method, TranslatorModel


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
    lambda_lpips: float = at_least(0.8, 0.0)  # the paper's perceptual term, LPIPS(alex), when lpips_weights is given
    lpips_weights: str = ""  # torchvision's AlexNet weights file (alexnet-owt-7be5be79.pth); nothing is downloaded


@METHODS.register("psp")
class PSP(Method[PSPModel, PSPLoss]):
    """Paired translation A -> B through a StyleGAN2's W+. Exports ``G`` (encoder + generator)."""

    def setup(self) -> None:
        self.build_generator("G", self.cfg.input_nc, self.cfg.output_nc)
        self.optimizers = {"G": self.adam("G")}
        self.lpips = None
        if self.loss_cfg.lpips_weights and self.loss_cfg.lambda_lpips > 0:
            self.lpips = load_lpips(self.loss_cfg.lpips_weights, self.device).requires_grad_(False)
        elif self.loss_cfg.lambda_lpips > 0:
            self.notes.append("pSp's perceptual term (LPIPS with AlexNet, weight 0.8) is off: it needs torchvision's "
                              "AlexNet weights, loss.lpips_weights=alexnet-owt-7be5be79.pth (nothing is downloaded)")

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G, loss_cfg = self.nets["G"], self.loss_cfg
        real_a, real_b = batch["A"], batch["B"]
        with self.amp.autocast():
            fake_b, code = G(real_a, return_code=True)
        fake, real = fake_b.float(), real_b.float()
        l2, l1 = F.mse_loss(fake, real), F.l1_loss(fake, real)
        # W+ offsets (N, layers, w_dim), or a vector code (an ae/vae encoder's z, the decoder's z): its
        # norm; feature maps of resnet/unet halves are not latents and are left alone
        w_norm = code.float().flatten(1).norm(dim=1).mean() if isinstance(code, Tensor) and code.dim() <= 3 \
            else real.new_zeros(())
        loss = l2 * loss_cfg.lambda_l2 + l1 * loss_cfg.lambda_l1 + w_norm * loss_cfg.lambda_w
        losses = {"L2": l2.detach(), "L1": l1.detach(), "w_norm": w_norm.detach()}
        if self.lpips is not None:
            perceptual = self.lpips(*(_lpips_size(t) for t in (fake, real))).mean()
            loss = loss + perceptual * loss_cfg.lambda_lpips
            losses["LPIPS"] = perceptual.detach()
        self.descend(loss, "G")
        self.amp.update()
        return losses


def _lpips_size(x: Tensor) -> Tensor:
    """Images of at least 64 px (bilinear) for AlexNet, whose pooling leaves nothing of a 16 px one;
    three channels (gray repeated). The official pSp measures LPIPS on its 256 px outputs."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if min(x.shape[-2:]) < 64:
        x = F.interpolate(x, scale_factor=64 / min(x.shape[-2:]), mode="bilinear", align_corners=False)
    return x

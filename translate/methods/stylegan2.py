"""StyleGAN2 (Karras et al. 2020): unconditional image generation from a folder of images.

Each step trains G and then D with the non-saturating logistic loss. Regularisers run lazily,
as separate steps every few iterations with their weight multiplied by the interval: R1 (the
gradient norm of D on reals) every ``r1_interval`` steps, and path-length regularisation of G
(a fixed-size change in w moves the image by a fixed amount) every ``pl_interval`` steps. Adam's
lr and betas are corrected for those extra steps, as in the paper. Style mixing draws a second
latent for the later layers. The exported ``G`` is an exponential moving average of the trained
generator (``G_ema``), which gives clearly better images than the raw one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.recipes import LossConfig, ModelConfig, at_least
from translate.core.registry import METHODS
from translate.methods.base import (
    SAMPLE_COLUMNS,
    Method,
    in_rows,
    make_average,
    set_requires_grad,
    update_average,
)

if TYPE_CHECKING:
    from translate.nets.stylegan2 import Generator


@dataclass
class StyleGAN2Model(ModelConfig):
    """Network sizes. Feature maps at resolution r: min(channel_base / r, channel_max), for G and D."""

    z_dim: int = at_least(512, 1)
    w_dim: int = at_least(512, 1)
    mapping_layers: int = at_least(8, 1)
    channel_base: int = at_least(32768, 4)
    channel_max: int = at_least(512, 1)
    mbstd_group: int = at_least(4, 1)  # samples per minibatch-stddev group in D


@dataclass
class StyleGAN2Loss(LossConfig):
    """Regularisation and averaging, defaults as the paper's config F."""

    r1_gamma: float = at_least(10.0, 0.0)  # R1 weight (gamma / 2 * ||grad D(real)||^2); 0 turns it off
    r1_interval: int = at_least(16, 1)  # D steps between R1 steps (lazy regularisation)
    pl_weight: float = at_least(2.0, 0.0)  # path-length weight; 0 turns it off
    pl_interval: int = at_least(4, 1)  # G steps between path-length steps
    pl_decay: float = at_least(0.01, 0.0)  # how fast the target path length follows the batch's
    pl_batch_shrink: int = at_least(2, 1)  # path-length batch = batch / this
    mixing_prob: float = at_least(0.9, 0.0)  # chance a batch uses two latents (style mixing)
    ema_kimg: float = at_least(10.0, 0.0)  # half-life of G_ema, in thousands of images
    ema_rampup: float = at_least(0.05, 0.0)  # early on, half-life <= this x images seen (0: off)


@METHODS.register("stylegan2")
class StyleGAN2(Method[StyleGAN2Model, StyleGAN2Loss]):
    """Unconditional StyleGAN2 on ``images`` data. Exports ``G`` (the EMA generator)."""

    data_kind = "images"
    export_from = {"G": "G_ema"}  # the EMA generator, under the name inference looks for

    def setup(self) -> None:
        cfg, data, loss_cfg = self.cfg, self.recipe.data, self.loss_cfg
        sizes: dict[str, Any] = {"resolution": data.crop_size, "channels": data.channels,
                                 "channel_base": cfg.channel_base, "channel_max": cfg.channel_max}
        g_kwargs = {"z_dim": cfg.z_dim, "w_dim": cfg.w_dim, **sizes, "mapping_layers": cfg.mapping_layers}
        G = self.build("G", "stylegan2_g", **g_kwargs)
        self.build("D", "stylegan2_d", **sizes, mbstd_group=cfg.mbstd_group)
        # never trained: no w_avg tracking of its own, clamped output
        make_average(G, self.build("G_ema", "stylegan2_g", **g_kwargs))
        # lazy regularisation: Adam corrected for the regulariser's extra step every k steps
        self.optimizers = {"G": self.adam("G", lazy=loss_cfg.pl_interval if loss_cfg.pl_weight > 0 else 0),
                           "D": self.adam("D", lazy=loss_cfg.r1_interval if loss_cfg.r1_gamma > 0 else 0)}
        self.num_ws: int = cast("Generator", G).num_ws  # w's per image: style mixing picks where the second one starts
        self.step = 0
        self.pl_mean = torch.zeros((), device=self.device)
        self.fixed_z = self.fixed_noise(self.recipe.train.n_samples * SAMPLE_COLUMNS, cfg.z_dim)

    # --- training ------------------------------------------------------------------------------
    def _latents(self, n: int) -> tuple[Tensor, Tensor | None, int | None]:
        """z, and with probability ``mixing_prob`` a second z and the layer it takes over from."""
        z = torch.randn(n, self.cfg.z_dim, device=self.device)
        if torch.rand(()).item() >= self.loss_cfg.mixing_prob:
            return z, None, None
        return z, torch.randn_like(z), int(torch.randint(1, self.num_ws, ()).item())

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        G, D = self.nets["G"], self.nets["D"]
        opt_G, opt_D = self.optimizers["G"], self.optimizers["D"]
        loss_cfg = self.loss_cfg
        real = batch["A"]
        n = real.shape[0]
        losses: dict[str, Tensor] = {}

        # G: make D call the fakes real (non-saturating: softplus(-D(G(z)))).
        set_requires_grad([D], False)
        z, z2, mix = self._latents(n)
        with self.amp.autocast():
            g_loss = F.softplus(-D(G(z, z2=z2, mix_layer=mix, noise_mode="random")).float()).mean()
        self.descend(g_loss, "G")
        losses["G"] = g_loss.detach()
        if loss_cfg.pl_weight > 0 and self.step % loss_cfg.pl_interval == 0:
            losses["PL"] = self._path_length_step(G, opt_G, max(1, n // loss_cfg.pl_batch_shrink))

        # D: real -> 1, fake -> 0 (softplus(D(fake)) + softplus(-D(real))).
        set_requires_grad([D], True)
        z, z2, mix = self._latents(n)
        with torch.no_grad(), self.amp.autocast():
            fake = G(z, z2=z2, mix_layer=mix, noise_mode="random")
        with self.amp.autocast():
            d_fake = F.softplus(D(fake).float()).mean()
            d_real = F.softplus(-D(real).float()).mean()
        self.descend(d_fake + d_real, "D")
        losses["D_real"], losses["D_fake"] = d_real.detach(), d_fake.detach()
        if loss_cfg.r1_gamma > 0 and self.step % loss_cfg.r1_interval == 0:
            losses["R1"] = self._r1_step(D, opt_D, real)

        self.amp.update()
        self._update_ema()
        self.step += 1
        losses["pl_mean"] = self.pl_mean.detach().clone()
        return losses

    # The regularisers differentiate twice. They run in fp32, outside autocast: low precision
    # gradients of gradients are fragile, and fp32 needs no loss scaling (plain backward, unscaled step).
    def _path_length_step(self, G: nn.Module, opt: torch.optim.Optimizer, n: int) -> Tensor:
        """Penalise how far the Jacobian of image w.r.t. w strays from its running mean length."""
        loss_cfg = self.loss_cfg
        opt.zero_grad(set_to_none=True)
        z, z2, mix = self._latents(n)
        img, ws = G(z, z2=z2, mix_layer=mix, noise_mode="random", return_ws=True)
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()
        self.pl_mean = torch.lerp(self.pl_mean, lengths.mean().detach(), loss_cfg.pl_decay)
        penalty = (lengths - self.pl_mean).square().mean()
        # img * 0 keeps every parameter in the graph, as DDP expects gradients for all of them
        (penalty * loss_cfg.pl_weight * loss_cfg.pl_interval + img[:, 0, 0, 0].sum() * 0).backward()
        self.amp.step(opt, scaled=False)
        return penalty.detach()

    def _r1_step(self, D: nn.Module, opt: torch.optim.Optimizer, real: Tensor) -> Tensor:
        """R1: push D's gradient on real images towards 0, which stabilises training near equilibrium."""
        opt.zero_grad(set_to_none=True)
        real = real.detach().float().requires_grad_(True)
        logits = D(real)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grad.square().sum(dim=(1, 2, 3)).mean()
        (penalty * (self.loss_cfg.r1_gamma / 2) * self.loss_cfg.r1_interval + logits.sum() * 0).backward()
        self.amp.step(opt, scaled=False)
        return penalty.detach()

    @torch.no_grad()
    def _update_ema(self) -> None:
        """G_ema <- beta * G_ema + (1 - beta) * G, with beta from the half-life in images; buffers
        (w_avg, the fixed noise) are copied."""
        loss_cfg, batch = self.loss_cfg, self.global_batch
        ema_nimg = loss_cfg.ema_kimg * 1000
        if loss_cfg.ema_rampup > 0:
            ema_nimg = min(ema_nimg, self.step * batch * loss_cfg.ema_rampup)
        beta = 0.5 ** (batch / ema_nimg) if ema_nimg > 0 else 0.0
        update_average(self.nets["G_ema"], self.net("G"), beta)

    # --- samples, state -------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows of G_ema's images from the fixed latents (constant noise: comparable over time)."""
        with self.amp.autocast():  # (G_ema is always in eval mode)
            images = self.nets["G_ema"](self.fixed_z, noise_mode="const").float()
        return in_rows(images)

    def extra_state(self) -> dict[str, Any]:
        return {"step": self.step, "pl_mean": self.pl_mean.cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.pl_mean = state["pl_mean"].to(self.device)

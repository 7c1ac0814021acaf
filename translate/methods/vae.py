"""VAE (Kingma & Welling 2014), beta-VAE (Higgins et al. 2017) and capacity-annealed beta-VAE
(Burgess et al. 2018), one method.

The encoder gives q(z|x) = N(mu, diag(sigma^2)); z = mu + sigma * eps (eps from torch's global
generator, so resume is exact) is decoded and the loss is

- ``recon + w * KL(q(z|x) || N(0, I))`` with ``w = beta``, or rising linearly from 0 to ``beta`` over
  ``kl_warmup_steps`` (KL warm-up, against an early collapse of the code); or
- ``recon + capacity_gamma * |KL - C|`` when ``capacity_max > 0``, C rising linearly from 0 to
  ``capacity_max`` nats over ``capacity_steps`` (Burgess et al.; ``beta`` is then unused).

``recon`` is per image and summed over pixels (``l2``: Gaussian NLL with variance 1/2, ``l1``: Laplace
NLL with scale 1, constants dropped; see :func:`translate.core.losses.recon_error`), so ``elbo`` =
recon + KL is the negative ELBO per image in those units, whatever beta is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from translate.core.losses import kl_per_image, recon_error
from translate.core.recipes import RecipeError, at_least
from translate.core.registry import METHODS
from translate.methods.ae import AELoss, Autoencoder
from translate.methods.base import side_by_side

if TYPE_CHECKING:
    from translate.nets.autoencoder import ConvVAE


@dataclass
class VAELoss(AELoss):
    beta: float = at_least(1.0, 0.0)  # KL weight; 1 is the plain VAE, > 1 a beta-VAE
    kl_warmup_steps: int = at_least(0, 0)  # KL weight rises linearly from 0 to beta over these steps (0: off)
    capacity_max: float = at_least(0.0, 0.0)  # nats; > 0 switches to gamma * |KL - C| (Burgess et al.)
    capacity_steps: int = at_least(100000, 1)  # steps for C to rise from 0 to capacity_max
    capacity_gamma: float = at_least(1000.0, 0.0)

    def validate(self) -> None:
        if self.capacity_max > 0 and self.kl_warmup_steps > 0:
            raise RecipeError("loss.kl_warmup_steps and loss.capacity_max both schedule the KL term; "
                              "set one of them to 0")


@METHODS.register("vae")
class VAE(Autoencoder[VAELoss]):
    """A conv VAE (beta-VAE with ``loss.beta`` > 1). Exports ``AE`` (``encode`` gives the mean)."""

    net_name = "conv_vae"

    def setup(self) -> None:
        super().setup()
        self.steps = 0  # drives the warm-up and capacity schedules; saved for resume
        self.fixed_z = self.fixed_noise(self.recipe.train.n_samples, self.cfg.z_dim)

    def schedule(self) -> tuple[float, float]:
        """(KL weight, capacity C) for the coming step."""
        loss_cfg, step = self.loss_cfg, self.steps
        if loss_cfg.capacity_max > 0:
            return loss_cfg.capacity_gamma, loss_cfg.capacity_max * min(1.0, step / loss_cfg.capacity_steps)
        ramp = min(1.0, step / loss_cfg.kl_warmup_steps) if loss_cfg.kl_warmup_steps else 1.0
        return loss_cfg.beta * ramp, 0.0

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, capped = batch["A"], self.loss_cfg.capacity_max > 0
        weight, capacity = self.schedule()
        with self.amp.autocast():
            x_hat, mu, logvar = self.nets["AE"](x, sample=True)
        recon = recon_error(x_hat, x, self.loss_cfg.recon).mean()
        kl = kl_per_image(mu, logvar).mean()
        loss = recon + weight * ((kl - capacity).abs() if capped else kl)
        self.descend(loss, "AE")
        self.amp.update()
        self.steps += 1
        losses = {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach(), "elbo": (recon + kl).detach()}
        schedule = {"capacity": capacity} if capped else {"kl_weight": weight}
        return losses | {k: torch.tensor(v, device=x.device) for k, v in schedule.items()}

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows of input | reconstruction (of the mean code) | decoded prior sample (fixed z)."""
        x = batch["A"]
        with self.evaluating("AE") as (AE,):
            x_hat, prior = AE(x).float(), cast("ConvVAE", AE).decode(self.fixed_z[: len(x)]).float()
        return side_by_side(x, x_hat, prior)

    def extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))

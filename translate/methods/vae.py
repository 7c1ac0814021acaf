"""VAE (Kingma & Welling 2014), beta-VAE (Higgins et al. 2017) and capacity-annealed beta-VAE
(Burgess et al. 2018), one method.

The encoder gives q(z|x) = N(mu, diag(sigma^2)); z = mu + sigma * eps (eps from torch's global
generator, so resume is exact) is decoded and the loss is

- ``recon + w * KL(q(z|x) || N(0, I))`` with ``w = beta``, or rising linearly from 0 to ``beta`` over
  ``kl_warmup_steps`` (KL warm-up, against an early collapse of the code); or
- ``recon + capacity_gamma * |KL - C|`` when ``capacity_max > 0``, C rising linearly from 0 to
  ``capacity_max`` nats over ``capacity_steps`` (Burgess et al.; ``beta`` is then unused).

``recon`` is per image and summed over pixels (``l2``: Gaussian NLL with variance 1/2, ``l1``: Laplace
NLL with scale 1, constants dropped; see :func:`translate.methods.ae.recon_loss`), so ``elbo`` =
recon + KL is the negative ELBO per image in those units, whatever beta is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from translate.methods.ae import RECON_KINDS, Autoencoder, recon_loss
from translate.methods.base import as_rgb
from translate.recipes import RecipeError, at_least, choice
from translate.registry import METHODS


@dataclass
class VAELoss:
    recon: str = choice("l2", *RECON_KINDS)
    beta: float = at_least(1.0, 0.0)  # KL weight; 1 is the plain VAE, > 1 a beta-VAE
    kl_warmup_steps: int = at_least(0, 0)  # KL weight rises linearly from 0 to beta over these steps (0: off)
    capacity_max: float = at_least(0.0, 0.0)  # nats; > 0 switches to gamma * |KL - C| (Burgess et al.)
    capacity_steps: int = at_least(100000, 1)  # steps for C to rise from 0 to capacity_max
    capacity_gamma: float = at_least(1000.0, 0.0)

    def validate(self) -> None:
        if self.capacity_max > 0 and self.kl_warmup_steps > 0:
            raise RecipeError("loss.kl_warmup_steps and loss.capacity_max both schedule the KL term; "
                              "set one of them to 0")


def kl_per_image(mu: Tensor, logvar: Tensor) -> Tensor:
    """(N,) KL(N(mu, exp(logvar)) || N(0, I)) in nats, summed over z."""
    mu, logvar = mu.float(), logvar.float()
    return (0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)).sum(1)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """:func:`kl_per_image`, mean over the batch."""
    return kl_per_image(mu, logvar).mean()


@METHODS.register("vae")
class VAE(Autoencoder):
    """A conv VAE (beta-VAE with ``loss.beta`` > 1). Exports ``AE`` (``encode`` gives the mean)."""

    LossConfig = VAELoss
    net_name = "conv_vae"

    def __init__(self, recipe, device, precision, info=None) -> None:
        super().__init__(recipe, device, precision, info)
        self.steps = 0  # drives the warm-up and capacity schedules; saved for resume
        g = torch.Generator().manual_seed(recipe.train.seed)
        self.fixed_z = torch.randn(recipe.train.n_samples, recipe.model.z_dim, generator=g).to(device)

    def schedule(self) -> tuple[float, float]:
        """(KL weight, capacity C) for the coming step."""
        loss, t = self.recipe.loss, self.steps
        if loss.capacity_max > 0:
            return loss.capacity_gamma, loss.capacity_max * min(1.0, t / loss.capacity_steps)
        ramp = min(1.0, t / loss.kl_warmup_steps) if loss.kl_warmup_steps else 1.0
        return loss.beta * ramp, 0.0

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, opt, cfg = batch["A"], self.optimizers["AE"], self.recipe.loss
        weight, capacity = self.schedule()
        opt.zero_grad(set_to_none=True)
        with self.amp.autocast():
            x_hat, mu, logvar = self.nets["AE"](x, sample=True)
        recon = recon_loss(x_hat, x, cfg.recon)
        kl = kl_to_standard_normal(mu, logvar)
        loss = recon + weight * ((kl - capacity).abs() if cfg.capacity_max > 0 else kl)
        self.amp.backward(loss)
        self.amp.step(opt)
        self.amp.update()
        self.steps += 1
        out = {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach(), "elbo": (recon + kl).detach()}
        schedule = {"capacity": capacity} if cfg.capacity_max > 0 else {"kl_weight": weight}
        return out | {k: torch.tensor(v, device=x.device) for k, v in schedule.items()}

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows of input | reconstruction (of the mean code) | decoded prior sample (fixed z)."""
        x = batch["A"]
        net = self.nets["AE"]
        net.eval()
        with self.amp.autocast():
            prior = getattr(net, "module", net).decode(self.fixed_z[: len(x)]).float()
        net.train()
        return torch.cat([as_rgb(x), as_rgb(self._reconstruct(x)), as_rgb(prior)], -1)

    def extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))

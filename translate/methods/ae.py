"""Autoencoder: a conv encoder to a ``z_dim`` code and a decoder back, trained on reconstruction alone.

The reconstruction loss is summed over pixels and averaged over the batch, so its numbers are per
image and match the VAE's ``recon`` (same data, same units).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from translate.errors import TranslateError
from translate.methods.base import Method, as_rgb
from translate.recipes import at_least, choice
from translate.registry import METHODS

RECON_KINDS = ("l2", "l1")


@dataclass
class AutoencoderModel:
    z_dim: int = at_least(16, 1)
    nf: int = at_least(32, 1)  # width of the first conv; doubles per stride-2 conv, at most 8 nf


@dataclass
class AELoss:
    recon: str = choice("l2", *RECON_KINDS)


def recon_error(x_hat: Tensor, x: Tensor, kind: str) -> Tensor:
    """(N,) reconstruction error of [-1, 1] images, summed over pixels.

    ``l2``: squared error, the Gaussian negative log-likelihood with variance 1/2 (constant dropped);
    ``l1``: absolute error, the Laplace negative log-likelihood with scale 1 (constant dropped).
    """
    diff = x_hat.float() - x.float()
    err = diff.square() if kind == "l2" else diff.abs()
    return err.flatten(1).sum(1)


def recon_loss(x_hat: Tensor, x: Tensor, kind: str) -> Tensor:
    """:func:`recon_error`, mean over the batch."""
    return recon_error(x_hat, x, kind).mean()


def check_power_of_two(size: int, method: str) -> None:
    """The encoder halves the image down to 4x4, so the crop must be a power of two >= 16."""
    if size < 16 or size & (size - 1):
        raise TranslateError(f"data.crop_size {size} must be a power of two >= 16 for {method} (e.g. 32 or 64)")


@METHODS.register("ae")
class Autoencoder(Method):
    """A deterministic conv autoencoder. Exports ``AE``."""

    ModelConfig = AutoencoderModel
    LossConfig = AELoss
    data_kind = "images"
    export_names = ("AE",)
    net_name = "conv_ae"

    def __init__(self, recipe, device, precision, info=None) -> None:
        super().__init__(recipe, device, precision, info)
        m, d = recipe.model, recipe.data
        # PyTorch's default init: the reference's N(0, 0.02) starves a net without normalisation.
        self.build("AE", self.net_name, init=False, channels=d.channels, resolution=d.crop_size, z_dim=m.z_dim,
                   nf=m.nf)
        self.optimizers = {"AE": self.adam(self.nets["AE"])}

    def check_size(self, size: int) -> None:
        check_power_of_two(size, self.recipe.method)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, opt = batch["A"], self.optimizers["AE"]
        opt.zero_grad(set_to_none=True)
        with self.amp.autocast():
            x_hat = self.nets["AE"](x)
        loss = recon_loss(x_hat, x, self.recipe.loss.recon)
        self.amp.backward(loss)
        self.amp.step(opt)
        self.amp.update()
        return {"recon": loss.detach()}

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows of input | reconstruction."""
        return torch.cat([as_rgb(batch["A"]), as_rgb(self._reconstruct(batch["A"]))], -1)

    def _reconstruct(self, x: Tensor) -> Tensor:
        net = self.nets["AE"]
        net.eval()
        with self.amp.autocast():
            out = net(x).float()
        net.train()
        return out

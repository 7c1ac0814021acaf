"""Autoencoder: a conv encoder to a ``z_dim`` code and a decoder back, trained on reconstruction alone.

The reconstruction loss is summed over pixels and averaged over the batch, so its numbers are per
image and match the VAE's ``recon`` (same data, same units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from torch import Tensor

from translate.core.losses import recon_error
from translate.core.recipes import LossConfig, ModelConfig, at_least, choice
from translate.core.registry import METHODS
from translate.methods.base import Method

RECON_DISTANCES = ("l2", "l1")


@dataclass
class AutoencoderModel(ModelConfig):
    z_dim: int = at_least(16, 1)
    nf: int = at_least(32, 1)  # width of the first conv; doubles per stride-2 conv, at most 8 nf


@dataclass
class AELoss(LossConfig):
    recon: str = choice("l2", *RECON_DISTANCES)


AELossT = TypeVar("AELossT", bound=AELoss)  # the VAE's loss section adds to the autoencoder's


@METHODS.register("ae")
class Autoencoder(Method[AutoencoderModel, AELossT]):
    """A deterministic conv autoencoder. Exports ``AE``; samples are rows of input | reconstruction."""

    data_kind = "images"
    export_names = ("AE",)
    net_name = "conv_ae"

    def setup(self) -> None:
        # PyTorch's default init: the reference's N(0, 0.02) starves a net without normalisation.
        data = self.recipe.data
        self.build("AE", self.net_name, channels=data.channels, resolution=data.crop_size,
                   z_dim=self.cfg.z_dim, nf=self.cfg.nf)
        self.optimizers = {"AE": self.adam("AE")}

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["A"]
        with self.amp.autocast():
            x_hat = self.nets["AE"](x)
        loss = recon_error(x_hat, x, self.loss_cfg.recon).mean()
        self.descend(loss, "AE")
        self.amp.update()
        return {"recon": loss.detach()}

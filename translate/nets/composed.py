"""A translator composed of a registered encoder and decoder (``model.encoder`` and ``model.decoder``).

The kwargs are the halves' own specs (``{"net": ..., "kwargs": ...}``), so a weights file's metadata
rebuilds the whole from nothing else, whatever the halves are. Which halves fit is the registry's
business (an encoder's ``gives`` code among the decoder's ``takes``); which weights files they start
from and how the recipe sets them is in translate/nets/backbones.py.

``nz > 0`` makes it a multimodal translator (BicycleGAN): a latent vector z is tiled over the image
and concatenated to the input channels (the BicycleGAN code's "add to input"); without a z, zeros,
the mean of the prior, so a plain call is repeatable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from translate.core.registry import NETS, create_net


class Composed(nn.Module):
    """``decoder(encoder(x))``, or ``decoder(encoder(cat(x, tiled z)))`` with ``nz`` > 0.

    Parts frozen for training (:meth:`freeze`) also stay in eval mode when the whole is put in
    training mode, so their batch statistics and running averages do not move either.
    """

    def __init__(self, encoder: dict[str, Any], decoder: dict[str, Any], nz: int = 0) -> None:
        super().__init__()
        self.encoder = create_net(encoder["net"], **encoder.get("kwargs", {}))
        self.decoder = create_net(decoder["net"], **decoder.get("kwargs", {}))
        self.nz = nz
        self.frozen: set[str] = set()
        self.train()  # (a decoder that draws noise while the whole trains learns it now)

    def forward(self, x: Tensor, z: Tensor | None = None, return_code: bool = False) -> Tensor | tuple[Tensor, Any]:
        """The translation of ``x`` (with latent ``z``); ``return_code``: also the encoder's code (one
        call, so DDP sees the whole)."""
        if self.nz:
            if z is None:
                z = x.new_zeros(x.shape[0], self.nz)
            x = torch.cat([x, z.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])], 1)
        code = self.encoder(x)
        y = self.decoder(code)
        return (y, code) if return_code else y

    def freeze(self, part: str, frozen: bool = True) -> None:
        """Keep ``part`` ("encoder" or "decoder") fixed: no gradients, eval mode."""
        getattr(self, part).requires_grad_(not frozen)
        if frozen:
            self.frozen.add(part)
            getattr(self, part).eval()
        else:
            self.frozen.discard(part)
            getattr(self, part).train(self.training)

    def train(self, mode: bool = True) -> Composed:
        super().train(mode)
        for part in self.frozen:
            getattr(self, part).eval()
        if hasattr(self.decoder, "random_noise"):  # StyleGAN2: random noise while the whole trains, as pSp's
            self.decoder.random_noise = mode       # training does, frozen or not; constant when it translates
        return self


@NETS.register("composed", role="translator", family="image", parts=("encoder", "decoder"))
def composed(encoder: dict[str, Any], decoder: dict[str, Any], nz: int = 0) -> nn.Module:
    """An encoder and a decoder of the registry, joined by the code they share."""
    gives, takes = NETS.info(encoder["net"]).gives, NETS.info(decoder["net"]).takes
    if gives not in takes:
        raise ValueError(f"{encoder['net']} gives a {gives} code; {decoder['net']} takes {', '.join(takes)}")
    return Composed(encoder, decoder, nz)

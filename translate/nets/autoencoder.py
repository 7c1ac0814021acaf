"""Convolutional autoencoders (DCGAN-like): stride-2 convs down to 4x4, a linear code, and the mirror
image back up with transposed convs.

``conv_ae`` maps an image to a code ``z``; ``conv_vae`` maps it to a Gaussian q(z|x) = N(mu, exp(logvar))
and its ``encode`` returns the mean. Both decode to ``tanh`` images in [-1, 1] and follow the zoo's
AE interface (``z_dim``, ``resolution``, ``channels``, ``encode``, ``decode``, ``forward = decode(encode)``).

Hidden convs are followed by group norm: per image, so a code never depends on the rest of the batch
(as it would with batch norm), and without any normalisation nets of width 16 and more stall on MNIST
at reconstructing the mean digit.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
from torch import Tensor, nn

from translate.core.registry import NETS
from translate.nets.layers import group_norm, power_of_two


def _widths(resolution: int, nf: int) -> list[int]:
    """Feature widths after each stride-2 conv, from ``resolution`` down to 4x4 (doubling, at most 8 nf)."""
    if not power_of_two(resolution, 16):
        raise ValueError(f"resolution must be a power of two >= 16, got {resolution}")
    return [nf * min(2**i, 8) for i in range(resolution.bit_length() - 3)]


class ConvEncoder(nn.Module):
    """(N, channels, R, R) -> (N, out_features): stride-2 conv-norm-LeakyReLU to 4x4, then a linear layer."""

    def __init__(self, channels: int, resolution: int, nf: int, out_features: int) -> None:
        super().__init__()
        widths = _widths(resolution, nf)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([channels, *widths], widths, strict=False):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), group_norm(c_out), nn.LeakyReLU(0.2, True)]
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[-1] * 16, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.convs(x).flatten(1))


class ConvDecoder(nn.Module):
    """(N, z_dim) -> (N, channels, R, R) in [-1, 1]: a linear layer to 4x4, transposed conv-norm-ReLU, tanh."""

    def __init__(self, channels: int, resolution: int, nf: int, z_dim: int) -> None:
        super().__init__()
        widths = _widths(resolution, nf)[::-1]
        self.fc = nn.Sequential(nn.Linear(z_dim, widths[0] * 16), nn.ReLU(True))
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), group_norm(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, stride=2, padding=1), nn.Tanh()]
        self.convs = nn.Sequential(*layers)
        self.start = widths[0]

    def forward(self, z: Tensor) -> Tensor:
        return self.convs(self.fc(z).view(-1, self.start, 4, 4))


@NETS.register("conv_ae", role="autoencoder", family="autoencoder", recipe_init=False, power_of_two=16)
class ConvAutoencoder(nn.Module):
    """A deterministic conv autoencoder for ``resolution`` x ``resolution`` images (a power of two >= 16).

    ``encode(x) -> z``, ``decode(z) -> x``."""

    def __init__(self, channels: int = 3, resolution: int = 64, z_dim: int = 64, nf: int = 32) -> None:
        super().__init__()
        self.channels, self.resolution, self.z_dim = channels, resolution, z_dim
        self.encoder = ConvEncoder(channels, resolution, nf, self._code_size())
        self.decoder = ConvDecoder(channels, resolution, nf, z_dim)

    def _code_size(self) -> int:
        return self.z_dim

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


@NETS.register("conv_vae", role="autoencoder", family="autoencoder", recipe_init=False, power_of_two=16)
class ConvVAE(ConvAutoencoder):
    """A conv VAE (Gaussian encoder, ``encode`` = mean) for power-of-two resolutions >= 16.

    The encoder gives q(z|x) = N(mu, diag(exp(logvar))). ``forward(x, sample=True)`` is the training
    pass (one call, so DDP sees it): z = mu + sigma * eps with eps from torch's global generator,
    returning ``(x_hat, mu, logvar)``."""

    def _code_size(self) -> int:
        return 2 * self.z_dim

    def encode_dist(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_dist(x)[0]

    @overload
    def forward(self, x: Tensor, sample: Literal[False] = False) -> Tensor: ...
    @overload
    def forward(self, x: Tensor, sample: Literal[True]) -> tuple[Tensor, Tensor, Tensor]: ...
    @overload
    def forward(self, x: Tensor, sample: bool) -> Tensor | tuple[Tensor, Tensor, Tensor]: ...

    def forward(self, x: Tensor, sample: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        if not sample:
            return self.decode(self.encode(x))
        mu, logvar = self.encode_dist(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decode(z), mu, logvar


@NETS.register("conv_dbvae", role="autoencoder", family="autoencoder", recipe_init=False, power_of_two=16)
class ConvDBVAE(ConvVAE):
    """A conv VAE whose encoder also gives a class logit (DB-VAE), for power-of-two resolutions >= 16.

    DB-VAE (Amini et al. 2019): the VAE's encoder also classifies. Its output is one logit (is the
    image of the positive class), then the mean and log-variance of q(z|x); the decoder is the VAE's.
    ``forward(x, sample=True)`` -> ``(x_hat, mu, logvar, logit)``."""

    def _code_size(self) -> int:
        return 2 * self.z_dim + 1

    def encode_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.encoder(x)
        return out[:, 0], out[:, 1 : 1 + self.z_dim], out[:, 1 + self.z_dim :]

    def classify(self, x: Tensor) -> Tensor:
        """(N,) logits of the positive class."""
        return self.encode_all(x)[0]

    def encode_dist(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_all(x)[1:]

    def forward(self, x: Tensor, sample: bool = False) -> Tensor | tuple[Tensor, ...]:  # type: ignore[override]
        if not sample:
            return self.decode(self.encode(x))
        logit, mu, logvar = self.encode_all(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decode(z), mu, logvar, logit


# --- encoders for composed translators: the zoo's AE/VAE encoders, loadable from their weights ----

def _code_options(c: dict) -> dict:
    return {"channels": c["in_ch"], "resolution": c["size"], "z_dim": c["z_dim"], "nf": c["ngf"]}


@NETS.register("vae_encoder", role="encoder", family="autoencoder", fixed_size=True, gives="vector", recipe_init=False,
               options=_code_options, source=("conv_vae", "encoder.", "vae"))
class VAEEncoder(ConvEncoder):
    """The conv VAE's encoder (the mean code); starts from `translate train --recipe vae` weights.

    ``forward`` gives the mean code (as ``ConvVAE.encode``), with ``logvar=True`` the mean and the
    log-variance."""

    def __init__(self, channels: int = 3, resolution: int = 64, z_dim: int = 64, nf: int = 32) -> None:
        super().__init__(channels, resolution, nf, 2 * z_dim)
        self.z_dim = z_dim

    @overload
    def forward(self, x: Tensor, logvar: Literal[False] = False) -> Tensor: ...
    @overload
    def forward(self, x: Tensor, logvar: Literal[True]) -> tuple[Tensor, Tensor]: ...
    @overload
    def forward(self, x: Tensor, logvar: bool) -> Tensor | tuple[Tensor, Tensor]: ...

    def forward(self, x: Tensor, logvar: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        mu, log_var = super().forward(x).chunk(2, dim=1)
        return (mu, log_var) if logvar else mu


@NETS.register("ae_encoder", role="encoder", family="autoencoder", fixed_size=True, gives="vector", recipe_init=False,
               options=_code_options, source=("conv_ae", "encoder.", "ae"))
def ae_encoder(channels: int = 3, resolution: int = 64, z_dim: int = 64, nf: int = 32) -> nn.Module:
    """The conv autoencoder's encoder (a ``z_dim`` code); starts from `translate train --recipe ae` weights."""
    return ConvEncoder(channels, resolution, nf, z_dim)

"""Latent-density resampling, the DB-VAE's debiasing (Amini et al. 2019, as MIT 6.S191's lab does it).

Images whose latent codes sit where few others are (rare kinds of faces: lighting, pose, skin tone)
are drawn more often. For each latent dimension, a histogram of the codes' means over the data
estimates their density; an image's weight in that dimension is the inverse of its bin's smoothed
density, and its sampling weight is the largest over the dimensions (the lab's rule), normalised
to sum to 1. ``alpha`` smooths the histograms: the larger, the closer to uniform sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Resampling:
    """Sampling probabilities of a set of codes, and how the weights spread."""

    p: Tensor  # (N,) sums to 1
    density: Tensor  # (N,) the smoothed latent density of each code (the smallest over dimensions)

    @property
    def max_min(self) -> float:
        """The most over the least often drawn image (1: uniform)."""
        return float(self.p.max() / self.p.min())

    @property
    def entropy(self) -> float:
        """Entropy of the probabilities over log N: 1 for uniform sampling, less as they concentrate."""
        n = self.p.numel()
        h = -(self.p * self.p.clamp_min(1e-30).log()).sum()
        return float(h / math.log(n)) if n > 1 else 1.0


def resampling(mu: Tensor, bins: int = 10, alpha: float = 0.001) -> Resampling:
    """Probabilities for the codes ``mu`` (N, z_dim): per dimension, a ``bins``-bin histogram of the
    codes (density normalised, plus ``alpha``, renormalised); weight 1 / density of the code's bin;
    the largest weight over the dimensions, normalised."""
    mu = mu.detach().float().cpu()
    n, dims = mu.shape
    weight = torch.zeros(n)
    density = torch.full((n,), math.inf)
    for d in range(dims):
        x = mu[:, d]
        lo, hi = float(x.min()), float(x.max())
        span = max(hi - lo, 1e-12)  # a dimension the encoder does not use puts every code in one bin
        idx = ((x - lo) / span * bins).long().clamp_(0, bins - 1)
        counts = torch.bincount(idx, minlength=bins).float()
        hist = counts / counts.sum() + alpha
        hist = hist / hist.sum()
        w = 1.0 / hist[idx]
        weight = torch.maximum(weight, w / w.sum())
        density = torch.minimum(density, hist[idx])
    return Resampling(weight / weight.sum(), density)

"""Latent-density resampling, the DB-VAE's debiasing (Amini et al. 2019, as MIT 6.S191's lab does it).

Images whose latent codes sit where few others are (rare kinds of faces: lighting, pose, skin tone)
are drawn more often. For each latent dimension, a histogram of the codes' means over the data
estimates their density; an image's weight in that dimension is the inverse of its bin's smoothed
density, and its sampling weight is the largest over the dimensions (the lab's rule), normalised
to sum to 1. ``alpha`` smooths the histograms: the larger, the closer to uniform sampling.

The lab's ``get_training_sample_probabilities`` step for step: ``np.histogram(density=True)``
(counts / (N x bin width), so the density of a dimension whose codes spread little is large),
``alpha`` added to that density (not to the bin's share of the codes: the same ``alpha`` then
smooths every dimension as much relative to its spread), renormalised to sum 1 over the bins,
1 / the code's bin, normalised over the codes; the elementwise maximum over the dimensions.
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
    """Probabilities for the codes ``mu`` (N, z_dim): per dimension, a ``bins``-bin histogram density
    of the codes plus ``alpha``, renormalised over the bins; weight 1 / that of the code's bin; the
    largest weight over the dimensions, normalised. In float64, as the lab's numpy."""
    n = mu.shape[0]
    codes = mu.detach().double().cpu().t().contiguous()  # (z_dim, N): a dimension's codes side by side
    p = torch.zeros(n, dtype=torch.float64)
    density = torch.full((n,), math.inf, dtype=torch.float64)
    for x in codes:
        lo, hi = float(x.min()), float(x.max())
        if lo == hi:  # a dimension the encoder does not use: numpy's range for it
            lo, hi = lo - 0.5, hi + 0.5
        edges = lo + torch.arange(bins + 1, dtype=torch.float64) * ((hi - lo) / bins)  # np.linspace's
        edges[-1] = hi
        # the lab's np.digitize against the edges with the outer two at -inf, +inf: bin i holds
        # edges[i] <= x < edges[i+1], the last bin also its right edge, as np.histogram counts
        idx = torch.bucketize(x, edges[1:-1], right=True)
        counts = torch.bincount(idx, minlength=bins).double()
        hist = counts / counts.sum() / edges.diff() + alpha  # np.histogram(density=True) + smoothing
        hist = hist / hist.sum()
        w = 1.0 / hist[idx]
        p = torch.maximum(p, w / w.sum())
        density = torch.minimum(density, hist[idx])
    return Resampling((p / p.sum()).float(), density.float())

"""Projection heads: CUT's per-layer two-layer MLPs that embed sampled patch features for PatchNCE."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from translate.core.registry import NETS


@NETS.register("patch_mlp", role="head", family="image")
class PatchSampleMLP(nn.Module):
    """CUT's projection heads: a two-layer MLP per feature layer, on sampled patches, L2-normalised.

    For each feature map: the features at ``patch_ids`` (or at ``num_patches`` random positions, drawn
    from torch's global generator), through Linear-ReLU-Linear to ``nc`` values, L2-normalised.

    Sized by the channels of the layers it serves (known when it is built, so it is in the state from
    the first step: checkpoints and resume are exact, where the CUT code creates its heads lazily)."""

    def __init__(self, channels: list[int], nc: int = 256) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)) for c in channels)

    def forward(self, feats: list[Tensor], num_patches: int, patch_ids: list[Tensor] | None = None
                ) -> tuple[list[Tensor], list[Tensor]]:
        """(per layer (N, P, nc) embeddings, the positions used); P = min(num_patches, H * W)."""
        out, ids = [], []
        for k, (feat, mlp) in enumerate(zip(feats, self.mlps, strict=True)):
            flat = feat.flatten(2).transpose(1, 2)  # (N, H*W, C)
            if patch_ids is None:
                idx = torch.randperm(flat.shape[1], device=flat.device)[: min(num_patches, flat.shape[1])]
            else:
                idx = patch_ids[k]
            out.append(_unit(mlp(flat[:, idx])))
            ids.append(idx)
        return out, ids


def _unit(x: Tensor) -> Tensor:
    """Each row over its L2 norm + 1e-7, as the CUT code's ``Normalize(2)``, to the last bit. One
    change: the squared norm is clamped at 1e-30, where the CUT code takes the square root of 0 for a
    row of zeros (every ReLU of the head off) and its gradient is NaN (seen here in a FastCUT test);
    no value above the clamp changes."""
    return x / (x.pow(2).sum(-1, keepdim=True).clamp_min(1e-30).pow(0.5) + 1e-7)

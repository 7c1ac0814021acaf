"""Random crop and flip as batched tensor ops on the training device (kornia).

Both images of a pair get the same crop and flip (they are cropped as one stacked tensor); the
two domains of unpaired data get independent ones, as in the reference. Randomness comes from
torch's global generator, whose state checkpoints save, so a resumed run draws the same crops.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import Tensor

from translate.core.images import to_signed
from translate.core.recipes import DataConfig


class Augment:
    """Turns a collated uint8 batch on the device into float [-1, 1] training tensors."""

    def __init__(self, cfg: DataConfig, paired: bool) -> None:
        self.cfg, self.paired = cfg, paired
        ops: list[K.AugmentationBase2D] = []
        if "crop" in cfg.preprocess:
            ops.append(K.RandomCrop((cfg.crop_size, cfg.crop_size)))
        if cfg.flip:
            ops.append(K.RandomHorizontalFlip())
        self.ops = K.AugmentationSequential(*ops) if ops else None

    def _random(self, x: Tensor) -> Tensor:
        return self.ops(x) if self.ops is not None else x

    def __call__(self, batch: dict[str, Tensor], train: bool = True) -> dict[str, Tensor]:
        """Images under "A" (and "B") become float crops; other keys (labels) pass through."""
        out = dict(batch)
        images = {k: to_signed(batch[k]) for k in ("A", "B") if k in batch}
        if not train:
            out.update({k: self._center(v) for k, v in images.items()})
        elif self.paired and len(images) == 2:
            a, b = images["A"], images["B"]
            ab = self._random(torch.cat([a, b], 1))
            out.update({"A": ab[:, : a.shape[1]], "B": ab[:, a.shape[1] :]})
        else:
            out.update({k: self._random(v) for k, v in images.items()})
        return out

    def _center(self, x: Tensor) -> Tensor:
        if "crop" not in self.cfg.preprocess:
            return x
        c = self.cfg.crop_size
        top, left = (x.shape[-2] - c) // 2, (x.shape[-1] - c) // 2
        return x[..., top : top + c, left : left + c]

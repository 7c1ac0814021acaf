"""DB-VAE, "Uncovering and Mitigating Algorithmic Bias through Learned Latent Structure" (Amini et al.
2019), as MIT 6.S191's debiasing lab trains it: a classifier that learns which kinds of images are
rare in its data and sees them more often.

One encoder gives the class logit and q(z|x) (``z_dim`` 100, the lab's latent_dim); the decoder is a
VAE's. The loss is the binary cross-entropy of the logit for every image plus, for images of the
positive class only (the VAE models the positives: faces, not the non-faces), the VAE loss: the
reconstruction error (mean absolute error per pixel on [0, 1] pixels, as the lab) plus ``kl_weight``
times the KL to N(0, I).

Every batch is half positives, half negatives (the lab's ``get_batch``), whatever the folder's
ratio. Each epoch begins with the latent means of every positive image; their per-dimension
histograms give each one a sampling probability that grows as its code gets rarer
(translate/core/debias.py), and the positive half of every batch is drawn with those probabilities (the
negative half uniformly). The log carries how far the probabilities spread: ``p_max_min`` (most /
least drawn) and ``p_entropy`` (1: uniform). ``debias.enabled=false`` is the lab's standard
classifier beside it: the same balanced batches, drawn uniformly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from translate.core.debias import resampling
from translate.core.errors import TranslateError
from translate.core.losses import kl_per_image
from translate.core.recipes import LossConfig, ModelConfig, at_least
from translate.core.registry import METHODS
from translate.methods.base import Method

if TYPE_CHECKING:
    from translate.nets import ExportedNet


@dataclass
class DBVAEModel(ModelConfig):
    z_dim: int = at_least(100, 1)  # the lab's latent_dim
    nf: int = at_least(32, 1)


@dataclass
class DBVAELoss(LossConfig):
    kl_weight: float = at_least(0.0005, 0.0)  # the lab's; the reconstruction term is a per-pixel mean


@dataclass
class DebiasConfig:
    enabled: bool = True  # false: a plain classifier (balanced batches drawn uniformly), for comparison
    bins: int = at_least(10, 2)  # histogram bins per latent dimension
    alpha: float = at_least(0.001, 0.0)  # the lab's smoothing_fac, added to the density; larger: nearer uniform


@METHODS.register("dbvae")
class DBVAE(Method[DBVAEModel, DBVAELoss]):
    """A debiased binary classifier on ``classes`` data (one subfolder per class). Exports ``AE``
    (``classify``, ``encode``, ``decode``); samples are rows of input | reconstruction (of the mean code)."""

    Sections = {"debias": DebiasConfig}
    data_kind = "classes"
    export_names = ("AE",)

    def setup(self) -> None:
        data = self.recipe.data
        classes = list(self.info.get("classes") or [])
        if len(classes) < 2:
            raise TranslateError(f"dbvae trains a classifier: {data.path} needs two or more class subfolders "
                                 "(e.g. face/ and nonface/)")
        name = data.positive or classes[0]
        if name not in classes:
            raise TranslateError(f"data.positive {name!r} is not a subfolder of {data.path} "
                                 f"(found: {', '.join(classes)})")
        self.positive = classes.index(name)
        if self.recipe.train.batch_size < 2:
            raise TranslateError(f"dbvae fills half of every batch with each class: train.batch_size must be 2 or "
                                 f"more (got {self.recipe.train.batch_size}; the lab's is 32)")
        self.info["positive"] = name
        self.build("AE", "conv_dbvae", channels=data.channels, resolution=data.crop_size,
                   z_dim=self.cfg.z_dim, nf=self.cfg.nf)
        self.optimizers = {"AE": self.adam("AE")}
        self.weights: Tensor | None = None  # this epoch's sampling weights over the dataset (None: uniform)
        self.halves: Tensor | None = None  # per item: positive (the first half of every batch) or not
        self.spread = torch.ones(2)  # (max / min, entropy) of the positives' probabilities

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["A"]
        y = (batch["label"] == self.positive).float()
        with self.amp.autocast():
            x_hat, mu, logvar, logit = self.nets["AE"](x, sample=True)
        bce = F.binary_cross_entropy_with_logits(logit.float(), y, reduction="none")
        # pixels in [-1, 1]: half their absolute error is the lab's, on [0, 1] pixels ((x + 1) / 2)
        recon = (x_hat.float() - x.float()).abs().flatten(1).mean(1) / 2
        kl = kl_per_image(mu, logvar)
        vae = recon + self.loss_cfg.kl_weight * kl
        loss = (bce + y * vae).mean()
        self.descend(loss, "AE")
        self.amp.update()
        positives = y.sum().clamp_min(1)
        accuracy = ((logit.detach() > 0).float() == y).float().mean()
        return {"loss": loss.detach(), "bce": bce.mean().detach(), "recon": ((y * recon).sum() / positives).detach(),
                "kl": ((y * kl).sum() / positives).detach(), "accuracy": accuracy,
                "p_max_min": self.spread[0].to(x.device), "p_entropy": self.spread[1].to(x.device)}

    @torch.no_grad()
    def resample(self, batches: Iterable[tuple[list[int], dict[str, Tensor]]], n: int) -> None:
        """The coming epoch's sampling weights over the ``n`` dataset items and which are positives
        (``batches``: every readable item in order, with its index): the positives weighted by the
        rarity of their latent means (debias.enabled; else uniformly), the negatives uniformly, each
        class filling half of every batch. Unreadable items are never drawn."""
        net = cast("ExportedNet", self.net("AE"))
        net.eval()
        indices, means, labels = [], [], []
        for idx, batch in batches:  # not all under autocast: drawing a batch prepares it (train.py)
            if self.recipe.debias.enabled:
                with self.amp.autocast():
                    means.append(net.encode(batch["A"]).float().cpu())
            indices += idx
            labels.append(batch["label"].cpu())
        net.train()
        if not indices:
            return
        index, label = torch.tensor(indices), torch.cat(labels)
        pos = label == self.positive
        weights = torch.zeros(n, dtype=torch.float64)
        weights[index] = 1.0
        if pos.any() and self.recipe.debias.enabled:
            r = resampling(torch.cat(means)[pos], self.recipe.debias.bins, self.recipe.debias.alpha)
            weights[index[pos]] = r.p.double()
            self.spread = torch.tensor([r.max_min, r.entropy])
        self.weights = weights
        # both classes present: half of every batch each (the lab's get_batch); else the one there is
        self.halves = torch.zeros(n, dtype=torch.bool).index_fill_(0, index[pos], True) \
            if pos.any() and not pos.all() else None

    def extra_state(self) -> dict[str, Any]:
        return {"weights": self.weights if self.weights is not None else torch.zeros(0),
                "halves": self.halves if self.halves is not None else torch.zeros(0, dtype=torch.bool),
                "spread": self.spread}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        w, h = state.get("weights"), state.get("halves")
        self.weights = w if w is not None and w.numel() else None
        self.halves = h if h is not None and h.numel() else None
        self.spread = state.get("spread", torch.ones(2))

"""Losses shared by the GAN methods, the reference's pool of past fakes, and LPIPS (pSp's loss term and
`translate eval --lpips`), built from a local weights file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.errors import TranslateError

GAN_MODES = ("lsgan", "vanilla", "hinge", "wgangp")


class GANLoss(nn.Module):
    """Adversarial loss on discriminator outputs of any shape (PatchGAN maps included).

    ``lsgan``: least squares to 1/0; ``vanilla``: BCE with logits; ``hinge``: max(0, 1 -+ D) for D and
    -D for G; ``wgangp``: -D / +D (pair it with :func:`gradient_penalty`).
    """

    def __init__(self, mode: str = "lsgan") -> None:
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown gan_mode {mode!r}; choose from {', '.join(GAN_MODES)}")
        self.mode = mode

    def forward(self, pred: Tensor, target_is_real: bool, for_discriminator: bool = True) -> Tensor:
        pred = pred.float()
        if self.mode in ("lsgan", "vanilla"):
            target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
            loss = F.mse_loss if self.mode == "lsgan" else F.binary_cross_entropy_with_logits
            return loss(pred, target)
        if self.mode == "hinge" and for_discriminator:
            return F.relu(1 - pred).mean() if target_is_real else F.relu(1 + pred).mean()
        # wgangp, and hinge for the generator: raise D's score on fakes
        return -pred.mean() if target_is_real else pred.mean()


def gradient_penalty(D: nn.Module, real: Tensor, fake: Tensor, weight: float = 10.0) -> Tensor:
    """WGAN-GP: (||grad D(x_hat)|| - 1)^2 on random interpolates of real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat).float().sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)
    return weight * ((norm - 1) ** 2).mean()


class ImagePool:
    """Buffer of past generated images (Shrivastava et al.), as the reference's ImagePool.

    Until full, each new image is stored and returned. Then, with probability 1/2, a stored image
    is returned and replaced by the new one; otherwise the new image is returned. Its random
    choices come from its own generator, so its state can be saved for exact resumption.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = size
        self.images: list[Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.gen).item() > 0.5:
                i = int(torch.randint(0, self.size, (), generator=self.gen))
                out.append(self.images[i].clone())
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        return {"images": [t.cpu() for t in self.images], "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.images = [t.to(device) for t in state["images"]]
        self.gen.set_state(state["gen"])


def patch_nce(q: Tensor, k: Tensor, t: float = 0.07) -> Tensor:
    """PatchNCE (Park et al. 2020): ``q`` and ``k`` are (N, P, D) unit vectors of the same P positions in
    an output and its input. Each query's positive is its own key; the other P - 1 keys of the same
    image are its negatives. Returns each query's cross-entropy of picking the positive, temperature
    ``t`` (N * P values; their mean is the loss). Laid out as the CUT code's PatchNCELoss: the
    positive's logit first, then all P keys with the query's own masked to -10 (a weight of
    e^(-10/t), nil), and no gradient through the keys: they are targets. Random unit vectors give
    about log P."""
    k = k.detach()
    n, p, _ = q.shape
    pos = torch.bmm(q.reshape(n * p, 1, -1), k.reshape(n * p, -1, 1)).reshape(n * p, 1)
    neg = torch.bmm(q, k.transpose(1, 2))  # (N, P, P)
    neg = neg.masked_fill(torch.eye(p, dtype=torch.bool, device=q.device)[None], -10.0).reshape(n * p, p)
    logits = torch.cat([pos, neg], 1) / t
    return F.cross_entropy(logits, torch.zeros(n * p, dtype=torch.long, device=q.device), reduction="none")


# --- the autoencoders' terms, per image (training means them; `translate score` keeps them per image)

def recon_error(x_hat: Tensor, x: Tensor, distance: str) -> Tensor:
    """(N,) reconstruction error of [-1, 1] images, summed over pixels.

    ``l2``: squared error, the Gaussian negative log-likelihood with variance 1/2 (constant dropped);
    ``l1``: absolute error, the Laplace negative log-likelihood with scale 1 (constant dropped).
    """
    diff = x_hat.float() - x.float()
    err = diff.square() if distance == "l2" else diff.abs()
    return err.flatten(1).sum(1)


def kl_per_image(mu: Tensor, logvar: Tensor) -> Tensor:
    """(N,) KL(N(mu, exp(logvar)) || N(0, I)) in nats, summed over z."""
    mu, logvar = mu.float(), logvar.float()
    return (0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)).sum(1)


ALEXNET = "alexnet-owt-7be5be79.pth"  # the torchvision weights file LPIPS(alex) is built from


def load_lpips(path: str | Path, device: torch.device) -> Any:
    """LPIPS with its AlexNet backbone from the torchvision weights file at ``path``."""
    from torchmetrics.functional.image.lpips import _LPIPS

    path = Path(path)
    if not path.is_file():
        raise TranslateError(f"--lpips file not found: {path} (the torchvision AlexNet weights, {ALEXNET})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    except Exception:
        features = {}
    if not features:
        raise TranslateError(f"--lpips {path} does not hold torchvision AlexNet weights ({ALEXNET})")
    net = _LPIPS(pretrained=True, net="alex", pnet_rand=True)  # the linear layers torchmetrics ships
    mapped = {f"{name}.{key}": features[key] for name, part in net.net.named_children()
              for child, _ in part.named_children() for key in (f"{child}.weight", f"{child}.bias") if key in features}
    missing, _ = net.net.load_state_dict(mapped, strict=False)
    if missing:
        raise TranslateError(f"--lpips {path}: {len(missing)} AlexNet tensors missing ({ALEXNET} is expected)")
    return net.to(device).eval()

"""What `translate run` can be told, with its defaults: the one place they are written.

Torch-free, so the CLI reads the defaults (and `translate --help` shows them) without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunOptions:
    """Everything `translate run` can be told (defaults are the CLI's)."""

    weights: Path | None = None
    direction: str = "AtoB"
    size: int | None = None  # resize so the shorter side is this many pixels
    max_pixels: int = 2048 * 2048  # larger images are translated in tiles
    tile: int = 1024
    overlap: int = 128
    batch_size: int | None = None  # None: 16 on CUDA, 1 on the CPU (larger batches only thrash its caches)
    precision: str = "auto"
    engine: str = "auto"  # auto | torch | openvino (engines.py: auto is OpenVINO on CPUs with native bf16)
    compile: bool = False
    format: str = "keep"  # keep | png | jpg | webp
    quality: int = 95
    skip_existing: bool = True
    keep_alpha: bool = True
    workers: int | None = None
    device: str = "auto"
    samples: int = 1  # translations per input, from as many latents (models with one: BicycleGAN)
    seed: int | None = None  # of the latents; None: z = 0 (the prior's mean) for one sample, seed 0 for more
    style: Path | None = None  # an example image: its code (BicycleGAN's E) is every input's latent

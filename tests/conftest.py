"""Shared fixtures: small copies of real images from ../shared/data, skipped when it is absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs the real image data at {p} (../shared/data beside the repository)")
    return p


def copy_first(src: Path, dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.is_file())[:n]
    return [Path(shutil.copy(p, dst / p.name)) for p in files]


@pytest.fixture
def pairs4(tmp_path: Path) -> Path:
    """4 side-by-side photo|outline pairs in the aligned layout (train/)."""
    root = tmp_path / "p2o"
    copy_first(shared("people2outline", "train"), root / "train", 4)
    return root


@pytest.fixture
def h2z4(tmp_path: Path) -> Path:
    """4 horses and 4 zebras in the unaligned layout (trainA/, trainB/)."""
    root = tmp_path / "h2z"
    copy_first(shared("horse2zebra", "trainA"), root / "trainA", 4)
    copy_first(shared("horse2zebra", "trainB"), root / "trainB", 4)
    return root

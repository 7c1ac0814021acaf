"""Data layouts, image decoding of every common kind of file, bad files, and augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_first, shared
from PIL import Image

from translate.core.errors import TranslateError
from translate.core.images import read_rgb
from translate.core.recipes import DataConfig, load_recipe
from translate.data import Augment, collate, open_dataset
from translate.data.layouts import prepare
from translate.training.train import Trainer

RED, BLUE, GREEN = (200, 0, 0), (0, 0, 200), (0, 180, 0)


def solid(path: Path, size: tuple[int, int], color: tuple[int, ...], mode: str = "RGB", **save) -> Path:
    """A one-colour image of ``size`` = (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def side_by_side(path: Path, w: int, h: int, left: tuple[int, int, int], right: tuple[int, int, int]) -> Path:
    im = Image.new("RGB", (2 * w, h), left)
    im.paste(Image.new("RGB", (w, h), right), (w, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def colour_of(t: torch.Tensor) -> tuple[int, ...]:
    """The colour of a one-colour (3, H, W) uint8 image."""
    flat = t.reshape(3, -1)
    assert (flat == flat[:, :1]).all(), "not a one-colour image"
    return tuple(int(v) for v in flat[:, 0])


def truncated_jpeg(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --- layouts -------------------------------------------------------------------------------------------


def test_aligned_splits_left_right_and_btoa_swaps(tmp_path):
    side_by_side(tmp_path / "train" / "0.png", 32, 32, RED, BLUE)
    cfg = DataConfig(path=str(tmp_path), preprocess="none")
    item = open_dataset(cfg, "paired")[0]
    assert item["A"].shape == item["B"].shape == (3, 32, 32)
    assert colour_of(item["A"]) == RED and colour_of(item["B"]) == BLUE
    swapped = open_dataset(DataConfig(path=str(tmp_path), preprocess="none", direction="BtoA"), "paired")[0]
    assert colour_of(swapped["A"]) == BLUE and colour_of(swapped["B"]) == RED


def test_aligned_real_pairs(pairs4):
    cfg = DataConfig(path=str(pairs4), preprocess="none")  # 512x256 files: halves kept at 256x256
    ds = open_dataset(cfg, "paired")
    assert len(ds) == 4
    files = sorted((pairs4 / "train").iterdir())
    for i, path in enumerate(files):
        whole, item = read_rgb(path), ds[i]
        half = whole.shape[-1] // 2
        assert torch.equal(item["A"], whole[..., :half])
        assert torch.equal(item["B"], whole[..., half:])
    back = open_dataset(DataConfig(path=str(pairs4), preprocess="none", direction="BtoA"), "paired")[0]
    assert torch.equal(back["A"], ds[0]["B"]) and torch.equal(back["B"], ds[0]["A"])
    # the recipe's own preprocessing: both halves resized to load_size
    cfg = load_recipe("pix2pix", [f"data.path={pairs4}"]).data
    item = open_dataset(cfg, "paired")[0]
    assert item["A"].shape == item["B"].shape == (3, cfg.load_size, cfg.load_size)


def test_paired_folders_match_by_name(tmp_path):
    for name, a, b in (("x", RED, BLUE), ("y", GREEN, RED)):
        solid(tmp_path / "A" / f"{name}.png", (16, 16), a)
        solid(tmp_path / "B" / f"{name}.png", (16, 16), b)
    solid(tmp_path / "A" / "only_in_a.png", (16, 16), (1, 2, 3))
    solid(tmp_path / "B" / "only_in_b.png", (16, 16), (4, 5, 6))
    ds = open_dataset(DataConfig(path=str(tmp_path), preprocess="none"), "paired")
    assert len(ds) == 2
    got = {Path(ds[i]["path"]).stem: (colour_of(ds[i]["A"]), colour_of(ds[i]["B"])) for i in range(len(ds))}
    assert got == {"x": (RED, BLUE), "y": (GREEN, RED)}


def test_unaligned_b_index_depends_on_seed_epoch_index(tmp_path):
    colours_a = [(10 * i, 0, 0) for i in range(3)]
    colours_b = [(0, 20 * i, 7) for i in range(8)]
    for i, c in enumerate(colours_a):
        solid(tmp_path / "trainA" / f"{i}.png", (8, 8), c)
    for i, c in enumerate(colours_b):
        solid(tmp_path / "trainB" / f"{i}.png", (8, 8), c)
    cfg = DataConfig(path=str(tmp_path), preprocess="none")
    one, two = open_dataset(cfg, "unpaired", seed=5), open_dataset(cfg, "unpaired", seed=5)
    assert len(one) == 8

    def order(ds, epoch):
        ds.epoch = epoch
        return [ds.b_index(i) for i in range(len(ds))]

    assert order(one, 0) == order(two, 0)
    assert order(one, 1) == order(two, 1)
    assert order(one, 0) != order(one, 1)
    assert order(one, 0) != order(open_dataset(cfg, "unpaired", seed=6), 0)
    # the item really holds A in order and the B that b_index names
    one.epoch = 1
    for i in range(len(one)):
        item = one[i]
        assert colour_of(item["A"]) == colours_a[i % 3]
        assert colour_of(item["B"]) == colours_b[one.b_index(i)]


# --- bad files -----------------------------------------------------------------------------------------


def test_bad_files_carry_an_error_and_collate_drops_them(tmp_path):
    folder = tmp_path / "train"
    side_by_side(folder / "0_good.png", 16, 16, RED, BLUE)
    bad_jpeg = truncated_jpeg(folder / "1_truncated.jpg")
    bad_png = folder / "2_text.png"
    bad_png.write_text("this is not an image\n")
    ds = open_dataset(DataConfig(path=str(tmp_path), preprocess="none"), "paired")
    items = [ds[i] for i in range(len(ds))]
    assert "error" not in items[0]
    for item, bad in zip(items[1:], (bad_jpeg, bad_png), strict=True):
        assert "A" not in item
        assert str(bad) in item["error"] and "\n" not in item["error"]
    batch = collate(items)
    assert batch["A"].shape == (1, 3, 16, 16)
    assert batch["paths"] == [str(folder / "0_good.png")]
    assert len(batch["errors"]) == 2
    assert str(bad_jpeg) in batch["errors"][0] and str(bad_png) in batch["errors"][1]
    only_bad = collate(items[1:])
    assert "A" not in only_bad and len(only_bad["errors"]) == 2


def test_training_skips_a_truncated_image(h2z4, tmp_path):
    bad = h2z4 / "trainA" / "zz_truncated.jpg"
    data = (next(iter(sorted((h2z4 / "trainA").iterdir())))).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    tiny = ["data.load_size=72", "data.crop_size=64", "data.num_workers=0", "model.generator=resnet_6blocks",
            "model.ngf=8", "model.ndf=8", "train.batch_size=2", "train.log_every=1", "train.sample_every=0",
            "train.device=cpu", "train.max_steps=3"]
    result = Trainer(load_recipe("cyclegan", [f"data.path={h2z4}", *tiny]), tmp_path / "run", quiet=True).fit()
    assert result.step == 3
    assert len(result.skipped) == 1 and bad.name in result.skipped[0]
    assert (tmp_path / "run" / "latest.safetensors").is_file()


# --- decoding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode", "colour", "expected", "save"),
    [
        ("gray.png", "L", 77, (77, 77, 77), {}),
        ("rgba.png", "RGBA", (10, 20, 30, 128), (10, 20, 30), {}),
        ("gray_alpha.png", "LA", (90, 10), (90, 90, 90), {}),
        ("cmyk.jpg", "CMYK", (0, 255, 255, 0), (255, 0, 0), {"quality": 95}),
        ("rgb.webp", "RGB", GREEN, GREEN, {"lossless": True}),
        ("rgb.bmp", "RGB", BLUE, BLUE, {}),
        ("rgb.tif", "RGB", RED, RED, {}),
    ],
)
def test_modes_read_as_rgb_uint8(tmp_path, name, mode, colour, expected, save):
    path = solid(tmp_path / name, (24, 16), colour, mode, **save)
    t = read_rgb(path)
    assert t.dtype == torch.uint8 and t.shape == (3, 16, 24)
    assert (t.reshape(3, -1).int() - torch.tensor(expected).view(3, 1)).abs().max() <= 3, t[:, 0, 0]


def test_palette_image_reads_its_colours(tmp_path):
    im = Image.new("P", (20, 10), 1)
    im.putpalette([0, 0, 0, 250, 100, 50, 5, 6, 7] + [0] * (768 - 9))
    im.paste(2, (0, 0, 10, 10))
    im.save(tmp_path / "p.png")
    im.save(tmp_path / "p_transparent.png", transparency=0)
    for path in (tmp_path / "p.png", tmp_path / "p_transparent.png"):
        t = read_rgb(path)
        assert t.dtype == torch.uint8 and t.shape == (3, 10, 20)
        assert colour_of(t[:, :, :10]) == (5, 6, 7) and colour_of(t[:, :, 10:]) == (250, 100, 50)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.zeros((4, 6), dtype=np.uint16)
    arr[0] = 65535
    arr[1] = 100 * 257  # 8-bit 100 in 16 bits
    arr[2] = 32768
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really a 16-bit image on disk
    t = read_rgb(path)
    assert t.dtype == torch.uint8 and t.shape == (3, 4, 6)
    assert (t[:, 0] == 255).all()
    assert (t[:, 1] == 100).all()
    assert (t[:, 2] == 128).all()
    assert (t[:, 3] == 0).all()
    # a dark 16-bit image stays dark: its values are not taken for 8-bit ones
    dark = np.full((2, 2), 200, dtype=np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark.png")
    assert read_rgb(tmp_path / "dark.png").max() <= 1


def test_exif_orientation_6_rotates(tmp_path):
    im = Image.new("RGB", (40, 20), RED)
    im.paste(Image.new("RGB", (20, 20), BLUE), (20, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif.tobytes(), quality=95)
    t = read_rgb(path)
    assert t.shape == (3, 40, 20)  # width and height swap
    top, bottom = t[:, 2:18].float().mean((1, 2)), t[:, 22:38].float().mean((1, 2))
    assert top[0] > 150 and top[2] < 50, top  # the left (red) half is now on top
    assert bottom[2] > 150 and bottom[0] < 50, bottom


def test_real_images_read_as_rgb():
    path = next(iter(sorted(shared("horse2zebra", "trainA").iterdir())))
    t = read_rgb(path)
    assert t.dtype == torch.uint8 and t.shape == (3, 256, 256)


# --- preprocessing and augmentation --------------------------------------------------------------------


def test_small_image_with_crop_is_resized_up_with_a_warning(tmp_path):
    cfg = DataConfig(preprocess="crop", crop_size=64)
    img, warning = prepare(torch.zeros(3, 30, 40, dtype=torch.uint8), cfg)
    assert img.shape[-2] == 64 and img.shape[-1] >= 64
    assert abs(img.shape[-1] / img.shape[-2] - 40 / 30) < 0.05  # aspect kept
    assert warning and "crop_size 64" in warning
    # a big enough image is left alone, without a warning
    img, warning = prepare(torch.zeros(3, 70, 80, dtype=torch.uint8), cfg)
    assert img.shape[-2:] == (70, 80) and warning is None
    # through a dataset, the note names the file
    side_by_side(tmp_path / "train" / "small.png", 30, 30, RED, BLUE)
    item = open_dataset(DataConfig(path=str(tmp_path), preprocess="crop", crop_size=64), "paired")[0]
    assert item["A"].shape == item["B"].shape == (3, 64, 64)
    assert len(item["notes"]) == 1 and "small.png" in item["notes"][0] and "smaller than crop_size" in item["notes"][0]


def window_of(out: torch.Tensor, src: torch.Tensor) -> tuple[int, int, bool] | None:
    """Where ``out`` sits in ``src`` (top, left, flipped), or None if it is not a crop of it."""
    c = out.shape[-1]
    for flipped in (False, True):
        s = src.flip(-1) if flipped else src
        for top in range(s.shape[-2] - c + 1):
            for left in range(s.shape[-1] - c + 1):
                if torch.equal(s[:, top : top + c, left : left + c], out):
                    return top, left, flipped
    return None


def test_paired_augment_crops_and_flips_both_alike():
    cfg = DataConfig(crop_size=32, load_size=40, preprocess="resize_and_crop", flip=True)
    augment = Augment(cfg, paired=True)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (4, 3, 40, 40), generator=g, dtype=torch.uint8)
    a[:, :, 0, 0], a[:, :, 0, 1] = 0, 255  # the range ends are present
    windows = set()
    for seed in range(4):
        torch.manual_seed(seed)
        out = augment({"A": a, "B": a.clone()})
        assert out["A"].shape == out["B"].shape == (4, 3, 32, 32)
        assert out["A"].dtype == torch.float32
        assert torch.equal(out["A"], out["B"])
        assert out["A"].min() >= -1 and out["A"].max() <= 1
        signed = a.float() / 127.5 - 1
        for i in range(4):
            where = window_of(out["A"][i], signed[i])
            assert where is not None, "the output is not a crop of the input"
            windows.add(where)
    assert len(windows) > 4  # crops and flips really vary
    assert {w[2] for w in windows} == {False, True}


def test_unpaired_augment_draws_independently_and_eval_is_centred():
    cfg = DataConfig(crop_size=32, load_size=40, preprocess="resize_and_crop", flip=True)
    a = torch.randint(0, 256, (4, 3, 40, 40), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    torch.manual_seed(0)
    out = Augment(cfg, paired=False)({"A": a, "B": a.clone()})
    assert out["A"].shape == out["B"].shape == (4, 3, 32, 32)
    assert not torch.equal(out["A"], out["B"])
    centred = Augment(cfg, paired=True)({"A": a, "B": a.clone()}, train=False)
    assert torch.equal(centred["A"], (a.float() / 127.5 - 1)[..., 4:36, 4:36])
    assert centred["A"].min() >= -1 and centred["A"].max() <= 1


def test_real_pairs_stay_aligned_through_augment(pairs4, tmp_path):
    # B = A exactly, from a real photo: after the random crop and flip they must still match
    photo = read_rgb(next(iter(sorted((pairs4 / "train").iterdir()))))[..., :256]
    Image.fromarray(torch.cat([photo, photo], -1).permute(1, 2, 0).numpy()).save(tmp_path / "same.png")
    root = tmp_path / "same"
    (root / "train").mkdir(parents=True)
    shutil.move(tmp_path / "same.png", root / "train" / "same.png")
    cfg = load_recipe("pix2pix", [f"data.path={root}", "data.flip=true"]).data
    item = open_dataset(cfg, "paired")[0]
    batch = collate([item, item])
    torch.manual_seed(3)
    out = Augment(cfg, paired=True)(batch)
    assert out["A"].shape == (2, 3, cfg.crop_size, cfg.crop_size)
    assert torch.equal(out["A"], out["B"])
    assert out["A"].min() >= -1 and out["A"].max() <= 1


def test_degrade_makes_pairs_from_single_images(tmp_path):
    """data.degrade: B is the image as prepared, A its degraded copy; only for paired methods."""
    from translate.data.layouts import degrade

    root = tmp_path / "digits"
    copy_first(shared("mnist", "train", "3"), root / "3", 4)
    cfg = DataConfig(path=str(root), load_size=32, crop_size=32, degrade="downsample4", channels=1)
    ds = open_dataset(cfg, "paired")
    item = ds[0]
    assert item["A"].shape == item["B"].shape == (1, 32, 32) and len(ds) == 4
    assert torch.equal(item["A"], degrade(item["B"], "downsample4")) and not torch.equal(item["A"], item["B"])
    masked = degrade(item["B"], "mask_half")
    assert masked[..., 16:].max() == 0 and torch.equal(masked[..., :16], item["B"][..., :16])
    with pytest.raises(TranslateError, match="data.degrade makes input/target pairs"):
        open_dataset(cfg, "unpaired")

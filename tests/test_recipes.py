"""Recipes: shipped ones load, overrides apply, every mistake is one line naming the key."""

from __future__ import annotations

import pytest

from translate.core.recipes import RecipeError, list_recipes, load_recipe, recipe_from_dict


def test_shipped_recipes_load():
    names = list_recipes()
    assert {"pix2pix", "cyclegan"} <= set(names)
    for name in names:
        r = load_recipe(name)
        assert r.method


def test_public_keys_keep_reference_names():
    r = load_recipe("cyclegan")
    for key in ("load_size", "crop_size", "preprocess", "direction"):
        assert hasattr(r.data, key)
    for key in ("generator", "discriminator", "ngf", "ndf", "norm"):
        assert hasattr(r.model, key)
    for key in ("epochs", "epochs_decay", "max_steps", "batch_size", "lr"):
        assert hasattr(r.train, key)
    assert (r.loss.gan_mode, r.loss.lambda_cycle, r.loss.lambda_identity) == ("lsgan", 10.0, 0.5)
    p = load_recipe("pix2pix")
    assert (p.model.generator, p.loss.gan_mode, p.loss.lambda_l1) == ("unet_256", "vanilla", 100.0)


def test_overrides_are_typed():
    r = load_recipe("cyclegan", ["train.epochs=5", "train.lr=1e-4", "data.flip=false", "model.generator=unet_256"])
    assert (r.train.epochs, r.train.lr, r.data.flip, r.model.generator) == (5, 1e-4, False, "unet_256")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epoch=5", "unknown key train.epoch (did you mean 'epochs'?)"),
        ("train.epochs=five", "train.epochs: expected int, got 'five'"),
        ("model.generator=resnet_9block", "did you mean 'resnet_9blocks'?"),
        ("trian.lr=1", "unknown section 'trian' (did you mean 'train'?)"),
        ("train.lr=-1", "train.lr: must be >= 0.0"),
        ("data.load_size=200", "data.load_size (200) must be >= data.crop_size (256)"),
        ("train.lr", "expected section.key=value"),
        ("loss.lambda_l1=5", "unknown key loss.lambda_l1"),
    ],
)
def test_errors_name_the_key_in_one_line(override, expected):
    with pytest.raises(RecipeError) as e:
        load_recipe("cyclegan", [override])
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_recipe_and_method():
    with pytest.raises(RecipeError, match="did you mean 'cyclegan'"):
        load_recipe("cyclegn")
    with pytest.raises(RecipeError, match="unknown method 'pixtopix'"):
        recipe_from_dict({"method": "pixtopix"})
    with pytest.raises(RecipeError, match="unknown key modle"):
        recipe_from_dict({"method": "pix2pix", "modle": {}})


def test_resolved_recipe_round_trips_through_toml(tmp_path):
    r = load_recipe("pix2pix", ["train.max_steps=7", "data.path=/some/where"])
    path = tmp_path / "recipe.toml"
    path.write_text(r.to_toml())
    assert load_recipe(path) == r

"""GAN losses, gradient penalty and the image pool."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from translate.core.losses import GAN_MODES, GANLoss, ImagePool, gradient_penalty
from translate.core.recipes import load_recipe


def test_gan_losses_reward_the_right_side():
    high, low = torch.full((2, 1, 4, 4), 3.0), torch.full((2, 1, 4, 4), -3.0)
    for mode in GAN_MODES:
        loss = GANLoss(mode)
        # D: real scored high and fake scored low costs less than the reverse
        assert loss(high, True) + loss(low, False) < loss(low, True) + loss(high, False), mode
        # G: a fake scored high costs less than one scored low
        assert loss(high, True, for_discriminator=False) < loss(low, True, for_discriminator=False), mode
    assert GANLoss("lsgan")(torch.ones(3), True).item() == 0.0
    assert GANLoss("hinge")(torch.full((3,), 2.0), True).item() == 0.0
    with pytest.raises(ValueError, match="unknown gan_mode"):
        GANLoss("nope")


def test_gradient_penalty_is_zero_for_unit_gradient():
    D = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        D.weight.copy_(torch.tensor([[0.6, 0.8, 0.0, 0.0]]))  # |grad| = 1 everywhere
    real, fake = torch.randn(5, 4), torch.randn(5, 4)
    assert gradient_penalty(lambda x: D(x.flatten(1)), real.view(5, 4, 1, 1), fake.view(5, 4, 1, 1)).item() < 1e-10
    D.weight.data *= 3
    assert gradient_penalty(lambda x: D(x.flatten(1)), real.view(5, 4, 1, 1), fake.view(5, 4, 1, 1)).item() > 1


def test_image_pool_fills_then_swaps_and_resumes_exactly():
    pool = ImagePool(size=3, seed=1)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returned as given
    state = pool.state_dict()
    outs = [pool.query(torch.full((4, 1, 1, 1), 10.0 + i)) for i in range(5)]
    seen = torch.cat(outs).flatten().tolist()
    assert any(v < 3 for v in seen) and any(v >= 10 for v in seen)  # some old fakes came back
    again = ImagePool(size=3, seed=99)
    again.load_state_dict(state)
    assert all(torch.equal(o, again.query(torch.full((4, 1, 1, 1), 10.0 + i))) for i, o in enumerate(outs))
    assert torch.equal(ImagePool(size=0).query(first), first)


@pytest.mark.parametrize("mode", GAN_MODES)
def test_every_gan_mode_trains_a_pix2pix_step(mode, pairs4, tmp_path):
    from translate.training.train import Trainer

    recipe = load_recipe("pix2pix", [f"data.path={pairs4}", f"loss.gan_mode={mode}", "data.load_size=128",
                                     "data.crop_size=128", "data.num_workers=0", "model.generator=unet_128",
                                     "model.ngf=8", "model.ndf=8", "train.batch_size=2", "train.max_steps=2",
                                     "train.sample_every=0", "train.lr_policy=cosine"])
    result = Trainer(recipe, tmp_path / "run", quiet=True).fit()
    assert result.step == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in result.last_losses.values())

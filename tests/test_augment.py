"""Augmentation geometry, aligned vs independent modalities, and seed reproducibility."""

import pytest
import torch

from mmreid.data.augment import ReIDAugment


def _triples(b=16, h=32, w=16, same_modalities=True):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 1 if same_modalities else 3, 3, h, w, generator=g) * 2 - 1
    return x.expand(b, 3, 3, h, w).contiguous() if same_modalities else x


def test_same_seeds_same_output_and_different_seeds_differ():
    aug = ReIDAugment()
    x = _triples()
    seeds = torch.arange(100, 116)
    assert torch.equal(aug(x, seeds), aug(x, seeds))
    assert not torch.equal(aug(x, seeds), aug(x, seeds + 1000))
    # a sample's result does not depend on its batch neighbours or position
    alone = aug(x[5:6], seeds[5:6])
    assert torch.equal(alone[0], aug(x, seeds)[5])


def test_modalities_are_augmented_independently_by_default():
    x = _triples()
    indep = ReIDAugment(erasing_prob=0.0)(x, torch.arange(16))  # the original: one draw per modality image
    differs = [not torch.equal(indep[i, 0], indep[i, 1]) for i in range(16)]
    assert sum(differs) >= 8
    erased = ReIDAugment(flip_prob=0.0, padding=0, erasing_prob=1.0)(x, torch.arange(16))
    boxes = (erased != x).any(2)  # (B, 3, H, W) erased pixels per modality
    assert not torch.equal(boxes[:, 0], boxes[:, 1])


def test_shared_geometry_option_is_shared_across_modalities():
    x = _triples()
    out = ReIDAugment(erasing_prob=0.0, modality_augment="shared")(x, torch.arange(16))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    # erasing boxes are shared too (noise values are drawn per modality)
    erased = ReIDAugment(flip_prob=0.0, padding=0, erasing_prob=1.0, modality_augment="shared")(x, torch.arange(16))
    changed = erased != x
    assert changed.any()
    assert torch.equal(changed[:, 0].any(1), changed[:, 1].any(1))


def test_no_op_settings_return_the_input():
    x = _triples(same_modalities=False)
    out = ReIDAugment(flip_prob=0.0, padding=0, erasing_prob=0.0)(x, torch.arange(16))
    assert torch.equal(out, x)


def test_flip_and_black_padding():
    x = _triples(same_modalities=False)
    out = ReIDAugment(flip_prob=1.0, padding=0, erasing_prob=0.0)(x, torch.arange(16))
    assert torch.equal(out, x.flip(-1))
    padded = ReIDAugment(flip_prob=0.0, padding=10, erasing_prob=0.0)(x, torch.arange(64, 80))
    # every output row/column is either image content or black (-1) padding, and some samples got shifted
    assert ((padded == -1.0).any(-1).any(-1)).any()
    inside = (padded > -1.0)
    assert inside.sum() > 0.5 * inside.numel()


def test_crop_is_a_shift_of_the_padded_image():
    x = torch.arange(2 * 3 * 3 * 8 * 6, dtype=torch.float32).view(2, 3, 3, 8, 6)
    aug = ReIDAugment(flip_prob=0.0, padding=2, erasing_prob=0.0)
    out = aug(x, torch.tensor([1, 2]))
    for i, seed in enumerate([1, 2]):
        g = torch.Generator()
        g.manual_seed(seed)
        for m in range(3):  # one draw per modality image, in modality order
            prm = aug.draw(g, 8, 6)
            padded = torch.nn.functional.pad(x[i, m], (2, 2, 2, 2), value=-1.0)
            assert torch.equal(out[i, m], padded[..., prm.top : prm.top + 8, prm.left : prm.left + 6])


def test_erasing_area_and_aspect_follow_the_original():
    """Area ratio in [0.02, 1/3], aspect in [0.3, 1/0.3] (up to rounding to whole pixels), both ends reached."""
    aug = ReIDAugment(erasing_prob=1.0)
    g = torch.Generator()
    g.manual_seed(0)
    areas, aspects = [], []
    for _ in range(2000):
        prm = aug.draw(g, 256, 128)
        assert prm.erase is not None
        y, x, h, w = prm.erase
        areas.append(h * w / (256 * 128))
        aspects.append(h / w)
        assert y + h <= 256 and x + w <= 128
    assert 0.018 <= min(areas) < 0.03 and 0.30 < max(areas) <= 0.345
    assert 0.28 <= min(aspects) < 0.4 and 2.8 < max(aspects) <= 3.5


def test_erasing_fill_is_standard_normal_noise():
    x = torch.full((64, 3, 3, 64, 32), 5.0)
    out = ReIDAugment(flip_prob=0.0, padding=0, erasing_prob=1.0)(x, torch.arange(64))
    noise = out[out != 5.0]
    assert noise.numel() > 10000
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1.0) < 0.02


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="flip_prob"):
        ReIDAugment(flip_prob=2.0)
    with pytest.raises(ValueError, match="seeds"):
        ReIDAugment()(torch.zeros(2, 3, 3, 8, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="pixel_values"):
        ReIDAugment()(torch.zeros(2, 3, 8, 4), torch.zeros(2, dtype=torch.long))

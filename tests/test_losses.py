"""Loss values on hand-made tensors: label-smoothed CE and batch-hard (soft-margin / margin) triplet."""

import math

import pytest
import torch

from mmreid.training.losses import (
    batch_hard_triplet_loss,
    euclidean_distance,
    label_smoothed_cross_entropy,
    reid_loss,
)


def test_label_smoothed_ce_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    eps = 0.1
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        lse = math.log(sum(math.exp(v) for v in row))
        logp = [v - lse for v in row]
        target = [eps / 3 + (1 - eps) * (i == y) for i in range(3)]
        total += -sum(t * lp for t, lp in zip(target, logp))
    expected = total / 2
    assert label_smoothed_cross_entropy(logits, labels, eps).item() == pytest.approx(expected, rel=1e-6)
    # eps = 0 is plain cross entropy, which differs from the smoothed value here
    plain = label_smoothed_cross_entropy(logits, labels, 0.0).item()
    assert plain == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    assert plain != pytest.approx(expected, rel=1e-3)


def test_label_smoothed_ce_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        label_smoothed_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="epsilon"):
        label_smoothed_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), 1.5)


def test_euclidean_distance_values():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    d = euclidean_distance(x, x)
    assert d[0, 1].item() == pytest.approx(5.0, rel=1e-6)
    assert d[0, 0].item() == pytest.approx(1e-6, abs=1e-6)  # clamped at 1e-12 before sqrt


def _feats():
    # ids 0,0,1,1 on a line: a=0, b=1 (id 0), c=3, d=7 (id 1)
    return torch.tensor([[0.0], [1.0], [3.0], [7.0]]), torch.tensor([0, 0, 1, 1])


def test_batch_hard_soft_margin_by_hand():
    feats, labels = _feats()
    # hardest positive / negative per anchor: a: ap=1, an=3; b: ap=1, an=2; c: ap=4, an=2; d: ap=4, an=6
    diffs = [1 - 3, 1 - 2, 4 - 2, 4 - 6]
    expected = sum(math.log1p(math.exp(v)) for v in diffs) / 4
    assert batch_hard_triplet_loss(feats, labels).item() == pytest.approx(expected, rel=1e-5)


def test_batch_hard_with_margin_by_hand():
    feats, labels = _feats()
    expected = sum(max(0.0, v + 0.3) for v in [1 - 3, 1 - 2, 4 - 2, 4 - 6]) / 4
    assert batch_hard_triplet_loss(feats, labels, margin=0.3).item() == pytest.approx(expected, rel=1e-5)


def test_triplet_uses_raw_not_normalized_features():
    feats, labels = _feats()
    scaled = batch_hard_triplet_loss(feats * 10, labels).item()
    assert scaled != pytest.approx(batch_hard_triplet_loss(feats, labels).item(), rel=1e-3)


def test_triplet_pool_adds_negatives():
    feats, labels = _feats()
    pool = torch.cat([feats, torch.tensor([[0.5]])])
    pool_labels = torch.cat([labels, torch.tensor([5])])
    # anchor a's hardest negative becomes 0.5 away, anchor b's 0.5 away
    diffs = [1 - 0.5, 1 - 0.5, 4 - 2, 4 - 6]
    expected = sum(math.log1p(math.exp(v)) for v in diffs) / 4
    got = batch_hard_triplet_loss(feats, labels, pool_features=pool, pool_labels=pool_labels).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_triplet_needs_two_identities():
    with pytest.raises(ValueError, match="two identities"):
        batch_hard_triplet_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_reid_loss_sums_weighted_pairs():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = (torch.randn(6, 3), torch.randn(6, 3))
    feats = (torch.randn(6, 5), torch.randn(6, 5))
    out = reid_loss(logits, feats, labels, id_loss_weight=0.25, triplet_loss_weight=1.0, label_smoothing=0.1,
                    triplet_margin=None)
    expected = sum(
        0.25 * label_smoothed_cross_entropy(lg, labels, 0.1) + batch_hard_triplet_loss(f, labels)
        for lg, f in zip(logits, feats)
    )
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    ids = sum(label_smoothed_cross_entropy(lg, labels, 0.1) for lg in logits)
    triplets = sum(batch_hard_triplet_loss(f, labels) for f in feats)
    assert set(out.components) == {"id_loss", "triplet_loss"}  # unweighted, for logging
    assert out.components["id_loss"].item() == pytest.approx(ids.item(), rel=1e-6)
    assert out.components["triplet_loss"].item() == pytest.approx(triplets.item(), rel=1e-6)
    with pytest.raises(ValueError, match="aligned"):
        reid_loss(logits, feats[:1], labels, 0.25, 1.0, 0.1, None)

"""P x K sampling invariants on 1 and 2 ranks, and per-sample seeds."""

from collections import Counter

import numpy as np
import pytest

from mmreid.data.sampler import PKBatchSampler, SeededBatchSampler, sample_seed


def _labels(seed=0, num_ids=23):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 15, num_ids)  # includes identities with fewer than K images
    counts[0] = 1
    return np.repeat(np.arange(num_ids) * 10 + 3, counts)  # labels need not be 0..P-1


def _check_batch(batch, labels, p, k):
    assert len(batch) == p * k
    counts = Counter(labels[batch].tolist())
    assert len(counts) == p and set(counts.values()) == {k}
    # consecutive groups of K rows belong to one identity
    for i in range(p):
        assert len(set(labels[batch[i * k : (i + 1) * k]].tolist())) == 1


def test_single_rank_invariants():
    labels = _labels()
    p, k = 4, 4
    sampler = PKBatchSampler(labels, p, k, seed=3, num_replicas=1, rank=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) > 0
        for b in batches:
            _check_batch(b, labels, p, k)
        assert set(labels[np.concatenate(batches)].tolist()) == set(labels.tolist())  # every identity
        # identities with >= K images never repeat an image inside one chunk
        for b in batches:
            for i in range(p):
                chunk = b[i * k : (i + 1) * k]
                if (labels == labels[chunk[0]]).sum() >= k:
                    assert len(set(chunk)) == k
    # identity 0 has one image: sampled with replacement
    one = np.flatnonzero(labels == labels[0])[0]
    sampler.set_epoch(0)
    assert any(list(b).count(one) == k for b in sampler)


def test_epoch_length_follows_chunks():
    labels = np.repeat(np.arange(8), [2, 8, 9, 16, 17, 4, 8, 8])  # chunks of K=4: 1,2,2,4,4,1,2,2 = 18
    sampler = PKBatchSampler(labels, 3, 4, num_replicas=1, rank=0)
    assert len(sampler) == 18 // 3
    wide = PKBatchSampler(np.arange(12), 2, 4, num_replicas=1, rank=0)  # 12 single-image ids: need 6 steps
    assert len(wide) == 6 and set(np.concatenate(list(wide)).tolist()) == set(range(12))


def test_seed_and_epoch_determine_the_draw():
    labels = _labels()
    a = PKBatchSampler(labels, 4, 4, seed=1, num_replicas=1, rank=0)
    b = PKBatchSampler(labels, 4, 4, seed=1, num_replicas=1, rank=0)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    c = PKBatchSampler(labels, 4, 4, seed=2, num_replicas=1, rank=0)
    c.set_epoch(2)
    assert list(a) != list(c)


def test_two_ranks_split_one_global_batch():
    """P x K is global: each of 2 ranks gets P/2 identities x K, and rank 0 + rank 1 == the 1-process batch."""
    labels = _labels(1, num_ids=30)
    p, k = 4, 4
    ranks = [PKBatchSampler(labels, p, k, seed=5, num_replicas=2, rank=r) for r in range(2)]
    single = PKBatchSampler(labels, p, k, seed=5)
    for s in (*ranks, single):
        s.set_epoch(1)
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    assert ranks[0].batch_size == ranks[1].batch_size == 8 and single.batch_size == 16
    b0, b1, whole = list(ranks[0]), list(ranks[1]), list(single)
    for x, y, w in zip(b0, b1, whole):
        _check_batch(x, labels, p // 2, k)
        _check_batch(y, labels, p // 2, k)
        assert not set(labels[x].tolist()) & set(labels[y].tolist())  # same step, different identities
        assert x + y == w
    covered = set(labels[np.concatenate(b0 + b1)].tolist())
    assert covered == set(labels.tolist())


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="num_identities"):
        PKBatchSampler([0, 1, 2], 1, 2)
    with pytest.raises(ValueError, match="num_instances"):
        PKBatchSampler([0, 1, 2], 2, 0)
    with pytest.raises(ValueError, match="identities"):
        PKBatchSampler([0, 1, 2], 4, 2)
    with pytest.raises(ValueError, match="multiple of 2"):
        PKBatchSampler(list(range(10)), 3, 2, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="rank"):
        PKBatchSampler([0, 1, 2, 3], 2, 2, num_replicas=2, rank=2)


def test_seeded_batches_are_unique_per_position_and_rank():
    """Each sample's augmentation seed follows its position in the global batch: 2 ranks == 1 process."""
    labels = _labels(2, num_ids=30)
    per_rank = []
    for r in range(2):
        s = SeededBatchSampler(PKBatchSampler(labels, 4, 2, num_replicas=2, rank=r), seed=7)
        s.set_epoch(4)
        per_rank.append(list(s))
    single = SeededBatchSampler(PKBatchSampler(labels, 4, 2), seed=7)
    single.set_epoch(4)
    whole = list(single)
    assert [a + b for a, b in zip(*per_rank)] == whole
    seeds = [seed for batch in whole for _, seed in batch]
    assert len(set(seeds)) == len(seeds) == len(whole) * 8
    assert sample_seed(7, 4, 0) != sample_seed(7, 5, 0) != sample_seed(8, 4, 0)
    assert sample_seed(7, 4, 0) == sample_seed(7, 4, 0)

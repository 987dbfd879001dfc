"""reid_metrics against a per-query reference (the oracle lives here), hand-computed cases,
chunked distances and k-reciprocal re-ranking against a literal transcription of the paper."""

import numpy as np
import pytest
import torch

from mmreid.evaluation.metrics import (
    compute_distance_matrix,
    iter_distance_blocks,
    reid_metrics,
    reid_metrics_from_features,
    summarize,
)
from mmreid.evaluation.reranking import re_ranking


# ----------------------------------------------------------------------------- oracle
def oracle_metrics(distmat, q_pids, g_pids, q_groups, g_groups, max_rank=50):
    """Straightforward per-query protocol: python's stable sort, junk removal, AP/CMC/INP by definition."""
    num_g = len(g_pids)
    max_rank = min(max_rank, num_g)
    aps, cmcs, inps = [], [], []
    for i in range(len(q_pids)):
        order = sorted(range(num_g), key=lambda j: distmat[i][j])
        kept = [j for j in order if not (g_pids[j] == q_pids[i] and g_groups[j] == q_groups[i])]
        hits = [g_pids[j] == q_pids[i] for j in kept]
        if not any(hits):
            continue
        correct_ranks = [r + 1 for r, h in enumerate(hits) if h]
        aps.append(np.mean([(n + 1) / r for n, r in enumerate(correct_ranks)]))
        cmcs.append([1.0 if correct_ranks[0] <= k else 0.0 for k in range(1, max_rank + 1)])
        inps.append(len(correct_ranks) / correct_ranks[-1])
    return {"mAP": np.mean(aps), "cmc": np.mean(cmcs, axis=0), "mINP": np.mean(inps), "num_valid": len(aps)}


def random_case(rng, num_q, num_g, num_ids, num_groups, ties=False):
    q_pids = rng.integers(0, num_ids, num_q)
    g_pids = rng.integers(0, num_ids, num_g)
    q_groups = rng.integers(0, num_groups, num_q)
    g_groups = rng.integers(0, num_groups, num_g)
    if ties:
        dist = rng.integers(0, 4, (num_q, num_g)).astype(np.float64)
    else:
        dist = rng.random((num_q, num_g))
    return dist, q_pids, g_pids, q_groups, g_groups


def assert_matches_oracle(res, ref):
    assert res["num_valid_queries"] == ref["num_valid"]
    assert abs(res["mAP"] - ref["mAP"]) < 1e-6
    assert abs(res["mINP"] - ref["mINP"]) < 1e-6
    np.testing.assert_allclose(res["cmc"], ref["cmc"], atol=1e-6)


# ------------------------------------------------------------------- metric vs oracle
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("protocol", ["camera", "scene"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_oracle(seed, protocol, ties):
    rng = np.random.default_rng(seed)
    dist, q_pids, g_pids, q_groups, g_groups = random_case(rng, 23, 71, 9, 3, ties)
    if protocol == "camera":
        res = reid_metrics(dist, q_pids, g_pids, q_groups, g_groups, max_rank=20, chunk_size=5)
    else:
        # Camera ids differ from scene ids, so the protocol choice changes which entries are junk.
        q_cams, g_cams = rng.integers(0, 5, len(q_pids)), rng.integers(0, 5, len(g_pids))
        res = reid_metrics(dist, q_pids, g_pids, q_cams, g_cams, q_groups, g_groups, max_rank=20, chunk_size=5)
    assert res["protocol"] == protocol
    assert_matches_oracle(res, oracle_metrics(dist, q_pids, g_pids, q_groups, g_groups, max_rank=20))


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(5)
    dist, q_pids, g_pids, q_cams, g_cams = random_case(rng, 40, 50, 6, 2, ties=True)
    full = reid_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    for chunk in (1, 7, 40):
        part = reid_metrics(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=chunk)
        assert part["mAP"] == pytest.approx(full["mAP"], abs=1e-12)
        np.testing.assert_array_equal(part["cmc"], full["cmc"])


def test_scene_protocol_removes_same_scene_other_camera():
    # Same identity, different camera, same scene: a hit under the camera protocol, junk under the scene one.
    dist = np.array([[0.1, 0.2, 0.3]])
    g_pids, g_cams, g_scenes = [7, 7, 3], [1, 2, 1], [0, 1, 0]
    cam = reid_metrics(dist, [7], g_pids, [0], g_cams, max_rank=3)
    scene = reid_metrics(dist, [7], g_pids, [0], g_cams, [0], g_scenes, max_rank=3)
    assert cam["mAP"] == pytest.approx(1.0)  # hits at ranks 1, 2
    assert scene["mAP"] == pytest.approx(1.0)  # gallery[0] is junk, remaining hit at rank 1
    # Make the only remaining hit rank behind the distractor under the scene protocol.
    dist2 = np.array([[0.1, 0.3, 0.2]])
    scene2 = reid_metrics(dist2, [7], g_pids, [0], g_cams, [0], g_scenes, max_rank=3)
    assert scene2["mAP"] == pytest.approx(0.5)
    np.testing.assert_allclose(scene2["cmc"], [0.0, 1.0, 1.0])


# ------------------------------------------------------------------ hand-computed cases
def test_one_query_known_ap():
    # Sorted gallery: [hit, miss, JUNK (same pid & cam), miss, hit, hit]
    # After junk removal: hit@1, hit@4, hit@5  -> AP = (1/1 + 2/4 + 3/5) / 3, INP = 3/5.
    dist = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    g_pids = [5, 1, 5, 2, 5, 5]
    g_cams = [1, 0, 0, 0, 2, 1]
    res = reid_metrics(dist, [5], g_pids, [0], g_cams, max_rank=10)
    assert res["mAP"] == pytest.approx((1 + 2 / 4 + 3 / 5) / 3)
    assert res["mINP"] == pytest.approx(3 / 5)
    assert len(res["cmc"]) == 6  # capped at the gallery size
    np.testing.assert_allclose(res["cmc"], np.ones(6))


def test_first_hit_at_rank_three():
    dist = np.array([[0.3, 0.1, 0.2, 0.4]])
    res = reid_metrics(dist, [1], [1, 2, 3, 4], [0], [1, 1, 1, 1], max_rank=4)
    # Order: g1 (miss), g2 (miss), g0 (hit), g3 (miss): AP = 1/3, CMC = [0, 0, 1, 1].
    assert res["mAP"] == pytest.approx(1 / 3)
    assert res["mINP"] == pytest.approx(1 / 3)
    np.testing.assert_allclose(res["cmc"], [0, 0, 1, 1])


def test_ties_broken_by_gallery_order():
    dist = np.zeros((1, 3))
    res = reid_metrics(dist, [1], [2, 1, 1], [0], [1, 1, 1], max_rank=3)
    assert res["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    np.testing.assert_allclose(res["cmc"], [0, 1, 1])


def test_queries_without_valid_match_are_skipped():
    dist = np.array([[0.1, 0.2], [0.2, 0.1]])
    # Query 0's only match shares its camera (junk); query 1 has a hit at rank 2.
    res = reid_metrics(dist, [1, 2], [1, 2], [0, 0], [0, 1], max_rank=2)
    assert res["num_valid_queries"] == 1
    assert res["mAP"] == pytest.approx(1.0)


def test_no_valid_query_is_a_clear_error():
    with pytest.raises(ValueError, match="no query has a true match"):
        reid_metrics(np.zeros((1, 2)), [1], [1, 2], [0], [0, 1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(distmat=np.zeros(3)), "must be 2-D"),
        (dict(q_pids=[1, 2]), "q_pids has 2 entries"),
        (dict(g_camids=[0]), "g_camids has 1 entries"),
        (dict(q_sceneids=[0]), "pass both q_sceneids and g_sceneids"),
        (dict(distmat=np.full((1, 2), np.nan)), "NaN"),
        (dict(distmat=np.zeros((0, 2)), q_pids=[], q_camids=[]), "query set is empty"),
    ],
)
def test_bad_input_errors(kwargs, message):
    args = dict(distmat=np.zeros((1, 2)), q_pids=[1], g_pids=[1, 2], q_camids=[0], g_camids=[1, 1])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        reid_metrics(**args)


def test_summarize_reports_percent():
    res = {"mAP": 0.5, "cmc": np.array([0.25, 0.5, 0.5, 0.5, 0.75]), "mINP": 0.1}
    assert summarize(res) == {"mAP": 50.0, "Rank-1": 25.0, "Rank-5": 75.0, "mINP": 10.0}


# ----------------------------------------------------------------------------- distances
def test_distances_match_definitions():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    eu = ((qn[:, None, :] - gn[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(compute_distance_matrix(q, g, "euclidean", chunk_size=3), eu, atol=1e-5)
    np.testing.assert_allclose(compute_distance_matrix(q, g, "cosine", chunk_size=2), 1 - qn @ gn.T, atol=1e-5)
    raw = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(compute_distance_matrix(q, g, "euclidean", normalize=False), raw, rtol=1e-4)
    blocks = list(iter_distance_blocks(torch.tensor(q), torch.tensor(g), chunk_size=3))
    assert [start for start, _ in blocks] == [0, 3, 6]
    assert all(b.dtype == np.float32 for _, b in blocks)


def test_unknown_distance_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown distance 'manhattan'"):
        compute_distance_matrix(np.ones((1, 2)), np.ones((1, 2)), "manhattan")


@pytest.mark.parametrize("scene", [False, True])
def test_streaming_metrics_equal_matrix_metrics(scene):
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(30, 8)), rng.normal(size=(45, 8))
    q_pids, g_pids = rng.integers(0, 5, 30), rng.integers(0, 5, 45)
    q_cams, g_cams = rng.integers(0, 3, 30), rng.integers(0, 3, 45)
    scenes = (rng.integers(0, 2, 30), rng.integers(0, 2, 45)) if scene else (None, None)
    dist = compute_distance_matrix(q, g)
    ref = oracle_metrics(dist, q_pids, g_pids, *(
        (scenes[0], scenes[1]) if scene else (q_cams, g_cams)))
    res = reid_metrics_from_features(q, g, q_pids, g_pids, q_cams, g_cams, *scenes, chunk_size=4)
    assert_matches_oracle(res, ref)


# ---------------------------------------------------------------------------- re-ranking
def oracle_re_ranking(qf, gf, k1, k2, lam):
    """Literal transcription of k-reciprocal encoding (Zhong et al., CVPR 2017) with sets and dense matrices."""
    feats = np.concatenate([qf, gf]).astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    n, nq = len(feats), len(qf)
    d = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1)
    d = d / d.max(axis=1, keepdims=True)
    ranks = [sorted(range(n), key=lambda j: d[i][j]) for i in range(n)]

    def nn(i, k):
        return set(ranks[i][: k + 1])

    def recip(i, k):
        return {j for j in nn(i, k) if i in nn(j, k)}

    half = int(round(k1 / 2))
    V = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        expanded = set(r)
        for c in r:
            rc = recip(c, half)
            if len(rc & r) > 2 / 3 * len(rc):
                expanded |= rc
        idx = sorted(expanded)
        w = np.exp(-d[i, idx])
        V[i, idx] = w / w.sum()
    if k2 > 1:
        V = np.stack([V[ranks[i][:k2]].mean(0) for i in range(n)])
    out = np.zeros((nq, n - nq))
    for i in range(nq):
        for g in range(nq, n):
            mn, mx = np.minimum(V[i], V[g]).sum(), np.maximum(V[i], V[g]).sum()
            out[i, g - nq] = (1 - lam) * (1 - mn / mx) + lam * d[i, g]
    return out


@pytest.mark.parametrize("k1, k2, lam", [(4, 2, 0.3), (6, 3, 0.5), (5, 1, 0.0)])
def test_re_ranking_matches_paper_definition(k1, k2, lam):
    rng = np.random.default_rng(k1)
    centers = rng.normal(size=(4, 6))
    qf = centers[rng.integers(0, 4, 6)] + 0.4 * rng.normal(size=(6, 6))
    gf = centers[rng.integers(0, 4, 14)] + 0.4 * rng.normal(size=(14, 6))
    got = re_ranking(qf, gf, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (6, 14)
    np.testing.assert_allclose(got, oracle_re_ranking(qf, gf, k1, k2, lam), atol=1e-5)


def test_re_ranking_lambda_one_keeps_original_order():
    rng = np.random.default_rng(1)
    qf, gf = rng.normal(size=(5, 4)), rng.normal(size=(12, 4))
    got = re_ranking(qf, gf, k1=4, k2=2, lambda_value=1.0)
    base = compute_distance_matrix(qf, gf)
    np.testing.assert_array_equal(np.argsort(got, 1, kind="stable"), np.argsort(base, 1, kind="stable"))


def test_re_ranking_rejects_too_large_k1():
    with pytest.raises(ValueError, match="k1=50 needs at least 51"):
        re_ranking(np.ones((2, 3)), np.ones((3, 3)), k1=50, k2=15)


@pytest.mark.parametrize("k", [1, 4, 9, 12])
def test_smallest_k_equals_stable_argsort_with_ties(k):
    from mmreid.evaluation.reranking import smallest_k_stable

    d = np.random.default_rng(k).integers(0, 3, (20, 12)).astype(np.float32)  # many ties at the k-th value
    np.testing.assert_array_equal(smallest_k_stable(d, k), np.argsort(d, axis=1, kind="stable")[:, :k])


# ---------------------------------------------------- ranking without a full stable argsort
def stable_position_oracle(dist, rows, cols):
    """Position of dist[r, c] in row r sorted by (value, column): count of smaller values and equal ones before c."""
    return np.array([int(np.sum(dist[r] < dist[r, c]) + np.sum(dist[r, :c] == dist[r, c])) for r, c in zip(rows, cols)])


def grouped_entries(rng, num_rows, num_cols, per_row):
    rows, cols = [], []
    for r in range(num_rows):
        if r % 4 == 3:
            continue  # rows that ask for nothing
        chosen = np.sort(rng.choice(num_cols, size=min(per_row, num_cols), replace=False))
        rows += [r] * len(chosen)
        cols += chosen.tolist()
    return np.array(rows), np.array(cols)


@pytest.mark.parametrize("direct_tie_count", [0, 10**9])  # every tied row by argsort / every tie counted directly
@pytest.mark.parametrize("kind", ["float32", "integers", "signed_zero_inf"])
def test_stable_positions_equal_a_stable_sort(monkeypatch, kind, direct_tie_count):
    import mmreid.evaluation.metrics as metrics

    monkeypatch.setattr(metrics, "_DIRECT_TIE_COUNT", direct_tie_count)
    rng = np.random.default_rng(7)
    if kind == "float32":  # few ties: rounding to 1/64 leaves a few equal values per row
        dist = (np.round(rng.random((12, 300)) * 64) / 64).astype(np.float32)
    elif kind == "integers":  # every value tied many times
        dist = rng.integers(0, 5, (12, 300)).astype(np.float64)
    else:  # -0.0 equals 0.0; infinities rank last / first
        dist = rng.choice(np.array([-0.0, 0.0, 1.0, np.inf, -np.inf]), size=(12, 300))
    rows, cols = grouped_entries(rng, 12, 300, per_row=25)
    expected = stable_position_oracle(dist, rows, cols)
    np.testing.assert_array_equal(metrics.stable_positions(dist, rows, cols), expected)
    # The device path (a stable sort on the tensor's device), run here on CPU tensors.
    np.testing.assert_array_equal(metrics.stable_positions(torch.from_numpy(dist), rows, cols), expected)


@pytest.mark.parametrize("protocol", ["camera", "scene"])
@pytest.mark.parametrize("on_device_path", [False, True])
def test_mixed_tie_rows_match_oracle(monkeypatch, protocol, on_device_path):
    """One block with untied rows, rows with one tie, heavily tied rows, a query of an identity absent from the
    gallery and a query whose only matches are junk, through the numpy path and the device path."""
    import mmreid.evaluation.metrics as metrics

    rng = np.random.default_rng(11)
    num_q, num_g = 30, 400
    q_pids, g_pids = rng.integers(0, 4, num_q), rng.integers(0, 4, num_g)
    q_pids[0] = 99  # absent from the gallery
    q_groups, g_groups = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    dist = rng.random((num_q, num_g)).astype(np.float32)
    dist[5:10] = np.round(dist[5:10] * 4) / 4  # heavily tied rows
    dist[10, 1:] = dist[10, 0]  # one row all equal: pure gallery order
    matches = np.flatnonzero(g_pids == q_pids[12])
    dist[12, matches[1]] = dist[12, matches[0]]  # exactly one tie between two true matches / junk
    dist[12, 7] = dist[12, matches[2]]  # and one between a match and another identity
    q_pids[13], q_groups[13] = 3, 0
    g_groups[g_pids == 3] = 0  # query 13: all its matches are junk
    args = (dist, q_pids, g_pids)
    if on_device_path:
        monkeypatch.setattr(metrics, "_rank_on_device", lambda tensor: True)
        args = (torch.from_numpy(dist), q_pids, g_pids)
    if protocol == "camera":
        res = reid_metrics(*args, q_groups, g_groups, max_rank=30, chunk_size=8)
    else:
        cams = rng.integers(0, 5, num_q), rng.integers(0, 5, num_g)
        res = reid_metrics(*args, *cams, q_groups, g_groups, max_rank=30, chunk_size=8)
    ref = oracle_metrics(dist, q_pids, g_pids, q_groups, g_groups, max_rank=30)
    assert res["num_valid_queries"] == ref["num_valid"] <= num_q - 2
    assert abs(res["mAP"] - ref["mAP"]) < 1e-9 and abs(res["mINP"] - ref["mINP"]) < 1e-9
    np.testing.assert_allclose(res["cmc"], ref["cmc"], rtol=0, atol=1e-9)

"""Pictures: valid PNGs of the promised pixel size, frames coloured by correctness, sane rank lists,
feature maps (t-SNE, PCA without scikit-learn) that keep identities apart."""

import logging
import sys

import numpy as np
import pytest
from PIL import Image

from mmreid.evaluation import visualize as vis
from mmreid.evaluation.metrics import reid_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def open_png(path):
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    img = Image.open(path)
    img.verify()  # raises on a truncated/corrupt file
    return Image.open(path)


def solid(color, size=(16, 32)):
    return Image.new("RGB", size, color)


def test_rank_list_size_and_frame_colours(tmp_path):
    cell_h, cell_w, topk = 40, 20, 3
    queries = [[solid((0, 0, 255))] * 3, [solid((0, 0, 255))] * 3]
    gallery = [[[solid((200, 200, 0))] * 3 for _ in range(topk)] for _ in range(2)]
    correct = np.array([[True, False, False], [False, False, True]])
    path = vis.draw_rank_lists(queries, gallery, correct, tmp_path / "r.png", cell_size=(cell_h, cell_w))
    img = open_png(path).convert("RGB")
    # Layout promised by the module: label column, query tile, gap, top-k tiles; 3 modality rows per block.
    tile_w, tile_h = cell_w + 2 * vis.BORDER, cell_h + 2 * vis.BORDER
    assert img.size == (vis.LABEL_WIDTH + tile_w * (1 + topk) + vis.QUERY_GAP,
                        2 * (vis.HEADER_HEIGHT + 3 * tile_h) + vis.BLOCK_GAP)
    for q in range(2):
        for k in range(topk):
            x = vis.LABEL_WIDTH + tile_w * (1 + k) + vis.QUERY_GAP + 1  # inside the frame
            y = q * (vis.HEADER_HEIGHT + 3 * tile_h + vis.BLOCK_GAP) + vis.HEADER_HEIGHT + 1
            r, g, _ = img.getpixel((x, y))
            assert (g > r) == bool(correct[q, k]), (q, k, img.getpixel((x, y)))
            # the image itself is pasted inside the frame
            assert img.getpixel((x + vis.BORDER + 2, y + vis.BORDER + 2)) == (200, 200, 0)


def test_rank_list_rejects_mismatched_inputs(tmp_path):
    with pytest.raises(ValueError, match="correct has shape"):
        vis.draw_rank_lists([[solid(0)] * 3], [[[solid(0)] * 3]], np.ones((1, 2), bool), tmp_path / "x.png")


def test_expert_weight_pictures(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(7), size=(5, 2))  # (N, heads, 7)
    p1 = vis.plot_expert_weights(w, tmp_path / "w.png", labels=list("abcde"), figsize=(10, 4), dpi=100)
    assert open_png(p1).size == (1000, 400)
    p2 = vis.plot_expert_weights_by_setting({"Full": w.mean((0, 1)), "M (RGB)": w[0, 0]}, tmp_path / "s.png",
                                            figsize=(8, 4), dpi=50)
    assert open_png(p2).size == (400, 200)
    with pytest.raises(ValueError, match="weights must be"):
        vis.plot_expert_weights(np.ones((3, 5)), tmp_path / "bad.png")


def clusters(num_ids=4, per_id=8, dim=32, noise=0.1, seed=0):
    """Well-separated identities: random (nearly orthogonal) directions plus small noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_ids, dim))
    feats = np.concatenate([c + noise * np.linalg.norm(c) / np.sqrt(dim) * rng.normal(size=(per_id, dim))
                            for c in centers])
    return feats, np.repeat(np.arange(10, 10 + num_ids), per_id)


def assert_grouped_by_identity(xy, pids):
    d = np.linalg.norm(xy[:, None] - xy[None, :], axis=-1)
    same = pids[:, None] == pids[None, :]
    np.fill_diagonal(d, np.inf)
    assert (same[np.arange(len(xy)), d.argmin(1)]).all()  # every point's nearest neighbour shares its identity
    off = ~np.eye(len(xy), dtype=bool)
    assert d[same & off].max() < d[~same].min()  # each identity is a cluster of its own


def test_pca_separates_clusters():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)
    a = direction + 0.05 * rng.normal(size=(10, 16))
    b = -direction + 0.05 * rng.normal(size=(10, 16))
    xy = vis.pca_2d(np.concatenate([a, b]))
    assert xy.shape == (20, 2)
    assert len(set(np.sign(xy[:10, 0]))) == 1 and len(set(np.sign(xy[10:, 0]))) == 1  # each cluster on one side
    assert np.sign(xy[0, 0]) != np.sign(xy[10, 0])


def test_tsne_groups_identities_deterministically():
    pytest.importorskip("sklearn.manifold")
    feats, pids = clusters()
    xy = vis.tsne_2d(feats)
    assert xy.shape == (len(feats), 2)
    assert_grouped_by_identity(xy, pids)
    np.testing.assert_array_equal(vis.tsne_2d(feats), xy)  # fixed random_state
    coords, method = vis.embed_2d(feats)
    assert method == "tsne"
    np.testing.assert_array_equal(coords, xy)


def test_tsne_on_tiny_sets():
    pytest.importorskip("sklearn.manifold")
    for n in (2, 3, 5, 31, 200):
        assert 0 < vis.tsne_perplexity(n) < n  # scikit-learn refuses perplexity >= n_samples
    feats, pids = clusters(num_ids=2, per_id=2)
    assert vis.tsne_2d(feats).shape == (4, 2)  # default perplexity 30 would fail on 4 points
    with pytest.raises(ValueError, match="perplexity must be in"):
        vis.tsne_2d(feats, perplexity=4)


def test_feature_map_png_with_tsne(tmp_path):
    pytest.importorskip("sklearn.manifold")
    feats, pids = clusters(num_ids=3, per_id=6)
    path = vis.plot_feature_scatter(feats, pids, tmp_path / "feature_tsne.png", is_query=[True, False] * 9,
                                    max_identities=2, figsize=(6, 5), dpi=80)
    img = open_png(path)
    assert img.size == (480, 400)
    title = img.info["Title"]  # the title is kept in the PNG's text chunk
    assert "t-SNE" in title and "first 2 of 3 identities" in title


def test_pca_fallback_without_sklearn(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    feats, pids = clusters()
    with caplog.at_level(logging.WARNING, logger="mmreid.evaluation.visualize"):
        coords, method = vis.embed_2d(feats)
    assert method == "pca"
    np.testing.assert_array_equal(coords, vis.pca_2d(feats))
    assert len(caplog.records) == 1 and "pip install scikit-learn" in caplog.records[0].getMessage()
    path = vis.plot_feature_scatter(feats, pids, tmp_path / "feature_pca.png", is_query=None, figsize=(8, 6), dpi=50)
    img = open_png(path)
    assert img.size == (400, 300)
    assert "PCA" in img.info["Title"] and "all 4 identities" in img.info["Title"]
    with pytest.raises(ImportError):
        vis.tsne_2d(feats)  # asked for explicitly, t-SNE does not silently become PCA


def test_feature_map_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown embedding method"):
        vis.choose_embedding_method("umap")
    with pytest.raises(ValueError, match="is_query has 3 entries"):
        vis.plot_feature_scatter(np.ones((4, 3)), [1, 1, 2, 2], tmp_path / "x.png", is_query=[True] * 3, method="pca")


def test_rank_list_selection_agrees_with_metric():
    rng = np.random.default_rng(1)
    qf, gf = rng.normal(size=(9, 8)), rng.normal(size=(30, 8))
    q_pids, g_pids = rng.integers(0, 4, 9), rng.integers(0, 4, 30)
    q_cams, g_cams = rng.integers(0, 2, 9), rng.integers(0, 2, 30)
    chosen, ranked, correct = vis.rank_list_for_queries(qf, gf, q_pids, g_pids, q_cams, g_cams, num_queries=3, topk=10)
    assert len(chosen) == 3 and ranked.shape == correct.shape == (3, 10)
    for row, q in enumerate(chosen):
        # no junk (same pid and same camera) is shown, and flags are identity matches
        assert not ((g_pids[ranked[row]] == q_pids[q]) & (g_cams[ranked[row]] == q_cams[q])).any()
        np.testing.assert_array_equal(correct[row], g_pids[ranked[row]] == q_pids[q])
        # the first green frame sits where the metric puts the first true match
        from mmreid.evaluation.metrics import compute_distance_matrix

        res = reid_metrics(compute_distance_matrix(qf[q : q + 1], gf), q_pids[q : q + 1], g_pids, q_cams[q : q + 1],
                           g_cams, max_rank=10)
        first = int(np.argmax(res["cmc"] > 0)) if res["cmc"].max() > 0 else None
        if correct[row].any():
            assert first == int(np.argmax(correct[row]))

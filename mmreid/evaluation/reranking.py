"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), as DeMo's ``TEST.RE_RANKING`` option applies it.

Why a rewrite and not a dense N x N version: only the (k1 + 1) nearest neighbours of every
item and the sparse k-reciprocal vectors are needed, so memory is O(N * k1) plus one block of
distances at a time (N = query + gallery). The output is the (Q, G) re-ranked distance.

Facts kept from the reference formulation so numbers are comparable with the original:
distances are squared euclidean on L2-normalised features divided by each row's maximum;
a candidate's (k1/2)-reciprocal set is merged when it overlaps the k1-reciprocal set in
*more than* 2/3 of its size; the weights exp(-d) are normalised per row; query expansion
averages the k2 nearest rows (the item itself included); the Jaccard distance uses
sum(max) = 2 - sum(min), valid because rows sum to 1.
"""

from __future__ import annotations

import numpy as np
import torch

from .metrics import _block_rows, pairwise_distance, prepare_features


def _distance_blocks(feats: torch.Tensor, metric: str):
    """Yield (start, rows x N float32 distances) over all items, one block at a time."""
    rows = _block_rows(feats.shape[0], None)
    sq = (feats * feats).sum(1)
    for start in range(0, feats.shape[0], rows):
        yield start, pairwise_distance(feats[start : start + rows], feats, metric, sq).numpy()


def _nearest_neighbours(feats: torch.Tensor, k: int, metric: str):
    """(N, k) indices of nearest items (stable on ties) and each row's maximum distance."""
    n = feats.shape[0]
    knn = np.empty((n, k), dtype=np.int64)
    row_max = np.empty(n, dtype=np.float64)
    for start, d in _distance_blocks(feats, metric):
        knn[start : start + len(d)] = smallest_k_stable(d, k)
        row_max[start : start + len(d)] = d.max(axis=1)
    return knn, np.maximum(row_max, 1e-12)


def smallest_k_stable(d: np.ndarray, k: int) -> np.ndarray:
    """Same as ``np.argsort(d, axis=1, kind="stable")[:, :k]`` in O(N) per row instead of O(N log N):
    a partition finds each row's k-th value, ties at that value are taken in index order."""
    n = d.shape[1]
    if k >= n:
        return np.argsort(d, axis=1, kind="stable")[:, :k]
    kth = np.take_along_axis(d, np.argpartition(d, k - 1, axis=1)[:, k - 1 : k], axis=1)  # (rows, 1)
    below = d < kth
    tied = d == kth
    need = k - below.sum(axis=1, keepdims=True)
    chosen = below | (tied & (np.cumsum(tied, axis=1) <= need))
    rows, cols = np.nonzero(chosen)  # exactly k per row, columns ascending
    cols = cols.reshape(-1, k)
    vals = np.take_along_axis(d, cols, axis=1)
    return np.take_along_axis(cols, np.argsort(vals, axis=1, kind="stable"), axis=1)


def _reciprocal(knn: np.ndarray, i: int, k: int) -> np.ndarray:
    """Items among i's k nearest (plus itself) that also have i among their k nearest."""
    forward = knn[i, : k + 1]
    backward = knn[forward, : k + 1]
    return forward[(backward == i).any(axis=1)]


def _expanded_sets(knn: np.ndarray, k1: int) -> list[np.ndarray]:
    """R*(i, k1): the k1-reciprocal set grown by candidates' (k1/2)-reciprocal sets that overlap it."""
    n = knn.shape[0]
    half = int(round(k1 / 2))
    member = np.zeros(n, dtype=bool)  # scratch membership mask, reset after each item
    sets = []
    for i in range(n):
        recip = _reciprocal(knn, i, k1)
        member[recip] = True
        expanded = [recip]
        for c in recip:
            cand = _reciprocal(knn, int(c), half)
            if member[cand].sum() > 2.0 / 3.0 * len(cand):
                expanded.append(cand)
        member[recip] = False
        sets.append(np.unique(np.concatenate(expanded)))
    return sets


def _encode(feats: torch.Tensor, sets, row_max, metric: str):
    """Sparse vectors V_i = normalised exp(-d(i, j)) over j in R*(i), as (indices, weights).

    Only the |R*(i)| distances of each item are computed (a gather and a mat-vec), not a second N x N pass.
    """
    x = feats.numpy()
    sq = (x * x).sum(1)
    vectors = []
    for i, idx in enumerate(sets):
        dot = x[idx] @ x[i]
        d = 1.0 - dot if metric == "cosine" else np.maximum(sq[i] + sq[idx] - 2.0 * dot, 0.0)
        w = np.exp(-d.astype(np.float64) / row_max[i])
        vectors.append((idx, w / w.sum()))
    return vectors


def _original_distances(qf: torch.Tensor, gf: torch.Tensor, row_max: np.ndarray, metric: str) -> np.ndarray:
    """(Q, G) float32 query-to-gallery distances scaled by each query's row maximum over all items."""
    out = np.empty((qf.shape[0], gf.shape[0]), dtype=np.float32)
    rows = _block_rows(gf.shape[0], None)
    gallery_sq = (gf * gf).sum(1)
    for start in range(0, qf.shape[0], rows):
        block = pairwise_distance(qf[start : start + rows], gf, metric, gallery_sq).numpy()
        out[start : start + rows] = block / row_max[start : start + rows, None]
    return out


def _query_expansion(vectors, knn, k2: int):
    """Local query expansion: average the vectors of each item's k2 nearest neighbours."""
    if k2 <= 1:
        return vectors
    out = []
    for i in range(len(vectors)):
        parts = [vectors[j] for j in knn[i, :k2]]
        idx = np.concatenate([p[0] for p in parts])
        val = np.concatenate([p[1] for p in parts])
        uniq, inv = np.unique(idx, return_inverse=True)
        out.append((uniq, np.bincount(inv, weights=val) / k2))
    return out


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) for every (s, c), without a Python loop."""
    total = int(counts.sum())
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    return offsets + np.arange(total)


def re_ranking(
    query_features,
    gallery_features,
    k1: int = 50,
    k2: int = 15,
    lambda_value: float = 0.3,
    metric: str = "euclidean",
) -> np.ndarray:
    """Re-ranked (Q, G) float32 distance: ``(1 - lambda) * jaccard + lambda * original``.

    Defaults k1=50, k2=15, lambda=0.3 are the ones DeMo/TransReID evaluate with.
    """
    qf = prepare_features(query_features, metric, True)
    gf = prepare_features(gallery_features, metric, True)
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"query and gallery feature sizes differ: {qf.shape[1]} vs {gf.shape[1]}")
    feats = torch.cat([qf, gf])
    n, nq = feats.shape[0], qf.shape[0]
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if k1 + 1 > n:
        raise ValueError(f"re-ranking with k1={k1} needs at least {k1 + 1} query+gallery items, got {n}: pass a smaller k1")
    if k2 > k1 + 1:
        raise ValueError(f"k2={k2} must be at most k1 + 1 = {k1 + 1}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")

    knn, row_max = _nearest_neighbours(feats, k1 + 1, metric)
    vectors = _query_expansion(_encode(feats, _expanded_sets(knn, k1), row_max, metric), knn, k2)
    out = _original_distances(qf, gf, row_max[:nq], metric)  # becomes the final distance row by row

    # Inverted index over the gallery vectors: for each column, which gallery rows use it.
    g_rows = np.concatenate([np.full(len(vectors[nq + g][0]), g) for g in range(n - nq)])
    g_cols = np.concatenate([vectors[nq + g][0] for g in range(n - nq)])
    g_vals = np.concatenate([vectors[nq + g][1] for g in range(n - nq)])
    by_col = np.argsort(g_cols, kind="stable")
    g_rows, g_cols, g_vals = g_rows[by_col], g_cols[by_col], g_vals[by_col]
    col_start = np.searchsorted(g_cols, np.arange(n + 1))

    for i in range(nq):
        idx, val = vectors[i]
        counts = col_start[idx + 1] - col_start[idx]
        sel = _ranges(col_start[idx], counts)
        q_val = np.repeat(val, counts)
        min_sum = np.bincount(g_rows[sel], weights=np.minimum(q_val, g_vals[sel]), minlength=n - nq)
        jaccard = 1.0 - min_sum / (2.0 - min_sum)
        out[i] = (1.0 - lambda_value) * jaccard + lambda_value * out[i].astype(np.float64)
    return out

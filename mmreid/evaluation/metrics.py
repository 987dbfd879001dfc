"""Re-ID retrieval metrics: chunked distances and the CMC / mAP / mINP protocol.

The protocol (Market-1501 style, as used by DeMo for RGBNT201, RGBNT100 and MSVR310):
for every query, gallery entries of the same identity taken by the same camera (camera
protocol) or in the same scene (scene protocol) are "junk" and removed before ranking;
queries with no remaining true match are skipped. Ties in the distance matrix are
broken by gallery order (stable sort), so results are deterministic.

Only the ranks of the query's own identity (true matches and junk) are needed, so no row is
fully argsorted: see :func:`stable_positions`.

Everything works on blocks of query rows, so neither the distances nor the ranking ever
need a full Q x G array in float64; :func:`reid_metrics_from_features` never holds a full
Q x G array at all.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch

DISTANCE_METRICS = ("euclidean", "cosine")
# The metric keys every report uses (percent), in print order.
METRIC_KEYS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")

# Elements (query rows x gallery size) handled per block: ~100 MB of temporaries.
_BLOCK_ELEMENTS = 1 << 21


def _block_rows(num_gallery: int, chunk_size: Optional[int]) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    return max(1, _BLOCK_ELEMENTS // max(1, num_gallery))


def _as_features(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().cpu()
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_items, dim), got shape {tuple(t.shape)}")
    return t.float()


def prepare_features(features, metric: str = "euclidean", normalize: bool = True) -> torch.Tensor:
    """L2-normalise features once so every distance block reuses them (cosine always normalises)."""
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"unknown distance {metric!r}: use one of {', '.join(DISTANCE_METRICS)}")
    feats = _as_features(features, "features")
    if normalize or metric == "cosine":
        feats = torch.nn.functional.normalize(feats, dim=1)
    return feats


def pairwise_distance(
    query: torch.Tensor, gallery: torch.Tensor, metric: str = "euclidean", gallery_sq: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Distances between already prepared features (see :func:`prepare_features`), float32.

    "euclidean" is the *squared* euclidean distance (as the original computes it; the ranking
    is the same as for the euclidean distance); "cosine" is ``1 - cos``. ``gallery_sq`` (squared
    norms of the gallery rows) saves recomputing them for every block.
    """
    sim = query @ gallery.T
    if metric == "cosine":
        return 1.0 - sim
    if gallery_sq is None:
        gallery_sq = (gallery * gallery).sum(1)
    sq = (query * query).sum(1, keepdim=True) + gallery_sq[None, :]
    return (sq - 2.0 * sim).clamp_(min=0.0)


def iter_distance_blocks(
    query_features,
    gallery_features,
    metric: str = "euclidean",
    normalize: bool = True,
    chunk_size: Optional[int] = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_query_row, float32 block of distances)`` so callers never hold Q x G at once."""
    qf = prepare_features(query_features, metric, normalize)
    gf = prepare_features(gallery_features, metric, normalize)
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"query and gallery feature sizes differ: {qf.shape[1]} vs {gf.shape[1]}")
    rows = _block_rows(gf.shape[0], chunk_size)
    gallery_sq = (gf * gf).sum(1)
    for start in range(0, qf.shape[0], rows):
        yield start, pairwise_distance(qf[start : start + rows], gf, metric, gallery_sq).numpy()


def compute_distance_matrix(
    query_features,
    gallery_features,
    metric: str = "euclidean",
    normalize: bool = True,
    chunk_size: Optional[int] = None,
) -> np.ndarray:
    """Full (Q, G) float32 distance matrix, filled block by block (no float64 Q x G temporary)."""
    qf = _as_features(query_features, "query_features")
    gf = _as_features(gallery_features, "gallery_features")
    out = np.empty((qf.shape[0], gf.shape[0]), dtype=np.float32)
    for start, block in iter_distance_blocks(qf, gf, metric, normalize, chunk_size):
        out[start : start + block.shape[0]] = block
    return out


def _as_ids(x, name: str, length: Optional[int] = None) -> np.ndarray:
    arr = np.asarray(x.cpu() if torch.is_tensor(x) else x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if length is not None and len(arr) != length:
        raise ValueError(f"{name} has {len(arr)} entries but the distance matrix needs {length}")
    return arr.astype(np.int64)


def _rank_on_device(dist: torch.Tensor) -> bool:
    """Tensors on an accelerator are ranked where they are; CPU tensors go through numpy (faster sorts)."""
    return dist.device.type != "cpu"


def stable_positions(dist, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """0-based position of ``dist[rows, cols]`` in its row's stable ascending sort (ties by column).

    ``rows`` must be grouped (all entries of a row together). Why not ``argsort(kind="stable")`` of
    every row: numpy's stable argsort is a merge sort with no vectorised fast path, about 25x
    slower than sorting the values alone. Only a few entries per row are asked for (the query's
    own identity), so each row's values are sorted once and the entries binary-searched into
    them: the left insertion point counts the strictly smaller values, which is the stable
    position unless another value of the row is equal. Tied entries then add the equal values
    at smaller columns, counted directly when a row has few of them, else read off a stable
    argsort of that row.
    """
    if torch.is_tensor(dist):
        return _stable_positions_torch(dist, rows, cols)
    positions = np.empty(len(rows), dtype=np.int64)
    if len(rows) == 0:
        return positions
    num_cols = dist.shape[1]
    values = dist[rows, cols]
    row_ids, first, per_row = np.unique(rows, return_index=True, return_counts=True)
    stops = first + per_row
    # Values above a row's largest asked-for value never change a position, so they are clipped
    # to just above it: a clipped row keeps every position that matters, and the sort moves equal
    # values far faster than distinct ones (with a trained model most of a row is clipped). The
    # clipped copy is also the copy ``np.sort`` would make.
    ceiling = np.nextafter(np.maximum.reduceat(values, first), np.inf)
    sorted_rows = np.minimum(dist if len(row_ids) == dist.shape[0] else dist[row_ids], ceiling[:, None])
    sorted_rows.sort(axis=1)
    for i, (start, stop) in enumerate(zip(first.tolist(), stops.tolist())):
        positions[start:stop] = sorted_rows[i].searchsorted(values[start:stop], side="left")
    # The entry itself sits at ``positions``; it ties iff the next sorted value is equal.
    local = np.repeat(np.arange(len(row_ids)), per_row)
    following = np.minimum(positions + 1, num_cols - 1)
    tied = (positions + 1 < num_cols) & (sorted_rows[local, following] == values)
    if tied.any():
        tied_per_row = np.bincount(local[tied], minlength=len(row_ids))
        many = tied_per_row[local] > _DIRECT_TIE_COUNT
        few = np.flatnonzero(tied & ~many)
        positions[few] += _equal_before(dist, rows[few], cols[few], values[few])
        heavy = np.flatnonzero(tied & many)
        if len(heavy):
            positions[heavy] = _stable_argsort_positions(dist, rows[heavy], cols[heavy])
    return positions


# A tied entry costs one pass over its row when counted directly; a stable argsort of the row
# costs about as much as this many passes.
_DIRECT_TIE_COUNT = 16


def _equal_before(dist: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each entry, how many values of its row equal it at a smaller column (in bounded chunks)."""
    num_cols = dist.shape[1]
    out = np.empty(len(rows), dtype=np.int64)
    step = max(1, _BLOCK_ELEMENTS // max(1, num_cols))
    ramp = np.arange(num_cols)
    for start in range(0, len(rows), step):
        sl = slice(start, start + step)
        equal = (dist[rows[sl]] == values[sl, None]) & (ramp[None, :] < cols[sl, None])
        out[sl] = np.count_nonzero(equal, axis=1)
    return out


def _stable_argsort_positions(dist: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Positions read off a stable argsort of each distinct row (for rows with many tied entries)."""
    row_ids, local = np.unique(rows, return_inverse=True)
    out = np.empty(len(rows), dtype=np.int64)
    step = max(1, _BLOCK_ELEMENTS // max(1, dist.shape[1]))
    for start in range(0, len(row_ids), step):
        chunk = row_ids[start : start + step]
        order = np.argsort(dist[chunk], axis=1, kind="stable")
        inverse = np.empty_like(order)
        np.put_along_axis(inverse, order, np.arange(order.shape[1])[None, :], axis=1)
        hit = (local >= start) & (local < start + len(chunk))
        out[hit] = inverse[local[hit] - start, cols[hit]]
    return out


def _stable_positions_torch(dist: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The same positions on the tensor's device: a stable sort there is cheap, so every row uses one."""
    row_ids, local = np.unique(rows, return_inverse=True)
    block = dist[torch.as_tensor(row_ids, device=dist.device)]
    order = torch.sort(block, dim=1, stable=True).indices
    inverse = torch.empty_like(order)
    ramp = torch.arange(block.shape[1], device=dist.device).expand_as(order)
    inverse.scatter_(1, order, ramp)
    picked = inverse[torch.as_tensor(local, device=dist.device), torch.as_tensor(cols, device=dist.device)]
    return picked.cpu().numpy().astype(np.int64)


class RankingAccumulator:
    """Accumulates CMC / AP / INP over blocks of query rows of a distance matrix.

    Used by :func:`reid_metrics` (blocks of a given matrix) and by
    :func:`reid_metrics_from_features` (blocks computed on the fly).
    """

    def __init__(self, g_pids, g_groups, use_scene: bool = False, max_rank: int = 50):
        """``g_groups`` are the gallery camera ids (camera protocol) or scene ids (``use_scene``)."""
        self.g_pids = _as_ids(g_pids, "g_pids")
        self.num_gallery = len(self.g_pids)
        if self.num_gallery == 0:
            raise ValueError("the gallery is empty: evaluate with a non-empty gallery split")
        self.use_scene = bool(use_scene)
        self.g_group = _as_ids(g_groups, "g_sceneids" if self.use_scene else "g_camids", self.num_gallery)
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        # Ranks past the gallery size are undefined, so the CMC curve stops there.
        self.max_rank = min(int(max_rank), self.num_gallery)
        # Gallery columns grouped by identity, ascending within a group (stable sort by pid).
        self._by_pid = np.argsort(self.g_pids, kind="stable")
        self._pid_values, self._pid_starts, self._pid_counts = np.unique(
            self.g_pids[self._by_pid], return_index=True, return_counts=True
        )
        self.first_hit_counts = np.zeros(self.num_gallery + 1, dtype=np.int64)
        self.ap_sum = 0.0
        self.inp_sum = 0.0
        self.num_valid = 0
        self.num_queries = 0

    def update(self, dist_block, q_pids, q_group) -> None:
        """Rank one block of rows; ``q_group`` is camera ids or scene ids matching the gallery's.

        A CUDA (or other accelerator) tensor is ranked on its device; anything else with numpy.
        """
        dist = dist_block
        if torch.is_tensor(dist):
            dist = dist.detach()
            if not _rank_on_device(dist):
                dist = dist.cpu().numpy()
        else:
            dist = np.asarray(dist)
        if dist.ndim != 2:
            raise ValueError(f"distance block must be 2-D, got shape {tuple(dist.shape)}")
        n, g = dist.shape
        if g != self.num_gallery:
            raise ValueError(f"distance block has {g} columns but the gallery has {self.num_gallery} entries")
        # min() propagates NaN: one reduction instead of a boolean array as large as the block.
        has_nan = bool(torch.isnan(dist.min())) if torch.is_tensor(dist) else bool(np.isnan(dist.min()))
        if has_nan:
            raise ValueError("the distance matrix contains NaN: check the features for NaN/inf values")
        q_pids = _as_ids(q_pids, "q_pids", n)
        q_group = _as_ids(q_group, "q_sceneids" if self.use_scene else "q_camids", n)
        self.num_queries += n

        # Only the gallery entries sharing the query's identity matter (true matches and junk):
        # (row, column) pairs of them, row-major with ascending columns.
        rows, cols = self._same_identity_entries(q_pids)
        good = self.g_group[cols] != q_group[rows]
        num_good = np.bincount(rows[good], minlength=n)
        valid = num_good > 0
        if not valid.any():
            return
        keep = valid[rows]  # rows without a true match are skipped: do not rank them
        rows, cols, good = rows[keep], cols[keep], good[keep]

        # 0-based position of each entry in its row's stable (ties by gallery order) sort.
        pos = stable_positions(dist, rows, cols)

        # Order each row's entries by position; the good flag rides in the lowest bit of the key.
        key = np.sort(((rows * g + pos) << 1) | good)
        good = (key & 1).astype(bool)
        key >>= 1
        rows, pos = key // g, key % g
        counts = np.bincount(rows, minlength=n)
        row_first = np.repeat(np.cumsum(counts) - counts, counts)  # index of each entry's row's first entry
        junk_seen = np.cumsum(~good)  # junk entries up to and including this one (whole block)
        good_seen = np.cumsum(good)
        base_junk = junk_seen[row_first] - ~good[row_first]
        base_good = good_seen[row_first] - good[row_first]
        rows, pos = rows[good], pos[good]
        # Rank (1-based, junk removed) of every true match: position + 1 - junk entries before it;
        # it is the k-th true match of its row, so the precision at that rank is k / rank.
        rank = pos + 1 - (junk_seen[good] - base_junk[good])
        hit_index = good_seen[good] - base_good[good]
        ap = np.bincount(rows, weights=hit_index / rank, minlength=n)[valid] / num_good[valid]
        row_start = np.concatenate(([0], np.cumsum(num_good)[:-1]))
        first_rank = rank[row_start[valid]]
        last_rank = rank[row_start[valid] + num_good[valid] - 1]
        self.first_hit_counts += np.bincount(first_rank, minlength=self.num_gallery + 1)
        self.ap_sum += float(ap.sum())
        self.inp_sum += float((num_good[valid] / last_rank).sum())
        self.num_valid += int(valid.sum())

    def _same_identity_entries(self, q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, gallery column) of every gallery entry with the row's query identity, from the pid index."""
        slot = np.searchsorted(self._pid_values, q_pids)
        slot = np.minimum(slot, len(self._pid_values) - 1)
        found = self._pid_values[slot] == q_pids
        counts = np.where(found, self._pid_counts[slot], 0)
        total = int(counts.sum())
        rows = np.repeat(np.arange(len(q_pids)), counts)
        within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        cols = self._by_pid[np.repeat(self._pid_starts[slot], counts) + within]
        return rows, cols

    def compute(self) -> dict:
        if self.num_valid == 0:
            what = "scene" if self.use_scene else "camera"
            raise ValueError(
                f"no query has a true match in the gallery outside its own {what}: "
                f"check that query and gallery come from the same identities and that pids/{what} ids are right"
            )
        cmc = np.cumsum(self.first_hit_counts[1:])[: self.max_rank] / self.num_valid
        return {
            "mAP": self.ap_sum / self.num_valid,
            "cmc": cmc,
            "mINP": self.inp_sum / self.num_valid,
            "num_valid_queries": self.num_valid,
            "num_queries": self.num_queries,
            "protocol": "scene" if self.use_scene else "camera",
        }


def _check_protocol_args(q_sceneids, g_sceneids):
    if (q_sceneids is None) != (g_sceneids is None):
        raise ValueError("pass both q_sceneids and g_sceneids (scene protocol) or neither (camera protocol)")


def reid_metrics(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    q_sceneids=None,
    g_sceneids=None,
    max_rank: int = 50,
    chunk_size: Optional[int] = None,
) -> dict:
    """mAP, CMC (length ``min(max_rank, G)``) and mINP of a (Q, G) distance matrix (smaller = closer).

    With ``q_sceneids``/``g_sceneids`` the scene protocol is used (MSVR310, WMVEID863): same
    identity in the same scene is junk. Otherwise the camera protocol (RGBNT201, RGBNT100).
    Also returns ``num_valid_queries``, ``num_queries`` and ``protocol``. A CUDA tensor is ranked
    on its device (only positions of same-identity entries come back to the host).
    """
    _check_protocol_args(q_sceneids, g_sceneids)
    if torch.is_tensor(distmat):
        distmat = distmat.detach()
        if not _rank_on_device(distmat):
            distmat = distmat.cpu().numpy()
    else:
        distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    if num_q == 0:
        raise ValueError("the query set is empty: evaluate with a non-empty query split")
    use_scene = q_sceneids is not None
    q_pids = _as_ids(q_pids, "q_pids", num_q)
    q_group = _as_ids(q_sceneids if use_scene else q_camids, "q_sceneids" if use_scene else "q_camids", num_q)
    acc = RankingAccumulator(_as_ids(g_pids, "g_pids", num_g), g_sceneids if use_scene else g_camids, use_scene, max_rank)
    rows = _block_rows(num_g, chunk_size)
    for start in range(0, num_q, rows):
        stop = start + rows
        acc.update(distmat[start:stop], q_pids[start:stop], q_group[start:stop])
    return acc.compute()


def reid_metrics_from_features(
    query_features,
    gallery_features,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    q_sceneids=None,
    g_sceneids=None,
    metric: str = "euclidean",
    normalize: bool = True,
    max_rank: int = 50,
    chunk_size: Optional[int] = None,
) -> dict:
    """Same as :func:`reid_metrics` on ``compute_distance_matrix(...)`` without ever holding Q x G."""
    _check_protocol_args(q_sceneids, g_sceneids)
    num_q = len(query_features)
    if num_q == 0:
        raise ValueError("the query set is empty: evaluate with a non-empty query split")
    use_scene = q_sceneids is not None
    q_pids = _as_ids(q_pids, "q_pids", num_q)
    q_group = _as_ids(q_sceneids if use_scene else q_camids, "q_sceneids" if use_scene else "q_camids", num_q)
    num_g = len(gallery_features)
    acc = RankingAccumulator(_as_ids(g_pids, "g_pids", num_g), g_sceneids if use_scene else g_camids, use_scene, max_rank)
    for start, block in iter_distance_blocks(query_features, gallery_features, metric, normalize, chunk_size):
        stop = start + block.shape[0]
        acc.update(block, q_pids[start:stop], q_group[start:stop])
    return acc.compute()


def summarize(result: dict, ranks: Sequence[int] = (1, 5, 10)) -> dict:
    """Flat, JSON-friendly view: mAP, Rank-k and mINP in percent (as the papers report them)."""
    cmc = np.asarray(result["cmc"])
    out = {"mAP": 100.0 * float(result["mAP"])}
    for k in ranks:
        if k <= len(cmc):
            out[f"Rank-{k}"] = 100.0 * float(cmc[k - 1])
    out["mINP"] = 100.0 * float(result["mINP"])
    return out

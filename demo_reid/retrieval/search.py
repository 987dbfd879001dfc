"""Search a gallery index: the top-k rows with their metadata and distances, optional same-camera filtering (the
camera protocol's junk rule) and optional k-reciprocal re-ranking of the top candidates.

Why filtering over-fetches instead of searching a sub-index: the rows to drop depend on the query (its camera),
so the index is asked for more rows than k (doubling until k remain or the whole gallery was seen).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from ..evaluation.reranking import re_ranking
from .embed import EMBEDDING_COLUMN
from .index import GalleryIndex

__all__ = ["Hit", "Rerank", "search_gallery"]


@dataclass
class Hit:
    """One result: the gallery row, its metadata, and the distance it was ranked by (squared euclidean on
    L2-normalised embeddings; the re-ranked distance when re-ranking)."""

    rank: int
    row: int
    name: str
    pid: int
    camid: int
    sceneid: int
    distance: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Rerank:
    """k-reciprocal re-ranking of the ``top`` nearest rows (``eval.py --rerank``'s parameters; k1 and k2 shrink to
    what ``top`` rows allow)."""

    top: int = 100
    k1: int = 50
    k2: int = 15
    lambda_value: float = 0.3


class _Metadata:
    """The gallery's id columns as arrays, read once (a million rows read per query would dominate its latency)."""

    def __init__(self, dataset):
        ids = dataset.select_columns(["pid", "camid", "sceneid"]).with_format("numpy")[:]
        self.names = dataset.select_columns(["name"])[:]["name"]
        self.pids, self.camids, self.sceneids = ids["pid"], ids["camid"], ids["sceneid"]


def _metadata(index: GalleryIndex) -> _Metadata:
    if getattr(index, "_metadata", None) is None:
        index._metadata = _Metadata(index.dataset)
    return index._metadata


def _candidates(index: GalleryIndex, query: np.ndarray, want: int, junk) -> tuple[np.ndarray, np.ndarray]:
    """At least ``want`` nearest rows that ``junk`` keeps (fewer only when the gallery has no more)."""
    fetch = want
    while True:
        distances, rows = index.nearest(query[None], fetch)
        distances, rows = distances[0], rows[0]
        keep = rows >= 0
        if junk is not None:
            keep &= ~junk(rows.clip(min=0))
        if keep.sum() >= want or fetch >= len(index):
            return distances[keep][:want], rows[keep][:want]
        fetch = min(len(index), fetch * 2 + 16)


def _rerank(index: GalleryIndex, query: np.ndarray, rows: np.ndarray, params: Rerank):
    """Re-ranked order and distances of ``rows`` (the query's candidates) by k-reciprocal encoding among them."""
    if len(rows) < 2:
        return rows, np.zeros(len(rows), dtype=np.float32)
    gallery = np.asarray(index.dataset[rows.tolist()][EMBEDDING_COLUMN], dtype=np.float32)
    k1 = max(1, min(params.k1, len(rows)))  # re_ranking needs k1 + 1 <= query + candidates
    k2 = max(1, min(params.k2, k1 + 1))
    distance = re_ranking(query[None], gallery, k1=k1, k2=k2, lambda_value=params.lambda_value)[0]
    order = np.argsort(distance, kind="stable")
    return rows[order], distance[order]


def search_gallery(index: GalleryIndex, query: np.ndarray, k: int = 10, camera_id: Optional[int] = None,
                   pid: Optional[int] = None, drop_same_camera: bool = False,
                   rerank: Optional[Rerank] = None) -> list[Hit]:
    """The ``k`` gallery rows nearest to ``query`` (a (D,) embedding), best first.

    ``drop_same_camera`` (with ``camera_id``) drops rows taken by the query's camera, as the camera protocol
    does; with ``pid`` too, only rows of that identity and camera (the protocol's junk exactly).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    meta = _metadata(index)
    junk = None
    if drop_same_camera:
        if camera_id is None:
            raise ValueError("dropping same-camera rows needs the query's camera id")
        junk = ((lambda r: meta.camids[r] == camera_id) if pid is None
                else (lambda r: (meta.camids[r] == camera_id) & (meta.pids[r] == pid)))
    want = max(k, rerank.top) if rerank is not None else k
    distances, rows = _candidates(index, query, min(want, len(index)), junk)
    if rerank is not None:
        rows, distances = _rerank(index, query, rows, rerank)
    return [Hit(rank=i + 1, row=int(r), name=meta.names[r], pid=int(meta.pids[r]), camid=int(meta.camids[r]),
                sceneid=int(meta.sceneids[r]), distance=float(d))
            for i, (r, d) in enumerate(zip(rows[:k], distances[:k]))]

"""Search a gallery: the top-k allowed rows with their metadata and distances, and optional k-reciprocal re-ranking
of the top candidates. Works on any store (a FAISS folder, a Milvus collection).

Filters (a :class:`~mmreid.retrieval.filters.RowFilter`: cameras, scenes, identities, a time window, and the
camera protocol's same-camera rule) are pushed down to the engine, so the top-k is the top-k among the allowed
rows, never fewer than k while the gallery holds k allowed rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from ..evaluation.reranking import re_ranking
from .filters import RowFilter
from .index import GalleryIndex
from .store import GalleryStore, Hit

__all__ = ["Hit", "Rerank", "search_gallery"]


@dataclass
class Rerank:
    """k-reciprocal re-ranking of the ``top`` nearest rows (``eval.py --rerank``'s parameters; k1 and k2 shrink to
    what ``top`` rows allow)."""

    top: int = 100
    k1: int = 50
    k2: int = 15
    lambda_value: float = 0.3


def _as_store(gallery) -> GalleryStore:
    if isinstance(gallery, GalleryIndex):  # an index built or loaded in memory
        from .faiss_store import FaissStore

        return FaissStore.from_index(gallery)
    return gallery


def _rerank(store: GalleryStore, query: np.ndarray, hits: list[Hit], params: Rerank) -> list[Hit]:
    """``hits`` (the query's candidates) re-ordered by k-reciprocal encoding among them, with those distances."""
    if len(hits) < 2:
        return [replace(h, distance=0.0) for h in hits]
    gallery = store.embeddings_of(hits)
    k1 = max(1, min(params.k1, len(hits)))  # re_ranking needs k1 + 1 <= query + candidates
    k2 = max(1, min(params.k2, k1 + 1))
    distance = re_ranking(query[None], gallery, k1=k1, k2=k2, lambda_value=params.lambda_value)[0]
    order = np.argsort(distance, kind="stable")
    return [replace(hits[i], distance=float(distance[i])) for i in order]


def search_gallery(gallery, query: np.ndarray, k: int = 10, camera_id: Optional[int] = None,
                   pid: Optional[int] = None, drop_same_camera: bool = False, rerank: Optional[Rerank] = None,
                   where: Optional[RowFilter] = None) -> list[Hit]:
    """The ``k`` rows of ``gallery`` (a store, or a :class:`GalleryIndex`) nearest to ``query`` (a (D,) embedding)
    that ``where`` allows, best first.

    ``drop_same_camera`` (with ``camera_id``) drops rows taken by the query's camera, as the camera protocol
    does; with ``pid`` too, only rows of that identity and camera (the protocol's junk exactly).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    store = _as_store(gallery)
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    where = replace(where) if where is not None else RowFilter()
    if drop_same_camera:
        if camera_id is None:
            raise ValueError("dropping same-camera rows needs the query's camera id")
        where.same_camera = (int(camera_id), None if pid is None else int(pid))
    want = max(k, rerank.top) if rerank is not None else k
    hits = store.search(query[None], want, None if where.empty else where)[0]
    if rerank is not None:
        hits = _rerank(store, query, hits, rerank)
    return [replace(h, rank=i + 1) for i, h in enumerate(hits[:k])]

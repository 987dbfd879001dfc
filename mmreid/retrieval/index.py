"""The gallery index: a FAISS index over the ``embedding`` column of an embeddings Dataset, through ``datasets``'
FAISS integration (``Dataset.add_faiss_index`` / ``save_faiss_index`` / ``load_faiss_index``), saved beside the
embeddings.

Kinds (all in squared euclidean distance, on the L2-normalised embeddings ``eval.py`` ranks, so distances and
ranking are ``eval.py``'s):

- ``exact``: a flat index, every gallery row compared (the ranking of ``eval.py``);
- ``ivf``: inverted lists over k-means cells (``nlist``), ``nprobe`` cells visited per query, vectors kept whole;
- ``ivfpq``: for large galleries: candidates from PCA to ``pca_dim``, inverted lists and product-quantised codes
  (``pq_m`` bytes a row), then the ``refine`` x k best candidates re-scored on the whole embeddings stored as 4-bit
  scalars (D / 2 bytes a row). Why this chain: PQ codes alone rank the top 10 of a million rows too coarsely, and
  re-scoring in the PCA space cannot do better than exact search in that space, which misses 6 % of the true
  top 10 at a million 5120-d rows (what PCA drops decides the close calls); 4-bit codes of every dimension re-score
  to within 1.5 % of exact, in 2.4 GiB at 1M x 5120 where float32 needs 19 GiB (docs/benchmarks.md,
  ``benchmarks/run.py --only retrieval``).

Trained indexes are trained on a seeded random sample of the rows (a gallery sorted by identity would give a
biased "first rows" sample), then every row is added. Appended rows are added to the trained index as they come
(no retraining: ``ivf`` / ``ivfpq`` assign them to the cells and codes learnt from the first rows); deleted rows
leave by re-adding the kept rows to the emptied trained index. Filters reach the index as a FAISS id selector in
the search parameters (``faiss.IDSelectorBitmap``), so an inverted-list scan skips rows that are not allowed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .store import EMBEDDING_COLUMN

__all__ = ["INDEX_FILE", "INDEX_INFO", "INDEX_KINDS", "NPROBE_SHARE", "SPEC_OPTIONS", "GalleryIndex", "IndexSpec",
           "import_faiss"]

INDEX_KINDS = ("exact", "ivf", "ivfpq")
# IndexSpec's settings and the kinds that use them (embed.py refuses one given for another kind)
SPEC_OPTIONS = {"nlist": ("ivf", "ivfpq"), "nprobe": ("ivf", "ivfpq"), "pca_dim": ("ivfpq",), "pq_m": ("ivfpq",),
                "refine": ("ivfpq",)}
INDEX_FILE = "index.faiss"
INDEX_INFO = "index.json"
# Default share of the cells an ivf / ivfpq query visits: what a million synthetic rows need for recall@10 >= 0.95
# (5120-d: 0.964 at 1024 of 2564 cells, 18 ms; docs/benchmarks.md). At 100k rows half of it already gives 0.968:
# fewer cells are faster and miss more (search.py --nprobe).
NPROBE_SHARE = 0.4


def import_faiss():
    """``faiss`` (``pip install faiss-cpu``, or faiss-gpu on a GPU machine), with a one-line hint when absent."""
    try:
        import faiss
    except ImportError:
        from ..errors import UsageError

        raise UsageError("the gallery index needs FAISS: pip install -e \".[retrieval]\" (faiss-cpu)") from None
    return faiss


@dataclass
class IndexSpec:
    """How to build an index; unset sizes are chosen from the gallery size (:meth:`resolved`)."""

    kind: str = "exact"
    nlist: Optional[int] = None  # ivf / ivfpq: k-means cells (default about 4 sqrt(N), at least 39 rows per cell)
    pca_dim: Optional[int] = None  # ivfpq: PCA output size (default min(256, D))
    pq_m: Optional[int] = None  # ivfpq: bytes of code per row (default pca_dim / 4)
    pq_bits: int = 8  # ivfpq: bits per code (fewer on tiny galleries: 2**bits centroids need rows to train)
    refine: int = 20  # ivfpq: re-score refine x k candidates on the stored 4-bit embeddings (0: no re-scoring)
    nprobe: Optional[int] = None  # cells visited per query (search-time, saved; default NPROBE_SHARE of nlist)
    train_size: int = 100_000  # rows sampled to train PCA / k-means / PQ
    seed: int = 0

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind {self.kind!r}: expected one of {', '.join(INDEX_KINDS)}")

    def resolved(self, num_rows: int, dim: int) -> "IndexSpec":
        """The spec with every size fixed for a gallery of ``num_rows`` x ``dim`` (tiny galleries get tiny sizes)."""
        spec = IndexSpec(**asdict(self))
        if spec.kind == "exact":
            return spec
        train = min(spec.train_size, num_rows)
        spec.nlist = max(1, min(spec.nlist or int(4 * math.sqrt(num_rows)), train // 39 or 1))
        spec.nprobe = max(1, min(spec.nprobe or math.ceil(NPROBE_SHARE * spec.nlist), spec.nlist))
        if spec.kind == "ivfpq":
            spec.pca_dim = min(spec.pca_dim or 256, dim, train)  # PCA of n rows has at most n components
            m = spec.pq_m or max(1, spec.pca_dim // 4)
            while spec.pca_dim % m:  # PQ splits the vector into m equal parts
                m -= 1
            spec.pq_m = m
            spec.pq_bits = max(1, min(spec.pq_bits, int(math.log2(max(2, train // 39)))))
        return spec

    def describe(self, dim: int) -> str:
        """The chain in ``faiss.index_factory`` words (PCA applied first, re-scoring last)."""
        if self.kind == "exact":
            return "Flat"
        if self.kind == "ivf":
            return f"IVF{self.nlist},Flat"
        pca = f"PCA{self.pca_dim}," if self.pca_dim < dim else ""
        return f"{pca}IVF{self.nlist},PQ{self.pq_m}x{self.pq_bits}" + (",Refine(SQ4)" if self.refine else "")


def new_faiss_index(spec: IndexSpec, dim: int):
    """An untrained index of a resolved spec (``Refine`` wraps the chain: it re-scores in the input space)."""
    faiss = import_faiss()
    return faiss.index_factory(dim, spec.describe(dim), faiss.METRIC_L2)


def train_faiss_index(index, sample: np.ndarray) -> None:
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))


def set_search_params(index, nprobe: Optional[int], refine: int) -> None:
    """``nprobe`` on the inverted lists and the refine factor, wherever they sit in the index chain."""
    faiss = import_faiss()
    if nprobe is not None:  # None: the spec of an exact index
        try:
            faiss.extract_index_ivf(index).nprobe = int(nprobe)
        except RuntimeError:  # a flat index has no cells
            pass
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(max(1, refine))


class GalleryIndex:
    """An embeddings Dataset with its FAISS index (index name ``embedding``): build, save, load, search."""

    def __init__(self, dataset, spec: IndexSpec):
        self.dataset = dataset
        self.spec = spec

    @property
    def faiss_index(self):
        return self.dataset.get_index(EMBEDDING_COLUMN).faiss_index

    @classmethod
    def build(cls, dataset, spec: IndexSpec = IndexSpec()) -> "GalleryIndex":
        """Index ``dataset[embedding]`` (sample-trained when the kind needs training) and return it."""
        dim = len(dataset[0][EMBEDDING_COLUMN])
        spec = spec.resolved(len(dataset), dim)
        index = new_faiss_index(spec, dim)
        if not index.is_trained:
            rng = np.random.default_rng(spec.seed)
            rows = np.sort(rng.choice(len(dataset), size=min(spec.train_size, len(dataset)), replace=False))
            sample = dataset.select(rows).with_format("numpy")[:][EMBEDDING_COLUMN]
            train_faiss_index(index, sample)
        dataset.add_faiss_index(EMBEDDING_COLUMN, custom_index=index, batch_size=10_000)
        out = cls(dataset, spec)
        out.set_search(spec.nprobe, spec.refine)
        return out

    def set_search(self, nprobe: Optional[int] = None, refine: Optional[int] = None) -> None:
        """Search-time settings: inverted-list cells visited (``nprobe``) and candidates re-scored (x k)."""
        if nprobe is not None:
            if nprobe < 1:
                raise ValueError(f"nprobe must be >= 1, got {nprobe}")
            self.spec.nprobe = int(nprobe)
        if refine is not None:
            self.spec.refine = int(refine)
        set_search_params(self.faiss_index, self.spec.nprobe, self.spec.refine)

    def save(self, folder: Path) -> None:
        """Write ``index.faiss`` and ``index.json`` (the spec) into ``folder``, beside the saved embeddings."""
        folder = Path(folder)
        self.dataset.save_faiss_index(EMBEDDING_COLUMN, folder / INDEX_FILE)
        (folder / INDEX_INFO).write_text(json.dumps(asdict(self.spec), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, dataset=None, device=None) -> "GalleryIndex":
        """The index saved in ``folder`` on the embeddings saved there (or on ``dataset``); ``device``: a GPU id (or
        list, -1 for all) to search on with faiss-gpu, as ``Dataset.load_faiss_index`` takes it (not run here: no
        GPU)."""
        import datasets

        folder = Path(folder)
        import_faiss()
        spec = IndexSpec(**json.loads((folder / INDEX_INFO).read_text()))
        dataset = dataset if dataset is not None else datasets.load_from_disk(str(folder))
        dataset.load_faiss_index(EMBEDDING_COLUMN, folder / INDEX_FILE, device=device)
        out = cls(dataset, spec)
        out.set_search(spec.nprobe, spec.refine)
        return out

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def dim(self) -> int:
        return self.faiss_index.d

    def nearest(self, queries: np.ndarray, k: int, allowed: Optional[np.ndarray] = None,
                nprobe: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) squared distances and gallery rows, best first; rows -1 where fewer than k (allowed) rows are
        found. ``allowed``: a boolean mask over the rows (a filter pushed into the index's scan); ``nprobe``
        overrides the cells visited for this call."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have {queries.shape[1]} dimensions, the gallery {self.dim}")
        k = max(1, min(int(k), len(self)))
        if allowed is None and nprobe is None:
            found = self.dataset.search_batch(EMBEDDING_COLUMN, queries, k)
            return np.asarray(found.total_scores, dtype=np.float32), np.asarray(found.total_indices, dtype=np.int64)
        faiss = import_faiss()
        selector = None if allowed is None else faiss.IDSelectorBitmap(np.packbits(allowed, bitorder="little"))
        params = search_parameters(self.faiss_index, nprobe or self.spec.nprobe, self.spec.refine, selector)
        distances, rows = self.faiss_index.search(queries, k, params=params)
        return distances.astype(np.float32), rows.astype(np.int64)


def search_parameters(index, nprobe: Optional[int], refine: int, selector):
    """Per-call search parameters for ``index``'s chain (refine -> PCA -> IVF, or flat), carrying ``nprobe``, the
    refine factor and the id selector down to the part that scans rows."""
    faiss = import_faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        return faiss.IndexRefineSearchParameters(
            k_factor=float(max(1, refine)), base_index_params=search_parameters(index.base_index, nprobe, refine,
                                                                                selector))
    if isinstance(index, faiss.IndexPreTransform):
        return faiss.SearchParametersPreTransform(index_params=search_parameters(index.index, nprobe, refine,
                                                                                 selector))
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(nprobe=int(nprobe or index.nprobe), sel=selector)
    return faiss.SearchParameters(sel=selector)

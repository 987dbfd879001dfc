"""Where a gallery lives: a store holds the embeddings with their rows' metadata, appends rows, deletes rows, and
returns the k nearest allowed rows of a query. Two stores, chosen by the location's form (:func:`store_kind`):

- ``faiss``: a folder (``datasets`` Arrow files + a FAISS index + ``retrieval.json``), one machine, the default;
- ``milvus``: a Milvus collection, in a Milvus Lite file (``gallery.db``) or on a Milvus server / cluster
  (``http(s)://host:19530``, token from ``$MILVUS_TOKEN``), for a gallery that keeps growing or outgrows a machine.

Each store keeps what made its embeddings (the model's fingerprint, the dimension, the sources) and checks them on
every append and query, so that vectors of two models are never mixed or compared.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from ..errors import UsageError
from .filters import RowFilter

__all__ = ["EMBEDDING_COLUMN", "GalleryRows", "GalleryStore", "Hit", "STORES", "model_fingerprint", "open_gallery",
           "register_store", "store_kind"]

EMBEDDING_COLUMN = "embedding"
DISTANCE = "squared euclidean on L2-normalised embeddings (eval.py's ranking)"


@dataclass
class Hit:
    """One result: the gallery row's metadata and the distance it was ranked by (squared euclidean on L2-normalised
    embeddings; the re-ranked distance when re-ranking). ``row`` is the row's position in a FAISS folder (the
    embeddings Dataset), -1 in a Milvus collection, whose rows are keyed by ``name``."""

    rank: int
    row: int
    name: str
    pid: int
    camid: int
    sceneid: int
    time: int
    distance: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GalleryRows:
    """Rows to add: metadata columns (``names``, ``pids``, ``camids``, ``sceneids``, ``times``: unix seconds,
    ``sources``: the image files as a JSON list, "" when the images are not files) and (N, D) float32 L2-normalised
    ``embeddings``."""

    names: list
    pids: np.ndarray
    camids: np.ndarray
    sceneids: np.ndarray
    times: np.ndarray
    sources: list
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def select(self, keep) -> "GalleryRows":
        """The rows at the positions ``keep`` (indices or a boolean mask), in that order."""
        keep = np.asarray(keep)
        rows = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        return GalleryRows([self.names[i] for i in rows], self.pids[rows], self.camids[rows], self.sceneids[rows],
                           self.times[rows], [self.sources[i] for i in rows], self.embeddings[rows])


def model_fingerprint(model) -> str:
    """``model_type-<hash of every weight>``: the same checkpoint gives the same fingerprint wherever it is copied
    or loaded from (a path would not), another training run another one."""
    import torch

    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return f"{getattr(model.config, 'model_type', 'model')}-{digest.hexdigest()}"


class GalleryStore:
    """What both stores offer. ``info`` is the gallery's manifest (``model``, ``model_id``, ``dim``, ``sources``, ...);
    ``location`` what the user passed as ``--index``."""

    kind = ""
    location = ""
    info: dict

    # -- identity -----------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def check_model(self, model_id: Optional[str], dim: Optional[int], what: str) -> None:
        """One line when ``what`` (an argument) would mix in vectors of another model or size (None: not known
        yet)."""
        if dim is not None and dim != self.dim:
            raise UsageError(f"{what}: {dim}-d embeddings, but the gallery {self.location} holds {self.dim}-d ones "
                             f"(embedded by {self.info.get('model')})")
        known = self.info.get("model_id")
        if model_id and known and model_id != known:
            raise UsageError(f"{what}: another model ({model_id}) than the one that embedded the gallery "
                             f"{self.location} ({known}, {self.info.get('model')}); embed into a new gallery")

    # -- what each store implements -----------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def existing_names(self, names) -> set:
        """Which of ``names`` the gallery already holds (an append skips them)."""
        raise NotImplementedError

    def append(self, rows: GalleryRows, source: Optional[dict] = None) -> int:
        """Add ``rows`` (names not yet in the gallery; ``source`` is recorded in ``info``); returns rows added."""
        raise NotImplementedError

    def delete(self, where: RowFilter) -> int:
        """Remove the rows ``where`` allows; returns how many were removed."""
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int, where: Optional[RowFilter] = None) -> list[list[Hit]]:
        """For each (D,) row of ``queries``: the ``k`` nearest rows ``where`` allows, best first (fewer only when
        fewer are allowed)."""
        raise NotImplementedError

    def embeddings_of(self, hits: list[Hit]) -> np.ndarray:
        """(len(hits), D) stored embeddings of ``hits`` (for re-ranking)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        return f"{self.kind} gallery {self.location}: {len(self)} rows of {self.dim}-d ({self.info.get('model')})"


def new_info(model: str, model_id: Optional[str], dim: int, index: Optional[str]) -> dict:
    """The manifest of a new gallery (sources are added by each append)."""
    return {"model": model, "model_id": model_id, "dim": int(dim), "distance": DISTANCE, "index": index,
            "created": int(time.time()), "sources": []}


def add_source(info: dict, source: Optional[dict], added: int) -> None:
    """Record an append in ``info['sources']`` (one entry per dataset and split, counting its rows)."""
    if source is None:
        return
    key = {k: source.get(k) for k in ("dataset", "split", "layout", "dataset_revision")}
    for entry in info.setdefault("sources", []):
        if {k: entry.get(k) for k in key} == key:
            entry["num_rows"] = int(entry.get("num_rows", 0)) + added
            return
    info["sources"].append({**source, "num_rows": added})


# ---------------------------------------------------------------------------------------------------- registry
STORES: dict = {}  # kind -> opener(location, collection, create_info=None, **options) -> GalleryStore


def register_store(kind: str):
    def decorate(opener):
        STORES[kind] = opener
        return opener
    return decorate


def store_kind(location: str) -> str:
    """``milvus`` for a Milvus Lite file (``*.db``) or a server URI (``http(s)://``, ``tcp://``), else ``faiss``."""
    text = str(location)
    if text.startswith(("http://", "https://", "tcp://", "grpc://")) or text.endswith(".db"):
        return "milvus"
    return "faiss"


def open_gallery(location, collection: Optional[str] = None, create_info: Optional[dict] = None,
                 what: str = "--index", **options) -> GalleryStore:
    """The gallery at ``location`` (creating it with ``create_info`` when it does not exist and that is given)."""
    kind = store_kind(location)
    if kind == "milvus":
        from . import milvus_store  # noqa: F401  (registers itself)
    else:
        from . import faiss_store  # noqa: F401
    if kind == "faiss" and collection is not None:
        raise UsageError(f"--collection {collection}: a FAISS folder holds one gallery; --collection is for Milvus "
                         "(a .db file or a server URI)")
    return STORES[kind](str(location), collection, create_info=create_info, what=what, **options)


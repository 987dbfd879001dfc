"""The FAISS gallery store: one folder holding the embeddings Dataset (``save_to_disk``), its FAISS index
(``index.faiss`` + ``index.json``) and ``retrieval.json`` (what made the embeddings).

Why every change rewrites the folder: the folder is replaced as a whole through :func:`mmreid.publish.atomic_output`
(a hidden sibling renamed into place), so a run killed during an append or a delete leaves the gallery exactly as
it was, and a reader never sees rows without their index entries. The cost is a write of the whole gallery per
change, which is why a gallery that takes sightings all day belongs in Milvus (docs/retrieval.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UsageError, first_line
from ..publish import atomic_output
from .filters import RowFilter
from .index import INDEX_FILE, INDEX_INFO, GalleryIndex, IndexSpec, import_faiss
from .store import EMBEDDING_COLUMN, GalleryRows, GalleryStore, Hit, add_source, register_store

__all__ = ["MANIFEST", "FaissStore", "read_manifest", "rows_dataset", "write_manifest"]

MANIFEST = "retrieval.json"
# Local paths in the manifest are kept relative to the folder, so that a folder moved or copied together with its
# checkpoint and dataset (e.g. into a Space) still finds them.
LOCAL_PATH_KEYS = ("model", "dataset")


def write_manifest(folder: Path, manifest: dict, final: Optional[Path] = None) -> None:
    """``retrieval.json`` in ``folder``; local paths are written relative to ``final`` (where the folder will be)."""
    final = Path(final or folder).absolute()

    def relative(entry: dict) -> dict:
        out = dict(entry)
        for key in LOCAL_PATH_KEYS:
            if out.get(key) is not None and Path(str(out[key])).expanduser().exists():
                out[key] = os.path.relpath(Path(str(out[key])).expanduser().absolute(), final)
        return out

    out = relative(manifest)
    out["sources"] = [relative(s) for s in manifest.get("sources", [])]
    (Path(folder) / MANIFEST).write_text(json.dumps(out, indent=2) + "\n")


def read_manifest(folder: Path) -> Optional[dict]:
    """The manifest with its relative local paths resolved against ``folder`` (None when there is none)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        return None

    def resolve(entry: dict) -> dict:
        for key in LOCAL_PATH_KEYS:
            value = entry.get(key)
            if value is not None and not Path(value).is_absolute() and (folder / value).exists():
                entry[key] = str((folder / value).resolve())
        return entry

    manifest = resolve(json.loads(path.read_text()))
    manifest["sources"] = [resolve(s) for s in manifest.get("sources", [])]
    if not manifest["sources"] and manifest.get("dataset") is not None:  # written before appends existed
        manifest["sources"] = [{k: manifest.get(k) for k in ("dataset", "split", "layout", "dataset_revision",
                                                             "num_rows")}]
    return manifest


def rows_dataset(rows: GalleryRows):
    """``rows`` as an embeddings Dataset (float32 fixed-length ``embedding`` column)."""
    import datasets

    features = datasets.Features({"pid": datasets.Value("int64"), "camid": datasets.Value("int64"),
                                  "sceneid": datasets.Value("int64"), "name": datasets.Value("string"),
                                  "time": datasets.Value("int64"), "source": datasets.Value("string"),
                                  EMBEDDING_COLUMN: datasets.List(datasets.Value("float32"),
                                                                  length=rows.embeddings.shape[1])})
    return datasets.Dataset.from_dict({"pid": rows.pids, "camid": rows.camids, "sceneid": rows.sceneids,
                                       "name": list(rows.names), "time": rows.times, "source": list(rows.sources),
                                       EMBEDDING_COLUMN: list(rows.embeddings)}, features=features)


class FaissStore(GalleryStore):
    """A FAISS gallery folder: ``dataset`` (the embeddings Dataset), ``index`` (its :class:`GalleryIndex`, None for a
    folder written without one), ``info`` (the manifest), ``columns`` (the filterable columns as arrays)."""

    kind = "faiss"

    def __init__(self, folder, info: dict, dataset=None, index: Optional[GalleryIndex] = None,
                 spec: Optional[IndexSpec] = None, fresh: bool = False, overwrite: bool = False):
        self.folder = Path(folder).expanduser().absolute()
        self.location = str(folder)
        self.info, self.dataset, self.index = info, dataset, index
        self.spec = spec if spec is not None else (index.spec if index is not None else None)
        self.fresh, self.overwrite = fresh, overwrite  # fresh: the first append writes the folder from scratch
        self._columns = None

    # -- opening ------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder, what: str = "--index", device=None) -> "FaissStore":
        import datasets

        folder = Path(folder).expanduser()
        info = read_manifest(folder) if folder.is_dir() else None
        if info is None:
            raise UsageError(f"{what} {folder}: no retrieval.json there; write the gallery with data_scripts/embed.py "
                             "(a folder for FAISS, a .db file or http:// URI for Milvus)")
        try:
            if (folder / INDEX_FILE).is_file():
                index = GalleryIndex.load(folder, device=device)
                return cls(folder, info, index.dataset, index)
            return cls(folder, info, datasets.load_from_disk(str(folder)))
        except (OSError, RuntimeError, ValueError) as exc:
            raise UsageError(f"{what} {folder}: the gallery does not load ({first_line(exc, 160)})") from None

    @classmethod
    def from_index(cls, index: GalleryIndex, info: Optional[dict] = None) -> "FaissStore":
        """A store around an index built or loaded in memory (no folder behind it)."""
        dim = index.dim
        return cls("<memory>", info or {"dim": dim, "model": None}, index.dataset, index)

    # -- reading ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return 0 if self.dataset is None else len(self.dataset)

    @property
    def columns(self) -> dict:
        """The filterable columns as arrays, read once (reading a million rows per query would dominate its
        latency); ``time`` is 0 in folders written before capture times were kept."""
        if self._columns is None:
            if self.dataset is None:
                return {k: np.zeros(0, dtype=np.int64) for k in ("pid", "camid", "sceneid", "time")} | {"name": []}
            names = [c for c in ("pid", "camid", "sceneid", "time") if c in self.dataset.column_names]
            ids = self.dataset.select_columns(names).with_format("numpy")[:]
            self._columns = {k: np.asarray(ids[k], dtype=np.int64) for k in names}
            self._columns.setdefault("time", np.zeros(len(self.dataset), dtype=np.int64))
            self._columns["name"] = np.asarray(self.dataset.select_columns(["name"])[:]["name"], dtype=object)
        return self._columns

    def existing_names(self, names) -> set:
        return set(names) & set(self.columns["name"].tolist())

    def search(self, queries: np.ndarray, k: int, where: Optional[RowFilter] = None) -> list[list[Hit]]:
        if self.index is None:
            raise UsageError(f"--index {self.location}: the folder has embeddings but no {INDEX_FILE}; write it with "
                             "data_scripts/embed.py --index exact (or ivf / ivfpq)")
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        allowed = None if where is None or where.empty else where.mask(self.columns)
        want = min(int(k), len(self) if allowed is None else int(allowed.sum()))
        if want == 0:
            return [[] for _ in queries]
        distances, rows = self.index.nearest(queries, want, allowed)
        if allowed is not None and self.index.spec.nprobe is not None and (rows < 0).any():
            # the visited cells held fewer than k allowed rows: visit them all for those queries
            nlist = import_faiss().extract_index_ivf(self.index.faiss_index).nlist
            distances, rows = self.index.nearest(queries, want, allowed, nprobe=nlist)
        cols = self.columns
        return [[Hit(rank=i + 1, row=int(r), name=str(cols["name"][r]), pid=int(cols["pid"][r]),
                     camid=int(cols["camid"][r]), sceneid=int(cols["sceneid"][r]), time=int(cols["time"][r]),
                     distance=float(d)) for i, (r, d) in enumerate((r, d) for r, d in zip(rr, dd) if r >= 0)]
                for dd, rr in zip(distances, rows)]

    def embeddings_of(self, hits) -> np.ndarray:
        return np.asarray(self.dataset[[h.row for h in hits]][EMBEDDING_COLUMN], dtype=np.float32)

    # -- changing -----------------------------------------------------------------------------------------------
    def append(self, rows: GalleryRows, source: Optional[dict] = None, retrain: bool = False) -> int:
        """Add ``rows`` (names already present are skipped); the index takes them without retraining unless
        ``retrain`` (then it is trained again on a sample of all rows)."""
        import datasets

        if len(rows) and rows.embeddings.shape[1] != self.dim:
            raise UsageError(f"--output {self.location}: {rows.embeddings.shape[1]}-d embeddings, the gallery holds "
                             f"{self.dim}-d ones")
        if not self.fresh:
            present = self.existing_names(rows.names)
            rows = rows.select([n not in present for n in rows.names])
            if not len(rows) and not retrain:
                return 0  # nothing new: the folder stays as it is
        new = rows_dataset(rows)
        raw = None if self.fresh else self._detach()
        old = None if self.fresh or self.dataset is None else self.dataset
        dataset = new if old is None else datasets.concatenate_datasets([old, new])
        info = dict(self.info, sources=[dict(s) for s in self.info.get("sources", [])])
        add_source(info, source, len(rows))
        info["num_rows"] = len(dataset)
        spec = self.spec
        if raw is not None and not retrain:
            if len(rows):
                raw.add(np.ascontiguousarray(rows.embeddings, dtype=np.float32))
            self._write(dataset, raw, spec, info)
        elif spec is not None:
            if retrain:  # sizes chosen again for the new gallery size
                spec = IndexSpec(kind=spec.kind, refine=spec.refine, train_size=spec.train_size, seed=spec.seed)
            built = GalleryIndex.build(dataset, spec)
            info["index_chain"] = built.spec.describe(built.dim)
            raw = built.faiss_index
            dataset.drop_index(EMBEDDING_COLUMN)  # datasets saves no dataset with an attached index
            self._write(dataset, raw, built.spec, info)
        else:
            self._write(dataset, None, None, info)
        return len(rows)

    def delete(self, where: RowFilter) -> int:
        if where is None or where.empty:
            raise UsageError("a delete needs a rule (--name, --pid or --older-than); nothing was deleted")
        gone = where.mask(self.columns)
        if not gone.any():
            return 0
        raw = self._detach()
        dataset = self.dataset.select(np.flatnonzero(~gone)).flatten_indices()
        info = dict(self.info, num_rows=len(dataset))
        if raw is not None:
            raw.reset()  # the training stays; the kept rows are added again, ids = their new positions
            for start in range(0, len(dataset), 10_000):
                part = dataset.select(range(start, min(start + 10_000, len(dataset)))).with_format("numpy")
                raw.add(np.ascontiguousarray(part[:][EMBEDDING_COLUMN], dtype=np.float32))
        self._write(dataset, raw, self.spec if raw is not None else None, info)
        return int(gone.sum())

    def _detach(self):
        """The raw FAISS index, detached from the dataset (``datasets`` refuses to select or concatenate a dataset
        with an attached index); the folder is reloaded after every change, re-attaching it."""
        if self.index is None:
            return None
        raw = self.index.faiss_index
        if EMBEDDING_COLUMN in self.dataset.list_indexes():
            self.dataset.drop_index(EMBEDDING_COLUMN)
        return raw

    def _write(self, dataset, raw_index, spec: Optional[IndexSpec], info: dict) -> None:
        """Replace the folder with ``dataset``, ``raw_index`` and ``info`` (atomically), then reload it."""
        from dataclasses import asdict

        faiss = import_faiss() if raw_index is not None else None
        try:
            with atomic_output(self.folder, overwrite=not self.fresh or self.overwrite) as work:
                dataset.save_to_disk(str(work))
                if raw_index is not None:
                    faiss.write_index(raw_index, str(work / INDEX_FILE))
                    (work / INDEX_INFO).write_text(json.dumps(asdict(spec), indent=2) + "\n")
                write_manifest(work, info, final=self.folder)
        except BaseException:
            if not self.fresh:  # the folder is as it was: so is this store
                self.__dict__.update(FaissStore.load(self.folder, what="--output").__dict__)
            raise
        loaded = FaissStore.load(self.folder, what="--output")
        self.info, self.dataset, self.index, self.spec = loaded.info, loaded.dataset, loaded.index, loaded.spec
        self.fresh, self._columns = False, None


@register_store("faiss")
def open_faiss(location: str, collection=None, create_info: Optional[dict] = None, what: str = "--index",
               index_spec: Optional[IndexSpec] = None, overwrite: bool = False, device=None, **_) -> FaissStore:
    """The folder at ``location``; a new (empty, written on the first append) one when ``create_info`` is given and
    the folder does not exist (or ``overwrite``)."""
    folder = Path(location).expanduser().absolute()
    if create_info is not None and (overwrite or not folder.exists()):
        if index_spec is not None:
            import_faiss()  # fail before embedding, not after
        return FaissStore(folder, dict(create_info, index=None if index_spec is None else index_spec.kind),
                          spec=index_spec, fresh=True, overwrite=overwrite)
    return FaissStore.load(folder, what=what, device=device)

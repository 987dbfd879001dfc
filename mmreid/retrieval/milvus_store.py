"""The Milvus gallery store: one collection (default ``gallery``) in a Milvus Lite file (``gallery.db``, embedded,
one process at a time) or on a Milvus server / cluster (``http(s)://host:19530``; the token, when the server needs
one, comes from ``$MILVUS_TOKEN`` and is never printed), through ``pymilvus.MilvusClient``.

Rows are keyed by ``name`` (the primary key: an append skips names already there, so a rerun after a killed
append completes it); each insert call adds whole rows. An overwrite fills a hidden collection and then makes the
name an alias of it (one step), so readers never see a half-written gallery. The gallery's manifest (model fingerprint, dimension,
sources) is a collection property, checked on every append and query. Filters are Milvus boolean expressions
evaluated before ranking. Index kinds: ``exact`` = FLAT (eval.py's ranking), ``ivf`` = IVF_FLAT, ``hnsw`` = HNSW,
``ivfpq`` = IVF_PQ, ``scann`` = SCANN (cells, 4-bit codes, then ``refine`` x k candidates re-scored on the stored
embeddings, as FAISS ivfpq's chain does). IVF_PQ and SCANN need a Milvus server: Milvus Lite 3.2 builds FLAT,
IVF_FLAT, IVF_SQ8, HNSW and HNSW_SQ.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UsageError, first_line
from .filters import RowFilter
from .index import NPROBE_SHARE
from .store import EMBEDDING_COLUMN, GalleryRows, GalleryStore, Hit, add_source, register_store

__all__ = ["DEFAULT_COLLECTION", "MILVUS_INDEX_KINDS", "MilvusStore", "TOKEN_VARIABLE", "drop_gallery"]

DEFAULT_COLLECTION = "gallery"
TOKEN_VARIABLE = "MILVUS_TOKEN"
INFO_PROPERTY = "reid.gallery"  # the collection property holding the manifest (JSON)
# --index kind -> Milvus index type and its build parameters for a gallery of n rows of dim floats
MILVUS_INDEX_KINDS = {
    "exact": lambda n, dim: ("FLAT", {}),
    "ivf": lambda n, dim: ("IVF_FLAT", {"nlist": _nlist(n, dim)}),
    "hnsw": lambda n, dim: ("HNSW", {"M": 16, "efConstruction": 200}),
    "ivfpq": lambda n, dim: ("IVF_PQ", {"nlist": _nlist(n, dim), "m": 64, "nbits": 8}),
    "scann": lambda n, dim: ("SCANN", {"nlist": _nlist(n, dim)}),  # keeps the raw embeddings for re-scoring
}
# Milvus indexes each sealed segment on its own; a segment closes at dataCoord.segment.maxSize (512 MB by default)
SEGMENT_BYTES = 512 * 2**20
# Default search settings: IVF kinds visit FAISS's share of the cells (NPROBE_SHARE). SCANN visits 25 % and re-scores
# 10 x k: measured at 100k rows (docs/benchmarks.md), these come within 0.02 of FAISS ivfpq's recall@10 at DeMo's and
# NEXT's dimensions, about 1.2x faster than visiting 40 % with 20 x k, which adds recall FAISS does not have.
SCANN_NPROBE_SHARE = 0.25
SCANN_REFINE = 10  # re-score refine x k candidates on the stored embeddings
# embed.py's index options a Milvus index type takes: build parameters, and search defaults saved with the gallery
BUILD_OPTIONS = {"nlist": ("IVF_FLAT", "IVF_PQ", "SCANN"), "m": ("IVF_PQ",)}
SEARCH_OPTIONS = {"nprobe": ("IVF_FLAT", "IVF_PQ", "SCANN"), "refine": ("SCANN",)}
LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ")  # what Milvus Lite 3.2 builds
INSERT_BATCH = 1000  # rows per insert call (each call is whole rows)
INSERT_THREADS = 2  # insert calls in flight: one batch is converted while the previous one is on the wire
STAGING = "__overwrite_"  # <collection>__overwrite_<ns>: the hidden collection an --overwrite writes first
MAX_TOPK = 16384  # Milvus's largest limit per search
OUTPUT_FIELDS = ["name", "pid", "camid", "sceneid", "time"]
# Searches and re-ranking's fetch of the candidates' embeddings read at Session consistency (this client's own
# writes, and everything the server has applied); a Strong read waits for the server's next time tick (about 0.4 s
# a call on a Milvus 2.3 server). Writes are made visible to every later reader before they return instead
# (:meth:`MilvusStore._settle`).
SEARCH_CONSISTENCY = "Session"


def _nlist(n: int, dim: int) -> int:
    """4 sqrt(rows) cells, counting the rows of one segment (each segment has its own index), not the gallery's."""
    rows = min(max(n, 1), SEGMENT_BYTES // (4 * dim))
    return max(1, min(65536, int(4 * math.sqrt(rows))))


def _quiet_client_logs() -> None:
    """pymilvus and Milvus Lite log each failed call as a traceback; this store reports them in one line itself."""
    for name in ("pymilvus", "milvus_lite"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _import_pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise UsageError("a Milvus gallery needs pymilvus (and milvus-lite for a .db file): "
                         "pip install -e \".[retrieval]\"") from None
    return pymilvus


# Milvus Lite files this process has open -> number of open clients: their embedded server (and the file's lock)
# is stopped when the last one closes.
_OPEN_HERE: dict = {}


def _lite_locked(path: Path) -> bool:
    """Whether another process holds the Milvus Lite file's lock (tried without waiting, released at once)."""
    import fcntl

    lock = path / "LOCK"
    if str(path) in _OPEN_HERE or not lock.is_file():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def is_lite(location: str) -> bool:
    return not location.startswith(("http://", "https://", "tcp://", "grpc://"))


def connect(location: str, what: str, create: bool):
    """A ``MilvusClient`` for a Lite file or a server URI, or one line saying why not."""
    pymilvus = _import_pymilvus()
    _quiet_client_logs()
    lite = is_lite(location)
    if lite:
        path = Path(location).expanduser().absolute()
        if not path.exists() and not create:
            raise UsageError(f"{what} {location}: no such Milvus Lite file; write it with data_scripts/embed.py "
                             "--output gallery.db")
        if _lite_locked(path):
            raise UsageError(f"{what} {location}: the Milvus Lite file is open in another process (Milvus Lite "
                             "serves one process per file); close that process, or serve the gallery from a "
                             "Milvus server")
        path.parent.mkdir(parents=True, exist_ok=True)
        location = str(path)
    try:
        client = pymilvus.MilvusClient(uri=location, token=os.environ.get(TOKEN_VARIABLE, ""), timeout=10)
        if lite:
            _OPEN_HERE[location] = _OPEN_HERE.get(location, 0) + 1
        return client
    except Exception as exc:  # pymilvus raises its own exception types (and grpc's) for every failure
        if lite and _lite_locked(Path(location)):
            raise UsageError(f"{what} {location}: the Milvus Lite file is open in another process (Milvus Lite "
                             "serves one process per file)") from None
        raise UsageError(f"{what} {location}: cannot connect to Milvus ({_milvus_message(exc)})") from None


def close_client(client, location: str) -> None:
    """Close the connection; for a Milvus Lite file also stop its embedded server, which releases the file's lock
    (pymilvus keeps it for the life of the process otherwise) so that another process can open it."""
    client.close()
    if not location.startswith(("http://", "https://", "tcp://", "grpc://")):
        from milvus_lite.server_manager import server_manager_instance

        path = str(Path(location).expanduser().absolute())
        _OPEN_HERE[path] = _OPEN_HERE.get(path, 1) - 1
        if _OPEN_HERE[path] <= 0:
            del _OPEN_HERE[path]
            server_manager_instance.release_server(path)


def _milvus_message(exc) -> str:
    return first_line(getattr(exc, "message", None) or exc, 200)


class MilvusStore(GalleryStore):
    """One collection: ``client`` (a ``MilvusClient``), ``collection`` (its name), ``info`` (the manifest)."""

    kind = "milvus"

    def __init__(self, client, location: str, collection: str, info: dict, replaces: Optional[str] = None):
        self.client, self.location, self.collection, self.info = client, location, collection, info
        self.search_params: dict = {}  # index search parameters (nprobe for ivf / ivfpq, ef for hnsw)
        # an --overwrite writes a new collection under a hidden name; its first append publishes it as ``replaces``
        self.replaces = replaces

    # -- creating / opening -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, client, location: str, collection: str, info: dict, index_kind: str, expected_rows: int,
               replaces: Optional[str] = None, index_options: Optional[dict] = None):
        """``index_options``: build parameters (``nlist``, ``m``) that replace the index kind's defaults, and search
        defaults (``nprobe``, ``refine``) saved with the gallery (:data:`BUILD_OPTIONS`, :data:`SEARCH_OPTIONS`)."""
        from pymilvus import DataType, MilvusClient

        if index_kind not in MILVUS_INDEX_KINDS:
            raise UsageError(f"--index {index_kind}: a Milvus gallery takes {', '.join(MILVUS_INDEX_KINDS)}")
        index_type, params = MILVUS_INDEX_KINDS[index_kind](expected_rows, int(info["dim"]))
        options = {k: v for k, v in (index_options or {}).items() if v is not None}
        check_index_options(index_kind, options)
        params = {**params, **{k: int(v) for k, v in options.items() if k in BUILD_OPTIONS}}
        info = dict(info, search_defaults={k: int(v) for k, v in options.items() if k in SEARCH_OPTIONS})
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=1024)
        for name in ("pid", "camid", "sceneid", "time"):
            schema.add_field(name, DataType.INT64)
        schema.add_field("source", DataType.VARCHAR, max_length=4096)
        schema.add_field(EMBEDDING_COLUMN, DataType.FLOAT_VECTOR, dim=int(info["dim"]))
        index_params = client.prepare_index_params()
        index_params.add_index(field_name=EMBEDDING_COLUMN, index_type=index_type, metric_type="L2", params=params)
        info = dict(info, index=index_kind, index_type=index_type, index_params=params)
        try:
            client.create_collection(collection, schema=schema, index_params=index_params,
                                     consistency_level="Strong", properties={INFO_PROPERTY: json.dumps(info)})
            client.load_collection(collection)
        except Exception as exc:
            client.drop_collection(collection) if client.has_collection(collection) else None
            raise UsageError(f"--index {index_kind}: {location} cannot build {index_type} "
                             f"({_milvus_message(exc)}); Milvus Lite builds exact, ivf and hnsw, a server also "
                             "ivfpq and scann") from None
        return cls(client, location, collection, info, replaces)

    @classmethod
    def open(cls, client, location: str, collection: str, what: str):
        if not client.has_collection(collection):
            names = client.list_collections()
            raise UsageError(f"{what} {location}: no collection {collection!r} (it has {', '.join(names) or 'none'}); "
                             "pass --collection")
        described = client.describe_collection(collection)
        text = (described.get("properties") or {}).get(INFO_PROPERTY)
        if text is None:
            raise UsageError(f"{what} {location}: collection {collection!r} was not written by data_scripts/embed.py "
                             f"(no {INFO_PROPERTY} property)")
        client.load_collection(collection)
        return cls(client, location, collection, json.loads(text))

    def close(self) -> None:
        close_client(self.client, self.location)

    # -- reading ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        found = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(found[0]["count(*)"])

    def existing_names(self, names) -> set:
        names, found = list(names), set()
        for start in range(0, len(names), INSERT_BATCH):
            chunk = names[start:start + INSERT_BATCH]
            rows = self.client.query(self.collection, filter=f"name in {json.dumps(chunk)}", output_fields=["name"],
                                     consistency_level=SEARCH_CONSISTENCY)
            found.update(r["name"] for r in rows)
        return found

    def set_search(self, nprobe: Optional[int] = None, refine: Optional[int] = None) -> None:
        """Search-time settings of an IVF or SCANN index (:data:`SEARCH_OPTIONS`); refused for other indexes."""
        for name, value in (("nprobe", nprobe), ("refine", refine)):
            if value is None:
                continue
            if self.info.get("index_type") not in SEARCH_OPTIONS[name]:
                raise UsageError(f"--{name} is for a Milvus {' / '.join(_kinds_taking(SEARCH_OPTIONS[name]))} index; collection {self.collection!r} "
                                 f"at {self.location} has {self.info.get('index', 'exact')}")
            self.search_params[name] = int(value)

    def _search_params(self, k: int) -> dict:
        """The index's search parameters: ``set_search``'s or the gallery's saved ones, else a share of the cells
        (``NPROBE_SHARE``, ``SCANN_NPROBE_SHARE``), ef = max(64, k) for HNSW, refine x k re-scored for SCANN."""
        params = {**(self.info.get("search_defaults") or {}), **self.search_params}
        refine = params.pop("refine", SCANN_REFINE)
        nlist = (self.info.get("index_params") or {}).get("nlist")
        index_type = str(self.info.get("index_type", ""))
        if nlist:
            share = SCANN_NPROBE_SHARE if index_type == "SCANN" else NPROBE_SHARE
            params.setdefault("nprobe", max(1, math.ceil(share * nlist)))
        if index_type.startswith("HNSW"):
            params["ef"] = max(params.get("ef", 64), k)
        if index_type == "SCANN":
            params["reorder_k"] = max(k, refine * k)
        if "nprobe" in params and is_lite(self.location):
            # Milvus Lite 3.2 returns at most nprobe rows from an IVF index: visit at least k cells to get k rows
            params["nprobe"] = max(params["nprobe"], k)
        return params

    def search(self, queries: np.ndarray, k: int, where: Optional[RowFilter] = None) -> list[list[Hit]]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        limit = max(1, min(int(k), MAX_TOPK))
        expression = "" if where is None else where.expression()
        try:
            found = self.client.search(self.collection, data=queries.tolist(), limit=limit, filter=expression,
                                       output_fields=OUTPUT_FIELDS, anns_field=EMBEDDING_COLUMN,
                                       search_params={"metric_type": "L2", "params": self._search_params(limit)},
                                       consistency_level=SEARCH_CONSISTENCY)
        except Exception as exc:
            raise UsageError(f"filter {expression!r} on {self.location}: {_milvus_message(exc)}") from None
        return [[Hit(rank=i + 1, row=-1, name=h["entity"]["name"], pid=int(h["entity"]["pid"]),
                     camid=int(h["entity"]["camid"]), sceneid=int(h["entity"]["sceneid"]),
                     time=int(h["entity"]["time"]), distance=float(h["distance"]))
                 for i, h in enumerate(hits)] for hits in found]

    def embeddings_of(self, hits) -> np.ndarray:
        names = [h.name for h in hits]
        rows = self.client.query(self.collection, filter=f"name in {json.dumps(names)}",
                                 output_fields=["name", EMBEDDING_COLUMN], consistency_level=SEARCH_CONSISTENCY)
        by_name = {r["name"]: r[EMBEDDING_COLUMN] for r in rows}
        return np.asarray([by_name[n] for n in names], dtype=np.float32)

    # -- changing -----------------------------------------------------------------------------------------------
    def append(self, rows: GalleryRows, source: Optional[dict] = None, retrain: bool = False) -> int:
        if retrain:
            raise UsageError("--retrain is for FAISS ivf / ivfpq folders: Milvus builds the index of each sealed "
                             "segment itself as rows arrive")
        if len(rows) and rows.embeddings.shape[1] != self.dim:
            raise UsageError(f"--output {self.location}: {rows.embeddings.shape[1]}-d embeddings, the collection "
                             f"{self.collection!r} holds {self.dim}-d ones")
        present = self.existing_names(rows.names)
        rows = rows.select([n not in present for n in rows.names])
        def insert(start: int) -> None:
            stop = min(start + INSERT_BATCH, len(rows))
            self.client.insert(self.collection, [
                {"name": rows.names[i], "pid": int(rows.pids[i]), "camid": int(rows.camids[i]),
                 "sceneid": int(rows.sceneids[i]), "time": int(rows.times[i]), "source": rows.sources[i],
                 EMBEDDING_COLUMN: vector} for i, vector in zip(range(start, stop), rows.embeddings[start:stop].tolist())])

        with ThreadPoolExecutor(INSERT_THREADS) as pool:
            list(pool.map(insert, range(0, len(rows), INSERT_BATCH)))  # list(): the first failed call raises here
        add_source(self.info, source, len(rows))
        self._save_info()
        self._settle()
        if self.replaces:
            self._publish()
        return len(rows)

    def delete(self, where: RowFilter) -> int:
        if where is None or where.empty:
            raise UsageError("a delete needs a rule (--name, --pid or --older-than); nothing was deleted")
        expression = where.expression()
        count = self.client.query(self.collection, filter=expression, output_fields=["count(*)"])[0]["count(*)"]
        if count:
            self.client.delete(self.collection, filter=expression)
            self._settle()
        return int(count)

    def _settle(self) -> None:
        """Wait until the server applies this client's writes (one Strong read), so that when an append or delete
        returns, a search from any process sees it (searches themselves read at Session consistency). With several
        replicas, each applies them on its own time tick: a search within about a second may still miss them."""
        self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")

    def _publish(self) -> None:
        """Make this (complete) collection the one ``replaces`` names, in one step: ``replaces`` becomes an alias of
        it (an alias swap when it already is one: searches see the old gallery or the new one, never a part), then
        the old collection is dropped. A gallery first written as a plain collection (before aliases were used)
        is dropped just before its name becomes the alias: a search in between is told there is no such
        collection."""
        name, client = self.replaces, self.client
        old = _alias_target(client, name)
        if old is not None:
            client.alter_alias(self.collection, name)
            client.drop_collection(old)
        else:
            if client.has_collection(name):
                client.drop_collection(name)
            client.create_alias(self.collection, name)
        self.collection, self.replaces = name, None

    def _save_info(self) -> None:
        self.client.alter_collection_properties(self.collection, properties={INFO_PROPERTY: json.dumps(self.info)})


def _kinds_taking(index_types) -> list[str]:
    return [kind for kind, make in MILVUS_INDEX_KINDS.items() if make(1, 1)[0] in index_types]


def check_index_options(index_kind: str, options: dict) -> None:
    """Each option set (embed.py's: nlist, m = --pq-m, nprobe, refine, pca_dim) applies to ``index_kind``."""
    index_type = MILVUS_INDEX_KINDS[index_kind](1, 1)[0]
    takes = {**BUILD_OPTIONS, **SEARCH_OPTIONS}
    for name in options:
        flag = "--pq-m" if name == "m" else f"--{name.replace('_', '-')}"
        if name not in takes:
            raise UsageError(f"{flag} is for a FAISS folder's ivfpq index; a Milvus index has no such setting")
        if index_type not in takes[name]:
            kinds = _kinds_taking(takes[name])
            raise UsageError(f"{flag} is for a Milvus {' / '.join(kinds)} index, not --index {index_kind}")


@register_store("milvus")
def open_milvus(location: str, collection: Optional[str] = None, create_info: Optional[dict] = None,
                what: str = "--index", index_kind: str = "exact", expected_rows: int = 0, overwrite: bool = False,
                index_options: Optional[dict] = None, **_) -> MilvusStore:
    """The collection at ``location``; created (``create_info`` given) when it does not exist, or replaced with
    ``overwrite``."""
    collection = collection or DEFAULT_COLLECTION
    client = connect(location, what, create=create_info is not None)
    try:
        exists = client.has_collection(collection)
        if create_info is not None and (overwrite or not exists):
            if not exists:
                return MilvusStore.create(client, location, collection, create_info, index_kind, expected_rows,
                                          index_options=index_options)
            # the old gallery stays searchable until the new one is complete (MilvusStore._publish)
            _drop_unpublished(client, collection)
            return MilvusStore.create(client, location, f"{collection}{STAGING}{time.time_ns()}", create_info,
                                      index_kind, expected_rows, replaces=collection, index_options=index_options)
        return MilvusStore.open(client, location, collection, what)
    except BaseException:
        close_client(client, location)
        raise


def _alias_target(client, name: str) -> Optional[str]:
    """The collection that the alias ``name`` points to; None when ``name`` is not an alias."""
    _quiet_client_logs()  # pymilvus logs "alias not found" as an error with a traceback
    try:
        return client.describe_alias(name)["collection_name"]
    except Exception:  # pymilvus raises MilvusException for "alias not found"
        return None


def _drop_unpublished(client, collection: str) -> None:
    """Drop what killed --overwrite runs of ``collection`` left: hidden collections that no alias points to."""
    published = _alias_target(client, collection)
    for name in client.list_collections():
        if name.startswith(collection + STAGING) and name != published:
            client.drop_collection(name)


def drop_gallery(client, collection: str) -> None:
    """Drop the gallery ``collection`` (its alias first when it is one: a server refuses to drop through one)."""
    target = _alias_target(client, collection)
    if target is not None:
        client.drop_alias(collection)
        collection = target
    if client.has_collection(collection):
        client.drop_collection(collection)


def check_new_collection(location: str, collection: Optional[str], overwrite: bool, index_kind: str,
                         index_options: Optional[dict] = None) -> None:
    """Before any embedding: the index settings apply, the server answers (or the Lite file opens) and the
    collection may be written."""
    if index_kind not in MILVUS_INDEX_KINDS:
        raise UsageError(f"--index {index_kind}: a Milvus gallery takes {', '.join(MILVUS_INDEX_KINDS)}")
    check_index_options(index_kind, {k: v for k, v in (index_options or {}).items() if v is not None})
    index_type = MILVUS_INDEX_KINDS[index_kind](1, 1)[0]
    if is_lite(location) and index_type not in LITE_INDEX_TYPES:
        raise UsageError(f"--index {index_kind}: Milvus Lite ({location}) cannot build {index_type}; it builds "
                         f"{', '.join(_kinds_taking(LITE_INDEX_TYPES))}: serve the gallery from a Milvus server")
    collection = collection or DEFAULT_COLLECTION
    client = connect(location, "--output", create=True)
    try:
        if client.has_collection(collection) and not overwrite:
            raise UsageError(f"--output {location}: collection {collection!r} already exists (pass --overwrite to "
                             "replace it, --append to add to it)")
    finally:
        close_client(client, location)

"""Gallery search at 100k and 1M rows: the library's ivfpq index (PCA -> IVF -> PQ -> 4-bit re-scoring) against
exact search, on synthetic clustered embeddings of DeMo's (5120) and NEXT's (3072) ViT-B/16 retrieval dimension.

Why synthetic and how: no million-triple dataset exists here, and 1M x 5120 float32 is 20 GB, so rows are made in
50k-row chunks (each from its own seed, so a chunk can be made again) and never held together. A row is an
identity centre plus per-image variation (10 images per identity), both drawn in a 256-dimensional subspace with a
power-law spectrum (variance of direction k ~ 1/k: trained features concentrate in few directions), plus isotropic
noise carrying 10 % of the energy in all D dimensions, then L2-normalised, as ``embed.py`` writes them. Queries are
new images of gallery identities. Exact top-10s are computed chunk by chunk over the same rows.

Measured: build time (training + adding, 2 threads), index memory (serialized size), the process's peak RSS, median
latency of one query at a time on 1 thread (faiss.omp_set_num_threads(1)), and recall@10 against exact search, for
several nprobe values. The exact figures beside them: a flat index at 100k (built and timed); at 1M it would hold
20 GB, so its latency is that of the same brute-force scan timed chunk by chunk and summed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from mmreid.retrieval.index import IndexSpec, new_faiss_index, set_search_params
from mmreid.retrieval.milvus_store import MILVUS_INDEX_KINDS
from mmreid.retrieval.store import EMBEDDING_COLUMN
from harness import PeakMemory

CHUNK = 50_000
IMAGES_PER_ID = 10
LATENT = 256
VARIATION = 0.6
NOISE_SHARE = 0.10


def retrieval_dims() -> dict[str, int]:
    """The retrieval feature sizes of DeMo and NEXT at CLIP ViT-B/16 (C = 512), from their configs."""
    from configuration_demo import DeMoConfig
    from configuration_next import NextConfig

    demo, next_ = DeMoConfig(), NextConfig()
    demo_parts = {"ori": 3, "moe": 7, "all": 10}[demo.inference_features]
    branches = len(next_.branch_names)  # "final" = the MGFA output, 3 tokens per branch; "all" adds the 3 class tokens
    next_parts = {"final": 3 * max(1, branches), "all": 3 * (1 + branches)}[next_.inference_features]
    return {"DeMo": demo_parts * demo.feature_dim, "NEXT": next_parts * next_.feature_dim}


class ClusteredEmbeddings:
    """Deterministic synthetic gallery rows, made chunk by chunk (see the module docstring)."""

    def __init__(self, dim: int, num_rows: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.num_rows, self.seed = dim, num_rows, seed
        self.num_ids = max(1, num_rows // IMAGES_PER_ID)
        spectrum = 1.0 / np.sqrt(np.arange(1, LATENT + 1, dtype=np.float32))
        basis = rng.standard_normal((LATENT, dim), dtype=np.float32) / np.sqrt(dim)
        self.basis = basis * spectrum[:, None]
        self.centres = rng.standard_normal((self.num_ids, LATENT), dtype=np.float32)
        signal = float((spectrum ** 2).sum()) * (1 + VARIATION ** 2) / 1.0
        # uniform noise of the right variance (cheaper to draw than normal; only its spread matters here)
        self.noise_half_width = float(np.sqrt(3 * NOISE_SHARE / (1 - NOISE_SHARE) * signal / dim))

    def _rows(self, pids: np.ndarray, rng) -> np.ndarray:
        z = self.centres[pids] + VARIATION * rng.standard_normal((len(pids), LATENT), dtype=np.float32)
        x = z @ self.basis
        noise = rng.random((len(pids), self.dim), dtype=np.float32)
        noise -= 0.5
        noise *= 2 * self.noise_half_width
        x += noise
        del noise
        x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        return x

    def num_chunks(self) -> int:
        return -(-self.num_rows // CHUNK)

    def chunk(self, i: int) -> np.ndarray:
        size = min(CHUNK, self.num_rows - i * CHUNK)
        rng = np.random.default_rng([self.seed, 1, i])
        return self._rows(rng.integers(0, self.num_ids, size), rng)

    def queries(self, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2])
        return self._rows(rng.integers(0, self.num_ids, n), rng)


class ExactTopK:
    """Running exact top-k (squared L2) of the queries over chunks, with a brute-force single-query timing per chunk
    (none when ``timed_queries`` is 0)."""

    def __init__(self, queries: np.ndarray, k: int, timed_queries: int = 5):
        self.queries, self.k, self.timed = queries, k, timed_queries
        self.dist = np.full((len(queries), k), np.inf, dtype=np.float32)
        self.rows = np.full((len(queries), k), -1, dtype=np.int64)
        self.scan_seconds = []  # per chunk: median over the timed queries of one query's scan

    def update(self, faiss, chunk: np.ndarray, offset: int) -> None:
        d, r = faiss.knn(self.queries, chunk, self.k)
        d, r = np.concatenate([self.dist, d], axis=1), np.concatenate([self.rows, r + offset], axis=1)
        order = np.argsort(d, axis=1, kind="stable")[:, : self.k]
        self.dist, self.rows = np.take_along_axis(d, order, 1), np.take_along_axis(r, order, 1)
        if not self.timed:
            return
        faiss.omp_set_num_threads(1)
        times = []
        for q in self.queries[: self.timed]:
            start = time.perf_counter()
            faiss.knn(q[None], chunk, self.k)
            times.append(time.perf_counter() - start)
        faiss.omp_set_num_threads(2)
        self.scan_seconds.append(statistics.median(times))


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found, exact)]))


def _latency(faiss, index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Median seconds of one query at a time on one thread, and the rows found."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    index.search(queries[:5], k)  # warm-up
    times, rows = [], []
    for q in queries:
        start = time.perf_counter()
        _, r = index.search(q[None], k)
        times.append(time.perf_counter() - start)
        rows.append(r[0])
    faiss.omp_set_num_threads(threads)
    return statistics.median(times), np.stack(rows)


def _train(faiss, index, spec: IndexSpec, data: ClusteredEmbeddings) -> None:
    """Train the chain on the first ``spec.train_size`` rows (rows are in random identity order: an unbiased
    sample), as GalleryIndex.build does on its sample, but by parts so that the rows are never held whole: the PCA
    and the 4-bit re-scoring ranges on 50k of them, the inverted lists and PQ on all of them after the PCA."""
    index = faiss.downcast_index(index)
    refine = index if isinstance(index, faiss.IndexRefine) else None
    chain = faiss.downcast_index(refine.base_index) if refine is not None else index
    first = data.chunk(0)
    if refine is not None:
        faiss.downcast_index(refine.refine_index).train(first)
    if isinstance(chain, faiss.IndexPreTransform):
        pca = faiss.downcast_VectorTransform(chain.chain.at(0))
        pca.train(first)
        reduced = [pca.apply(first)]
        del first
        for i in range(1, -(-min(spec.train_size, data.num_rows) // CHUNK)):
            reduced.append(pca.apply(data.chunk(i)))
        faiss.downcast_index(chain.index).train(np.concatenate(reduced)[: spec.train_size])
        chain.is_trained = True
    else:
        del first
        chain.train(np.concatenate([data.chunk(i) for i in range(-(-spec.train_size // CHUNK))])[: spec.train_size])
    index.is_trained = True


def run_case(faiss, dim: int, num_rows: int, nprobes, k: int = 10, num_queries: int = 100, log=print) -> dict:
    data = ClusteredEmbeddings(dim, num_rows)
    queries = data.queries(num_queries)
    spec = IndexSpec(kind="ivfpq", train_size=100_000).resolved(num_rows, dim)
    index = new_faiss_index(spec, dim)
    exact = ExactTopK(queries, k)
    flat = faiss.IndexFlatL2(dim) if num_rows <= 100_000 else None
    build = flat_build = 0.0
    with PeakMemory("cpu") as peak:
        start = time.perf_counter()
        _train(faiss, index, spec, data)
        build += time.perf_counter() - start
        for i in range(data.num_chunks()):
            chunk = data.chunk(i)
            exact.update(faiss, chunk, i * CHUNK)
            start = time.perf_counter()
            index.add(chunk)
            build += time.perf_counter() - start
            if flat is not None:
                start = time.perf_counter()
                flat.add(chunk)
                flat_build += time.perf_counter() - start
            del chunk
    row = {"dim": dim, "rows": num_rows, "index": spec.describe(dim), "build_s": build,
           "index_memory_gib": len(faiss.serialize_index(index)) / 2**30, "peak_rss_gib": peak.gib,
           "queries": num_queries, "k": k, "refine": spec.refine, "sweep": []}
    for nprobe in nprobes:
        set_search_params(index, nprobe, spec.refine)
        latency, found = _latency(faiss, index, queries, k)
        row["sweep"].append({"nprobe": nprobe, "median_latency_ms": 1e3 * latency,
                             "recall_at_10": recall_at_k(found, exact.rows)})
        log(f"  retrieval {dim}-d x {num_rows}: nprobe {nprobe}: {1e3 * latency:.2f} ms, recall@10 "
            f"{row['sweep'][-1]['recall_at_10']:.3f}")
    if flat is not None:
        latency, found = _latency(faiss, flat, queries, k)
        assert recall_at_k(found, exact.rows) >= 0.999  # the flat index is the exact search
        row["exact"] = {"how": "IndexFlatL2, built", "build_s": flat_build, "median_latency_ms": 1e3 * latency,
                        "index_memory_gib": flat.ntotal * dim * 4 / 2**30}
    else:
        row["exact"] = {"how": "brute-force scan timed chunk by chunk (a flat index would hold it all)",
                        "build_s": None, "median_latency_ms": 1e3 * sum(exact.scan_seconds),
                        "index_memory_gib": num_rows * dim * 4 / 2**30}
    chosen = [s for s in row["sweep"] if s["recall_at_10"] >= 0.95 and s["median_latency_ms"] <= 20]
    row["chosen_nprobe"] = chosen[0]["nprobe"] if chosen else None
    log(f"  retrieval {dim}-d x {num_rows}: build {build:.0f} s, index {row['index_memory_gib']:.3f} GiB, "
        f"exact {row['exact']['median_latency_ms']:.1f} ms/query")
    return row


def run_retrieval_suite(sizes=(100_000, 1_000_000), nprobes=(128, 256, 512, 768, 1024), models=("DeMo", "NEXT"),
                        log=print) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(2)
    rows = []
    for name, dim in retrieval_dims().items():
        if name not in models:
            continue
        for num_rows in sizes:
            row = run_case(faiss, dim, num_rows, nprobes, log=log)
            row["model"] = name
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- FAISS beside Milvus
# Each Milvus case: label -> (where: "lite" = a Milvus Lite file, "server" = the --milvus-uri server; the Milvus index
# type; its build params; its search params). The store's own index kinds are built as `embed.py --index KIND`
# builds them; IVF kinds and SCANN get nlist 4 sqrt(rows of one segment) and, with search params None, the store's
# default search settings. Milvus Lite 3.2 builds FLAT, IVF_FLAT, IVF_SQ8, HNSW and HNSW_SQ (not IVF_PQ or SCANN); a
# server builds them all.


def _store_build(kind: str) -> dict:
    """The build parameters of the store's ``--index kind``, less nlist (set from the benchmark's rows below)."""
    return {name: value for name, value in MILVUS_INDEX_KINDS[kind](1, 1)[1].items() if name != "nlist"}


MILVUS_CASES = {
    "lite FLAT": ("lite", "FLAT", {}, {}),
    "lite HNSW": ("lite", "HNSW", _store_build("hnsw"), {"ef": 64}),
    "lite IVF_SQ8": ("lite", "IVF_SQ8", {}, None),
    "server IVF_PQ": ("server", "IVF_PQ", _store_build("ivfpq"), None),  # 64 bytes a row, as FAISS ivfpq's PQ64x8
    "server SCANN": ("server", "SCANN", _store_build("scann"), None),  # FAISS ivfpq's chain
    "server HNSW": ("server", "HNSW", _store_build("hnsw"), {"ef": 64}),
    "server FLAT": ("server", "FLAT", {}, {}),
}
DEFAULT_LITE_CASES = ("lite FLAT", "lite HNSW", "lite IVF_SQ8")
DEFAULT_SERVER_CASES = ("server SCANN", "server HNSW", "server IVF_PQ")
# Search settings tried on each built Milvus index after its defaults (search-time only, no rebuild): the fastest
# one within 0.02 of FAISS ivfpq's recall is what the goal compares
MILVUS_SWEEPS = {
    "SCANN": [{"nprobe": n} for n in (16, 32, 64, 96, 128, 160, 192, 256)]
    + [{"nprobe": n, "refine": 10} for n in (128, 160, 192, 256, 320)],
    "HNSW": [{"ef": e} for e in (16, 32, 128, 256, 512)],
    "IVF_PQ": [{"nprobe": n} for n in (16, 64)],
    "IVF_SQ8": [{"nprobe": n} for n in (8, 32)],
}
APPEND_ROWS = 10_000
INDEX_WAIT_S = 3600


def _rows(data: ClusteredEmbeddings, x: np.ndarray, offset: int):
    from mmreid.retrieval.store import GalleryRows

    n = len(x)
    ids = np.arange(offset, offset + n)
    return GalleryRows([f"r{i}" for i in ids], ids // IMAGES_PER_ID, ids % 6, np.zeros(n, dtype=np.int64), ids,
                       [""] * n, x)


def _wait_for_index(store) -> float:
    """Flush, wait until every row is in an indexed sealed segment (Milvus builds each segment's index after it
    seals, in the background: a search before that scans the rows without the index), compact the small sealed
    segments into large ones and wait for their indexes too (left to itself the server does this later, in the
    background, while queries are timed), then reload so that the query node serves the indexed segments.
    Returns the seconds waited."""
    client, name = store.client, store.collection
    start = time.perf_counter()
    client.flush(name)
    _wait_until_indexed(store, start)
    if client.describe_index(name, EMBEDDING_COLUMN).get("index_type") != "FLAT":
        job = client.compact(name)
        while client.get_compaction_state(job) != "Completed":
            _check_deadline(name, start)
            time.sleep(2)
        _wait_until_indexed(store, start)
    waited = time.perf_counter() - start
    client.release_collection(name)
    client.load_collection(name)
    return waited


def _wait_until_indexed(store, start: float) -> None:
    client, name = store.client, store.collection
    while True:
        state = client.describe_index(name, EMBEDDING_COLUMN)
        total, indexed = int(state.get("total_rows", 0)), int(state.get("indexed_rows", 0))
        if state.get("index_type") == "FLAT" or (total and indexed >= total
                                                 and not int(state.get("pending_index_rows", 0))):
            return
        _check_deadline(name, start)
        time.sleep(2)


def _check_deadline(name: str, start: float) -> None:
    if time.perf_counter() - start > INDEX_WAIT_S:
        raise TimeoutError(f"{name}: index not built in {INDEX_WAIT_S} s")


def _rss_gib(pid) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return None


class _PinnedServer:
    """Pins every thread of the server process to one core while single queries are timed (``taskset -a -p``), so
    that its latency is that of one core, as FAISS's on one thread; restores the affinity after."""

    def __init__(self, pid, core: int = 1):
        self.pid, self.core = pid, core

    def __enter__(self):
        if self.pid is not None:
            self.before = subprocess.run(["taskset", "-p", str(self.pid)], capture_output=True, text=True,
                                         check=True).stdout.rsplit(":", 1)[1].strip()
            subprocess.run(["taskset", "-a", "-p", "-c", str(self.core), str(self.pid)], capture_output=True,
                           check=True)
        return self

    def __exit__(self, *exc):
        if self.pid is not None:
            subprocess.run(["taskset", "-a", "-p", self.before, str(self.pid)], capture_output=True, check=True)


def _milvus_case(label, data, queries, exact_rows, extra, k, location, log, server_pid=None) -> dict:
    """Insert every row into a Milvus collection (Lite file or server) through the project's MilvusStore, wait for
    its index, append ``extra`` (and wait again), and time single queries through the store (the client's gRPC
    round trip included)."""
    import shutil

    from mmreid.retrieval import milvus_store
    from mmreid.retrieval.store import new_info, open_gallery

    where, index_type, build, search = MILVUS_CASES[label]
    if index_type.startswith("IVF") or index_type == "SCANN":
        build = {"nlist": milvus_store._nlist(data.num_rows, data.dim), **build}
    lite = where == "lite"
    if lite:
        shutil.rmtree(location, ignore_errors=True)
    milvus_store.MILVUS_INDEX_KINDS["bench"] = lambda n, dim: (index_type, build)
    info = new_info("synthetic", "synthetic", data.dim, None)
    collection = f"bench_{index_type.lower()}_{data.dim}_{os.getpid()}"  # runs side by side do not collide
    rss_pid = None if lite else server_pid
    rss_before = _rss_gib(rss_pid)
    with PeakMemory("cpu") as peak:
        store = open_gallery(str(location), collection, create_info=info, index_kind="bench", overwrite=True)
        start = time.perf_counter()
        for i in range(data.num_chunks()):
            store.append(_rows(data, data.chunk(i), i * CHUNK))
        insert_s = time.perf_counter() - start
        index_s = _wait_for_index(store)
        start = time.perf_counter()
        store.append(_rows(data, extra, data.num_rows))
        store.client.flush(store.collection)
        append_s = time.perf_counter() - start
        append_index_s = _wait_for_index(store)
        if search is not None:
            store.search_params = dict(search)
        search = store._search_params(k)
        with _PinnedServer(rss_pid):
            # warm-up: one untimed pass once the server's threads are on their core (timed first, the defaults of
            # earlier runs measured up to 2x a wider search timed later)
            _milvus_latency(store, queries, exact_rows, k)
            latency, recall = _milvus_latency(store, queries, exact_rows, k)
            sweep = []
            for params in MILVUS_SWEEPS.get(index_type, ()):
                store.search_params = dict(params)
                sweep.append({"search": store._search_params(k),
                              **dict(zip(("median_latency_ms", "recall_at_10"),
                                         _milvus_latency(store, queries, exact_rows, k)))})
                log(f"    {label} {sweep[-1]['search']}: {sweep[-1]['median_latency_ms']:.2f} ms, recall@10 "
                    f"{sweep[-1]['recall_at_10']:.3f}")
        rss_loaded = _rss_gib(rss_pid)
    if lite:
        memory, memory_is = sum(f.stat().st_size for f in Path(location).rglob("*") if f.is_file()) / 2**30, \
            "on disk (.db folder)"
        store.close()
        shutil.rmtree(location, ignore_errors=True)
    else:
        memory, memory_is = (rss_loaded - rss_before if rss_loaded else float("nan")), "server RSS growth"
        milvus_store.drop_gallery(store.client, store.collection)
        store.close()
    row = {"store": label, "index": f"{index_type} {build}".strip(), "search": search, "insert_s": insert_s,
           "index_s": index_s, "build_s": insert_s + index_s, "append_s": append_s, "append_index_s": append_index_s,
           "append_rows_per_s": len(extra) / append_s, "median_latency_ms": latency, "recall_at_10": recall,
           "sweep": sweep,
           "memory_gib": memory, "memory_is": memory_is, "peak_rss_gib": peak.gib,
           "server_rss_gib": rss_loaded, "server_pinned_to_one_core": rss_pid is not None}
    log(f"  {label} {data.dim}-d x {data.num_rows}: insert {insert_s:.0f} s + index {index_s:.0f} s, "
        f"{row['append_rows_per_s']:.0f} rows/s appended (+{append_index_s:.0f} s index), "
        f"{row['median_latency_ms']:.2f} ms, recall@10 {row['recall_at_10']:.3f}, memory {memory:.2f} GiB "
        f"({memory_is})")
    return row


def _milvus_latency(store, queries, exact_rows, k) -> tuple[float, float]:
    """Median milliseconds of one query at a time through the store, and recall@k against ``exact_rows``."""
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        hits = store.search(q[None], k)[0]
        times.append(time.perf_counter() - start)
        found.append([int(h.name[1:]) for h in hits] + [-1] * (k - len(hits)))
    return 1e3 * statistics.median(times), recall_at_k(np.asarray(found), exact_rows)


def _faiss_case(faiss, label, data, queries, exact_rows, extra, k, log) -> dict:
    """The project's FAISS chain of ``label`` (exact or the default ivfpq), trained, filled, appended to (no
    retraining) and timed one query at a time."""
    kind = label.split()[-1]
    spec = IndexSpec(kind=kind, train_size=100_000).resolved(data.num_rows, data.dim)
    index = new_faiss_index(spec, data.dim)
    with PeakMemory("cpu") as peak:
        start = time.perf_counter()
        if not index.is_trained:
            _train(faiss, index, spec, data)
        for i in range(data.num_chunks()):
            index.add(data.chunk(i))
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        index.add(extra)
        append_s = time.perf_counter() - start
        set_search_params(index, spec.nprobe, spec.refine)
        latency, found = _latency(faiss, index, queries, k)
    row = {"store": label, "index": spec.describe(data.dim), "search": {"nprobe": spec.nprobe}, "build_s": build_s,
           "append_rows_per_s": len(extra) / append_s, "median_latency_ms": 1e3 * latency,
           "recall_at_10": recall_at_k(found, exact_rows), "memory_gib": len(faiss.serialize_index(index)) / 2**30,
           "memory_is": "index (serialized)", "peak_rss_gib": peak.gib}
    log(f"  {label} {data.dim}-d x {data.num_rows}: build {build_s:.0f} s, {row['append_rows_per_s']:.0f} rows/s "
        f"appended, {row['median_latency_ms']:.2f} ms, recall@10 {row['recall_at_10']:.3f}")
    return row


def run_store_comparison(sizes=(100_000,), stores=("faiss", "milvus"), models=("DeMo", "NEXT"), k: int = 10,
                         num_queries: int = 100, workdir=None, milvus_uri=None, milvus_cases=None,
                         server_pid=None, log=print) -> list[dict]:
    """FAISS (exact, ivfpq) beside Milvus (``milvus_cases``: Milvus Lite's FLAT, HNSW, IVF_SQ8 by default; with
    ``milvus_uri`` the server's IVF_PQ and HNSW) on the same rows, in one run: build / insert time (Milvus: inserts,
    then the wait until every segment is indexed), rows per second of a 10k-row append, median single-query latency
    (one FAISS thread; Milvus Lite serves in-process, its FAISS limited to one thread too; a server whose
    ``server_pid`` is given is pinned to one core while queries are timed), recall@10 against exact search, memory.
    The exact top-10 is over the gallery after the append."""
    import tempfile

    import faiss

    workdir = Path(workdir or tempfile.mkdtemp(prefix="store-bench-"))
    server_cases = [c for c in milvus_cases or () if MILVUS_CASES[c][0] == "server"]
    if server_cases and not milvus_uri:
        raise SystemExit(f"--milvus-cases {' '.join(server_cases)}: these run on a server; pass --milvus-uri")
    # builds on 2 threads, as the suite above; OMP_NUM_THREADS=1 on a machine whose cores are busy (spinning
    # OpenMP threads that wait for a core slow a build down many times)
    threads = int(os.environ.get("OMP_NUM_THREADS", 2))
    out = []
    for name, dim in retrieval_dims().items():
        if name not in models:
            continue
        for num_rows in sizes:
            data = ClusteredEmbeddings(dim, num_rows)
            queries = data.queries(num_queries)
            # new images of the gallery's identities (a generator of its own would have fewer identities than these)
            extra = data._rows(np.random.default_rng([0, 3]).integers(0, data.num_ids, APPEND_ROWS),
                               np.random.default_rng([0, 4]))
            faiss.omp_set_num_threads(threads)
            exact = ExactTopK(queries, k, timed_queries=0)
            for i in range(data.num_chunks()):
                exact.update(faiss, data.chunk(i), i * CHUNK)
            exact.update(faiss, extra, num_rows)
            cases = []
            if "faiss" in stores:
                cases += [_faiss_case(faiss, label, data, queries, exact.rows, extra, k, log)
                          for label in ("faiss exact", "faiss ivfpq")]
            if "milvus" in stores:
                faiss.omp_set_num_threads(1)
                for label in milvus_cases or (DEFAULT_SERVER_CASES if milvus_uri else DEFAULT_LITE_CASES):
                    location = milvus_uri if MILVUS_CASES[label][0] == "server" else workdir / "bench.db"
                    cases.append(_milvus_case(label, data, queries, exact.rows, extra, k, location, log,
                                              server_pid))
                faiss.omp_set_num_threads(threads)
            out.append({"model": name, "dim": dim, "rows": num_rows, "appended": APPEND_ROWS, "k": k,
                        "queries": num_queries, "stores": cases})
    return out

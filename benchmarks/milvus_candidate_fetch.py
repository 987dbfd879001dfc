#!/usr/bin/env python
"""What re-scoring outside Milvus would cost: the time to fetch 10 x k candidates' embeddings from a Milvus server.

The fetch is the project's store's (``MilvusStore.embeddings_of``, one query by name); compare it with FAISS
ivfpq's whole search (docs/benchmarks.md).

Why: FAISS's ivfpq chain finds candidates in a PCA-256 projection and re-scores them on the whole embedding. A
Milvus 2.3 collection holds one vector field, so the same chain there would search a projected collection and
re-score in the client, which first has to fetch each candidate's whole embedding. If that fetch alone takes
longer than FAISS's whole query, the chain cannot come within 2x of it, whatever index finds the candidates.

    python benchmarks/milvus_candidate_fetch.py --milvus-uri http://127.0.0.1:19530 --milvus-server-pid PID
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from harness import describe_machine
from retrieval_suite import CHUNK, ClusteredEmbeddings, ExactTopK, _PinnedServer, _rows, _wait_for_index

CANDIDATES = 100  # 10 x k at k = 10: the store's SCANN re-scoring share


def fetch_case(uri: str, dim: int, rows: int, queries: int, server_pid) -> dict:
    import faiss

    from mmreid.retrieval import milvus_store
    from mmreid.retrieval.store import Hit, new_info, open_gallery

    data = ClusteredEmbeddings(dim, rows)
    q = data.queries(queries)
    exact = ExactTopK(q, CANDIDATES, timed_queries=0)
    info = new_info("synthetic", "synthetic", dim, None)
    store = open_gallery(uri, f"fetch_probe_{dim}_{os.getpid()}", create_info=info, index_kind="exact",
                         overwrite=True)
    try:
        for i in range(data.num_chunks()):
            chunk = data.chunk(i)
            exact.update(faiss, chunk, i * CHUNK)
            store.append(_rows(data, chunk, i * CHUNK))
        _wait_for_index(store)
        candidates = [[Hit(rank=r + 1, row=-1, name=f"r{int(i)}", pid=0, camid=0, sceneid=0, time=0,
                           distance=0.0) for r, i in enumerate(found)] for found in exact.rows]
        fetch, rescore = [], []
        with _PinnedServer(server_pid):
            for timed in (False, True):  # one untimed pass once the server is on its core
                for query, hits in zip(q, candidates):
                    start = time.perf_counter()
                    gallery = store.embeddings_of(hits)
                    fetched = time.perf_counter()
                    np.argsort(((gallery - query) ** 2).sum(1))[:10]
                    if timed:
                        fetch.append(fetched - start)
                        rescore.append(time.perf_counter() - fetched)
    finally:
        milvus_store.drop_gallery(store.client, store.collection)
        store.close()
    return {"dim": dim, "rows": rows, "queries": queries, "candidates": CANDIDATES,
            "median_fetch_ms": 1e3 * statistics.median(fetch), "median_rescore_ms": 1e3 * statistics.median(rescore),
            "server_pinned_to_one_core": server_pid is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--milvus-uri", required=True, help="a Milvus server, e.g. http://127.0.0.1:19530")
    p.add_argument("--milvus-server-pid", type=int, help="pin this server process to one core while timing")
    p.add_argument("--dims", type=int, nargs="+", default=[3072, 5120], help="embedding sizes (NEXT's, DeMo's)")
    p.add_argument("--rows", type=int, default=20_000, help="rows in the collection")
    p.add_argument("--queries", type=int, default=100, help="timed fetches (each query's exact top 100)")
    p.add_argument("--output", type=Path, help="write the results here (JSON)")
    args = p.parse_args()
    result = {"command": "python benchmarks/milvus_candidate_fetch.py " + " ".join(sys.argv[1:]),
              "machine": describe_machine("cpu"), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "cases": []}
    for dim in args.dims:
        result["cases"].append(fetch_case(args.milvus_uri, dim, args.rows, args.queries, args.milvus_server_pid))
        print(json.dumps(result["cases"][-1]), flush=True)
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

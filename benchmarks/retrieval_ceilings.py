#!/usr/bin/env python
"""Where recall@10 is lost in the ivfpq chain, on the retrieval suite's synthetic rows: the best any re-scoring can
do with each store of the gallery, taken apart from the inverted lists and PQ.

Why: re-scoring in a PCA space can rank no better than exact search in that space, so the PCA rows below bound
the library's former chain (re-scoring on 8-bit PCA vectors); the SQ rows bound re-scoring on b-bit scalar codes
of the whole embedding (what ``ivfpq`` keeps now). Candidates are the exact top 200 (20 x k, the default
``refine``), so a row shows the re-scoring alone.

    python benchmarks/retrieval_ceilings.py --dim 5120 --rows 1000000    # about 10 minutes, 8 GB peak, on 2 cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from retrieval_suite import CHUNK, ClusteredEmbeddings, ExactTopK, recall_at_k

PCA_DIMS = (128, 256, 384, 512)
SCALAR_BITS = (4, 6, 8)
CANDIDATES = 200


def main() -> None:
    import faiss

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=5120)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=100)
    args = p.parse_args()
    faiss.omp_set_num_threads(2)
    start = time.perf_counter()
    data = ClusteredEmbeddings(args.dim, args.rows)
    queries = data.queries(args.queries)
    first = data.chunk(0)
    pca = faiss.PCAMatrix(args.dim, max(PCA_DIMS))
    pca.train(first)  # as the suite trains it: on the first 50k rows
    quantizers = {}
    for bits in SCALAR_BITS:
        quantizers[bits] = faiss.ScalarQuantizer(args.dim, getattr(faiss.ScalarQuantizer, f"QT_{bits}bit"))
        quantizers[bits].train(first)
    del first
    exact = ExactTopK(queries, CANDIDATES, timed_queries=0)
    reduced, candidates = np.empty((args.rows, max(PCA_DIMS)), np.float32), {}
    for i in range(data.num_chunks()):
        chunk = data.chunk(i)
        exact.update(faiss, chunk, i * CHUNK)
        reduced[i * CHUNK: i * CHUNK + len(chunk)] = pca.apply(chunk)
        candidates.update({int(r): chunk[r - i * CHUNK].copy()  # a copy: a view would keep the chunk alive
                           for r in exact.rows.ravel() if i * CHUNK <= r < (i + 1) * CHUNK})
        del chunk
    true_top = exact.rows[:, :10]
    reduced_queries = pca.apply(queries)
    print(f"{args.rows:,} rows x {args.dim}: data and exact top-{CANDIDATES} in {time.perf_counter() - start:.0f} s")
    for d in PCA_DIMS:
        _, found = faiss.knn(np.ascontiguousarray(reduced_queries[:, :d]), np.ascontiguousarray(reduced[:, :d]), 10)
        print(f"exact search after PCA to {d}: recall@10 {recall_at_k(found, true_top):.3f}")
    del reduced
    for bits, sq in quantizers.items():
        found = []
        for query, rows in zip(queries, exact.rows):
            decoded = sq.decode(sq.compute_codes(np.stack([candidates[int(r)] for r in rows])))
            found.append(rows[np.argsort(((decoded - query) ** 2).sum(1), kind="stable")[:10]])
        print(f"exact top-{CANDIDATES} re-scored on {bits}-bit codes of all {args.dim} dimensions "
              f"({args.dim * bits / 8 * args.rows / 2**30:.2f} GiB): recall@10 {recall_at_k(np.stack(found), true_top):.3f}")


if __name__ == "__main__":
    main()

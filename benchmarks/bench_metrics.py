"""Time distance + ranking metrics (and optionally re-ranking) on random features of growing size.

Example (the figures in docs/evaluation.md):
    python benchmarks/bench_metrics.py --sizes 1715x8675,10000x50000 --dim 5120 --repeats 3
    python benchmarks/bench_metrics.py --sizes 1715x8675 --dim 5120 --repeats 3 --rerank

Features are random, with identities drawn so that every query has true matches; the numbers
measure cost only. Peak RSS is the process maximum so far (it only grows between sizes).
"""

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from mmreid.evaluation.metrics import reid_metrics_from_features
from mmreid.evaluation.reranking import re_ranking
from mmreid.machine import describe_cpu_line


def parse_sizes(text):
    try:
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        raise SystemExit(f"--sizes must look like 1715x8675,5000x20000; got {text!r}") from None


def make_case(num_q, num_g, dim, num_ids, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(num_q, dim, generator=gen)
    g = torch.randn(num_g, dim, generator=gen)
    rng = np.random.default_rng(seed)
    return q, g, rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g), rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="836x836,1715x8675,5000x20000", help="QxG pairs, comma separated")
    parser.add_argument("--dim", type=int, default=5120, help="feature size (DeMo 'all' with CLIP-B/16 = 5120)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rerank", action="store_true", help="time k-reciprocal re-ranking (k1=50, k2=15) too")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"{describe_cpu_line()}, torch threads: {torch.get_num_threads()}, dim={args.dim}, repeats={args.repeats}")
    for num_q, num_g in parse_sizes(args.sizes):
        q, g, qp, gp, qc, gc = make_case(num_q, num_g, args.dim, max(2, num_g // 10))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            res = reid_metrics_from_features(q, g, qp, gp, qc, gc)
            times.append(time.perf_counter() - start)
        line = f"{num_q}x{num_g} ({num_q * num_g / 1e6:.1f}M pairs): metrics median {statistics.median(times):.2f}s"
        if args.rerank:
            rr = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                re_ranking(q, g, k1=50, k2=15, lambda_value=0.3)
                rr.append(time.perf_counter() - start)
            line += f", re-ranking median {statistics.median(rr):.2f}s"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{line}, peak RSS {peak:.0f} MiB (mAP {100 * res['mAP']:.2f}, sanity only)", flush=True)


if __name__ == "__main__":
    main()

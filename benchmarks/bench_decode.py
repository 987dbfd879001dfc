#!/usr/bin/env python
"""Measure decode + resize + normalize throughput (triples/s) through a torch DataLoader.

Why: decoding three JPEGs per sample must keep up with training; this gives the figure
quoted in docs/datasets.md.  The data is a synthetic RGBNT201 set at the real 256x128 size,
built with the real converter; the collator is the one training uses.

    python benchmarks/bench_decode.py                       # workers 1 and 2, sizes 256x128 and 128x64
    python benchmarks/bench_decode.py --workers 0 1 2 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmreid.data.collate import ReIDCollator
from mmreid.data.builder import build_dataset
from mmreid.data.synthetic import make_synthetic
from mmreid.machine import describe_cpu_line


def measure(dataset, size, workers: int, batch_size: int, repeats: int) -> float:
    """Median triples/s over ``repeats`` full passes, after one warm-up pass (workers started)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=ReIDCollator(image_size=size, train=True),
                        persistent_workers=workers > 0)
    rates = []
    for i in range(repeats + 1):
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += batch["pixel_values"].shape[0]
        if i:  # pass 0 is the warm-up
            rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sizes", type=str, nargs="+", default=["256x128", "128x64"], help="output H x W")
    p.add_argument("--source-size", type=str, default="256x128", help="H x W of the stored images")
    p.add_argument("--ids", type=int, default=20, help="train identities (x --images-per-id triples)")
    p.add_argument("--images-per-id", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    src = tuple(int(v) for v in args.source_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic("RGBNT201", Path(tmp) / "raw", num_train_ids=args.ids, num_test_ids=2,
                              images_per_id=args.images_per_id, image_size=src)
        train = build_dataset("RGBNT201", root, cache_dir=Path(tmp) / "arrow")["train"]
        print(f"\n{describe_cpu_line()}: {len(train)} triples of 3 x {src[0]}x{src[1]} JPEG, batch {args.batch_size}, "
              f"median of {args.repeats} passes, torch threads 1\n")
        print("| output H x W | workers | triples/s |\n|---|---|---|")
        for size_text in args.sizes:
            size = tuple(int(v) for v in size_text.split("x"))
            for workers in args.workers:
                rate = measure(train, size, workers, args.batch_size, args.repeats)
                print(f"| {size[0]}x{size[1]} | {workers} | {rate:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

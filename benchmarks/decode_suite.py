"""Decoding throughput (triples/s) through the training DataLoader with 1 and 2 workers, beside the training rate.

Why: the data pipeline must never limit training; the training step rate of model_suite and these figures together
say how many workers a run needs. Uses benchmarks/bench_decode.py's measurement on a synthetic RGBNT201 set stored at
256x128 (real JPEGs through the real converter and collator).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench_decode import measure
from mmreid.data.builder import build_dataset
from mmreid.data.synthetic import make_synthetic


def run_decode_suite(workers, sizes, repeats: int, batch_size: int = 32, ids: int = 20, images_per_id: int = 20,
                     log=print) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic("RGBNT201", Path(tmp) / "raw", num_train_ids=ids, num_test_ids=2,
                              images_per_id=images_per_id, image_size=(256, 128))
        train = build_dataset("RGBNT201", root, cache_dir=Path(tmp) / "arrow")["train"]
        for size in sizes:
            for count in workers:
                rate = measure(train, tuple(size), count, batch_size, repeats)
                rows.append({"output_size": f"{size[0]}x{size[1]}", "workers": count, "triples_per_s": rate,
                             "triples_per_s_per_worker": rate / count, "triples": len(train), "batch": batch_size})
                log(f"  decode {size[0]}x{size[1]} with {count} worker(s): {rate:.0f} triples/s")
    return rows

"""Eager vs `torch.compile` (inductor) at the paper's shape: a training step and an inference pass of the ViT-B/16
DeMo at 256x128, interleaved in one process, median of per-round ratios.

Why: `train.py --torch-compile` must be worth turning on (issue goal: compiled >= 1.2x eager for training on CPU),
and where it is not, a profile must say where the time goes. The model and the step are model_suite's (random
CLIP ViT-B/16 weights, 171 identities, the trainer's loss, Adam); the compiled model shares the eager one's
parameters, so both train the same weights. Compile time is reported on its own, not in the ratios.
"""

from __future__ import annotations

import time

import torch

from harness import interleaved_seconds
from model_suite import build_model, inference_pass, make_batch, training_step


def _profile_top(fn, rows: int = 12) -> list[dict]:
    """The operators taking the most self CPU time in one call of ``fn`` (the profile behind a missed goal)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:rows]]


def run_compile_suite(device: str, image_size, batch: int, repeats: int, warmup: int, amp: str | None,
                      profile_rows: int = 12, log=print) -> dict:
    """Eager vs compiled training step and inference pass; ratios = eager time / compiled time (> 1: faster)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model = build_model(image_size, device)
    compiled = torch.compile(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
    data = make_batch(batch, image_size, device)
    result = {"image_size": f"{image_size[0]}x{image_size[1]}", "batch": batch, "amp": amp, "backend": "inductor"}
    for mode in ("train", "inference"):
        model.train(mode == "train")
        make = training_step if mode == "train" else inference_pass
        contenders = {"eager": make(model, optimizer, data, device, amp) if mode == "train"
                      else make(model, data, device, amp),
                      "compiled": make(compiled, optimizer, data, device, amp) if mode == "train"
                      else make(compiled, data, device, amp)}
        start = time.perf_counter()
        contenders["compiled"]()  # compilation (and the first run), timed apart
        sync()
        compile_s = time.perf_counter() - start
        timing = interleaved_seconds(contenders, repeats, warmup, sync)
        row = {"compile_s": compile_s, **timing,
               "triples_per_s": {name: batch / s for name, s in timing["median_s"].items()},
               "speedup": timing["ratio_median"]["compiled"]}
        if device == "cpu":
            row["profile_eager"] = _profile_top(contenders["eager"], profile_rows)
            row["profile_compiled"] = _profile_top(contenders["compiled"], profile_rows)
        result[mode] = row
        log(f"  {mode:9s} batch {batch}: eager {timing['median_s']['eager']:.2f} s, compiled "
            f"{timing['median_s']['compiled']:.2f} s -> {row['speedup']:.2f}x (compile {compile_s:.0f} s)")
    return result

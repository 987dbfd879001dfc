"""Measurement helpers for benchmarks/run.py: medians after warm-up, interleaved comparisons, machine, peak memory.

Why interleaved: this project's machines are shared and noisy (other jobs come and go within seconds), so a ratio of
two figures measured minutes apart can be off by 2x. Comparisons run their contenders alternately in one process
(A B, B A, A B, ...) and report the median of the per-round ratios beside the medians, so drift hits both sides.
"""

from __future__ import annotations

import collections
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1, sync: Callable[[], None] = lambda: None):
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` untimed runs (``sync`` waits for a device)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def interleaved_seconds(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        sync: Callable[[], None] = lambda: None) -> dict:
    """Run the contenders alternately (order reversed every round); medians, all times and median per-round ratios.

    The ratio ``first / other`` is reported for each other contender (the first is the reference).
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    sync()
    times = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            start = time.perf_counter()
            contenders[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    reference = names[0]
    return {
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "times_s": times,
        "ratio_median": {
            name: statistics.median(r / o for r, o in zip(times[reference], times[name])) for name in names[1:]
        },
    }


class _CallCounter(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func)] += 1
        return func(*args, **(kwargs or {}))


def count_operator_calls(fn: Callable[[], object]) -> int:
    """ATen operator calls (everything that reaches the dispatcher below autograd, backward included) of ``fn``."""
    with _CallCounter() as counter:
        fn()
    return sum(counter.calls.values())


def describe_machine(device: str) -> dict:
    """CPU model and its vector instruction sets (they decide matmul rounding and int8 speed), cores, memory,
    library versions and (on CUDA) the GPU: recorded beside every figure."""
    from mmreid.machine import describe_cpu

    info = {
        **describe_cpu(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": __import__("numpy").__version__,
        "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def _memory_gib():
    try:
        match = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        return round(int(match.group(1)) / 2**20, 1) if match else None
    except OSError:
        return None


class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak on a GPU, else the process's peak resident set (Linux).

    The CPU figure is the whole process (weights, optimizer state, Python), reset at the start of the block through
    /proc/self/clear_refs; where that is unavailable it is the process maximum so far.
    """

    def __init__(self, device: str):
        self.device = device
        self.gib = None

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.gib = _peak_rss_gib()
        return False


def _peak_rss_gib():
    try:
        match = re.search(r"^VmHWM:\s*(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        if match:
            return int(match.group(1)) / 2**20
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

"""Looking inside a training run: a profiler callback for a few steps, and deterministic attention kernels.

Why: a throughput figure says how fast, not where the time goes. :class:`ProfilerCallback` records a few optimizer
steps of a real run (data loading, forward, backward, optimizer, collectives) with ``torch.profiler`` and writes a
trace that Perfetto / chrome://tracing / TensorBoard open, plus a text summary of the costliest operators, so a slow
run can be read without rerunning it under a different script. :func:`make_deterministic` is what
``--deterministic`` needs beyond ``torch.use_deterministic_algorithms``: the fused flash and memory-efficient SDPA
kernels accumulate the attention backward in a run-to-run varying order (users of the sibling methods traced their
run-to-run differences to flash SDPA), so only the math backend is left on.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import TrainerCallback

__all__ = ["ProfilerCallback", "make_deterministic", "profile_dir"]


def profile_dir(output_dir: str | os.PathLike) -> Path:
    """Where :class:`ProfilerCallback` writes: ``<output_dir>/profile``."""
    return Path(output_dir) / "profile"


class ProfilerCallback(TrainerCallback):
    """Profile optimizer steps ``skip + warmup + 1 .. skip + warmup + active`` of a run with ``torch.profiler``.

    The first ``skip`` steps are left alone (compilation, allocator growth, the first data-loader batches), the next
    ``warmup`` are traced but discarded (the profiler's own start-up), then ``active`` steps are recorded. Each
    process writes ``<output_dir>/profile/trace_rank<R>.json`` (Chrome trace format) and ``ops_rank<R>.txt`` (the
    operators sorted by their own time). CUDA kernels are recorded when a GPU is in use.
    """

    def __init__(self, skip: int = 2, warmup: int = 1, active: int = 3, record_shapes: bool = True,
                 profile_memory: bool = True, with_stack: bool = False, row_limit: int = 40):
        if skip < 0 or warmup < 0 or active < 1:
            raise ValueError(f"profile steps must be skip >= 0, warmup >= 0, active >= 1; got {skip}, {warmup}, {active}")
        self.skip, self.warmup, self.active = skip, warmup, active
        self.record_shapes, self.profile_memory, self.with_stack = record_shapes, profile_memory, with_stack
        self.row_limit = row_limit
        self.profiler = None
        self.written: list[Path] = []

    def on_train_begin(self, args, state, control, **kwargs):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available() and not getattr(args, "use_cpu", False):
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        out = profile_dir(args.output_dir)
        rank = getattr(args, "process_index", 0)

        def write(prof):
            out.mkdir(parents=True, exist_ok=True)
            trace = out / f"trace_rank{rank}.json"
            prof.export_chrome_trace(str(trace))
            sort_by = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
            table = prof.key_averages().table(sort_by=sort_by, row_limit=self.row_limit)
            summary = out / f"ops_rank{rank}.txt"
            summary.write_text(f"optimizer steps {self.skip + self.warmup + 1}-{self.skip + self.warmup + self.active}"
                               f" of the run, sorted by {sort_by}\n\n{table}\n")
            self.written += [trace, summary]

        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=self.skip, warmup=self.warmup, active=self.active, repeat=1),
            on_trace_ready=write,
            record_shapes=self.record_shapes,
            profile_memory=self.profile_memory,
            with_stack=self.with_stack,
        )
        self.profiler.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None:
            self.profiler.step()
            if state.global_step >= self.skip + self.warmup + self.active:
                self._stop()

    def on_train_end(self, args, state, control, **kwargs):
        self._stop()  # a run shorter than the window: whatever was recorded is written (if anything was active)

    def _stop(self):
        if self.profiler is not None:
            profiler, self.profiler = self.profiler, None
            profiler.stop()


def make_deterministic(model: torch.nn.Module | None = None) -> None:
    """Leave only deterministic attention kernels: SDPA's math backend (flash, memory-efficient and cuDNN off).

    With ``model``, a tower configured for the ``flash_attention_2`` package is switched to SDPA as well. Call it
    next to ``torch.use_deterministic_algorithms(True)`` (``transformers.enable_full_determinism``), which covers the
    other kernels. Process-wide; the backend switches are no-ops on a machine without CUDA.
    """
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.enable_math_sdp(True)
    if model is not None:
        for config in (model.config, getattr(model.config, "vision_config", None)):
            if config is not None and str(config._attn_implementation).startswith("flash"):
                config._attn_implementation = "sdpa"

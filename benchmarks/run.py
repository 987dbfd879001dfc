#!/usr/bin/env python
"""Benchmark suite: training / inference throughput, the heads, ranking, decoding, gallery search; JSON + Markdown out.

    python benchmarks/run.py --quick                 # CPU, batch 8 only (about 15 min on 2 cores)
    python benchmarks/run.py                         # CPU, batch 8 and 32 (about 45 min on 2 cores)
    python benchmarks/run.py --device cuda           # GPU: also the fraction of bf16 peak at batch 64
    python benchmarks/run.py --device cuda --compile --attention sdpa --deterministic

Writes <output-dir>/<device>[-quick].json (every repeat, the machine, the command) and .md (the tables of
docs/benchmarks.md). Each figure is the median of repeated runs after warm-up; comparisons (batched heads vs the
module-per-expert oracle, reid_metrics vs the authors' ranking loop) are interleaved in this one process so their
ratios hold on a shared, noisy machine. Nothing needs a GPU: --device cuda adds device figures where one exists.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
import torch

from harness import describe_machine
from report import markdown

SUITES = ("model", "heads", "ranking", "decode", "gpu", "compile", "onnx", "retrieval")
# What a plain `python benchmarks/run.py` runs; compile (eager vs torch.compile), onnx (CPU deployment) and
# retrieval (million-row gallery search) on request.
DEFAULT_SUITES = ("model", "heads", "ranking", "decode", "gpu")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (batch 8 only for the model)")
    p.add_argument("--only", nargs="+", choices=SUITES, default=list(DEFAULT_SUITES),
                   help=f"run only these suites (default: {' '.join(DEFAULT_SUITES)})")
    p.add_argument("--onnx-batches", type=int, nargs="+", default=[1, 32], help="onnx suite: batch sizes timed")
    p.add_argument("--onnx-checkpoint", default=None,
                   help="onnx suite: a trained checkpoint whose mAP and embeddings are compared across PyTorch, ONNX "
                   "Runtime fp32 and int8 (e.g. outputs/demo-synthetic); needs --onnx-dataset")
    p.add_argument("--onnx-dataset", default=None, help="onnx suite: the dataset of --onnx-checkpoint "
                   "(e.g. outputs/synthetic-rgbnt201)")
    p.add_argument("--output-dir", type=Path, default=HERE / "results")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure of the model and decode suites")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before each figure")
    p.add_argument("--amp", choices=("none", "bfloat16", "float16"), default=None,
                   help="autocast dtype for the model suite (default: bfloat16 on cuda, none on cpu)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (model and gpu suites)")
    p.add_argument("--attention", default="sdpa", help="tower attention: sdpa, eager or flash_attention_2")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms and the math SDPA backend (what train.py --deterministic does)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--retrieval-rows", type=int, nargs="+", default=[100_000, 1_000_000],
                   help="gallery sizes of the retrieval suite (--quick: 100k only)")
    p.add_argument("--retrieval-models", nargs="+", choices=("DeMo", "NEXT"), default=["DeMo", "NEXT"],
                   help="whose retrieval dimension the retrieval suite uses (DeMo 5120, NEXT 3072)")
    p.add_argument("--store", nargs="+", choices=("faiss", "milvus"), default=None,
                   help="retrieval suite: compare these gallery stores side by side on the same rows (FAISS exact "
                        "and ivfpq, Milvus Lite FLAT / HNSW / IVF_SQ8) instead of the FAISS ivfpq nprobe sweep")
    p.add_argument("--milvus-uri", default=None,
                   help="--store milvus: a Milvus server (http://host:19530, token in $MILVUS_TOKEN); its cases "
                        "(SCANN, HNSW, IVF_PQ by default) run there instead of Milvus Lite's")
    p.add_argument("--milvus-cases", nargs="+", default=None,
                   help="--store milvus: which Milvus cases to run (lite FLAT, lite HNSW, lite IVF_SQ8, server SCANN, "
                        "server HNSW, server IVF_PQ, server FLAT; quote each)")
    p.add_argument("--milvus-server-pid", type=int, default=None,
                   help="--milvus-uri on this machine: the server's process id, to record its memory and pin it to "
                        "one core (taskset) while single queries are timed")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if bool(args.onnx_checkpoint) != bool(args.onnx_dataset):
        raise SystemExit("--onnx-checkpoint and --onnx-dataset go together (the checkpoint and its dataset)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; run on a GPU machine or use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        from mmreid.training.profiling import make_deterministic

        make_deterministic()
    quick = args.quick
    if args.milvus_cases:
        from retrieval_suite import MILVUS_CASES

        unknown = [c for c in args.milvus_cases if c not in MILVUS_CASES]
        if unknown:
            raise SystemExit(f"--milvus-cases {unknown[0]!r}: expected one of {', '.join(MILVUS_CASES)}")
    repeats = args.repeats
    amp = None if args.amp == "none" else (args.amp or ("bfloat16" if args.device == "cuda" else None))
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command.strip(), "started": started, "machine": describe_machine(args.device),
              "settings": {"quick": quick, "repeats": repeats, "warmup": args.warmup, "amp": amp,
                           "compile": args.compile, "attention": args.attention,
                           "deterministic": args.deterministic}}
    print(f"{result['machine']['cpu']} ({result['machine']['isa']}, {result['machine']['usable_cores']} cores), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", flush=True)
    log = lambda line: print(line, flush=True)  # noqa: E731

    if "heads" in args.only:
        from heads_suite import run_heads_suite

        print("heads", flush=True)
        result["heads"] = run_heads_suite(args.device, 64, repeats=5 if quick else 9, warmup=args.warmup, log=log)
    if "ranking" in args.only:
        from ranking_suite import run_ranking_suite

        print("ranking", flush=True)
        sizes = [(1000, 10000), (1715, 8675), (10000, 10000)]
        result["ranking"] = run_ranking_suite(sizes, set(sizes), 3 if quick else 5, args.warmup, args.device, log=log)
    if "decode" in args.only:
        from decode_suite import run_decode_suite

        print("decode", flush=True)
        sizes = [(256, 128)] if quick else [(256, 128), (128, 256)]
        result["decode"] = run_decode_suite([1, 2], sizes, repeats, log=log)
    if "retrieval" in args.only:
        from retrieval_suite import run_retrieval_suite

        print("retrieval", flush=True)
        sizes = [n for n in args.retrieval_rows if n <= 100_000] if quick else args.retrieval_rows
        if args.store:
            from retrieval_suite import run_store_comparison

            result["retrieval_stores"] = run_store_comparison(
                sizes, args.store, args.retrieval_models, milvus_uri=args.milvus_uri, milvus_cases=args.milvus_cases,
                server_pid=args.milvus_server_pid, log=log)
        else:
            result["retrieval"] = run_retrieval_suite(sizes, models=args.retrieval_models, log=log)
    if "model" in args.only:
        from model_suite import cpu_matmul_gflops, run_model_suite

        print("model", flush=True)
        if args.device == "cpu":
            result["cpu_matmul_gflops"] = cpu_matmul_gflops()
        batches = [8] if quick and args.device == "cpu" else [8, 32]
        result["model"] = run_model_suite(args.device, [(256, 128), (128, 256)], batches, repeats, args.warmup, amp,
                                          args.compile, args.attention, log=log)
    if "compile" in args.only:
        from compile_suite import run_compile_suite

        print("compile (eager vs torch.compile, inductor)", flush=True)
        result["compile"] = run_compile_suite(args.device, (256, 128), 8, repeats, args.warmup, amp, log=log)
    if "onnx" in args.only:
        from onnx_suite import run_retrieval, run_speed

        print("onnx (PyTorch eager vs ONNX Runtime fp32 / int8)", flush=True)
        threads = args.threads or torch.get_num_threads()
        result["onnx"] = run_speed((256, 128), args.onnx_batches, repeats, args.warmup, threads, log=log)
        if args.onnx_checkpoint:
            result["onnx"]["retrieval"] = run_retrieval(args.onnx_checkpoint, args.onnx_dataset, threads, log=log)
    if "gpu" in args.only and args.device == "cuda":
        from model_suite import run_gpu_fraction

        print("fraction of bf16 peak", flush=True)
        result["gpu_fraction"] = run_gpu_fraction(64, (256, 128), repeats, args.warmup, args.compile, args.attention,
                                                  args.peak_tflops, log=log)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    # A run of other suites than the default set is named after them, so it never replaces the full suite's file.
    stem = args.device + ("-quick" if quick else "")
    if set(args.only) != set(DEFAULT_SUITES):
        stem += "-" + "-".join(args.only)
    (args.output_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.output_dir / f"{stem}.md").write_text(markdown(result) + "\n")
    print(f"wrote {args.output_dir / stem}.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

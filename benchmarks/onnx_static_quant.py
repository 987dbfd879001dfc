#!/usr/bin/env python
"""Experiment: does static int8 quantization reach 2x PyTorch eager at batch 1 on a CPU without VNNI?

    python benchmarks/onnx_static_quant.py [--threads 1] [--repeats 5] [--calibration-batches 8]

Why: `export_onnx.py --quantize int8` is dynamic quantization (int8 weights, activations quantized per batch at run
time by DynamicQuantizeLinear). Without VNNI (AVX2 only) an int8 dot product takes three instructions instead of
one, so int8 gains less there. Static quantization fixes the activations' scales from calibration batches: no
per-batch min / max, and ONNX Runtime can run QLinearMatMul end to end. This script measures both against PyTorch
eager and ORT fp32, interleaved in one process (ratios = median of per-round ratios), on the ViT-B/16 DeMo at 256x128
(model_suite's random-weight model, exported as onnx_suite exports it), with the embeddings' cosine to PyTorch's.
It is an experiment, not a deployment path: export_onnx.py is unchanged. Writes JSON + Markdown with the machine
(instruction sets included) to --output-dir.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from mmreid.export.writer import linear_layer_nodes
from harness import describe_machine, interleaved_seconds
from model_suite import build_model, make_batch
from onnx_suite import _inputs, export_both, ort_session
from report import _isa


class _CalibrationReader:
    """onnxruntime.quantization's CalibrationDataReader protocol: one input dict per call, None when done."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def quantize_static_int8(graph, source: Path, target: Path, batches: int, image_size) -> None:
    """QDQ static quantization of the same nodes export_onnx.py quantizes dynamically (per-channel int8 weights,
    uint8 activations with calibrated MinMax scales)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # one triple per calibration input, each from another generator (make_batch seeds by the batch size), none of
    # them the timed input (make_batch(1, ...))
    feeds = [{name: value[:1].numpy() for name, value in _inputs(graph, make_batch(index + 2, image_size, "cpu")).items()}
             for index in range(batches)]
    reader = _CalibrationReader(feeds)
    quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_quantize=linear_layer_nodes(source),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def markdown(result: dict) -> str:
    """The table of one result: medians, speed-ups (median of per-round ratios) and the cosine to PyTorch."""
    m, settings = result["machine"], result["settings"]
    lines = [f"Machine: {m['cpu']} ({_isa(m)}), {result['threads']} thread(s), 1-minute load average at start "
             f"{m['load_average_1min_at_start']:.1f}. Command: `{result['command']}` ({result['started']}). Batch 1, "
             f"ViT-B/16 DeMo 256x128, random weights; interleaved, {settings['repeats']} rounds after "
             f"{settings['warmup']} warm-up; static int8 calibrated on {result['calibration_batches']} triples.", "",
             "| contender | median s / triple | speed-up vs PyTorch eager | cosine to PyTorch (min) | file (MiB) |",
             "|---|---|---|---|---|"]
    for name, seconds in result["median_s"].items():
        ratio, cosine = result["ratio_median"].get(name), result["cosine_to_pytorch"].get(name)
        size = result["file_mib"].get(name.removeprefix("ort_")) if name.startswith("ort_") else None
        lines.append(f"| {name} | {seconds:.2f} | {'-' if ratio is None else f'{ratio:.2f}x'} | "
                     f"{'-' if cosine is None else f'{cosine:.5f}'} | {'-' if size is None else f'{size:.0f}'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="threads of every contender (default: torch's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    image_size = (256, 128)
    result = {"command": "python benchmarks/onnx_static_quant.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": describe_machine("cpu"), "threads": threads,
              "calibration_batches": args.calibration_batches}
    print(f"{result['machine']['cpu']} ({_isa(result['machine'])}), {threads} thread(s)", flush=True)
    model = build_model(image_size, "cpu").eval()
    with tempfile.TemporaryDirectory() as tmp:
        graph, paths = export_both(model, Path(tmp))
        paths["static_int8"] = Path(tmp) / "model.static-int8.onnx"
        print("calibrating", flush=True)
        quantize_static_int8(graph, paths["fp32"], paths["static_int8"], args.calibration_batches, image_size)
        sessions = {name: ort_session(path, threads) for name, path in paths.items()}
        inputs = _inputs(graph, make_batch(1, image_size, "cpu"))
        arrays = {name: value.numpy() for name, value in inputs.items()}

        def eager():
            with torch.inference_mode():
                return graph(*inputs.values())[0]

        contenders = {"pytorch_eager_fp32": eager}
        for name in ("fp32", "int8", "static_int8"):
            contenders[f"ort_{name}"] = (lambda s: lambda: s.run(["embeddings"], arrays))(sessions[name])
        timing = interleaved_seconds(contenders, args.repeats, args.warmup)
        reference = eager().double()
        cosines = {}
        for name in ("fp32", "int8", "static_int8"):
            got = torch.from_numpy(sessions[name].run(["embeddings"], arrays)[0]).double()
            cosines[f"ort_{name}"] = float(torch.nn.functional.cosine_similarity(got, reference, dim=-1).min())
        result.update(timing, cosine_to_pytorch=cosines,
                      file_mib={name: path.stat().st_size / 2**20 for name, path in paths.items()})
    result["settings"] = {"repeats": args.repeats, "warmup": args.warmup}
    text = markdown(result)
    print(text, flush=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / "cpu-onnx-static-int8"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(text)
    print(f"wrote {stem}.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A checkpoint folder to checked ONNX files: every graph the model's optional inputs call for (see
:mod:`mmreid.export.graph`), each compared with PyTorch (and its int8 copy, when asked for) before any file is
published, so a failed check leaves nothing at the output."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..output_paths import check_output_file
from ..publish import atomic_output
from .check import ExportCheckError, embedding_cosines, max_differences
from .graph import OnnxGraph, graph_inputs_of
from .writer import MIN_OPSET, ExportFailed, export, quantize_int8, quantized_path, require_onnx, summary

__all__ = ["DEFAULT_MIN_COSINE", "QUANTIZE_CHOICES", "ExportedGraph", "export_checkpoint"]

QUANTIZE_CHOICES = ("int8",)
DEFAULT_MIN_COSINE = 0.99


@dataclass
class ExportedGraph:
    """One written graph: where, what it takes, and what the checks measured."""

    path: Path
    graph: OnnxGraph
    max_differences: dict[int, tuple[float, str]]
    quantized: Path | None = None
    cosines: dict[int, tuple[float, float]] = field(default_factory=dict)


def check_arguments(atol: float, opset: int | None, quantize: str | None, min_cosine: float | None) -> float:
    """Every argument but --model, before the model is loaded; returns the --min-cosine to use."""
    if atol <= 0:
        raise UsageError(f"--atol must be > 0, got {atol}")
    if opset is not None and opset < MIN_OPSET:
        raise UsageError(f"--opset {opset}: the exporter writes opset {MIN_OPSET} or newer")
    if min_cosine is not None and not quantize:
        raise UsageError("--min-cosine applies to the int8 graph of --quantize int8; none is asked for")
    min_cosine = DEFAULT_MIN_COSINE if min_cosine is None else min_cosine
    if not 0 < min_cosine <= 1:
        raise UsageError(f"--min-cosine must be in (0, 1], got {min_cosine}")
    return min_cosine


def load_exportable(model_dir: str):
    """The checkpoint in float32 eval mode, with modeling code that can be exported."""
    from transformers.utils import logging as hf_logging

    from ..hub.loading import load_checkpoint

    hf_logging.disable_progress_bar()
    model = load_checkpoint(model_dir)
    # The switch that skips value checks while traced: is_tracing (torch.compile and torch.export), or the
    # export-only is_exporting of checkpoints saved before compile support (they export as well). Looked up in the
    # checkpoint's own modules of the model class and its bases: the family's checks live in modeling_reid.py.
    package = type(model).__module__.rpartition(".")[0]
    modules = [sys.modules[cls.__module__] for cls in type(model).__mro__
               if cls.__module__.rpartition(".")[0] == package and cls.__module__ in sys.modules]
    if not any(hasattr(module, name) for module in modules for name in ("is_tracing", "is_exporting")):
        raise UsageError(
            f"--model {model_dir}: the modeling code saved with it predates ONNX export support; re-save it from "
            "this checkout (DeMoModel or NextModel .from_pretrained(old).save_pretrained(new), tokenizer beside it)"
        )
    return model.float().eval()


def export_checkpoint(model_dir: str, output: str | Path, opset: int | None = None, atol: float = 1e-4,
                      quantize: str | None = None, min_cosine: float | None = None, log=print) -> list[ExportedGraph]:
    """Export every graph of the checkpoint at ``model_dir`` next to ``output`` (``output`` itself is the graph
    with every input), check each against PyTorch (max |difference| < ``atol``; with ``quantize="int8"`` also an
    int8 copy whose embeddings' cosine to PyTorch is >= ``min_cosine``), then publish them all. Bad arguments are
    :class:`UsageError`, a failed check :class:`ExportCheckError`, an exporter failure :class:`ExportFailed`;
    in each case nothing is written."""
    require_onnx()
    output = check_output_file(output, "--output", suffix=".onnx")
    min_cosine = check_arguments(atol, opset, quantize, min_cosine)
    quantized = quantized_path(output) if quantize else None
    if quantized is not None and quantized.is_dir():
        raise UsageError(f"--quantize {quantize}: {quantized} (where the int8 graph goes) is a directory")
    model = load_exportable(model_dir)
    graphs = [OnnxGraph(model, inputs) for inputs in graph_inputs_of(model.config)]
    paths = [graph.inputs.path(output, model.config) for graph in graphs]
    for path in paths[1:]:
        for taken in (path, quantized_path(path) if quantize else None):
            if taken is not None and taken.is_dir():
                raise UsageError(f"--output {output}: {taken} (where the graph without some optional inputs goes) "
                                 "is a directory")

    results = []
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as scratch:
        for graph, path in zip(graphs, paths):
            results.append(_export_and_check(graph, path, Path(scratch), model_dir, opset, atol, quantize,
                                             min_cosine, output, log))
        # Every check passed: publish the files, each renamed into place whole.
        for result in results:
            for final in (result.path, result.quantized):
                if final is not None:
                    with atomic_output(final, overwrite=True) as staged:
                        (Path(scratch) / final.name).replace(staged)
    for result in results:
        log(f"wrote {result.path}: inputs {', '.join(result.graph.input_names)}; "
            f"outputs {', '.join(result.graph.output_names)}")
        if result.quantized is not None:
            size = result.quantized.stat().st_size / result.path.stat().st_size
            log(f"wrote {result.quantized}: int8 weights (dynamic quantization), same inputs and outputs, "
                f"{size:.0%} of the size")
    return results


def _export_and_check(graph: OnnxGraph, path: Path, scratch: Path, model_dir: str, opset: int | None, atol: float,
                      quantize: str | None, min_cosine: float, output: Path, log) -> ExportedGraph:
    """Export ``graph`` into ``scratch`` under ``path``'s name and check it (and its int8 copy)."""
    temp = scratch / path.name
    try:
        export(graph, temp, opset)
    except Exception as exc:  # the exporter raises many types, with pages of advice
        raise ExportFailed(f"torch.onnx.export failed for --model {model_dir}: {summary(exc)}") from None
    differences = max_differences(graph, temp)
    for batch, (diff, name) in differences.items():
        log(f"{path.name} batch {batch}: max |ONNX - PyTorch| = {diff:.2e} (largest on {name}; tolerance {atol:g})")
    failed = {b: r for b, r in differences.items() if not r[0] < atol}
    if failed:
        batch, (diff, name) = next(iter(failed.items()))
        raise ExportCheckError(f"the ONNX graph differs from PyTorch by {diff:.2e} on {name} at batch {batch} "
                               f"({path.name}, tolerance {atol:g}); nothing written to {output}")
    result = ExportedGraph(path, graph, differences)
    if quantize:
        result.quantized = quantized_path(path)
        result.cosines = _quantize_and_check(graph, temp, scratch / result.quantized.name, min_cosine, output, log)
    return result


def _quantize_and_check(graph: OnnxGraph, source: Path, target: Path, min_cosine: float, output: Path,
                        log) -> dict[int, tuple[float, float]]:
    """Quantize ``source`` into ``target`` and require every row's embedding cosine to PyTorch >= ``min_cosine``."""
    try:
        quantize_int8(source, target)
    except Exception as exc:  # onnxruntime.quantization raises many types
        raise ExportCheckError(f"int8 quantization failed: {summary(exc)}; nothing written to {output}") from None
    cosines = embedding_cosines(graph, target)
    for batch, (mean, low) in cosines.items():
        log(f"{target.name} batch {batch}: int8 embeddings' cosine to PyTorch mean {mean:.5f}, min {low:.5f} "
            f"(required >= {min_cosine:g})")
    worst = min(cosines, key=lambda b: cosines[b][1])
    if not cosines[worst][1] >= min_cosine:
        raise ExportCheckError(
            f"the int8 graph's embeddings have cosine {cosines[worst][1]:.4f} to PyTorch at batch {worst} "
            f"({target.name}, --min-cosine {min_cosine:g}); nothing written to {output}"
        )
    return cosines


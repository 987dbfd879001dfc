"""An exported graph against PyTorch: ONNX Runtime and the model run on the same seeded random inputs at batch 1
and 4 (other batch sizes and caption lengths than the export's example of 2, so the dynamic axes are exercised)."""

from __future__ import annotations

from pathlib import Path

import torch

from .graph import OnnxGraph, random_inputs
from .writer import summary

__all__ = ["CHECK_BATCH_SIZES", "ExportCheckError", "embedding_cosines", "max_differences"]

CHECK_BATCH_SIZES = (1, 4)


class ExportCheckError(Exception):
    """The ONNX graph does not reproduce PyTorch within the tolerance, or ONNX Runtime cannot run it."""


def onnx_and_pytorch_outputs(graph: OnnxGraph, path: Path, what: str):
    """For each checked batch size, (batch, ONNX Runtime's outputs, PyTorch's outputs) on the same random inputs;
    ``what`` names the graph ("exported", "quantized") in the one-line error when ONNX Runtime cannot load or run it."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types
        raise ExportCheckError(f"onnxruntime cannot load the {what} graph {path.name}: {summary(exc)}") from None
    for batch in CHECK_BATCH_SIZES:
        inputs = random_inputs(graph, batch, seed=batch, length=3 + 2 * batch)
        with torch.no_grad():
            expected = graph(*inputs.values())
        try:
            got = session.run(graph.output_names, {name: t.numpy() for name, t in inputs.items()})
        except Exception as exc:  # onnxruntime's own error types
            reason = summary(exc)
            raise ExportCheckError(f"onnxruntime cannot run the {what} graph {path.name} at batch {batch}: "
                                   f"{reason}") from None
        yield batch, got, expected


def max_differences(graph: OnnxGraph, path: Path) -> dict[int, tuple[float, str]]:
    """Per checked batch size: the largest |ONNX - PyTorch| over every output, and the output where it occurs."""
    import numpy as np

    results = {}
    for batch, got, expected in onnx_and_pytorch_outputs(graph, path, "exported"):
        diffs = {name: float(np.abs(g - e.numpy()).max()) for name, g, e in zip(graph.output_names, got, expected)}
        worst = max(diffs, key=diffs.get)
        results[batch] = (diffs[worst], worst)
    return results


def embedding_cosines(graph: OnnxGraph, path: Path) -> dict[int, tuple[float, float]]:
    """Per checked batch size: (mean, min) cosine similarity between the graph's and PyTorch's embeddings (the first
    output), row by row (what ranking by cosine sees of a quantized graph)."""
    results = {}
    for batch, got, expected in onnx_and_pytorch_outputs(graph, path, "quantized"):
        cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(got[0]).double(), expected[0].double(), dim=-1)
        results[batch] = (float(cosine.mean()), float(cosine.min()))
    return results

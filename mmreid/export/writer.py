"""Writing ONNX files: ``torch.onnx.export`` of an :class:`~mmreid.export.graph.OnnxGraph` into one
self-contained file, and ONNX Runtime's dynamic int8 quantization of such a file."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path

import torch

from ..errors import RunFailed, UsageError

__all__ = ["ExportFailed", "MIN_OPSET", "export", "linear_layer_nodes", "quantize_int8", "quantized_path",
           "require_onnx", "summary"]

# The torch.export-based exporter writes opset 18 and newer; a lower request is quietly left at 18 when its
# version converter fails, so it is refused instead.
MIN_OPSET = 18
INSTALL_HINT = 'install the extra with pip install -e ".[onnx]"'


class ExportFailed(RunFailed):
    """torch.onnx.export raised: the input was fine, the exporter could not trace the model (exit status 1)."""


def require_onnx() -> None:
    """Fail early, in one line, when the optional ONNX packages are missing (before any model is loaded)."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"{', '.join(missing)} not installed; {INSTALL_HINT}")


def summary(exc: Exception) -> str:
    """One line out of the exporter's multi-page error: its "Exception summary" line, else the first line."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    if "## Exception summary" in lines[:-1]:
        return lines[lines.index("## Exception summary") + 1][:300]
    return lines[0][:300] if lines else type(exc).__name__


def export(graph, path: Path, opset: int | None) -> None:
    """torch.onnx.export (torch.export-based) into one self-contained file (weights inside: ONNX's 2 GB limit)."""
    from .graph import random_inputs

    example = tuple(random_inputs(graph, 2, seed=0).values())
    # Quiet: the exporter warns about optional torchvision ops and axis names shared by several inputs, the optimizer
    # about ops it does not fold, and torch.export prints graphs to stderr when it fails; the check against PyTorch
    # tells whether the graph is right, and a failure is summed up in one line.
    names = ["torch", "onnxscript"] + [n for n in logging.root.manager.loggerDict if n.startswith(("torch.", "onnx"))]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    discarded = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(discarded), contextlib.redirect_stderr(discarded):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            torch.onnx.export(
                graph,
                example,
                str(path),
                input_names=graph.input_names,
                output_names=graph.output_names,
                opset_version=opset,
                dynamo=True,  # the default since torch 2.9; named for older releases
                dynamic_shapes=graph.dynamic_shapes(),
                external_data=False,
                verbose=False,
            )
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def quantized_path(output: Path) -> Path:
    """Where the int8 copy of a graph goes: next to it, demo.onnx -> demo.int8.onnx."""
    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    return output.with_name(f"{stem}.int8.onnx")


def linear_layer_nodes(path: Path) -> list[str]:
    """The graph's Linear layers and convolutions: MatMul / Gemm nodes whose weight is a 2-D constant, and Conv nodes.

    Why not every MatMul: the batched heads' stacked expert weights fold into 3-D constants, for which ONNX Runtime's
    per-channel int8 MatMul has no kernel (it fails at run time); they stay float32 (a few percent of the FLOPs)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    return [node.name for node in graph.node
            if node.op_type == "Conv" or (node.op_type in ("MatMul", "Gemm") and ranks.get(node.input[1]) == 2)]


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime dynamic quantization: the weights of the Linear layers and convolutions stored as int8 (one scale
    per output channel), activations quantized per batch at run time, so no calibration data is needed. The graph's
    inputs and outputs stay float32; the int8 file is a drop-in replacement for the float32 one."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = linear_layer_nodes(source)

    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # its advice to pre-process the graph, logged on the root logger
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_quantize=nodes)
    finally:
        root.setLevel(level)

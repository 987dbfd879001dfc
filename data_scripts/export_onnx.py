#!/usr/bin/env python
"""Export a saved DeMo or NEXT checkpoint to ONNX and check it against PyTorch with onnxruntime.

    python data_scripts/export_onnx.py --model outputs/demo-synthetic --output demo.onnx

Inputs of the ONNX graph (batch size dynamic; caption length dynamic up to the text tower's maximum):
`pixel_values` (batch, 3, 3, H, W) float32, `modality_mask` (batch, 3) bool (False = missing modality),
`camera_ids` (batch,) int64 when the model has cameras, and for text-conditioned NEXT `input_ids` /
`attention_mask` (batch, 3, length) int64, one caption per modality. Outputs: `embeddings` (the retrieval feature)
and `features_<row>` for every named feature row eval.py reports (DeMo: ori, moe, all; NEXT: cls, semantic,
structure, final, all). The model is exported in float32. After export the graph is run with onnxruntime on random
inputs at batch 1 and 4 and compared with PyTorch; the file is moved into place only if every output agrees within
--atol. With --quantize int8, an int8 copy (ONNX Runtime dynamic quantization) is written next to it, e.g.
demo.int8.onnx, once its embeddings' cosine similarity to PyTorch's is at least --min-cosine. See docs/export.md.
"""

import argparse
import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo_reid.errors import UsageError  # noqa: E402
from demo_reid.output_paths import check_output_file  # noqa: E402

CHECK_BATCH_SIZES = (1, 4)
# The torch.export-based exporter writes opset 18 and newer; a lower request is quietly left at 18 when its
# version converter fails, so it is refused here instead.
MIN_OPSET = 18
INSTALL_HINT = 'install the extra with pip install -e ".[onnx]"'
QUANTIZE_CHOICES = ("int8",)
DEFAULT_MIN_COSINE = 0.99


class ExportCheckError(Exception):
    """The ONNX graph does not reproduce PyTorch within the tolerance; exit status 2."""


class ExportFailed(Exception):
    """torch.onnx.export raised; exit status 1."""


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


class OnnxGraph(torch.nn.Module):
    """The module that is exported: positional tensor inputs in, a tuple of feature tensors out.

    Why a wrapper: the models take optional keyword inputs and return a `ModelOutput` holding dicts, while an ONNX
    graph has a fixed list of tensors on both sides. Which inputs exist depends on the config (cameras, captions);
    which outputs exist on the feature rows the model names (read from one eager call).
    """

    def __init__(self, model):
        super().__init__()
        config = model.config
        self.model = model
        self.input_names = ["pixel_values", "modality_mask"]
        if config.num_cameras > 0:
            self.input_names.append("camera_ids")
        self.uses_text = bool(getattr(config, "uses_text", False))  # NEXT with captions (use_text and TMSE)
        self.max_length = config.text_config.max_position_embeddings if self.uses_text else None
        if self.uses_text:
            self.input_names += ["input_ids", "attention_mask"]
        with torch.no_grad():
            self.rows = list(model(**random_inputs(self, 2, seed=0)).feature_sets)
        self.output_names = ["embeddings"] + [f"features_{row}" for row in self.rows]

    def forward(self, *tensors):
        outputs = self.model(**dict(zip(self.input_names, tensors)))
        return (outputs.embeddings, *(outputs.feature_sets[row] for row in self.rows))

    def dynamic_shapes(self) -> tuple:
        """Batch dynamic everywhere; caption length dynamic in 1..max_position_embeddings."""
        from torch.export import Dim

        batch = Dim("batch")
        shapes = {"pixel_values": {0: batch}, "modality_mask": {0: batch}, "camera_ids": {0: batch}}
        if self.uses_text:
            length = Dim("length", min=1, max=self.max_length)
            shapes["input_ids"] = shapes["attention_mask"] = {0: batch, 2: length}
        return (tuple(shapes[name] for name in self.input_names),)


def random_inputs(graph: OnnxGraph, batch: int, seed: int, length: int | None = None) -> dict:
    """Seeded random inputs by name: images in [-1, 1]; row i misses modality (i + 1) % 4 (none when that is 3);
    random cameras; captions of random token ids between the tokenizer's bos and eos, some empty (all-zero mask)."""
    config = graph.model.config
    generator = torch.Generator().manual_seed(seed)
    height, width = config.image_size
    inputs = {"pixel_values": torch.rand(batch, 3, 3, height, width, generator=generator) * 2 - 1}
    mask = torch.ones(batch, 3, dtype=torch.bool)
    for row in range(batch):
        if (row + 1) % 4 < 3:
            mask[row, (row + 1) % 4] = False
    inputs["modality_mask"] = mask
    if "camera_ids" in graph.input_names:
        inputs["camera_ids"] = torch.randint(0, config.num_cameras, (batch,), generator=generator)
    if graph.uses_text:
        text = config.text_config
        length = min(length or 8, graph.max_length)
        specials = {text.bos_token_id, text.eos_token_id, text.pad_token_id}
        words = torch.tensor([i for i in range(text.vocab_size) if i not in specials])
        prefix, suffix = [[t] if t is not None else [] for t in (text.bos_token_id, text.eos_token_id)]
        pad = text.pad_token_id if text.pad_token_id is not None else 0
        input_ids = torch.full((batch, 3, length), pad, dtype=torch.long)
        attention_mask = torch.zeros(batch, 3, length, dtype=torch.long)
        for row in range(batch):
            for modality in range(3):
                if (row + modality) % 3 == 2:
                    continue  # an empty caption
                # the first caption fills the length, the others are shorter or as long
                size = length if row == modality == 0 else int(torch.randint(1, length + 1, (), generator=generator))
                body = words[torch.randint(0, len(words), (max(size - 2, 0),), generator=generator)].tolist()
                ids = torch.tensor(prefix + body + suffix, dtype=torch.long)[-size:]
                input_ids[row, modality, : len(ids)] = ids
                attention_mask[row, modality, : len(ids)] = 1
        inputs["input_ids"], inputs["attention_mask"] = input_ids, attention_mask
    return {name: inputs[name] for name in graph.input_names}


def export(graph: OnnxGraph, path: Path, opset: int | None) -> None:
    """torch.onnx.export (torch.export-based) into one self-contained file (weights inside: ONNX's 2 GB limit)."""
    example = tuple(random_inputs(graph, 2, seed=0).values())
    # Quiet: the exporter warns about optional torchvision ops and axis names shared by several inputs, the optimizer
    # about ops it does not fold, and torch.export prints graphs to stderr when it fails; the check below tells
    # whether the graph is right, and a failure is summed up in one line.
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


def summary(exc: Exception) -> str:
    """One line out of the exporter's multi-page error: its "Exception summary" line, else the first line."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    if "## Exception summary" in lines[:-1]:
        return lines[lines.index("## Exception summary") + 1][:300]
    return lines[0][:300] if lines else type(exc).__name__


def onnx_and_pytorch_outputs(graph: OnnxGraph, path: Path, what: str):
    """For each checked batch size, (batch, ONNX Runtime's outputs, PyTorch's outputs) on the same random inputs;
    ``what`` names the graph ("exported", "quantized") in the one-line error when ONNX Runtime cannot load or run it.

    Batch 1 and 4 differ from the export's example batch (2), and the caption length differs too, so the
    dynamic axes are exercised."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types
        raise ExportCheckError(f"onnxruntime cannot load the {what} graph: {summary(exc)}") from None
    for batch in CHECK_BATCH_SIZES:
        inputs = random_inputs(graph, batch, seed=batch, length=3 + 2 * batch)
        with torch.no_grad():
            expected = graph(*inputs.values())
        try:
            got = session.run(graph.output_names, {name: t.numpy() for name, t in inputs.items()})
        except Exception as exc:  # onnxruntime's own error types
            reason = summary(exc)
            raise ExportCheckError(f"onnxruntime cannot run the {what} graph at batch {batch}: {reason}") from None
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


def quantized_path(output: Path) -> Path:
    """Where --quantize int8 writes its graph: next to the float32 one, demo.onnx -> demo.int8.onnx."""
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


def embedding_cosines(graph: OnnxGraph, path: Path) -> dict[int, tuple[float, float]]:
    """Per checked batch size: (mean, min) cosine similarity between the graph's and PyTorch's embeddings (the first
    output), row by row (what ranking by cosine sees of a quantized graph)."""
    results = {}
    for batch, got, expected in onnx_and_pytorch_outputs(graph, path, "quantized"):
        cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(got[0]).double(), expected[0].double(), dim=-1)
        results[batch] = (float(cosine.mean()), float(cosine.min()))
    return results


def publish(temp: Path, output: Path) -> None:
    """Rename a checked temporary file into place, with the usual permissions (mkstemp makes it private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    os.replace(temp, output)


def run(args) -> dict[int, tuple[float, str]]:
    from demo_reid.hub.loading import load_checkpoint

    require_onnx()
    output = check_output_file(args.output, "--output", suffix=".onnx")
    if args.atol <= 0:
        raise UsageError(f"--atol must be > 0, got {args.atol}")
    if args.opset is not None and args.opset < MIN_OPSET:
        raise UsageError(f"--opset {args.opset}: the exporter writes opset {MIN_OPSET} or newer")
    if args.min_cosine is not None and not args.quantize:
        raise UsageError("--min-cosine applies to the int8 graph of --quantize int8; none is asked for")
    min_cosine = DEFAULT_MIN_COSINE if args.min_cosine is None else args.min_cosine
    if not 0 < min_cosine <= 1:
        raise UsageError(f"--min-cosine must be in (0, 1], got {min_cosine}")
    quantized = quantized_path(output) if args.quantize else None
    if quantized is not None and quantized.is_dir():
        raise UsageError(f"--quantize {args.quantize}: {quantized} (where the int8 graph goes) is a directory")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = load_checkpoint(args.model)
    # The switch that skips value checks while traced: is_tracing (torch.compile and torch.export), or the
    # export-only is_exporting of checkpoints saved before compile support (they export as well).
    # (Looked up in the checkpoint's own modules of the model class and its bases: the family's checks live in
    # modeling_reid.py; transformers' modules are not the checkpoint's.)
    package = type(model).__module__.rpartition(".")[0]
    modules = [sys.modules[cls.__module__] for cls in type(model).__mro__
               if cls.__module__.rpartition(".")[0] == package and cls.__module__ in sys.modules]
    if not any(hasattr(module, name) for module in modules for name in ("is_tracing", "is_exporting")):
        raise UsageError(
            f"--model {args.model}: the modeling code saved with it predates ONNX export support; re-save it from "
            "this checkout (DeMoModel or NextModel .from_pretrained(old).save_pretrained(new), tokenizer beside it)"
        )
    model = model.float().eval()
    graph = OnnxGraph(model)

    temps = []
    for name in (output.name, quantized.name if quantized else None):
        if name:
            fd, temp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=output.parent)
            os.close(fd)
            temps.append(Path(temp_name))
    temp = temps[0]
    try:
        try:
            export(graph, temp, args.opset)
        except Exception as exc:  # the exporter raises many types, with pages of advice
            raise ExportFailed(f"torch.onnx.export failed for --model {args.model}: {summary(exc)}") from None
        results = max_differences(graph, temp)
        for batch, (diff, name) in results.items():
            print(f"batch {batch}: max |ONNX - PyTorch| = {diff:.2e} (largest on {name}; tolerance {args.atol:g})")
        failed = {b: r for b, r in results.items() if not r[0] < args.atol}
        if failed:
            batch, (diff, name) = next(iter(failed.items()))
            raise ExportCheckError(
                f"the ONNX graph differs from PyTorch by {diff:.2e} on {name} at batch {batch} (tolerance "
                f"{args.atol:g}); nothing written to {output}"
            )
        if quantized is not None:
            check_quantized(graph, temp, temps[1], min_cosine, output)
            publish(temps[1], quantized)
        publish(temp, output)
    finally:
        for path in temps:
            path.unlink(missing_ok=True)
    inputs = ", ".join(graph.input_names)
    print(f"wrote {output}: inputs {inputs}; outputs {', '.join(graph.output_names)}")
    if quantized is not None:
        size = quantized.stat().st_size / output.stat().st_size
        print(f"wrote {quantized}: int8 weights (dynamic quantization), same inputs and outputs, {size:.0%} of the size")
    return results


def check_quantized(graph: OnnxGraph, source: Path, target: Path, min_cosine: float, output: Path) -> None:
    """Quantize `source` into `target` and require every row's embedding cosine to PyTorch >= `min_cosine`."""
    try:
        quantize_int8(source, target)
    except Exception as exc:  # onnxruntime.quantization raises many types
        raise ExportCheckError(f"int8 quantization failed: {summary(exc)}; nothing written to {output}") from None
    cosines = embedding_cosines(graph, target)
    for batch, (mean, low) in cosines.items():
        print(f"batch {batch}: int8 embeddings' cosine to PyTorch mean {mean:.5f}, min {low:.5f} "
              f"(required >= {min_cosine:g})")
    worst = min(cosines, key=lambda b: cosines[b][1])
    if not cosines[worst][1] >= min_cosine:
        raise ExportCheckError(
            f"the int8 graph's embeddings have cosine {cosines[worst][1]:.4f} to PyTorch at batch {worst} "
            f"(--min-cosine {min_cosine:g}); nothing written to {output}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="directory written by save_pretrained (train.py --output-dir)")
    parser.add_argument("--output", required=True, help="ONNX file to write (its directory must exist)")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset to target (default: the exporter's recommended one, 20 with torch 2.13)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest accepted |ONNX - PyTorch| on any output at batch 1 and 4 (default 1e-4)")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                        help="also write an int8 graph next to --output (demo.onnx -> demo.int8.onnx): ONNX Runtime "
                        "dynamic quantization, for fast CPU inference")
    parser.add_argument("--min-cosine", type=float, default=None,
                        help="--quantize: smallest accepted cosine similarity between the int8 graph's and "
                        "PyTorch's embeddings, on every row at batch 1 and 4 (default 0.99)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    try:
        run(args)
    except (UsageError, ExportCheckError) as exc:
        print(f"export_onnx.py: error: {exc}", file=sys.stderr)
        return 2
    except ExportFailed as exc:
        print(f"export_onnx.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"export_onnx.py: interrupted (Ctrl-C); nothing written to {args.output}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Export a saved DeMo or NEXT checkpoint to ONNX and check it against PyTorch with onnxruntime.

    python data_scripts/export_onnx.py --model outputs/demo-synthetic --output demo.onnx

One graph per combination of the model's optional inputs, since an ONNX graph has a fixed list of inputs:
--output (demo.onnx) takes every input the model has, demo.no-camera.onnx leaves out `camera_ids` (a query from an
unseen camera), and for text-conditioned NEXT next.no-text.onnx leaves out the captions (and
next.no-camera.no-text.onnx both). Inputs (batch size dynamic; caption length dynamic up to the text tower's
maximum): `pixel_values` (batch, 3, 3, H, W) float32, `modality_mask` (batch, 3) bool (False = missing modality),
`camera_ids` (batch,) int64, `input_ids` / `attention_mask` (batch, 3, length) int64, one caption per modality.
Outputs: `embeddings` (the retrieval feature) and `features_<row>` for every named feature row eval.py reports
(DeMo: ori, moe, all; NEXT: cls, semantic, structure, final, all). The model is exported in float32. Each graph is
run with onnxruntime on random inputs at batch 1 and 4 and compared with PyTorch called with the same inputs; the
files are moved into place only if every output of every graph agrees within --atol. With --quantize int8, an int8
copy of each graph (ONNX Runtime dynamic quantization) is written next to it, e.g. demo.int8.onnx, once its
embeddings' cosine similarity to PyTorch is at least --min-cosine. See docs/export.md.
"""

import argparse
import os
import sys

from mmreid.errors import run_cli
from mmreid.export.check import ExportCheckError
from mmreid.export.checkpoint import QUANTIZE_CHOICES, export_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="directory written by save_pretrained (train.py --output-dir)")
    parser.add_argument("--output", required=True,
                        help="ONNX file to write, the graph with every input (its directory must exist); the graphs "
                        "without cameras / captions go beside it")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset to target (default: the exporter's recommended one, 20 with torch 2.13)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest accepted |ONNX - PyTorch| on any output at batch 1 and 4 (default 1e-4)")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                        help="also write an int8 graph next to each graph (demo.onnx -> demo.int8.onnx): ONNX Runtime "
                        "dynamic quantization, for fast CPU inference")
    parser.add_argument("--min-cosine", type=float, default=None,
                        help="--quantize: smallest accepted cosine similarity between the int8 graph's and "
                        "PyTorch's embeddings, on every row at batch 1 and 4 (default 0.99)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    return run_cli(lambda: export_checkpoint(args.model, args.output, opset=args.opset, atol=args.atol,
                                             quantize=args.quantize, min_cosine=args.min_cosine),
                   "export_onnx.py", errors=(ExportCheckError,),
                   interrupted=f"nothing written to {args.output}")


if __name__ == "__main__":
    sys.exit(main())

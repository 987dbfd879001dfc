"""CPU deployment: PyTorch eager (fp32) vs ONNX Runtime fp32 vs ONNX Runtime int8 (dynamic quantization).

Why: `export_onnx.py [--quantize int8]` is the fast CPU path (issue goals: ORT fp32 >= 1.3x PyTorch eager at batch
1; int8 >= 2x with mAP within 1 point). Two parts:
- speed at the deployment shape: the ViT-B/16 DeMo at 256x128 (random weights; model_suite's model) exported by
  export_onnx.py's own functions (mmreid.export), triples/s at batch 1 and 32, the three contenders interleaved
  in one process;
- the effect on retrieval: a trained checkpoint (e.g. `python train.py`'s synthetic default) exported the same way,
  its query / gallery embedded by each contender: cosine of every embedding to PyTorch's (mean, min) and the mAP.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from mmreid.export.graph import OnnxGraph
from mmreid.export.writer import export, quantize_int8
from harness import interleaved_seconds
from model_suite import build_model, make_batch


def export_both(model, folder: Path) -> tuple[object, dict[str, Path]]:
    """The model's OnnxGraph (every input) and its fp32 + int8 files in ``folder``, exported as export_onnx.py
    does."""
    graph = OnnxGraph(model.float().eval())
    paths = {"fp32": folder / "model.onnx", "int8": folder / "model.int8.onnx"}
    export(graph, paths["fp32"], None)
    quantize_int8(paths["fp32"], paths["int8"])
    return graph, paths


def ort_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtModel(torch.nn.Module):
    """An ONNX Runtime session behind the model interface evaluation uses (config, forward -> embeddings and
    feature_sets), so the same evaluation code ranks PyTorch's and ONNX Runtime's features."""

    def __init__(self, session, graph, config):
        super().__init__()
        self.session, self.input_names, self.rows, self.config = session, graph.input_names, graph.rows, config
        self._device = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # extract_features reads the device

    def forward(self, pixel_values, camera_ids=None, modality_mask=None, **_):
        if modality_mask is None:
            modality_mask = torch.ones(pixel_values.shape[0], 3, dtype=torch.bool)
        given = {"pixel_values": pixel_values, "modality_mask": modality_mask, "camera_ids": camera_ids}
        outputs = self.session.run(None, {name: given[name].numpy() for name in self.input_names})
        embeddings, *rows = (torch.from_numpy(o) for o in outputs)
        return type("Out", (), {"embeddings": embeddings, "feature_sets": dict(zip(self.rows, rows))})()


def _inputs(graph, batch: dict) -> dict:
    given = {"pixel_values": batch["pixel_values"], "camera_ids": batch["camera_ids"],
             "modality_mask": torch.ones(batch["pixel_values"].shape[0], 3, dtype=torch.bool)}
    return {name: given[name] for name in graph.input_names}


def run_speed(image_size, batches, repeats: int, warmup: int, threads: int, log=print) -> dict:
    """Triples/s of PyTorch eager fp32, ORT fp32 and ORT int8 at each batch size, interleaved; ratios vs eager."""
    model = build_model(image_size, "cpu").eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        graph, paths = export_both(model, Path(tmp))
        sessions = {name: ort_session(path, threads) for name, path in paths.items()}
        sizes = {name: path.stat().st_size / 2**20 for name, path in paths.items()}
        for batch_size in batches:
            inputs = _inputs(graph, make_batch(batch_size, image_size, "cpu"))
            arrays = {name: value.numpy() for name, value in inputs.items()}

            def eager():
                with torch.inference_mode():
                    return graph(*inputs.values())[0]

            contenders = {"pytorch_eager_fp32": eager,
                          "ort_fp32": lambda: sessions["fp32"].run(["embeddings"], arrays),
                          "ort_int8": lambda: sessions["int8"].run(["embeddings"], arrays)}
            timing = interleaved_seconds(contenders, repeats, warmup)
            reference = eager()
            cosines = {}
            for name in ("fp32", "int8"):
                got = torch.from_numpy(sessions[name].run(["embeddings"], arrays)[0])
                cosine = torch.nn.functional.cosine_similarity(got.double(), reference.double(), dim=-1)
                cosines[f"ort_{name}"] = {"mean": float(cosine.mean()), "min": float(cosine.min())}
            row = {"batch": batch_size, **timing, "cosine_to_pytorch": cosines,
                   "triples_per_s": {name: batch_size / s for name, s in timing["median_s"].items()}}
            rows.append(row)
            log(f"  batch {batch_size:3d}: " + ", ".join(f"{n} {v:.2f} triples/s" for n, v in row["triples_per_s"].items())
                + "; speed-up vs eager " + ", ".join(f"{n} {v:.2f}x" for n, v in timing["ratio_median"].items()))
    return {"image_size": f"{image_size[0]}x{image_size[1]}", "model": "DeMo, CLIP ViT-B/16 shapes, random weights",
            "threads": threads, "file_mib": sizes, "rows": rows}


def run_retrieval(checkpoint: str, dataset: str, threads: int, batch_size: int = 64, log=print) -> dict:
    """mAP / Rank-1 and the embeddings' cosine to PyTorch's, for PyTorch eager, ORT fp32 and ORT int8."""
    from mmreid.data.loading import open_reid_dataset
    from mmreid.evaluation.protocol import compute_retrieval_metrics, extract_features
    from mmreid.hub.loading import load_checkpoint

    model = load_checkpoint(checkpoint).float().eval()
    splits = open_reid_dataset(dataset)
    result = {"checkpoint": checkpoint, "dataset": dataset, "contenders": {}}
    with tempfile.TemporaryDirectory() as tmp:
        graph, paths = export_both(model, Path(tmp))
        contenders = {"pytorch_eager_fp32": model}
        contenders.update({f"ort_{name}": OrtModel(ort_session(path, threads), graph, model.config)
                           for name, path in paths.items()})
        features = {}
        for name, runnable in contenders.items():
            query = extract_features(runnable, splits["query"], batch_size, progress=False, desc="query")
            gallery = extract_features(runnable, splits["gallery"], batch_size, progress=False, desc="gallery")
            metrics = compute_retrieval_metrics(query, gallery, [query.headline])[query.headline]
            features[name] = torch.cat([query.feature_sets[query.headline], gallery.feature_sets[query.headline]])
            entry = {"mAP": metrics["mAP"], "Rank-1": metrics["Rank-1"]}
            if name != "pytorch_eager_fp32":
                cosine = torch.nn.functional.cosine_similarity(features[name].double(),
                                                               features["pytorch_eager_fp32"].double(), dim=-1)
                entry["cosine_to_pytorch"] = {"mean": float(cosine.mean()), "min": float(cosine.min())}
            result["contenders"][name] = entry
            log(f"  {name}: mAP {entry['mAP']:.2f}, Rank-1 {entry['Rank-1']:.2f}"
                + (f", cosine to PyTorch mean {entry['cosine_to_pytorch']['mean']:.5f} min "
                   f"{entry['cosine_to_pytorch']['min']:.5f}" if "cosine_to_pytorch" in entry else ""))
    return result

"""`export_onnx.py --quantize int8`: an int8 graph (ONNX Runtime dynamic quantization) next to the float32 one, with
int8 weights, the same inputs and outputs, and embeddings whose cosine to PyTorch's is checked before it is written."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from mmreid.hub.backbones import tiny_demo_config
from modeling_demo import DeMoModel
import mmreid.export.checkpoint as export_checkpoint
from tests.conftest import load_data_script, random_triples

SCRIPT = Path(__file__).resolve().parents[1] / "data_scripts" / "export_onnx.py"


def load_script():
    return load_data_script("export_onnx")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A tiny DeMo checkpoint exported with --quantize int8 by the command line: (model, out dir, process)."""
    base = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    # C = 32: the stacked HDM weights fold into 3-D constants that ONNX Runtime's per-channel int8 MatMul cannot
    # run (they must stay float32)
    model = DeMoModel(tiny_demo_config(num_labels=6, num_cameras=3, image_size=(32, 16),
                                       vision_overrides={"projection_dim": 32, "num_hidden_layers": 1})).eval()
    model.save_pretrained(base / "model")
    (base / "out").mkdir()
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(base / "model"), "--output", str(base / "out" / "demo.onnx"),
         "--quantize", "int8"],
        capture_output=True, text=True, timeout=300, cwd=base,
    )
    return model, base / "out", process


def test_quantize_writes_an_int8_graph_next_to_the_float32_one(quantized):
    _, out, process = quantized
    assert process.returncode == 0, process.stderr[-2000:]
    # each graph (with and without camera_ids) gets its int8 copy
    assert sorted(p.name for p in out.iterdir()) == ["demo.int8.onnx", "demo.no-camera.int8.onnx",
                                                     "demo.no-camera.onnx", "demo.onnx"]
    assert "int8 embeddings' cosine to PyTorch" in process.stdout and f"wrote {out / 'demo.int8.onnx'}" in process.stdout
    graph, fp32 = onnx.load(str(out / "demo.int8.onnx")), onnx.load(str(out / "demo.onnx"))
    ops = Counter(node.op_type for node in graph.graph.node)
    assert ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"] + ops["ConvInteger"] > 0, ops
    # the Linear layers' weights are int8, at least the tower's six per layer (q, k, v, out, fc1, fc2); 3-D
    # (stacked expert) weights stay float32
    three_d = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 3]
    assert three_d == []
    int8_weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_weights) >= 6 * quantized[0].config.vision_config.num_hidden_layers, len(int8_weights)
    assert [i.name for i in graph.graph.input] == [i.name for i in fp32.graph.input]
    assert [o.name for o in graph.graph.output] == [o.name for o in fp32.graph.output]
    assert (out / "demo.int8.onnx").stat().st_size < (out / "demo.onnx").stat().st_size


@pytest.mark.parametrize("batch", [1, 5])
def test_int8_embeddings_point_where_pytorch_does(quantized, batch):
    model, out, _ = quantized
    pixels = random_triples(batch, seed=7)
    mask = torch.ones(batch, 3, dtype=torch.bool)
    mask[0, 2] = False
    cameras = torch.arange(batch) % 3
    with torch.no_grad():
        expected = model(pixels, camera_ids=cameras, modality_mask=mask).embeddings
    session = onnxruntime.InferenceSession(str(out / "demo.int8.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["embeddings"], {"pixel_values": pixels.numpy(), "modality_mask": mask.numpy(),
                                       "camera_ids": cameras.numpy()})[0]
    cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(got), expected, dim=-1)
    assert cosine.min() > 0.99, cosine
    assert not torch.allclose(torch.from_numpy(got), expected, atol=1e-5)  # really another (quantized) graph


@pytest.mark.parametrize(
    "extra, needle",
    [(["--quantize", "int8", "--min-cosine", "1.5"], "--min-cosine must be in (0, 1]"),
     (["--min-cosine", "0.9"], "--min-cosine applies to the int8 graph of --quantize int8")],
)
def test_bad_quantize_arguments_are_one_line_exit_2(quantized, tmp_path, capsys, extra, needle):
    model_dir = quantized[1].parent / "model"
    capsys.readouterr()
    assert load_script().main(["--model", str(model_dir), "--output", str(tmp_path / "m.onnx"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export_onnx.py: error: ") and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_int8_graph_below_min_cosine_writes_nothing(quantized, tmp_path, monkeypatch, capsys):
    """A quantized graph that misses --min-cosine: exit 2, one line, neither file written."""
    script = load_script()
    real = export_checkpoint.embedding_cosines
    monkeypatch.setattr(export_checkpoint, "embedding_cosines",
                        lambda graph, path: {b: (m - 0.5, low - 0.5) for b, (m, low) in real(graph, path).items()})
    capsys.readouterr()
    code = script.main(["--model", str(quantized[1].parent / "model"), "--output", str(tmp_path / "m.onnx"),
                        "--quantize", "int8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the int8 graph's embeddings have cosine 0.4" in err[0], err
    assert list(tmp_path.iterdir()) == []

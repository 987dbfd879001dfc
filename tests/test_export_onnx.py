"""data_scripts/export_onnx.py: tiny DeMo and NEXT checkpoints exported to ONNX reproduce PyTorch in onnxruntime at
other batch sizes (and caption lengths) than the export's, with missing modalities and varied cameras, and so do the
graphs without the optional inputs (no camera, no captions); bad input and a failed check write nothing."""

import contextlib
import io
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")

import numpy as np
import torch
from conftest import REPO_ROOT, load_data_script, random_triples

import mmreid.export.checkpoint as export_checkpoint
import mmreid.export.writer as onnx_writer
from mmreid.export.graph import OnnxGraph, graph_inputs_of
from mmreid.hub.backbones import tiny_demo_config, tiny_next_config
from mmreid.data.text import build_caption_tokenizer, tokenize_captions
from modeling_demo import DeMoModel
from modeling_next import NextModel

SCRIPT = REPO_ROOT / "data_scripts" / "export_onnx.py"
TOLERANCE = 1e-4
CAPTIONS = [
    "An adult male seen from the side in dim lighting. He is wearing a white t-shirt with black shorts.",
    "A teenager male seen from the front. He is carrying a bag.",
    "An adult female seen from the back. She is wearing a red coat with blue jeans and glasses.",
    "A person on a bicycle.",
]


def load_script():
    return load_data_script("export_onnx")


def trained_looking(model):
    """Random BatchNorm statistics, so a graph that ignored (or mis-ordered) them would not match."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def run_onnx(path, **inputs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
    return dict(zip(names, values))


def max_diff(onnx_value, torch_value) -> float:
    return float(np.abs(onnx_value - torch_value.numpy()).max())


def assert_matches(onnx_out, torch_out):
    """Every exported output equals its PyTorch counterpart within the tolerance; returns the embeddings' diff."""
    assert set(onnx_out) == {"embeddings"} | {f"features_{row}" for row in torch_out.feature_sets}
    for row, value in torch_out.feature_sets.items():
        assert max_diff(onnx_out[f"features_{row}"], value) < TOLERANCE, row
    diff = max_diff(onnx_out["embeddings"], torch_out.embeddings)
    assert diff < TOLERANCE
    return diff


def masks(batch):
    """Row 0 misses NIR, row 2 misses TIR and RGB; the others are complete."""
    mask = torch.ones(batch, 3, dtype=torch.bool)
    mask[0, 1] = False
    if batch > 2:
        mask[2, [0, 2]] = False
    return mask


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny DeMo checkpoint exported by the command line in a fresh process: (model, onnx path, process)."""
    base = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    model = trained_looking(DeMoModel(tiny_demo_config(num_labels=6, num_cameras=3, image_size=(32, 16))))
    model.save_pretrained(base / "model")
    (base / "out").mkdir()
    output = base / "out" / "demo.onnx"
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(base / "model"), "--output", str(output), "--opset", "18"],
        capture_output=True, text=True, timeout=300, cwd=base,
    )
    return model, output, process


@pytest.fixture(scope="module")
def tokenizer():
    return build_caption_tokenizer(CAPTIONS, model_max_length=40)


@pytest.fixture(scope="module")
def next_export(tmp_path_factory, tokenizer):
    """A tiny NEXT checkpoint (with its tokenizer) exported by `main` in this process: (model, path, stdout)."""
    base = tmp_path_factory.mktemp("next")
    torch.manual_seed(0)
    model = trained_looking(NextModel(tiny_next_config(tokenizer, num_labels=6, num_cameras=3, image_size=(32, 16))))
    model.save_pretrained(base / "model")
    tokenizer.save_pretrained(base / "model")
    output = base / "next.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = load_script().main(["--model", str(base / "model"), "--output", str(output)])
    assert code == 0
    return model, output, stdout.getvalue()


# -------------------------------------------------------------------------------------------------------------- DeMo


def test_cli_exports_demo_and_reports_the_difference(demo):
    _, output, process = demo
    assert process.returncode == 0, process.stderr
    printed = [line for line in process.stdout.splitlines() if "max |ONNX - PyTorch|" in line]
    assert [line.split(":")[0] for line in printed] == [
        "demo.onnx batch 1", "demo.onnx batch 4", "demo.no-camera.onnx batch 1", "demo.no-camera.onnx batch 4"]
    assert all(float(line.split("= ")[1].split()[0]) < TOLERANCE for line in printed)
    # no temp file left, no external data; the graph without camera_ids beside the full one
    assert sorted(p.name for p in output.parent.iterdir()) == ["demo.no-camera.onnx", "demo.onnx"]
    import onnx

    proto = onnx.load(str(output))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18  # --opset reached the file
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == ["pixel_values", "modality_mask", "camera_ids"]
    assert inputs["pixel_values"].shape[1:] == [3, 3, 32, 16] and isinstance(inputs["pixel_values"].shape[0], str)
    assert (inputs["pixel_values"].type, inputs["modality_mask"].type, inputs["camera_ids"].type) == (
        "tensor(float)", "tensor(bool)", "tensor(int64)"
    )
    assert [o.name for o in session.get_outputs()] == ["embeddings", "features_ori", "features_moe", "features_all"]
    no_camera = onnxruntime.InferenceSession(str(output.with_name("demo.no-camera.onnx")),
                                             providers=["CPUExecutionProvider"])
    assert [i.name for i in no_camera.get_inputs()] == ["pixel_values", "modality_mask"]
    assert [o.name for o in no_camera.get_outputs()] == [o.name for o in session.get_outputs()]


@pytest.mark.parametrize("batch", [1, 4])
def test_demo_onnx_matches_pytorch(demo, batch):
    model, output, process = demo
    assert process.returncode == 0, process.stderr
    inputs = dict(
        pixel_values=random_triples(batch, seed=10 + batch),
        modality_mask=masks(batch),
        camera_ids=torch.tensor([2, 0, 1, 1])[:batch],
    )
    with torch.no_grad():
        expected = model(**inputs)
    got = run_onnx(output, **inputs)
    print(f"DeMo batch {batch}: max |ONNX - PyTorch| on embeddings = {assert_matches(got, expected):.2e}")
    # Not vacuous: the features are not tiny, and the camera and a missing modality change them.
    assert np.abs(got["embeddings"]).max() > 0.05
    other_camera = run_onnx(output, **dict(inputs, camera_ids=(inputs["camera_ids"] + 1) % 3))
    assert np.abs(other_camera["embeddings"] - got["embeddings"]).max() > 1e-3
    complete = run_onnx(output, **dict(inputs, modality_mask=torch.ones(batch, 3, dtype=torch.bool)))
    assert np.abs(complete["embeddings"][0] - got["embeddings"][0]).max() > 1e-3
    if batch > 1:
        assert np.abs(got["embeddings"][0] - got["embeddings"][1]).max() > 1e-3


@pytest.mark.parametrize("batch", [1, 4])
def test_demo_graph_without_cameras_matches_pytorch_without_cameras(demo, batch):
    """The unseen-camera query: PyTorch without camera_ids (no camera embedding) is what the no-camera graph gives,
    and it differs from every known camera's result in the full graph."""
    model, output, process = demo
    assert process.returncode == 0, process.stderr
    inputs = dict(pixel_values=random_triples(batch, seed=30 + batch), modality_mask=masks(batch))
    with torch.no_grad():
        expected = model(**inputs)
    got = run_onnx(output.with_name("demo.no-camera.onnx"), **inputs)
    print(f"DeMo without cameras, batch {batch}: max |ONNX - PyTorch| = {assert_matches(got, expected):.2e}")
    for camera in range(3):
        with_camera = run_onnx(output, **inputs, camera_ids=torch.full((batch,), camera))
        assert np.abs(with_camera["embeddings"] - got["embeddings"]).max() > 1e-3


# -------------------------------------------------------------------------------------------------------------- NEXT


NEXT_GRAPHS = {  # file -> its inputs after pixel_values and modality_mask
    "next.onnx": ["camera_ids", "input_ids", "attention_mask"],
    "next.no-text.onnx": ["camera_ids"],
    "next.no-camera.onnx": ["input_ids", "attention_mask"],
    "next.no-camera.no-text.onnx": [],
}


def test_main_exports_next_with_caption_inputs(next_export):
    _, output, stdout = next_export
    for name in NEXT_GRAPHS:
        assert f"{name} batch 1: max |ONNX - PyTorch|" in stdout and f"{name} batch 4: max |ONNX - PyTorch|" in stdout
    assert sorted(p.name for p in output.parent.glob("*.onnx")) == sorted(NEXT_GRAPHS)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs) == ["pixel_values", "modality_mask", "camera_ids", "input_ids", "attention_mask"]
    assert inputs["input_ids"][1] == 3 and all(isinstance(inputs["input_ids"][d], str) for d in (0, 2))
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == ["embeddings"] + [f"features_{r}" for r in ("cls", "semantic", "structure", "final", "all")]
    for name, optional in NEXT_GRAPHS.items():
        other = onnxruntime.InferenceSession(str(output.with_name(name)), providers=["CPUExecutionProvider"])
        assert [i.name for i in other.get_inputs()] == ["pixel_values", "modality_mask", *optional], name
        assert [o.name for o in other.get_outputs()] == outputs, name


@pytest.mark.parametrize("name", [n for n in NEXT_GRAPHS if n != "next.onnx"])
@pytest.mark.parametrize("batch", [1, 4])
def test_next_graphs_without_optional_inputs_match_pytorch_without_them(next_export, tokenizer, name, batch):
    """A query without captions (and / or from an unseen camera): each graph equals PyTorch called with only its
    inputs; without captions that is the learned "no text" embedding, which all-zero attention masks in the full
    graph give too."""
    model, output, _ = next_export
    optional = NEXT_GRAPHS[name]
    inputs = dict(pixel_values=random_triples(batch, seed=40 + batch), modality_mask=masks(batch))
    if "camera_ids" in optional:
        inputs["camera_ids"] = torch.tensor([2, 1, 0, 1])[:batch]
    if "input_ids" in optional:
        inputs.update(tokenize_captions(tokenizer, [[CAPTIONS[0], "", CAPTIONS[2]]] * batch))
    with torch.no_grad():
        expected = model(**inputs)
    got = run_onnx(output.with_name(name), **inputs)
    print(f"NEXT {name}, batch {batch}: max |ONNX - PyTorch| = {assert_matches(got, expected):.2e}")
    if "input_ids" not in optional:
        empty = {"input_ids": torch.zeros(batch, 3, 1, dtype=torch.long),
                 "attention_mask": torch.zeros(batch, 3, 1, dtype=torch.long)}
        full = run_onnx(output.with_name("next.onnx" if "camera_ids" in optional else "next.no-camera.onnx"),
                        **inputs, **empty)
        assert np.abs(full["embeddings"] - got["embeddings"]).max() < TOLERANCE
        captioned = run_onnx(output.with_name("next.onnx" if "camera_ids" in optional else "next.no-camera.onnx"),
                             **inputs, **tokenize_captions(tokenizer, [CAPTIONS[:3]] * batch))
        assert np.abs(captioned["features_semantic"] - got["features_semantic"]).max() > 1e-3
    if "camera_ids" not in optional:
        camera = run_onnx(output.with_name(name.replace(".no-camera", "")), **inputs,
                          camera_ids=torch.zeros(batch, dtype=torch.long))
        # the tiny NEXT's camera embedding moves its features by ~1e-4, 1000x the ONNX / PyTorch difference
        assert np.abs(camera["features_cls"] - got["features_cls"]).max() > 1e-5


@pytest.mark.parametrize("batch", [1, 4])
def test_next_onnx_matches_pytorch(next_export, tokenizer, batch):
    model, output, _ = next_export
    triples = [[CAPTIONS[0], CAPTIONS[1], ""], [CAPTIONS[2], "", CAPTIONS[3]], ["", "", ""], CAPTIONS[1:]][:batch]
    if batch == 1:
        triples = [[CAPTIONS[3], CAPTIONS[1], ""]]  # shorter captions: another caption length than batch 4's
    captions = tokenize_captions(tokenizer, triples)
    inputs = dict(
        pixel_values=random_triples(batch, seed=20 + batch),
        modality_mask=masks(batch),
        camera_ids=torch.tensor([1, 2, 0, 2])[:batch],
        **captions,
    )
    with torch.no_grad():
        expected = model(**inputs)
    got = run_onnx(output, **inputs)
    print(f"NEXT batch {batch}, caption length {captions['input_ids'].shape[-1]}: max |ONNX - PyTorch| on "
          f"embeddings = {assert_matches(got, expected):.2e}")
    assert np.abs(got["embeddings"]).max() > 0.05

    # The captions matter in the graph: other captions change the semantic row (and match PyTorch again).
    other = tokenize_captions(tokenizer, [[CAPTIONS[2], CAPTIONS[0], CAPTIONS[3]]] * batch)
    other_inputs = dict(inputs, **other)
    with torch.no_grad():
        other_expected = model(**other_inputs)
    other_got = run_onnx(output, **other_inputs)
    assert_matches(other_got, other_expected)
    assert np.abs(other_got["features_semantic"] - got["features_semantic"]).max() > 1e-3
    # An absent caption (all-zero mask, or its modality missing) is ignored whatever its token ids.
    noisy = {k: v.clone() for k, v in captions.items()}
    word = tokenizer.convert_tokens_to_ids("male")
    noisy["input_ids"][noisy["attention_mask"] == 0] = word
    noisy["input_ids"][0, 1] = word  # row 0's NIR is missing: its caption must not count
    noisy_got = run_onnx(output, **dict(inputs, **noisy))
    assert np.abs(noisy_got["embeddings"] - got["embeddings"]).max() < TOLERANCE


def test_next_with_text_prompts_exports_its_prompt_vectors(tokenizer, tmp_path):
    """num_text_prompts > 0 encodes captions through the prompted pass (shared with IDEA): the graph with every input
    matches PyTorch with the model's prompt vectors and not with other ones, so the vectors are in the graph."""
    torch.manual_seed(0)
    config = tiny_next_config(tokenizer, num_labels=6, num_cameras=3, image_size=(32, 16), num_text_prompts=2)
    model = trained_looking(NextModel(config))
    full = graph_inputs_of(config)[0]  # the first graph is the one with every input (export_checkpoint's --output)
    graph = OnnxGraph(model, full)
    assert graph.input_names == ["pixel_values", "modality_mask", "camera_ids", "input_ids", "attention_mask"]
    onnx_writer.export(graph, tmp_path / "next.onnx", None)
    inputs = dict(pixel_values=random_triples(3, seed=50), modality_mask=masks(3),
                  camera_ids=torch.tensor([0, 2, 1]), **tokenize_captions(tokenizer, [CAPTIONS[:3]] * 3))
    got = run_onnx(tmp_path / "next.onnx", **inputs)
    with torch.no_grad():
        assert_matches(got, model(**inputs))
        model.text_prompts.normal_(generator=torch.Generator().manual_seed(2))
        other_prompts = model(**inputs)
    assert np.abs(got["features_semantic"] - other_prompts.feature_sets["semantic"].numpy()).max() > 1e-3


# ------------------------------------------------------------------------------------------------ failures, bad input


def test_failed_check_exits_2_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """A model without cameras (no camera_ids input); the check is made to fail by inflating its real result."""
    torch.manual_seed(0)
    DeMoModel(tiny_demo_config(num_cameras=0, use_atmoe=False, image_size=(32, 16))).save_pretrained(tmp_path / "m")
    (tmp_path / "out").mkdir()
    script = load_script()
    real, seen = export_checkpoint.max_differences, {}

    def inflated(graph, path):
        seen.update(inputs=list(graph.input_names), file=path.is_file(), results=real(graph, path))
        return {batch: (diff + 1.0, name) for batch, (diff, name) in seen["results"].items()}

    monkeypatch.setattr(export_checkpoint, "max_differences", inflated)
    capsys.readouterr()
    assert script.main(["--model", str(tmp_path / "m"), "--output", str(tmp_path / "out" / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export_onnx.py: error: the ONNX graph differs from PyTorch by 1.")
    assert list((tmp_path / "out").iterdir()) == []  # the checked temp file is gone, nothing at --output
    assert seen["file"] and seen["inputs"] == ["pixel_values", "modality_mask"]
    assert all(diff < TOLERANCE for diff, _ in seen["results"].values())  # the real graph was right


@pytest.mark.parametrize(
    "case, argument",
    [("no_config", "--model"), ("bert", "--model"), ("old_code", "--model"), ("missing_dir", "--output"),
     ("output_is_dir", "--output"), ("old_opset", "--opset")],
)
def test_bad_input_is_one_line_and_exit_2(demo, tmp_path, capsys, case, argument):
    model_dir = demo[1].parents[1] / "model"  # a valid checkpoint, for the cases about other arguments
    output = tmp_path / "model.onnx"
    extra = []
    if case == "no_config":
        model_dir = tmp_path / "empty"
        model_dir.mkdir()
    elif case == "bert":
        model_dir = tmp_path / "bert"
        model_dir.mkdir()
        (model_dir / "config.json").write_text('{"model_type": "bert"}')
    elif case == "old_code":  # modeling code saved before export support: without the is_exporting switch
        old = tmp_path / "renamed_flag"  # a name of its own: transformers caches remote code by folder name
        shutil.copytree(model_dir, old)
        for name in ("modeling_reid.py", "modeling_demo.py"):
            code = (old / name).read_text()
            (old / name).write_text(code.replace("is_exporting", "traced_flag").replace("is_tracing", "flag"))
        model_dir = old
    elif case == "missing_dir":
        output = tmp_path / "no" / "model.onnx"
    elif case == "output_is_dir":
        output = tmp_path
    else:
        extra = ["--opset", "17"]
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    assert load_script().main(["--model", str(model_dir), "--output", str(output), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"export_onnx.py: error: {argument}"), err
    assert sorted(tmp_path.rglob("*")) == before


def test_missing_onnx_packages_name_the_extra(demo, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    capsys.readouterr()
    code = load_script().main(["--model", str(demo[1].parents[1] / "model"), "--output", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'pip install -e ".[onnx]"' in err[0] and "onnxruntime" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_eager_models_still_check_input_values(next_export, tokenizer):
    """The checks skipped while exporting still run in eager mode."""
    torch.manual_seed(0)
    demo_model = DeMoModel(tiny_demo_config(num_cameras=3, image_size=(32, 16))).eval()
    with pytest.raises(ValueError, match="camera_ids must be in"):
        demo_model(random_triples(2), camera_ids=torch.tensor([0, 3]))
    captions = tokenize_captions(tokenizer, [CAPTIONS[:3]])
    captions["input_ids"][0, 0, 1] = 10_000
    with pytest.raises(ValueError, match="input_ids must be token ids"):
        next_export[0](random_triples(1), camera_ids=torch.tensor([0]), **captions)


def test_exporter_failure_is_one_line_exit_1_and_leaves_nothing(demo, tmp_path, capsys):
    """Modeling code whose value check still runs while traced: torch.export fails; its pages become one line."""
    old = tmp_path / "checked_while_traced"
    shutil.copytree(demo[1].parents[1] / "model", old)
    code = (old / "modeling_reid.py").read_text()  # the family's input checks
    assert code.count("if not is_tracing() and") == 1
    (old / "modeling_reid.py").write_text(code.replace("if not is_tracing() and", "if"))
    (tmp_path / "out").mkdir()
    capsys.readouterr()
    assert load_script().main(["--model", str(old), "--output", str(tmp_path / "out" / "m.onnx")]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export_onnx.py: error: torch.onnx.export failed for --model"), err
    assert "data-dependent" in err[0] and captured.out == ""
    assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------------------------------------ every tower family


@pytest.mark.parametrize("family", ["metaclip_2", "siglip", "siglip2", "dinov2", "dinov2_with_registers",
                                    "dinov3_vit", "vit"])
def test_demo_on_every_tower_family_exports_and_matches_pytorch(family, tmp_path):
    """DeMo on each image-tower family of the registry (CLIP: the tests above) exported as the CLI exports its full
    graph, and run at another batch size than the export's, with a missing modality: the PyTorch model's outputs
    within the tolerance."""
    from configuration_reid import BACKBONE_MODEL_TYPES
    from mmreid.export.graph import OnnxGraph
    from mmreid.export.writer import export

    assert family in BACKBONE_MODEL_TYPES
    torch.manual_seed(0)
    model = trained_looking(DeMoModel(tiny_demo_config(num_labels=6, num_cameras=3, image_size=(32, 16),
                                                       backbone_type=family)))
    output = tmp_path / "demo.onnx"
    export(OnnxGraph(model), output, opset=None)  # the full graph only (the CLI's checks: the tests above)
    inputs = dict(pixel_values=random_triples(3, seed=7), modality_mask=masks(3), camera_ids=torch.tensor([2, 0, 1]))
    with torch.no_grad():
        expected = model(**inputs)
    assert_matches(run_onnx(output, **inputs), expected)

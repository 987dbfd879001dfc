"""The processors and the pipeline shipped with every checkpoint: images (and captions) -> the inputs and embeddings
eval.py builds, in a fresh process that can import nothing from this repository; the model card's snippet runs."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_dataset, run_in_fresh_process, tiny_train_args
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmreid.hub.loading import load_checkpoint, load_checkpoint_tokenizer  # noqa: E402
import train  # noqa: E402
from mmreid.data.collate import CAPTION_COLUMNS, MODALITY_COLUMNS, ReIDTransform  # noqa: E402
from mmreid.data.loading import load_reid_dataset  # noqa: E402
from mmreid.evaluation.protocol import extract_features  # noqa: E402
from image_processing_reid import ReIDImageProcessor  # noqa: E402
from transformers import AutoProcessor  # noqa: E402

TINY = ["--num-identities", "4", "--num-instances", "2", "--per-device-eval-batch-size", "8", "--num-train-epochs", "1",
        "--save-strategy", "no"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # Stored at 40x20, so every image is resized to the model's 32x16 (the part most likely to differ).
    return build_tiny_dataset(tmp_path_factory.mktemp("processor-synthetic"), seed=4, num_train_ids=6,
                              num_test_ids=3, images_per_id=4, image_size=(40, 20), captions=True)


@pytest.fixture(scope="module", params=["demo", "next"])
def checkpoint(request, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"ckpt-{request.param}") / "run"
    train.main([*tiny_train_args(request.param), *TINY, "--dataset", dataset, "--output-dir", str(out)])
    return request.param, out


def _query_files(dataset, folder: Path, rows: int):
    """The first ``rows`` query triples as JPEG files (their stored bytes), with camera ids and captions."""
    import datasets

    query = load_reid_dataset(dataset)["query"].select(range(rows))
    raw = query.cast_column("rgb", datasets.Image(decode=False)).cast_column("nir", datasets.Image(decode=False))
    raw = raw.cast_column("tir", datasets.Image(decode=False))
    folder.mkdir()
    files = []
    for i, row in enumerate(raw):
        triple = []
        for m in MODALITY_COLUMNS:
            path = folder / f"{i}_{m}.jpg"
            path.write_bytes(row[m]["bytes"])
            triple.append(str(path))
        files.append(triple)
    captions = [[row[c] for c in CAPTION_COLUMNS] for row in query]
    return query, files, list(query["camid"]), captions


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    for name in {modules!r}:
        sys.modules[name] = None
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor

    spec = json.loads(open({spec!r}).read())
    model = AutoModel.from_pretrained(spec["checkpoint"], trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(spec["checkpoint"], trust_remote_code=True)
    image_processor = AutoImageProcessor.from_pretrained(spec["checkpoint"], trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules"), type(processor)
    assert type(image_processor).__name__ == "ReIDImageProcessor", type(image_processor)
    images = [[Image.open(path) for path in triple] for triple in spec["files"]]
    text = {{"text": spec["captions"]}} if spec["captions"] else {{}}
    missing_tir = [[rgb, nir, None] for rgb, nir, _ in images]
    out = {{}}
    with torch.no_grad():
        for name, triples in (("full", images), ("missing_tir", missing_tir)):
            inputs = processor(images=triples, camera_ids=spec["camids"], **text)
            out[name] = model(**inputs).embeddings.contiguous()
        one = processor(images=images[0], camera_ids=spec["camids"][0], **({{"text": spec["captions"][0]}}
                                                                          if spec["captions"] else {{}}))
        out["single"] = model(**one).embeddings.contiguous()
    out["pixel_values"] = image_processor(missing_tir)["pixel_values"].contiguous()
    save_file(out, spec["output"])
    """
)


def test_processor_embeddings_equal_eval_in_a_fresh_process(checkpoint, dataset, tmp_path):
    """AutoProcessor + AutoModel on JPEG files give eval.py's embeddings (full and TIR missing), for both models."""
    kind, ckpt = checkpoint
    files = {p.name for p in ckpt.iterdir()}
    assert {"image_processing_reid.py", "model.safetensors"} <= files
    assert ("processing_reid.py" in files) == (kind == "next")  # the caption processor, for models that read text
    assert ("processor_config.json" if kind == "next" else "preprocessor_config.json") in files
    query, paths, camids, captions = _query_files(dataset, tmp_path / "jpegs", rows=5)

    model = load_checkpoint(str(ckpt))
    tokenizer = load_checkpoint_tokenizer(str(ckpt), model)
    assert (tokenizer is not None) == (kind == "next")
    full = extract_features(model, query, 2, None, progress=False, tokenizer=tokenizer)
    missing = extract_features(model, query, 2, "t", progress=False, tokenizer=tokenizer)
    expected = {"full": full.get(full.headline), "t": missing.get(full.headline)}

    got = run_in_fresh_process(FRESH_PROCESS, {"checkpoint": str(ckpt), "files": paths, "camids": camids,
                                               "captions": captions if kind == "next" else None}, tmp_path)

    assert (got["full"] - expected["full"]).abs().max().item() < 1e-5
    assert (got["missing_tir"] - expected["t"]).abs().max().item() < 1e-5
    assert (got["single"][0] - expected["full"][0]).abs().max().item() < 1e-5
    assert (expected["full"] - expected["t"]).abs().max().item() > 1e-3  # the missing modality matters
    assert (expected["full"][0] - expected["full"][1]).abs().max().item() > 1e-3  # the rows differ
    assert torch.count_nonzero(got["pixel_values"][:, 2]) == 0  # the missing TIR slot is zeros


PIPELINE_PROCESS = textwrap.dedent(
    """
    import json, os, sys
    for name in {modules!r}:
        sys.modules[name] = None
    import torch
    from safetensors.torch import save_file
    from transformers import pipeline

    spec = json.loads(open({spec!r}).read())
    os.chdir(spec["snippet_dir"])  # rgb.jpg, nir.jpg, tir.jpg: the files the card's snippet opens
    snippet = {{}}
    exec(compile(spec["snippet"], "model card snippet", "exec"), snippet)
    out = {{"snippet_pipeline": snippet["embedding"][None], "snippet_model": snippet["embeddings"]}}

    pipe = pipeline("image-feature-extraction", model=spec["checkpoint"], trust_remote_code=True)
    assert type(pipe).__module__.startswith("transformers_modules"), type(pipe)
    text = {{"text": spec["captions"]}} if spec["captions"] else {{}}
    batch = pipe(spec["files"], camera_ids=spec["camids"], batch_size=2, **text)  # paths, in chunks of 2
    out["full"] = torch.stack([r["embedding"] for r in batch])
    out["weights"] = torch.stack([r["expert_weights"] for r in batch])
    missing = [[rgb, nir, None] for rgb, nir, _ in spec["files"]]
    out["missing_tir"] = torch.stack([r["embedding"] for r in pipe(missing, camera_ids=spec["camids"], **text)])
    one = pipe(spec["files"][0], camera_ids=spec["camids"][0],
               **({{"text": spec["captions"][0]}} if spec["captions"] else {{}}))
    out["single"] = one["embedding"][None]
    try:
        pipeline("image-feature-extraction", model=spec["checkpoint"])
    except ValueError as exc:
        out["refused_without_trust"] = torch.tensor(["trust_remote_code" in str(exc)])
    save_file(out, spec["output"])
    """
)


def _card_snippet(checkpoint: Path) -> str:
    """The Python block of the card's "Use" section, pointed at this checkpoint."""
    text = (checkpoint / "README.md").read_text()
    code = text.split("## Use", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert f'checkpoint = "path/to/{checkpoint.name}"' in code
    return code.replace(f'"path/to/{checkpoint.name}"', repr(str(checkpoint)))


def test_pipeline_and_card_snippet_give_eval_embeddings_in_a_fresh_process(checkpoint, dataset, tmp_path):
    """pipeline("image-feature-extraction", trust_remote_code=True) on JPEG paths: eval.py's embeddings (full, TIR
    missing, batched in chunks, single triple) and the model's expert weights; the card's snippet runs as printed."""

    kind, ckpt = checkpoint
    config = json.loads((ckpt / "config.json").read_text())
    assert config["custom_pipelines"] == {"image-feature-extraction": {
        "impl": "pipeline_reid.ReIDFeatureExtractionPipeline", "pt": ["AutoModel"], "type": "multimodal"}}
    assert (ckpt / "pipeline_reid.py").is_file() and (ckpt / "training_args.json").is_file()
    assert not list(ckpt.rglob("*.bin"))
    query, paths, camids, captions = _query_files(dataset, tmp_path / "jpegs", rows=5)
    model = load_checkpoint(str(ckpt))
    tokenizer = load_checkpoint_tokenizer(str(ckpt), model)
    full = extract_features(model, query, 2, None, progress=False, tokenizer=tokenizer)
    missing = extract_features(model, query, 2, "t", progress=False, tokenizer=tokenizer)
    snippet_dir = tmp_path / "snippet"
    snippet_dir.mkdir()
    for modality, path in zip(MODALITY_COLUMNS, paths[0]):
        (snippet_dir / f"{modality}.jpg").write_bytes(Path(path).read_bytes())
    processor = AutoProcessor.from_pretrained(str(ckpt), trust_remote_code=True)
    images = [Image.open(path) for path in paths[0]]  # the snippet's rgb.jpg, nir.jpg, tir.jpg
    snippet_text = {"text": ["caption of the RGB image", "", ""]} if kind == "next" else {}
    with torch.no_grad():
        snippet_expected = model(**processor(images=images, camera_ids=[0], **snippet_text)).embeddings
        batch_text = {"text": captions} if kind == "next" else {}
        weights_expected = model(**processor(images=[[Image.open(p) for p in t] for t in paths], camera_ids=camids,
                                             **batch_text)).expert_weights

    spec = {"checkpoint": str(ckpt), "files": paths, "camids": camids, "captions": captions if kind == "next" else None,
            "snippet": _card_snippet(ckpt), "snippet_dir": str(snippet_dir)}
    got = run_in_fresh_process(PIPELINE_PROCESS, spec, tmp_path)

    headline = full.get(full.headline)
    assert (got["full"] - headline).abs().max().item() < 1e-5
    assert (got["missing_tir"] - missing.get(full.headline)).abs().max().item() < 1e-5
    assert (got["single"][0] - headline[0]).abs().max().item() < 1e-5
    assert (got["weights"] - weights_expected).abs().max().item() < 1e-5
    assert (got["snippet_pipeline"] - got["snippet_model"]).abs().max().item() < 1e-5
    assert (got["snippet_model"] - snippet_expected).abs().max().item() < 1e-5
    assert (headline[0] - missing.get(full.headline)[0]).abs().max().item() > 1e-3  # the missing modality matters
    assert got["refused_without_trust"].all()


def _jpeg_images(size=(37, 19), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(3)]


def test_image_processor_matches_the_evaluation_transform_for_every_input_type():
    """PIL, HWC uint8 arrays, CHW tensors and grey images all give the eval transform's values."""
    rgb, nir, tir = _jpeg_images()
    grey = nir.convert("L")
    processor = ReIDImageProcessor(size={"height": 32, "width": 16})
    reference = ReIDTransform(image_size=(32, 16))({"rgb": [rgb, rgb], "nir": [grey, grey], "tir": [tir, tir]})
    as_array = np.asarray(rgb)
    as_tensor = torch.from_numpy(np.asarray(tir).copy()).permute(2, 0, 1)
    out = processor([[rgb, grey, tir], [as_array, np.asarray(grey), as_tensor]])
    assert out["pixel_values"].shape == (2, 3, 3, 32, 16) and out["pixel_values"].dtype == torch.float32
    assert (out["pixel_values"] - reference["pixel_values"]).abs().max().item() < 1e-6
    assert out["modality_mask"].all() and "camera_ids" not in out


def test_missing_modalities_are_zero_and_masked():
    rgb, nir, tir = _jpeg_images(seed=1)
    out = ReIDImageProcessor(size={"height": 32, "width": 16})([[None, nir, tir], [rgb, None, None]],
                                                              camera_ids=[3, 0])
    assert out["modality_mask"].tolist() == [[False, True, True], [True, False, False]]
    assert torch.count_nonzero(out["pixel_values"][0, 0]) == 0 and torch.count_nonzero(out["pixel_values"][1, 1:]) == 0
    assert out["pixel_values"][0, 1].abs().sum() > 0
    assert out["camera_ids"].tolist() == [3, 0] and out["camera_ids"].dtype == torch.long


@pytest.mark.parametrize("images, match", [
    ([None, None, None], "every modality of every sample is None"),
    ("photo.jpg", "expected one \\[rgb, nir, tir\\] triple"),
    ([[None, None]], "images\\[0\\]: expected a triple"),
    ([None, None], "images: expected a triple"),
])
def test_bad_images_raise_one_line_errors(images, match):
    with pytest.raises(ValueError, match=match):
        ReIDImageProcessor()(images)


def test_camera_ids_must_be_one_per_sample():
    with pytest.raises(ValueError, match="camera_ids: expected one id per sample \\(1\\)"):
        ReIDImageProcessor(size={"height": 32, "width": 16})(list(_jpeg_images()), camera_ids=[0, 1])


def test_next_processor_captions_match_the_evaluation_encoding_and_check_their_count():
    """Each caption is the tokenizer's own encoding (truncated), right-padded to the longest; None and "" mean
    "no caption" (pad ids, all-zero mask)."""
    from mmreid.data.text import build_caption_tokenizer
    from processing_reid import ReIDProcessor

    tokenizer = build_caption_tokenizer(["a man in a red coat.", "a warm shape.", "he walks fast."])
    processor = ReIDProcessor(ReIDImageProcessor(size={"height": 32, "width": 16}), tokenizer, caption_max_length=6)
    images = [list(_jpeg_images(seed=2)), list(_jpeg_images(seed=3))]
    text = [["A man in a red coat. He walks fast.", None, "a warm shape."], ["", "he walks.", None]]
    out = processor(images=images, text=text)
    assert out["input_ids"].shape == (2, 3, 6)  # the longest caption, truncated to caption_max_length
    for i, triple in enumerate(text):
        for m, caption in enumerate(triple):
            ids = tokenizer(caption, truncation=True, max_length=6)["input_ids"] if caption else []
            padding = [tokenizer.pad_token_id] * (6 - len(ids))
            assert out["input_ids"][i, m].tolist() == ids + padding, (i, m)
            assert out["attention_mask"][i, m].tolist() == [1] * len(ids) + [0] * len(padding), (i, m)
    assert out["input_ids"][0, 0, -1] == tokenizer.eos_token_id  # truncation keeps the end token
    with pytest.raises(ValueError, match="text: 1 caption triple\\(s\\) for 2 image triple\\(s\\)"):
        processor(images=images, text=text[0])


REGISTERED_PIPELINE = textwrap.dedent(
    """
    import json, sys
    from transformers import AutoModel, pipeline
    from transformers.pipelines import PIPELINE_REGISTRY
    from pipeline_reid import TASK, ReIDFeatureExtractionPipeline

    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ReIDFeatureExtractionPipeline, pt_model=AutoModel,
                                        type="multimodal")
    pipe = pipeline(TASK, model=sys.argv[1], pipeline_class=ReIDFeatureExtractionPipeline, trust_remote_code=True)
    pipe.save_pretrained(sys.argv[2])
    print(json.dumps(json.load(open(sys.argv[2] + "/config.json"))["custom_pipelines"]))
    """
)


def test_custom_pipelines_entry_is_what_pipeline_registry_writes(tiny_model, tmp_path):
    """Registering the class with PIPELINE_REGISTRY and saving the pipeline writes the entry train.py records (in a
    subprocess: a registration under this task would replace the built-in pipeline for the rest of the process)."""
    from mmreid.hub.checkpoint_files import attach_pipeline

    attach_pipeline(tiny_model.config)
    tiny_model.save_pretrained(tmp_path / "model")
    ReIDImageProcessor(size={"height": 32, "width": 16}).save_pretrained(tmp_path / "model")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run([sys.executable, "-c", REGISTERED_PIPELINE, str(tmp_path / "model"), str(tmp_path / "saved")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads(proc.stdout.strip().splitlines()[-1])
    assert written == json.loads((tmp_path / "model" / "config.json").read_text())["custom_pipelines"]
    assert (tmp_path / "saved" / "pipeline_reid.py").is_file()

"""The pipeline's odd inputs (issue 29.8): a missing file, a folder, a file that is not an image, a wrong nesting
or length of triples, an entry of the wrong kind; each is one line naming its position, raised before any triple
is embedded. File paths (str or pathlib), base64 strings and PIL images of the same picture embed alike."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from mmreid.hub.backbones import tiny_demo_config
from image_processing_reid import ReIDImageProcessor
from modeling_demo import DeMoModel
from pipeline_reid import ReIDFeatureExtractionPipeline


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    model = DeMoModel(tiny_demo_config(num_labels=6, num_cameras=3, image_size=(32, 16))).eval()
    return ReIDFeatureExtractionPipeline(model=model,
                                         image_processor=ReIDImageProcessor(size={"height": 32, "width": 16}))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real JPEG, a text file named .jpg, an empty .png, a truncated JPEG and a folder."""
    folder = tmp_path_factory.mktemp("images")
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 19, 3), dtype=np.uint8))
    picture.save(folder / "rgb.jpg", quality=95)
    (folder / "notes.jpg").write_text("not a picture")
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.jpg").write_bytes((folder / "rgb.jpg").read_bytes()[:200])
    (folder / "sub").mkdir()
    return folder


@pytest.fixture
def counted_calls(pipe, monkeypatch):
    """How many chunks reached the model: an odd input must be refused before the first."""
    calls = []
    real = pipe._forward
    monkeypatch.setattr(pipe, "_forward", lambda inputs: calls.append(1) or real(inputs))
    return calls


@pytest.mark.parametrize("case, error, message", [
    ("missing", FileNotFoundError, "images[0]: no such file {folder}/nope.jpg"),
    ("folder", IsADirectoryError, "images[0]: {folder}/sub is a folder; expected an image file"),
    ("text", ValueError, "images[0]: {folder}/notes.jpg is not a readable image (cannot identify image file"),
    ("empty", ValueError, "images[0]: {folder}/empty.png is not a readable image (cannot identify image file"),
    ("truncated", ValueError, "images[0]: {folder}/cut.jpg is not a readable image ("),
])
def test_bad_files_are_named_with_their_position(pipe, files, counted_calls, case, error, message):
    source = {"missing": "nope.jpg", "folder": "sub", "text": "notes.jpg", "empty": "empty.png",
              "truncated": "cut.jpg"}[case]
    with pytest.raises(error) as info:
        pipe([str(files / source), str(files / "rgb.jpg"), None])
    text = str(info.value)
    assert text.startswith(message.format(folder=files)) and "\n" not in text and "base64 encoded" not in text, text
    # in a batch: the triple's and the modality's index, and no chunk was embedded before it (batch_size 1)
    with pytest.raises(error, match=r"^images\[2\]\[1\]: "):
        pipe([[str(files / "rgb.jpg"), None, None]] * 2 + [[None, str(files / source), None]], batch_size=1)
    if case in ("missing", "folder"):  # found before any image is read
        assert counted_calls == []


@pytest.mark.parametrize("images, message", [
    ("rgb.jpg", "images: expected one [rgb, nir, tir] triple or a list of triples"),
    ([], "images: got an empty list"),
    (["rgb.jpg", None], "images: expected a [rgb, nir, tir] triple (None for a missing modality), got 2 entries"),
    (["rgb.jpg", None, None, None], "images: expected a [rgb, nir, tir] triple (None for a missing modality), got 4"),
    ([[["rgb.jpg", None, None]]], "images[0]: expected a [rgb, nir, tir] triple (None for a missing modality), got "
                                  "1 entry (nested one level too deep?)"),
    ([["rgb.jpg", None, None], ["rgb.jpg"]], "images[1]: expected a [rgb, nir, tir] triple"),
    ([["rgb.jpg", None, None], "rgb.jpg"], "images[1]: expected a [rgb, nir, tir] triple, got str"),
    ([["rgb.jpg", [None], None], ["rgb.jpg", None, None]], "images[0][1]: expected a PIL image"),
    ([7, None, None], "images[0]: expected a PIL image, a NumPy array or torch tensor, an image file path, URL or "
                      "base64 string, or None; got int"),
])
def test_wrong_nesting_length_or_kind_is_one_line(pipe, files, counted_calls, images, message, monkeypatch):
    monkeypatch.chdir(files)
    with pytest.raises(ValueError) as info:
        pipe(images)
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)
    assert counted_calls == []


def test_paths_base64_and_pil_images_embed_alike(pipe, files):
    path = files / "rgb.jpg"
    encoded = base64.b64encode(path.read_bytes()).decode()
    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    results = [pipe([source, None, source]) for source in (str(path), path, encoded, picture)]
    for result in results[1:]:
        assert torch.equal(result["embedding"], results[0]["embedding"])
    buffer = io.BytesIO()
    Image.new("RGB", (19, 37), (255, 0, 0)).save(buffer, format="PNG")
    other = pipe([base64.b64encode(buffer.getvalue()).decode(), None, None])
    assert (other["embedding"] - results[0]["embedding"]).abs().max() > 1e-3  # the base64 image was really read


@pytest.fixture(scope="module")
def next_pipe():
    from mmreid.data.text import build_caption_tokenizer
    from mmreid.hub.backbones import tiny_next_config
    from modeling_next import NextModel
    from processing_reid import ReIDProcessor

    tokenizer = build_caption_tokenizer(["a man in a red coat.", "a warm shape."], model_max_length=40)
    torch.manual_seed(0)
    model = NextModel(tiny_next_config(tokenizer, num_labels=6, num_cameras=3, image_size=(32, 16))).eval()
    processor = ReIDProcessor(ReIDImageProcessor(size={"height": 32, "width": 16}), tokenizer)
    return ReIDFeatureExtractionPipeline(model=model, processor=processor, image_processor=processor.image_processor)


@pytest.mark.parametrize("batch, kwargs, message", [
    (False, {"text": "a man in a red coat."}, "text: expected one [rgb, nir, tir] caption triple ('' or None where "
                                              "missing) for the one image triple, got str"),
    (False, {"text": [["a man.", None, ""]]}, "text: expected one [rgb, nir, tir] caption triple"),
    (True, {"text": ["a man.", None, ""]}, "text: 3 value(s) for 2 triple(s); give one per sample"),
    (True, {"camera_ids": 1}, "camera_ids: expected a list with one entry per triple (2), got int"),
])
def test_captions_and_cameras_per_sample_are_one_line(next_pipe, files, batch, kwargs, message):
    triple = [str(files / "rgb.jpg"), None, str(files / "rgb.jpg")]
    with pytest.raises(ValueError) as info:
        next_pipe([triple, triple] if batch else triple, **kwargs)
    assert str(info.value).startswith(message), str(info.value)
    assert next_pipe(triple, text=["a man in a red coat.", None, ""], camera_ids=1)["embedding"].shape[0] > 0

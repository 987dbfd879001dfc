"""IDEA exported and compiled: a tiny IDEA checkpoint exported by data_scripts/export_onnx.py reproduces PyTorch in
onnxruntime at another batch size and caption length than the export's, and `torch.compile(fullgraph=True)` gives one
graph equal to eager, with captions and without, in training and evaluation."""

import contextlib
import io

import pytest
import torch
from conftest import load_data_script, random_triples
from test_compile import compiled_matches_eager

from configuration_idea import IdeaConfig
from mmreid.data.text import build_caption_tokenizer, tokenize_captions
from mmreid.hub.backbones import tiny_text_config, tiny_vision_config
from modeling_idea import IdeaModel

CAPTIONS = [
    "An image of a X person in the visible spectrum: an adult male seen from the side. He is carrying a bag.",
    "An image of a X person in the near infrared spectrum: a teenager seen from the front.",
    "An image of a X person in the thermal infrared spectrum: an adult female seen from the back.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_caption_tokenizer(CAPTIONS, model_max_length=40)


def tiny_idea(tokenizer) -> IdeaModel:
    torch.manual_seed(0)
    config = IdeaConfig(vision_config=tiny_vision_config("clip"), text_config=tiny_text_config(tokenizer),
                        image_size=(32, 16), num_labels=6, num_cameras=3, num_text_prompts=1, inverse_dropout=0.0,
                        cda_kernel_size=1, cda_stride=1)
    model = IdeaModel(config)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():  # trained-looking BN statistics
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_captions", [True, False], ids=["captions", "no_captions"])
def test_idea_compiles_to_one_graph(tokenizer, with_captions, training):
    model = tiny_idea(tokenizer)
    inputs = {"pixel_values": random_triples(4), "camera_ids": torch.tensor([0, 1, 2, 0]),
              "modality_mask": torch.tensor([[True, True, True], [True, False, True], [False, True, True],
                                             [True, True, True]])}
    if with_captions:
        inputs.update(tokenize_captions(tokenizer, [CAPTIONS, CAPTIONS[::-1], CAPTIONS[1:] + CAPTIONS[:1], CAPTIONS]))
    compiled_matches_eager(model, inputs, "aot_eager", training, atol=1e-5)


def test_onnx_export_matches_pytorch(tokenizer, tmp_path):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = tiny_idea(tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    output = tmp_path / "idea.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert load_data_script("export_onnx").main(["--model", str(tmp_path / "model"), "--output", str(output)]) == 0
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values", "modality_mask", "camera_ids", "input_ids",
                                                       "attention_mask"]
    names = [o.name for o in session.get_outputs()]
    assert names == ["embeddings"] + [f"features_{row}" for row in model.config.inference_feature_choices]
    for batch, triples in ((3, [CAPTIONS, CAPTIONS[::-1], [CAPTIONS[0][:60]] * 3]), (1, [[c[:70] for c in CAPTIONS]])):
        inputs = dict(pixel_values=random_triples(batch, seed=30 + batch),
                      modality_mask=torch.tensor([[True, False, True], [True] * 3, [False, True, True]][:batch]),
                      camera_ids=torch.tensor([2, 0, 1])[:batch], **tokenize_captions(tokenizer, triples))
        with torch.no_grad():
            expected = model(**inputs)
        values = dict(zip(names, session.run(None, {k: v.numpy() for k, v in inputs.items()})))
        diff = float(abs(values["embeddings"] - expected.embeddings.numpy()).max())
        assert diff < 1e-4, diff
        for row, value in expected.feature_sets.items():
            assert float(abs(values[f"features_{row}"] - value.numpy()).max()) < 1e-4, row

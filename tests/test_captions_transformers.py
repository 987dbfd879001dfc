"""The transformers backend end to end on a tiny randomly initialised LLaVA built here.

No Hub access exists, so the model folder is made from configs: a byte-level BPE tokenizer
trained on a few digits and letters, a PIL CLIP image processor, a one-layer CLIP vision tower
and a one-layer Llama.  Its answers are gibberish; the run must end with every attribute
unknown, captions that say so, and files the dataset builder attaches.
"""

import io
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmreid.captioning.store import read_attributes
from mmreid.data.builder import DatasetBuildWarning, build_dataset
from mmreid.data.synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]

ALL_UNKNOWN = {
    "RGB": "A person of unknown age and gender seen from an unknown viewpoint at an unknown time of day in unknown "
           "lighting. The person is wearing an upper garment of unknown color and type with a lower garment of "
           "unknown color and type, paired with footwear of unknown type. Hair of unknown length and style and it "
           "is unknown whether the person wears glasses. It is unknown whether the person is carrying anything. "
           "The image clarity is unknown.",
    "NI": "A person of unknown age and gender seen from an unknown viewpoint at an unknown time of day in unknown "
          "lighting. The person is wearing an upper garment of unknown type with a lower garment of unknown type, "
          "paired with footwear of unknown type. Hair of unknown length and style and it is unknown whether the "
          "person wears glasses. It is unknown whether the person is carrying anything. The image clarity is "
          "unknown.",
    "TI": "A person of unknown age and gender seen from an unknown viewpoint. The person is wearing an upper garment "
          "of unknown type with a lower garment of unknown type, paired with footwear of unknown type. Hair of "
          "unknown length and style and it is unknown whether the person wears glasses. It is unknown whether the "
          "person is carrying anything. The image clarity is unknown.",
}


def build_tiny_llava(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["0123456789 qwxz qzxw 9876543210"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}"
        "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: "
        "{% endif %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", chat_template=chat_template,
        num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=16, patch_size=8, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                                bos_token_id=1, eos_token_id=2, pad_token_id=3),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava") / "model")


@pytest.fixture(scope="module")
def tiny_text_llm(tiny_vlm, tmp_path_factory):
    """A one-layer Llama with the same tokenizer and chat template: a text-only rewrite model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama") / "model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm)
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2,
                                 pad_token_id=3)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text((tiny_vlm / "chat_template.jinja").read_text())
    return folder


def test_gibberish_from_a_tiny_random_model_ends_as_all_unknown(tiny_vlm, tmp_path, capsys):
    if str(REPO / "data_scripts") not in sys.path:
        sys.path.insert(0, str(REPO / "data_scripts"))
    import generate_captions

    raw = make_synthetic("RGBNT201", tmp_path / "raw", num_train_ids=2, num_test_ids=1, images_per_id=4,
                         image_size=(32, 16))
    out = tmp_path / "captions"
    code = generate_captions.main(["--dataset", str(raw), "--backend", "transformers", "--model", str(tiny_vlm),
                                   "--output", str(out), "--batch-size", "4", "--max-new-tokens", "12",
                                   "--save-every", "4", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "this run: 12 new item(s) (train 8, test 4), 0 already captioned, 0 failed; 36 request(s)" in printed
    assert next(line for line in printed.splitlines() if line.startswith("overall")).split()[-1] == "100.00"

    train = sorted(p.name for p in (raw / "train_171" / "RGB").iterdir())
    for tag, caption in ALL_UNKNOWN.items():
        entries = json.loads((out / f"train_{tag}.json").read_text())
        assert entries == [{"item": name, "description": caption} for name in train]
    records = read_attributes(out, "train")
    answers = [records[n]["answers"][m][str(tiny_vlm)] for n in train for m in ("rgb", "nir", "tir")]
    assert all(isinstance(a, str) and a.strip() for a in answers)  # the model did answer, in gibberish
    assert all(v is None for v in records[train[0]]["attributes"]["objects"].values())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dsd = build_dataset("RGBNT201", raw, captions_dir=out, cache_dir=tmp_path / "cache")
    assert not [w for w in caught if issubclass(w.category, DatasetBuildWarning)]
    assert set(dsd["gallery"]["caption_nir"]) == {ALL_UNKNOWN["NI"]}
    assert set(dsd["train"]["caption_tir"]) == {ALL_UNKNOWN["TI"]}


def test_transformers_backend_batches_and_text_only_requests(tiny_vlm):
    from mmreid.captioning.backend_transformers import TransformersBackend
    from mmreid.captioning.backends import Request

    buf = io.BytesIO()
    Image.new("RGB", (16, 32), (200, 30, 30)).save(buf, format="JPEG")
    short, long = Request("a", buf.getvalue()), Request("a much longer prompt " * 8, buf.getvalue())
    backend = TransformersBackend(batch_size=2, max_new_tokens=6, device="cpu")
    alone = backend.generate(str(tiny_vlm), [short])
    batched = backend.generate(str(tiny_vlm), [short, long, short])
    assert len(batched) == 3 and all(isinstance(a, str) and a for a in batched)
    assert batched[0] == batched[2] == alone[0]  # left padding: batching does not change an answer
    text = backend.generate(str(tiny_vlm), [Request("rewrite this")])  # a VLM answers text-only requests too
    assert len(text) == 1 and isinstance(text[0], str)


def test_rewrite_model_is_not_asked_when_nothing_is_known(tiny_vlm, tiny_text_llm, tmp_path, capsys):
    if str(REPO / "data_scripts") not in sys.path:
        sys.path.insert(0, str(REPO / "data_scripts"))
    import generate_captions

    raw = make_synthetic("RGBNT201", tmp_path / "raw", num_train_ids=1, num_test_ids=1, images_per_id=4,
                         image_size=(32, 16))
    out = tmp_path / "captions"
    code = generate_captions.main(["--dataset", str(raw), "--backend", "transformers", "--model", str(tiny_vlm),
                                   "--rewrite-model", str(tiny_text_llm), "--output", str(out), "--splits", "test",
                                   "--max-new-tokens", "8", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "0 failed; 12 request(s)" in printed  # 4 items x 3 images, no rewrite request
    assert "rewrites: 0 kept, 12 replaced by the template" in printed
    entries = json.loads((out / "test_TI.json").read_text())
    assert {e["description"] for e in entries} == {ALL_UNKNOWN["TI"]}
    reasons = {r["rewrite"][m]["reason"] for r in read_attributes(out, "test").values() for m in ("rgb", "nir", "tir")}
    assert reasons == {"no known attribute"}


def test_text_generation_backend_for_a_text_only_rewrite_model(tiny_text_llm):
    from mmreid.captioning.backend_transformers import TransformersBackend
    from mmreid.captioning.backends import Request

    backend = TransformersBackend(batch_size=2, max_new_tokens=5, device="cpu")
    alone = backend.generate(str(tiny_text_llm), [Request("hello")])
    batched = backend.generate(str(tiny_text_llm), [Request("hello"), Request("a much longer prompt " * 6)])
    assert ("text-generation" in {task for _, task in backend._pipes})
    assert len(batched) == 2 and isinstance(alone[0], str) and alone[0] and batched[0] == alone[0]

"""NextModel: outputs, captions (shared, per expert, empty, dropped), frozen text tower, ablations, bad input,
remote-code loading with the tokenizer, CLIP towers, and the caption helpers of mmreid.text."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import random_triples
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

from configuration_next import NextConfig
from mmreid.hub.backbones import tiny_demo_config, tiny_next_config, tiny_text_config, tiny_vision_config
from mmreid.data.text import build_caption_tokenizer, sample_sentences, split_sentences, tokenize_captions
from modeling_demo import DeMoModel
from modeling_next import NextModel

CAPTIONS = [
    "An adult male seen from the side during nighttime in dim lighting. He is wearing a white t-shirt with black "
    "shorts. Short hair and he is not wearing glasses. He is carrying a backpack. The image appears blurry.",
    "A teenager male seen from the front. He is wearing a t-shirt with shorts. He is carrying a bag.",
    "An adult female seen from the back in bright lighting. She is wearing a red coat with blue jeans. Long hair "
    "and she is wearing glasses. She is carrying nothing. The image appears clear.",
]
RGB_A, RGB_B = CAPTIONS[0], CAPTIONS[2]
NIR, TIR = CAPTIONS[1], "An adult male seen from the side. He is carrying a backpack."


@pytest.fixture(scope="module")
def tokenizer():
    return build_caption_tokenizer(CAPTIONS, model_max_length=48)


def make_model(tokenizer, seed=0, **overrides):
    torch.manual_seed(seed)
    return NextModel(tiny_next_config(tokenizer, num_labels=6, num_cameras=3, **overrides)).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


def captions(tokenizer, *triples):
    return tokenize_captions(tokenizer, [list(t) for t in triples])


def run(model, captions_dict=None, batch=2, seed=0, **kwargs):
    cams = torch.arange(batch) % 3
    with torch.no_grad():
        return model(random_triples(batch, seed=seed), camera_ids=cams, **(captions_dict or {}), **kwargs)


# ---------------------------------------------------------------------------------------------------------- outputs


ROWS = ["cls", "semantic", "structure", "final", "all"]


def test_output_fields_shapes_and_keys(model, tokenizer):
    config = model.config
    C, n_s, n_c, k = config.feature_dim, config.num_semantic_experts, config.num_structure_experts, 2
    out = run(model, captions(tokenizer, (RGB_A, NIR, TIR), (RGB_B, "", TIR)))
    # Defaults: only the final MGFA feature is supervised and ranked (the figure's one ID + triplet box).
    assert list(out.logits) == list(out.features) == ["final"]
    assert out.features["final"].shape == (2, 6 * C) and out.logits["final"].shape == (2, 6)
    rows = out.feature_sets
    assert list(rows) == ROWS
    assert [rows[r].shape[1] for r in ROWS] == [3 * C, 3 * C, 3 * C, 6 * C, 9 * C]
    assert torch.equal(out.embeddings, out.features["final"]) and torch.equal(rows["final"], out.embeddings)
    assert torch.equal(rows["final"], torch.cat([rows["semantic"], rows["structure"]], -1))
    assert torch.equal(rows["all"], torch.cat([rows["cls"], rows["final"]], dim=-1))
    # "cls" is the concatenation of the tower's three class tokens (RGB, NIR, TIR).
    with torch.no_grad():
        tower = model.vision_tower(random_triples(2).flatten(0, 1), torch.tensor([0, 1]).repeat_interleave(3))
    torch.testing.assert_close(rows["cls"], tower[:, 0].reshape(2, 3 * C))
    assert out.expert_weights.shape == (2, 1, n_c)
    torch.testing.assert_close(out.expert_weights.sum(-1), torch.ones(2, 1))
    assert bool((out.expert_weights > 0).all())
    assert out.semantic_expert_features.shape == (2, n_s, C) and out.structure_expert_features.shape == (2, n_c, C)
    assert out.selected_patches.shape == (2, n_s, 3, k)
    rows, cols = config.patch_grid
    assert 0 <= out.selected_patches.min() and out.selected_patches.max() < rows * cols
    # k distinct patches per expert and modality
    assert all(len(set(row.tolist())) == k for row in out.selected_patches.reshape(-1, k))


def test_supervised_heads_and_inference_features_all_give_the_earlier_layout(tokenizer):
    """supervised_heads="all": a BN-neck, classifier and loss on cls, semantic, structure and final;
    inference_features="all": concat(cls, final) is ranked. Same weights otherwise: the rows do not change."""
    default, earlier = make_model(tokenizer), make_model(tokenizer, supervised_heads="all", inference_features="all")
    C = default.config.feature_dim
    assert sorted(earlier.bnnecks) == sorted(["cls", "semantic", "structure", "final"]) and list(default.bnnecks) == ["final"]
    earlier.load_state_dict(default.state_dict(), strict=False)
    caps = captions(tokenizer, (RGB_A, NIR, TIR), (RGB_B, "", TIR))
    a, b = run(default, caps), run(earlier, caps)
    assert list(b.logits) == list(b.features) == ["cls", "semantic", "structure", "final"]
    assert [b.features[h].shape[1] for h in b.features] == [3 * C, 3 * C, 3 * C, 6 * C]
    assert b.embeddings.shape == (2, 9 * C) and torch.equal(b.embeddings, b.feature_sets["all"])
    for row in ROWS:
        torch.testing.assert_close(a.feature_sets[row], b.feature_sets[row])
    torch.testing.assert_close(a.logits["final"], b.logits["final"])
    with pytest.raises(ValueError, match="inference_features must be one of"):
        tiny_next_config(tokenizer, inference_features="moe")
    with pytest.raises(ValueError, match="supervised_heads must be one of"):
        tiny_next_config(tokenizer, supervised_heads="cls")


def test_eval_is_deterministic_and_batch_size_one_works(model, tokenizer):
    caps = captions(tokenizer, (RGB_A, NIR, TIR))
    first, second = run(model, caps, batch=1).embeddings, run(model, caps, batch=1).embeddings
    assert first.shape == (1, 6 * model.config.feature_dim)
    assert torch.equal(first, second)


# ---------------------------------------------------------------------------------------------------------- captions


def test_caption_changes_only_the_semantic_branch(model, tokenizer):
    a = run(model, captions(tokenizer, (RGB_A, NIR, TIR), (RGB_A, NIR, TIR)))
    b = run(model, captions(tokenizer, (RGB_B, NIR, TIR), (RGB_A, NIR, TIR)))
    assert not torch.allclose(a.embeddings[0], b.embeddings[0])
    assert not torch.allclose(a.feature_sets["semantic"][0], b.feature_sets["semantic"][0])
    # Sample 1's captions did not change, nor do the image-only branches of sample 0.
    torch.testing.assert_close(a.embeddings[1], b.embeddings[1])
    torch.testing.assert_close(a.feature_sets["cls"], b.feature_sets["cls"])
    torch.testing.assert_close(a.feature_sets["structure"], b.feature_sets["structure"])


def test_without_text_captions_are_ignored_and_no_text_tower_is_built(tokenizer):
    model = make_model(tokenizer, use_text=False)
    assert not hasattr(model, "text_tower")
    assert not any(name.startswith("text_tower.") for name in model.state_dict())
    a = run(model, captions(tokenizer, (RGB_A, NIR, TIR), (RGB_A, NIR, TIR)))
    b = run(model, captions(tokenizer, (RGB_B, "", "x"), (RGB_B, TIR, NIR)))
    assert torch.equal(a.embeddings, b.embeddings)
    assert torch.equal(a.embeddings, run(model).embeddings)
    assert list(a.features) == ["final"] and list(a.feature_sets) == ROWS


def test_runs_without_captions_and_empty_captions_mean_no_text(model, tokenizer):
    none = run(model)
    assert none.embeddings.shape == (2, 6 * model.config.feature_dim) and torch.isfinite(none.embeddings).all()
    empty = captions(tokenizer, ("", "", ""), ("", "", ""))
    assert int(empty["attention_mask"].sum()) == 0
    torch.testing.assert_close(run(model, empty).embeddings, none.embeddings)
    # An empty caption of one modality is the same as no caption for it, whatever its (padded) token ids.
    one = captions(tokenizer, (RGB_A, "", TIR), (RGB_A, "", TIR))
    noisy = {k: v.clone() for k, v in one.items()}
    noisy["input_ids"][:, 1] = tokenizer.convert_tokens_to_ids("male")
    torch.testing.assert_close(run(model, one).embeddings, run(model, noisy).embeddings)
    assert not torch.allclose(run(model, one).embeddings, none.embeddings)


def test_per_expert_captions(model, tokenizer):
    n_s = model.config.num_semantic_experts
    shared = [(RGB_A, NIR, TIR), (RGB_B, NIR, "")]
    per_modality = run(model, captions(tokenizer, *shared))
    same_for_all = tokenize_captions(tokenizer, [[list(t)] * n_s for t in shared])
    assert same_for_all["input_ids"].shape[:3] == (2, n_s, 3)
    torch.testing.assert_close(run(model, same_for_all).embeddings, per_modality.embeddings)

    # Give expert 0 of sample 0 another RGB caption: only that expert's output changes.
    triples = [[list(t)] * n_s for t in shared]
    triples[0][0] = [RGB_B, NIR, TIR]
    changed = run(model, tokenize_captions(tokenizer, triples))
    s_old, s_new = per_modality.semantic_expert_features, changed.semantic_expert_features
    assert not torch.allclose(s_old[0, 0], s_new[0, 0])
    torch.testing.assert_close(s_old[0, 1:], s_new[0, 1:])
    torch.testing.assert_close(s_old[1], s_new[1])


def test_missing_modality_drops_its_image_and_caption(model, tokenizer):
    mask = torch.tensor([[True, False, True], [True, True, True]])
    base = run(model, captions(tokenizer, (RGB_A, NIR, TIR), (RGB_B, NIR, TIR)), modality_mask=mask)
    other_nir = run(model, captions(tokenizer, (RGB_A, RGB_B, TIR), (RGB_B, NIR, TIR)), modality_mask=mask)
    torch.testing.assert_close(base.embeddings, other_nir.embeddings)
    other_rgb = run(model, captions(tokenizer, (RGB_B, NIR, TIR), (RGB_B, NIR, TIR)), modality_mask=mask)
    assert not torch.allclose(base.embeddings[0], other_rgb.embeddings[0])
    # Same as zeroing the NIR image and emptying its caption by hand.
    pixels = random_triples(2)
    pixels[0, 1] = 0
    with torch.no_grad():
        by_hand = model(pixels, torch.tensor([0, 1]), **captions(tokenizer, (RGB_A, "", TIR), (RGB_B, NIR, TIR)))
    torch.testing.assert_close(base.embeddings, by_hand.embeddings)


# ------------------------------------------------------------------------------------------------- frozen text tower


def test_text_tower_is_frozen_and_untouched_by_training(tokenizer, tmp_path):
    model = make_model(tokenizer).train()
    assert not model.text_tower.training
    before = {k: v.clone() for k, v in model.text_tower.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    caps = captions(tokenizer, *[(RGB_A, NIR, TIR), (RGB_B, NIR, ""), ("", "", TIR), (RGB_A, RGB_B, NIR)])
    out = model(random_triples(4, seed=3), camera_ids=torch.tensor([0, 1, 2, 0]), **caps)
    labels = torch.tensor([0, 1, 2, 3])
    loss = sum(F.cross_entropy(logits, labels) for logits in out.logits.values())
    (loss + sum(feature.pow(2).mean() for feature in out.features.values())).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.text_tower.parameters())
    assert model.vision_tower.layers[0].mlp.fc1.weight.grad.abs().sum() > 0
    optimizer.step()
    for name, tensor in model.text_tower.state_dict().items():
        assert torch.equal(tensor, before[name]), name

    # Frozen again after a reload (the loader re-creates parameters) and after train().
    model.save_pretrained(tmp_path)
    loaded = NextModel.from_pretrained(tmp_path).train()
    frozen = sorted(name for name, p in loaded.named_parameters() if not p.requires_grad)
    assert frozen == sorted(
        [f"text_tower.{n}" for n, _ in loaded.text_tower.named_parameters()]
        + [f"bnnecks.{h}.bias" for h in loaded.config.head_names]
    )
    assert not loaded.text_tower.training and loaded.vision_tower.training


# ------------------------------------------------------------------------------------ the base DeMo and NEXT share


@pytest.mark.parametrize(
    "bad",
    [
        dict(camera_ids=torch.tensor([0, 3])),
        dict(camera_ids=torch.tensor([0.0, 1.0])),
        dict(camera_ids=torch.tensor([1])),
        dict(modality_mask=torch.ones(2, 2, dtype=torch.bool)),
        dict(pixel_values=torch.zeros(2, 3, 3, 64, 32)),
    ],
)
def test_both_models_reject_bad_image_inputs_with_the_same_error(model, bad):
    demo = DeMoModel(tiny_demo_config(num_labels=6, num_cameras=3)).eval()
    errors = []
    for candidate in (demo, model):
        with pytest.raises((TypeError, ValueError)) as info:
            candidate(**{"pixel_values": random_triples(2), **bad})
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]


def test_train_keeps_both_models_frozen_parts_frozen_after_from_pretrained(tmp_path, model):
    for name, source in (("demo", DeMoModel(tiny_demo_config())), ("next", model)):
        source.save_pretrained(tmp_path / name)
        loaded = type(source).from_pretrained(tmp_path / name).train()
        assert loaded.vision_tower.training and all(not bnneck.bias.requires_grad for bnneck in loaded.bnnecks.values())
        assert all(p.requires_grad for n, p in loaded.named_parameters() if not n.startswith(("bnnecks", "text_tower")))
    assert not loaded.text_tower.training and not any(p.requires_grad for p in loaded.text_tower.parameters())


# ---------------------------------------------------------------------------------------------------------- ablations


ALL_HEADS = dict(supervised_heads="all", inference_features="all")


@pytest.mark.parametrize(
    "switches, heads",
    [
        (dict(), ["final"]),
        (dict(use_tmse=False), ["final"]),
        (dict(use_csse=False), ["final"]),
        (dict(use_text=False), ["final"]),
        (dict(use_tmse=False, use_csse=False), ["final"]),
        (dict(ALL_HEADS), ["cls", "semantic", "structure", "final"]),
        (dict(ALL_HEADS, use_tmse=False), ["cls", "structure"]),
        (dict(ALL_HEADS, use_csse=False), ["cls", "semantic"]),
        (dict(ALL_HEADS, use_text=False), ["cls", "semantic", "structure", "final"]),
        (dict(ALL_HEADS, use_tmse=False, use_csse=False), ["cls"]),
        (dict(semantic_expert="attention_pool", saliency="cls_dot"), ["final"]),
    ],
)
def test_ablations_train_with_the_expected_heads(tokenizer, switches, heads):
    model = make_model(tokenizer, **switches).train()
    C = model.config.feature_dim
    # Sample 2 has no captions at all, so the no-text embeddings are used (and trained) as well.
    caps = captions(tokenizer, (RGB_A, NIR, TIR), (RGB_B, "", TIR), ("", "", ""), (RGB_A, NIR, ""))
    out = model(random_triples(4, seed=1), camera_ids=torch.tensor([0, 1, 2, 0]), **caps)
    assert list(out.logits) == list(out.features) == heads
    branches = len(model.config.branch_names)
    final = 3 * C * max(1, branches)  # the MGFA output; the class tokens without any expert branch
    assert out.features.get("final", out.feature_sets["final"]).shape == (4, final)
    assert out.embeddings.shape == (4, final if model.config.inference_features == "final" else 3 * C * (1 + branches))
    assert (out.expert_weights is None) == (not model.config.use_csse)
    assert (out.semantic_expert_features is None) == (not model.config.use_tmse)
    assert hasattr(model, "text_tower") == (model.config.use_tmse and model.config.use_text)
    labels = torch.tensor([0, 1, 2, 3])
    loss = sum(F.cross_entropy(logits, labels) for logits in out.logits.values())
    (loss + sum(feature.pow(2).mean() for feature in out.features.values())).backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    without_grad = [name for name, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert without_grad == []


# --------------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make_inputs, error, match",
    [
        (lambda c: dict(input_ids=c["input_ids"].float()), TypeError, "input_ids must be an integer tensor"),
        (lambda c: dict(input_ids=c["input_ids"].tolist()), TypeError, "input_ids must be a torch.Tensor"),
        (lambda c: dict(input_ids=c["input_ids"][:, :2]), ValueError, r"input_ids must have shape \(2, 3, length\)"),
        (lambda c: dict(input_ids=c["input_ids"][:1]), ValueError, "input_ids must have shape"),
        (lambda c: dict(input_ids=c["input_ids"][:, None].expand(-1, 4, -1, -1)), ValueError, r"\(2, 3, 3, length\)"),
        (lambda c: dict(input_ids=c["input_ids"][0, 0]), ValueError, "input_ids must have shape"),
        (lambda c: dict(input_ids=c["input_ids"], attention_mask=c["attention_mask"][..., :-1]), ValueError,
         "attention_mask must have the shape of input_ids"),
        (lambda c: dict(attention_mask=c["attention_mask"]), ValueError, "attention_mask was given without input_ids"),
        (lambda c: dict(input_ids=c["input_ids"], attention_mask=c["attention_mask"].float()), TypeError,
         "attention_mask must be an integer tensor"),
        (lambda c: dict(input_ids=torch.full((2, 3, 60), 5), attention_mask=torch.ones(2, 3, 60, dtype=torch.long)),
         ValueError, "takes at most 48"),
        (lambda c: dict(input_ids=c["input_ids"] + 1000, attention_mask=c["attention_mask"]), ValueError,
         "token ids in"),
        (lambda c: dict(input_ids=c["input_ids"].clamp(max=3), attention_mask=c["attention_mask"]), ValueError,
         "must contain eos_token_id"),
        (lambda c: dict(labels=torch.tensor([0, 1])), TypeError, "labels"),
        (lambda c: dict(camera_ids=torch.tensor([0.0, 1.0])), TypeError, "camera_ids must be an integer"),
    ],
)
def test_forward_rejects_inputs_it_cannot_use(model, tokenizer, make_inputs, error, match):
    caps = captions(tokenizer, (RGB_A, NIR, TIR), (RGB_B, NIR, TIR))
    with pytest.raises(error, match=match):
        model(random_triples(2), **make_inputs(caps))


def test_bad_pixel_values_raise_value_error(model):
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(torch.zeros(2, 3, 32, 16))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(text_overrides=dict(projection_dim=32)), "must equal text_config.projection_dim=32"),
        (dict(tokens_per_expert=9), "tokens_per_expert=9 exceeds the 8 patches"),
        (dict(num_semantic_experts=0), "num_semantic_experts must be a positive integer"),
        (dict(structure_slots_per_expert=1.5), "structure_slots_per_expert must be a positive integer"),
        (dict(head_init="xavier"), "head_init must be one of"),
        (dict(semantic_expert="mlp"), "semantic_expert must be one of"),
        (dict(saliency="dot"), "saliency must be one of"),
        (dict(semantic_expert_dropout=1.0), r"semantic_expert_dropout must be a probability in \[0, 1\)"),
        (dict(caption_sentences_per_expert=0), "caption_sentences_per_expert must be a positive integer"),
        (dict(image_size=(30, 16)), "multiples of patch_size"),
        (dict(num_cameras=-1), "num_cameras must be >= 0"),
        (dict(backbone_type="vit"), "backbone_type='vit' does not match vision_config.model_type='clip_vision_model'"),
    ],
)
def test_bad_config_raises_value_error(tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_next_config(tokenizer, **kwargs)


def test_config_rejects_towers_it_cannot_use(tokenizer):
    # Any image tower of the family; a text tower of another checkpoint only through the learned text bridge.
    with pytest.raises(ValueError, match="image feature size 32 must equal text_config.projection_dim=64"):
        NextConfig(vision_config=tiny_vision_config("vit"), text_config=tiny_text_config(tokenizer))
    bridged = NextConfig(vision_config=tiny_vision_config("vit"), text_config=tiny_text_config(tokenizer),
                         text_bridge=True)
    assert bridged.feature_dim == 32 and bridged.text_feature_dim == 64
    with pytest.raises(ValueError, match="text_config must be a 'clip_text_model' or .*'siglip2_text_model' config"):
        NextConfig(vision_config=tiny_vision_config("clip"), text_config=tiny_vision_config("clip"))


def test_config_round_trips_through_json(tmp_path, tokenizer):
    config = tiny_next_config(tokenizer, use_csse=False, tokens_per_expert=3, caption_sentences_per_expert=1,
                              semantic_expert="attention_pool", saliency="cls_dot", semantic_expert_dropout=0.0,
                              supervised_heads="all", inference_features="all")
    config.save_pretrained(tmp_path)
    loaded = NextConfig.from_pretrained(tmp_path)
    assert loaded.image_size == (32, 16) and loaded.patch_grid == (4, 2) and loaded.feature_dim == 64
    assert loaded.text_config.to_dict() == config.text_config.to_dict()
    assert loaded.vision_config.to_dict() == config.vision_config.to_dict()
    assert loaded.text_config.vocab_size == len(tokenizer) and loaded.text_config.eos_token_id == tokenizer.eos_token_id
    assert (loaded.use_csse, loaded.tokens_per_expert, loaded.caption_sentences_per_expert) == (False, 3, 1)
    assert (loaded.semantic_expert, loaded.saliency, loaded.semantic_expert_dropout) == ("attention_pool", "cls_dot", 0.0)
    assert (loaded.supervised_heads, loaded.inference_features) == ("all", "all")


def test_default_config_has_clip_b16_shapes():
    config = NextConfig()
    assert config.feature_dim == config.text_config.projection_dim == 512
    assert config.vision_config.hidden_size == 768 and config.text_config.hidden_size == 512
    assert config.text_config.vocab_size == 49408 and config.text_config.max_position_embeddings == 77
    assert config.patch_grid == (16, 8) and config.num_labels == 171
    counts = ("num_semantic_experts", "num_structure_experts", "tokens_per_expert", "structure_slots_per_expert",
              "caption_sentences_per_expert")
    assert [getattr(config, name) for name in counts] == [3, 3, 16, 4, None]
    forms = ("semantic_expert", "semantic_expert_dropout", "saliency", "inference_features", "supervised_heads")
    assert [getattr(config, name) for name in forms] == ["token_mlp", 0.1, "router", "final", "final"]


def test_from_backbone_config_takes_both_halves_of_a_clip_config(tokenizer):
    # Each half's own projection_dim is not the one CLIPModel projects with: the parent's is taken.
    text = tiny_text_config(tokenizer, projection_dim=48).to_dict()
    clip = CLIPConfig(text_config=text, vision_config=tiny_vision_config("clip", projection_dim=48).to_dict(),
                      projection_dim=64)
    config = NextConfig.from_backbone_config(clip, image_size=(32, 16), tokens_per_expert=2, num_labels=5)
    assert config.feature_dim == config.text_config.projection_dim == 64
    assert config.text_config.vocab_size == len(tokenizer) and config.vision_config.hidden_size == 32
    assert config.num_labels == 5 and config.tokens_per_expert == 2
    # An image tower alone: a placeholder text tower projecting to the image features, usable without text only
    # (train.py refuses a text-reading run without --text-backbone; tests/test_towers.py).
    alone = NextConfig.from_backbone_config(clip.vision_config, tokens_per_expert=2, use_text=False)
    assert not alone.text_bridge and alone.text_config.projection_dim == alone.feature_dim == 48


def test_legacy_config_json_with_backbone_type_and_loss_fields_loads(tmp_path, tokenizer):
    tiny_next_config(tokenizer).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    legacy = json.loads(path.read_text())
    legacy.update(backbone_type="clip", id_loss_weight=0.25, triplet_loss_weight=1.0, label_smoothing=0.1,
                  triplet_margin=None)
    path.write_text(json.dumps(legacy))
    loaded = NextConfig.from_pretrained(tmp_path)
    assert loaded.backbone_type == "clip" and loaded.label_smoothing == 0.1 and loaded.num_semantic_experts == 3
    path.write_text(json.dumps({**legacy, "backbone_type": "vit"}))
    with pytest.raises(ValueError, match="backbone_type='vit' does not match"):
        NextConfig.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------- saving and remote code


def test_from_pretrained_keeps_every_weight(tmp_path, model):
    model.save_pretrained(tmp_path)
    loaded = NextModel.from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_remote_code_load_in_fresh_process_with_tokenizer(tmp_path, model, tokenizer):
    model_dir, work_dir = tmp_path / "model", tmp_path / "empty"
    work_dir.mkdir()
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    files = {p.name for p in model_dir.iterdir()}
    expected_files = {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"}
    assert expected_files <= files
    # The family's files and NEXT's own, nothing else: a NEXT checkpoint no longer ships DeMo's code.
    assert {name for name in files if name.endswith(".py")} == {
        "modeling_next.py", "configuration_next.py", "modeling_reid.py", "configuration_reid.py"}
    auto_map = json.loads((model_dir / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_next.NextConfig", "AutoModel": "modeling_next.NextModel"}

    triples = [[RGB_A, NIR, TIR], [RGB_B, "", TIR], ["", "", ""]]
    pixels, cams = random_triples(3, seed=5), torch.tensor([0, 1, 2])
    save_file({"pixel_values": pixels, "camera_ids": cams}, tmp_path / "inputs.safetensors")
    (tmp_path / "captions.json").write_text(json.dumps(triples))
    with torch.no_grad():
        expected = model(pixels, camera_ids=cams, **tokenize_captions(tokenizer, triples)).embeddings
    script = textwrap.dedent(
        f"""
        import json, sys
        # The project must not be importable: only the files shipped in the checkpoint may be used.
        for name in ("configuration_demo", "modeling_demo", "configuration_next", "modeling_next", "mmreid"):
            sys.modules[name] = None
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel, AutoTokenizer
        model = AutoModel.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        tokenizer = AutoTokenizer.from_pretrained({str(model_dir)!r})
        triples = json.load(open({str(tmp_path / "captions.json")!r}))
        flat = [c for t in triples for c in t]
        enc = tokenizer(flat, padding=True, truncation=True, return_tensors="pt")
        empty = torch.tensor([not c for c in flat])
        enc["attention_mask"][empty] = 0
        inputs = load_file({str(tmp_path / "inputs.safetensors")!r})
        with torch.no_grad():
            out = model(inputs["pixel_values"], camera_ids=inputs["camera_ids"],
                        input_ids=enc["input_ids"].view(3, 3, -1), attention_mask=enc["attention_mask"].view(3, 3, -1))
        save_file({{"embeddings": out.embeddings.contiguous()}}, {str(tmp_path / "out.safetensors")!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=work_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = load_file(tmp_path / "out.safetensors")["embeddings"]
    assert (loaded - expected).abs().max().item() < 1e-6


# ----------------------------------------------------------------------------------------------------- CLIP weights


def _tiny_clip(tmp_path, tokenizer):
    torch.manual_seed(0)
    text = tiny_text_config(tokenizer, projection_dim=64).to_dict()
    vision = tiny_vision_config("clip", projection_dim=64).to_dict()
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)).eval()
    clip.save_pretrained(tmp_path / "clip")
    return clip, tmp_path / "clip"


def test_from_pretrained_towers_reproduces_both_hf_towers(tmp_path, tokenizer):
    clip, path = _tiny_clip(tmp_path, tokenizer)
    model = NextModel.from_pretrained_towers(path, image_size=(32, 32), num_labels=4).eval()
    assert model.config.text_config.vocab_size == len(tokenizer)
    caps = tokenize_captions(tokenizer, [[RGB_A, NIR, TIR], [RGB_B, NIR, "x"]])
    ids, mask = caps["input_ids"].view(6, -1), caps["attention_mask"].view(6, -1)
    reference = CLIPTextModelWithProjection.from_pretrained(path).eval()
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask).text_embeds
        # the same, from the CLIPModel's own modules: projected end-of-text token
        eot = clip.text_model(input_ids=ids, attention_mask=mask).last_hidden_state[torch.arange(6), mask.sum(1) - 1]
    torch.testing.assert_close(theirs, clip.text_projection(eot))
    torch.testing.assert_close(model.get_text_features(ids, mask), theirs, atol=1e-5, rtol=1e-5)
    batched = model.get_text_features(caps["input_ids"], caps["attention_mask"])
    torch.testing.assert_close(batched, theirs.view(2, 3, -1))
    expected, ours = reference.state_dict(), model.text_tower.state_dict()
    assert set(ours) == set(expected) and all(torch.equal(ours[k], v) for k, v in expected.items())
    # The image tower is loaded by the base both models share: the same weights as DeMo's from this checkpoint.
    demo = DeMoModel.from_pretrained_towers(path, image_size=(32, 32), num_labels=4, atmoe_heads=2)
    expected, ours = demo.vision_tower.state_dict(), model.vision_tower.state_dict()
    assert set(ours) == set(expected) and all(torch.equal(ours[k], v) for k, v in expected.items())

    pixels = random_triples(2, image_size=(32, 32))[:, 0]
    with torch.no_grad():
        ours = model.vision_tower(pixels)
        hidden = clip.vision_model(pixel_values=pixels).last_hidden_state
        projected = clip.visual_projection(clip.vision_model.post_layernorm(hidden))
    torch.testing.assert_close(ours, projected, atol=1e-5, rtol=1e-5)
    assert all(not p.requires_grad for p in model.text_tower.parameters())


def test_from_pretrained_towers_resizes_and_rejects_wrong_checkpoints(tmp_path, tokenizer):
    clip, path = _tiny_clip(tmp_path, tokenizer)
    model = NextModel.from_pretrained_towers(path, image_size=(64, 32), num_labels=4, use_text=False)
    assert model.vision_tower.embeddings.position_embedding.shape == (1 + 8 * 4, 32)
    assert not hasattr(model, "text_tower")
    with pytest.raises(ValueError, match="text_config.num_hidden_layers=3 does not match"):
        config = tiny_next_config(tokenizer, text_overrides=dict(num_hidden_layers=3))
        NextModel.from_pretrained_towers(path, config=config)
    CLIPVisionModelWithProjection(tiny_vision_config("clip")).save_pretrained(tmp_path / "vision_only")
    with pytest.raises(ValueError, match="needs a full CLIPModel checkpoint"):
        NextModel.from_pretrained_towers(tmp_path / "vision_only")


# ---------------------------------------------------------------------------------------------------- initialisation


def test_new_layers_start_from_pytorch_defaults(tokenizer):
    torch.manual_seed(0)
    model = NextModel(tiny_next_config(tokenizer, vision_overrides=dict(projection_dim=128), text_overrides={},
                                       semantic_expert="attention_pool", supervised_heads="all"))
    C = 128
    fc1 = model.semantic_experts.modulation.fc1  # 3 experts x (24 -> 24)
    layers = [(fc1, 24), (model.structure_experts.experts.fc1, C), (model.semantic_experts.experts.k_proj, C)]
    for layer, fan_in in layers:
        assert layer.weight.abs().max().item() <= fan_in**-0.5
        for expert_weight in layer.weight:  # each expert's slice like a PyTorch Linear
            assert expert_weight.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.15)
        assert 0 < layer.bias.abs().max().item() <= fan_in**-0.5
    router = model.structure_experts.router.weight
    assert router.std().item() == pytest.approx((3 * C) ** -0.5, rel=0.1)
    assert model.semantic_experts.experts.query.std().item() == pytest.approx(C**-0.5, rel=0.15)
    routers = model.semantic_experts.routers.score.weight  # one Linear(C -> 1) per modality, no bias
    assert routers.shape == (3, 1, C) and model.semantic_experts.routers.score.bias is None
    assert routers.abs().max().item() <= C**-0.5 and routers.std().item() == pytest.approx((3 * C) ** -0.5, rel=0.2)
    assert model.semantic_experts.no_text_embedding.std().item() == pytest.approx(C**-0.5, rel=0.15)
    attention = model.semantic_aggregation
    assert attention.in_proj_weight.abs().max().item() <= (6 / (4 * C)) ** 0.5
    assert attention.in_proj_bias.abs().max().item() == 0
    assert model.classifiers["final"].weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert torch.equal(model.bnnecks["final"].weight, torch.ones(6 * C))


def test_head_init_normal_option(tokenizer):
    torch.manual_seed(0)
    model = NextModel(tiny_next_config(tokenizer, head_init="normal", vision_overrides=dict(projection_dim=128)))
    layer = model.structure_experts.experts.fc2
    assert layer.weight.std().item() == pytest.approx(0.02, rel=0.05) and layer.bias.abs().max().item() == 0


# ------------------------------------------------------------------------------------------------- caption helpers


def test_split_sentences():
    caption = "An adult male, confidence: 0.8. He wears a t-shirt!  Is it clear? yes"
    assert split_sentences(caption) == ["An adult male, confidence: 0.8.", "He wears a t-shirt!", "Is it clear?", "yes"]
    assert split_sentences("") == [] and split_sentences("   ") == []


def test_sample_sentences_is_seeded_and_keeps_order():
    caption = "S0 a. S1 b. S2 c. S3 d. S4 e. S5 f."
    sentences = split_sentences(caption)
    draws = {}
    for seed in range(12):
        first = sample_sentences(caption, 3, torch.Generator().manual_seed(seed))
        assert first == sample_sentences(caption, 3, torch.Generator().manual_seed(seed))
        picked = split_sentences(first)
        assert len(picked) == 3 and len(set(picked)) == 3
        positions = [sentences.index(s) for s in picked]
        assert positions == sorted(positions)
        draws[seed] = first
    assert len(set(draws.values())) > 3
    generator = torch.Generator().manual_seed(0)
    assert sample_sentences("One. Two.", 2, generator) == "One. Two."
    assert sample_sentences("", 2, generator) == ""
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())  # nothing drawn
    with pytest.raises(ValueError, match="k must be a positive integer or None"):
        sample_sentences(caption, 0, generator)


def test_sample_sentences_without_k_draws_the_count_uniformly():
    """k=None: a count uniform in [1, n] (n = 6 here), then that many sentences in order; seeded."""
    caption = "S0 a. S1 b. S2 c. S3 d. S4 e. S5 f."
    sentences = split_sentences(caption)
    counts = []
    for seed in range(600):
        picked = split_sentences(sample_sentences(caption, None, torch.Generator().manual_seed(seed)))
        assert picked == [s for s in sentences if s in picked]  # original order, no repeats
        counts.append(len(picked))
    assert sorted(set(counts)) == [1, 2, 3, 4, 5, 6]
    assert all(60 <= counts.count(c) <= 140 for c in range(1, 7))  # 100 expected each
    assert sample_sentences(caption, None, torch.Generator().manual_seed(5)) == sample_sentences(
        caption, None, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(0)
    assert sample_sentences("Only one.", None, generator) == "Only one." and sample_sentences("", None, generator) == ""
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())  # nothing drawn


def test_tokenizer_and_tokenize_captions(tokenizer):
    assert tokenizer.eos_token_id == len(tokenizer) - 1 and tokenizer.pad_token_id == 0
    ids = tokenizer("He IS wearing   a T-shirt.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["he", "is", "wearing", "a", "t", "-", "shirt", "."]
    assert tokenizer("a zebra")["input_ids"][2] == tokenizer.unk_token_id
    long = tokenizer(" ".join(CAPTIONS), truncation=True)["input_ids"]
    assert len(long) == 48 and long[-1] == tokenizer.eos_token_id

    enc = tokenize_captions(tokenizer, [["a male.", "", "He is wearing a coat."]])
    assert enc["input_ids"].shape == enc["attention_mask"].shape == (1, 3, 8)
    assert enc["attention_mask"][0].sum(-1).tolist() == [5, 0, 8]
    assert enc["input_ids"][0, 1].tolist() == [tokenizer.pad_token_id] * 8
    per_expert = tokenize_captions(tokenizer, [[["a", "b", "c"], ["", "", ""]]] * 2)
    assert per_expert["input_ids"].shape == (2, 2, 3, 3)
    assert per_expert["attention_mask"][:, 1].sum() == 0


# ------------------------------------------------------------------------------------- the semantic experts' switches


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _expert_mlp_by_hand(mlp, x):
    """Per-expert FC -> QuickGELU -> FC written out from the stacked weights: x (B, E, T, C)."""
    hidden = _quick_gelu(torch.einsum("betc,eoc->beto", x, mlp.fc1.weight) + mlp.fc1.bias[:, None])
    return torch.einsum("betc,eoc->beto", hidden, mlp.fc2.weight) + mlp.fc2.bias[:, None]


def test_token_experts_are_the_reported_form(tokenizer):
    """semantic_expert="token_mlp": s_e = mean_t w_t * (F_t + Dropout(MLP(LN(F_t)))); the dropout acts in training."""
    model = make_model(tokenizer)
    experts = model.semantic_experts.experts
    C = model.config.feature_dim
    tokens = torch.randn(2, 3, 6, C, generator=torch.Generator().manual_seed(0))
    weights = torch.rand(2, 3, 6, generator=torch.Generator().manual_seed(1)) * 2
    normed = F.layer_norm(tokens, (C,), experts.norm.weight, experts.norm.bias)
    expected = ((tokens + _expert_mlp_by_hand(experts.mlp, normed)) * weights[..., None]).mean(dim=2)
    with torch.no_grad():
        torch.testing.assert_close(experts.eval()(tokens, weights), expected)
        experts.train()
        first, second = experts(tokens, weights), experts(tokens, weights)
        assert not torch.allclose(first, second) and not torch.allclose(first, expected)  # dropout 0.1
        experts.dropout.p = 0.0
        torch.testing.assert_close(experts(tokens, weights), expected)
    assert not hasattr(experts, "query")


def test_attention_pool_option_weights_the_tokens_after_their_layernorm(tokenizer):
    """semantic_expert="attention_pool": the selection weights scale the LayerNorm-ed tokens (a scale before the
    LayerNorm would be erased), so scaling the weights changes s_e; the pool has its learned query."""
    model = make_model(tokenizer, semantic_expert="attention_pool")
    pool = model.semantic_experts.experts.eval()
    C = model.config.feature_dim
    tokens = torch.randn(2, 3, 6, C, generator=torch.Generator().manual_seed(0))
    weights = torch.ones(2, 3, 6)
    with torch.no_grad():
        one, doubled = pool(tokens, weights), pool(tokens, 2 * weights)
        assert not torch.allclose(one, doubled)
        # Doubling the tokens instead does nothing: the LayerNorm removes it.
        torch.testing.assert_close(pool(2 * tokens, weights), one, atol=1e-5, rtol=1e-5)
    assert pool.query.shape == (3, C)
    default = make_model(tokenizer)
    assert {n for n in model.state_dict() if "experts.query" in n} and not {
        n for n in default.state_dict() if "experts.query" in n}


def test_saliency_router_and_cls_dot_by_hand(tokenizer):
    """saliency="router": softmax over patches of w_m . LN(F_m,i), one router per modality; "cls_dot": softmax of
    R_m . F_m,i / sqrt(C)."""
    C = 64
    cls_tokens = torch.randn(2, 3, C, generator=torch.Generator().manual_seed(0))
    patches = torch.randn(2, 3, 8, C, generator=torch.Generator().manual_seed(1))
    router_model, dot_model = make_model(tokenizer), make_model(tokenizer, saliency="cls_dot")
    w = router_model.semantic_experts.routers.score.weight[:, 0]  # (3, C)
    expected = torch.einsum("bmnc,mc->bmn", F.layer_norm(patches, (C,)), w).softmax(-1)
    with torch.no_grad():
        torch.testing.assert_close(router_model.semantic_experts.saliency(cls_tokens, patches), expected)
        expected = (torch.einsum("bmc,bmnc->bmn", cls_tokens, patches) / C**0.5).softmax(-1)
        torch.testing.assert_close(dot_model.semantic_experts.saliency(cls_tokens, patches), expected)
    assert dot_model.semantic_experts.routers is None
    assert not any("routers" in n for n in dot_model.state_dict())


def test_each_modality_has_its_own_sampling_router(tokenizer):
    """A large change of the NIR router moves only the NIR patches the experts select."""
    model = make_model(tokenizer, tokens_per_expert=3)
    caps = captions(tokenizer, (RGB_A, NIR, TIR), (RGB_B, "", TIR))
    before = run(model, caps).selected_patches
    with torch.no_grad():
        model.semantic_experts.routers.score.weight[1] = 1e3 * torch.randn(1, 64, generator=torch.Generator().manual_seed(4))
    after = run(model, caps).selected_patches
    assert torch.equal(before[:, :, [0, 2]], after[:, :, [0, 2]])
    assert not torch.equal(before[:, :, 1], after[:, :, 1])


def test_semantic_expert_dropout_acts_in_training_only(tokenizer):
    caps = captions(tokenizer, (RGB_A, NIR, TIR), (RGB_B, "", TIR))
    pixels, cams = random_triples(2), torch.tensor([0, 1])
    for dropout, differ in ((0.1, True), (0.0, False)):
        model = make_model(tokenizer, semantic_expert_dropout=dropout).train()
        with torch.no_grad():
            a, b = (model(pixels, cams, **caps).semantic_expert_features for _ in range(2))
        assert (not torch.equal(a, b)) == differ, dropout
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(pixels, cams, **caps).semantic_expert_features,
                               model(pixels, cams, **caps).semantic_expert_features)


# ------------------------------------------------------------------------- learnable text prompts (IDEA's choice)


LONG_CAPTIONS = ((RGB_A, NIR, TIR), (RGB_B, NIR, RGB_A))  # every caption longer than the prompt positions 5, 6


def test_without_text_prompts_the_text_pass_is_the_towers_own(model, tokenizer):
    # num_text_prompts=0 (the default) keeps today's pass: the tower's projected end-of-text token, bitwise.
    assert model.config.num_text_prompts == 0 and not hasattr(model, "text_prompts")
    caps = captions(tokenizer, *LONG_CAPTIONS)
    ids, mask = caps["input_ids"], caps["attention_mask"]
    with torch.no_grad():
        expected = model.text_tower(input_ids=ids.flatten(0, 1), attention_mask=mask.flatten(0, 1)).text_embeds
    assert torch.equal(model.get_text_features(ids, mask), expected.view(2, 3, -1))


def test_text_prompts_are_added_at_positions_5_6_and_pooled_with_the_end_token(tokenizer):
    model = make_model(tokenizer, num_text_prompts=2)
    assert model.text_prompts.shape == (2, model.config.text_config.hidden_size)
    assert model.text_prompts.std() > 0.5  # normal(0, 1), as IDEA's authors initialise theirs
    caps = captions(tokenizer, *LONG_CAPTIONS)
    ids, mask = caps["input_ids"].flatten(0, 1), caps["attention_mask"].flatten(0, 1)
    with torch.no_grad():
        prompted = model.get_text_features(ids, mask)
        plain = model.text_tower(input_ids=ids, attention_mask=mask).text_embeds
        assert not torch.allclose(prompted, plain, atol=1e-3)
        # With zero prompt vectors: the mean of the tower's own projected outputs at the end token and at 5, 6,
        # read from transformers' CLIP text model (causal: the padding after them changes nothing).
        model.text_prompts.zero_()
        hidden = model.text_tower.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        ends = (ids == model.config.text_config.eos_token_id).int().argmax(-1)
        rows = torch.stack([hidden[torch.arange(len(ids)), ends], hidden[:, 5], hidden[:, 6]], dim=1)
        expected = model.text_tower.text_projection(rows).mean(1)
        torch.testing.assert_close(model.get_text_features(ids, mask), expected, atol=1e-5, rtol=1e-5)
        # The batch's padding changes nothing: one caption alone gives what it gave in the batch.
        alone = captions(tokenizer, (NIR, NIR, NIR))
        torch.testing.assert_close(model.get_text_features(alone["input_ids"][0, :1], alone["attention_mask"][0, :1]),
                                   model.get_text_features(ids[1:2], mask[1:2]), atol=1e-6, rtol=1e-6)
    # The caption prefix carries one placeholder per prompt vector, where they land (IDEA's captions).
    assert make_model(tokenizer, num_text_prompts=2, caption_prefix="rgbnt100").config.caption_prefixes[0] == (
        "An image of a X X vehicle in the visible spectrum: ")


def test_text_prompts_train_at_the_head_rate_and_the_text_tower_stays_frozen(tokenizer, tmp_path):
    from mmreid.training.trainer import HEAD_GROUP, build_param_groups

    model = make_model(tokenizer, num_text_prompts=2).train()
    groups = {g["name"]: g for g in build_param_groups(model, 1e-3, 2.0, 1e-5, 0.0)}
    assert any(p is model.text_prompts for p in groups[HEAD_GROUP]["params"])
    tower_before = {k: v.clone() for k, v in model.text_tower.state_dict().items()}
    prompts_before = model.text_prompts.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    caps = captions(tokenizer, *[(RGB_A, NIR, TIR), (RGB_B, NIR, ""), ("", "", TIR), (RGB_A, RGB_B, NIR)])
    labels = torch.tensor([0, 1, 2, 3])
    for step in range(3):
        optimizer.zero_grad()
        out = model(random_triples(4, seed=step), camera_ids=torch.tensor([0, 1, 2, 0]), **caps)
        sum(F.cross_entropy(logits, labels) for logits in out.logits.values()).backward()
        assert model.text_prompts.grad.abs().sum() > 0
        assert all(p.grad is None and not p.requires_grad for p in model.text_tower.parameters())
        optimizer.step()
    assert (model.text_prompts - prompts_before).abs().min() > 0  # every component moved
    for name, tensor in model.text_tower.state_dict().items():
        assert torch.equal(tensor, tower_before[name]), name

    # Saved and reloaded: the same prompts, the same embeddings, and they still train.
    model.eval().save_pretrained(tmp_path)
    loaded = NextModel.from_pretrained(tmp_path).eval()
    assert loaded.config.num_text_prompts == 2 and torch.equal(loaded.text_prompts, model.text_prompts)
    eval_caps = captions(tokenizer, *LONG_CAPTIONS)
    assert torch.equal(run(loaded, eval_caps).embeddings, run(model, eval_caps).embeddings)
    loaded.train()
    assert loaded.text_prompts.requires_grad and not any(p.requires_grad for p in loaded.text_tower.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_text_prompts=-1), "num_text_prompts must be an integer >= 0, got -1"),
        (dict(num_text_prompts=43), "num_text_prompts=43 does not fit in captions of 48 tokens"),
        (dict(num_text_prompts=1, use_text=False), "num_text_prompts=1 needs a CLIP or MetaCLIP 2 text tower reading"),
    ],
)
def test_bad_text_prompt_options_are_refused(tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_next_config(tokenizer, **kwargs)


def test_text_prompts_are_refused_for_siglip_text_towers(tokenizer):
    from transformers import SiglipTextConfig

    siglip = SiglipTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, max_position_embeddings=48, projection_size=32)
    assert NextConfig(vision_config=tiny_vision_config("clip"), text_config=siglip, text_bridge=True)
    with pytest.raises(ValueError, match="CLIP or MetaCLIP 2 text tower .*'siglip_text_model'.*num_text_prompts=0"):
        NextConfig(vision_config=tiny_vision_config("clip"), text_config=siglip, text_bridge=True, num_text_prompts=1)

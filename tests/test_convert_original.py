"""Converter from the authors' checkpoints: a state dict written here in their key layout round-trips exactly."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_data_script, random_triples

from mmreid.hub.backbones import tiny_demo_config
from modeling_demo import DeMoModel

SCRIPT = Path(__file__).resolve().parents[1] / "data_scripts" / "convert_original_checkpoint.py"
ORIGINAL_EXPERTS = ["r", "n", "t", "rn", "rt", "nt", "rnt"]


def to_original_layout(model: DeMoModel, ddp_prefix: bool) -> dict:
    """Write `model` in the original implementation's key names, by hand, independently of the converter."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = model.config
    o = {}
    b = "BACKBONE.base."
    o[b + "conv1.weight"] = sd["vision_tower.embeddings.patch_embedding.weight"]
    o[b + "class_embedding"] = sd["vision_tower.embeddings.class_embedding"]
    o[b + "positional_embedding"] = sd["vision_tower.embeddings.position_embedding"]
    o["BACKBONE.cv_embed"] = sd["vision_tower.embeddings.camera_embedding"].unsqueeze(1)
    for n in ("weight", "bias"):
        o[f"{b}ln_pre.{n}"] = sd[f"vision_tower.pre_layernorm.{n}"]
        o[f"{b}ln_post.{n}"] = sd[f"vision_tower.post_layernorm.{n}"]
    o[b + "proj"] = sd["vision_tower.projection.weight"].t()
    for i in range(config.vision_config.num_hidden_layers):
        src, dst = f"vision_tower.layers.{i}.", f"{b}transformer.resblocks.{i}."
        for n in ("weight", "bias"):
            o[f"{dst}attn.in_proj_{n}"] = torch.cat([sd[f"{src}self_attn.{p}_proj.{n}"] for p in "qkv"])
            o[f"{dst}attn.out_proj.{n}"] = sd[f"{src}self_attn.out_proj.{n}"]
            o[f"{dst}ln_1.{n}"] = sd[f"{src}layer_norm1.{n}"]
            o[f"{dst}mlp.c_fc.{n}"] = sd[f"{src}mlp.fc1.{n}"]
            o[f"{dst}mlp.c_proj.{n}"] = sd[f"{src}mlp.fc2.{n}"]
            o[f"{dst}ln_2.{n}"] = sd[f"{src}layer_norm2.{n}"]
    for m in ("rgb", "nir", "tir"):
        for n in ("weight", "bias"):
            o[f"{m}_reduce.0.{n}"] = sd[f"patch_integration.{m}.norm.{n}"]
            o[f"{m}_reduce.1.{n}"] = sd[f"patch_integration.{m}.dense.{n}"]
    for idx, e in enumerate(ORIGINAL_EXPERTS):
        o[f"generalFusion.{e}_token"] = sd["decoupling.queries"][idx].reshape(1, 1, -1)
        for n in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            o[f"generalFusion.{e}.{n}"] = sd[f"decoupling.attentions.{idx}.{n}"]
    gate = "generalFusion.moe.gating_network.gate."
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for n in ("weight", "bias"):
        o[f"{gate}linear_re.0.{n}"] = sd[f"mixture_of_experts.gate.reduction.{n}"]
    for n in bn_keys:
        o[f"{gate}linear_re.2.{n}"] = sd[f"mixture_of_experts.gate.reduction_norm.{n}"]
    o[gate + "q_.weight"] = sd["mixture_of_experts.gate.q_proj.weight"]
    o[gate + "k_.weight"] = sd["mixture_of_experts.gate.k_proj.weight"]
    for h in range(config.atmoe_heads):
        for e in range(7):
            src, dst = f"mixture_of_experts.experts.{h}.{e}.", f"generalFusion.moe.experts.{h}.expertHead.{e}.mlp."
            for n in ("weight", "bias"):
                o[f"{dst}0.{n}"] = sd[f"{src}dense.{n}"]
            for n in bn_keys:
                o[f"{dst}2.{n}"] = sd[f"{src}norm.{n}"]
    heads = {"ori": ""} if config.direct_classifier else {"rgb": "_r", "nir": "_n", "tir": "_t"}
    heads["moe"] = "_moe"
    for name, suffix in heads.items():
        o[f"classifier{suffix}.weight"] = sd[f"classifiers.{name}.weight"]
        for n in bn_keys:
            o[f"bottleneck{suffix}.{n}"] = sd[f"bnnecks.{name}.{n}"]
    if ddp_prefix:
        o = {"module." + k: v for k, v in o.items()}
    return o


def trained_looking_model(**overrides) -> DeMoModel:
    """A tiny model whose BN running statistics are not the defaults, so their mapping is under test."""
    torch.manual_seed(0)
    config = tiny_demo_config(
        num_labels=5, num_cameras=3, vision_overrides=dict(hidden_size=64, num_attention_heads=1), **overrides
    )
    model = DeMoModel(config).train()
    with torch.no_grad():
        model(random_triples(4, seed=3), camera_ids=torch.tensor([0, 1, 2, 1]))
    return model.eval()


def run_converter(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "overrides,ddp_prefix",
    [(dict(direct_classifier=True, atmoe_heads=2), False), (dict(direct_classifier=False, atmoe_heads=4), True)],
)
def test_round_trip_reproduces_retrieval_features(tmp_path, overrides, ddp_prefix):
    model = trained_looking_model(**overrides)
    torch.save(to_original_layout(model, ddp_prefix), tmp_path / "model.pth")
    result = run_converter("--checkpoint", tmp_path / "model.pth", "--image-size", 32, 16, "--output", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    converted = DeMoModel.from_pretrained(tmp_path / "hf").eval()
    assert converted.config.num_labels == 5
    assert converted.config.num_cameras == 3
    assert converted.config.atmoe_heads == overrides["atmoe_heads"]
    assert converted.config.direct_classifier == overrides["direct_classifier"]
    assert converted.config.vision_config.hidden_size == 64
    assert converted.config.vision_config.num_hidden_layers == 2
    pixels, cams = random_triples(3, seed=9), torch.tensor([2, 0, 1])
    with torch.no_grad():
        expected = model(pixels, camera_ids=cams)
        got = converted(pixels, camera_ids=cams)
    torch.testing.assert_close(got.embeddings, expected.embeddings, atol=1e-6, rtol=0)
    assert list(got.logits) == list(expected.logits)
    for name in expected.logits:
        torch.testing.assert_close(got.logits[name], expected.logits[name], atol=1e-6, rtol=0)


def test_unmapped_tensor_is_reported_and_nothing_is_written(tmp_path):
    state = to_original_layout(trained_looking_model(), ddp_prefix=False)
    state["some_extra_head.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "model.pth")
    result = run_converter("--checkpoint", tmp_path / "model.pth", "--image-size", 32, 16, "--output", tmp_path / "hf")
    assert result.returncode == 2
    assert "some_extra_head.weight" in result.stderr
    assert not (tmp_path / "hf").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_non_clip_checkpoint_is_rejected_with_a_clear_error(tmp_path):
    torch.save({"base.patch_embed.proj.weight": torch.zeros(4, 3, 16, 16)}, tmp_path / "vit.pth")
    result = run_converter("--checkpoint", tmp_path / "vit.pth", "--image-size", 256, 128, "--output", tmp_path / "o")
    assert result.returncode == 2
    assert "BACKBONE.base.conv1.weight" in result.stderr and "CLIP" in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert_original_checkpoint.py: error: missing BACKBONE"), lines


def test_output_that_is_not_an_empty_folder_is_refused_and_left_as_it_was(tmp_path, capsys):
    torch.save(to_original_layout(trained_looking_model(), ddp_prefix=False), tmp_path / "model.pth")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    (tmp_path / "a-file").write_text("keep me too")
    for output in (tmp_path / "full", tmp_path / "a-file"):
        result = run_in_process(capsys, "--checkpoint", tmp_path / "model.pth", "--image-size", 32, 16,
                                "--output", output)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, lines
        assert lines[0] == f"convert_original_checkpoint.py: error: --output {output} exists and is not an empty folder"
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me" and len(list((tmp_path / "full").iterdir())) == 1
    assert (tmp_path / "a-file").read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "full", "model.pth"]  # no hidden leftover


def test_empty_output_folder_is_replaced_and_a_failed_save_leaves_it_empty(tmp_path, monkeypatch):
    """The library call: an empty --output folder (e.g. made by a job scheduler) is filled; a save that fails
    midway leaves the folder empty and no hidden folder beside it."""
    from mmreid.hub import conversion

    model = trained_looking_model()
    torch.save(to_original_layout(model, ddp_prefix=False), tmp_path / "model.pth")
    (tmp_path / "out").mkdir()

    def share_then_fail(folder):
        assert (folder / "model.safetensors").is_file()  # the weights were written, then the run dies
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(conversion, "share_weights", share_then_fail)
        with pytest.raises(OSError, match="disk full"):
            conversion.convert_checkpoint(tmp_path / "model.pth", (32, 16), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth", "out"]
    conversion.convert_checkpoint(tmp_path / "model.pth", (32, 16), tmp_path / "out")
    converted = DeMoModel.from_pretrained(tmp_path / "out").eval()
    pixels = random_triples(2, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(converted(pixels).embeddings, model(pixels).embeddings, rtol=0, atol=1e-6)


def run_in_process(capsys, *args):
    """The converter's main() in this process (faster than a subprocess), as (returncode, stderr)."""
    from types import SimpleNamespace

    module = load_data_script("convert_original_checkpoint")
    capsys.readouterr()
    code = module.main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


def test_image_size_that_cannot_match_the_position_table_is_refused(tmp_path, capsys):
    torch.save(to_original_layout(trained_looking_model(), ddp_prefix=False), tmp_path / "model.pth")
    result = run_in_process(capsys, "--checkpoint", tmp_path / "model.pth", "--image-size", 32, 32, "--output", tmp_path / "hf")
    assert result.returncode == 2
    assert "--image-size 32 32" in result.stderr and "position table has 8" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_swapped_image_size_of_a_known_dataset_needs_force(tmp_path, capsys):
    """171 identities = RGBNT201 (256x128); 128x256 has the same number of positions, so only the count tells."""
    config = tiny_demo_config(num_labels=171, num_cameras=3, image_size=(256, 128),
                              vision_overrides=dict(patch_size=32, image_size=64, hidden_size=64, num_attention_heads=1))
    torch.manual_seed(0)
    model = DeMoModel(config).eval()
    torch.save(to_original_layout(model, ddp_prefix=False), tmp_path / "model.pth")
    refused = run_in_process(capsys, "--checkpoint", tmp_path / "model.pth", "--image-size", 128, 256, "--output", tmp_path / "a")
    assert refused.returncode == 2 and "RGBNT201" in refused.stderr and "--image-size 256 128" in refused.stderr
    assert not (tmp_path / "a").exists()
    forced = run_in_process(capsys, "--checkpoint", tmp_path / "model.pth", "--image-size", 128, 256, "--output", tmp_path / "b",
                           "--force")
    assert forced.returncode == 0, forced.stderr
    right = run_in_process(capsys, "--checkpoint", tmp_path / "model.pth", "--image-size", 256, 128, "--output", tmp_path / "c")
    assert right.returncode == 0, right.stderr
    converted = DeMoModel.from_pretrained(tmp_path / "c").eval()
    pixels = torch.rand(2, 3, 3, 256, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(converted(pixels).embeddings, model(pixels).embeddings, rtol=0, atol=1e-6)

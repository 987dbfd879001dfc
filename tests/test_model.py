"""DeMoModel: paper Table 5 sizes, outputs, gradients, bad input, pretrained towers and remote-code loading."""

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import random_triples
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection, ViTModel

from configuration_demo import DeMoConfig
from configuration_reid import ReIDConfig
from configuration_next import NextConfig
from mmreid.hub.backbones import clip_vit_b16_vision_config, tiny_demo_config, tiny_vision_config
from mmreid.evaluation.complexity import count_macs, count_trainable_parameters
from modeling_demo import DeMoModel

# Paper Table 5 (RGBNT201: 171 identities, 4 cameras, 256x128, ATMoE with 4 heads).
TABLE5_VARIANTS = {
    "A": dict(use_pife=False, use_hdm=False, use_atmoe=False),
    "B": dict(use_pife=True, use_hdm=False, use_atmoe=False),
    "C": dict(use_pife=True, use_hdm=True, use_atmoe=False),
    "D": dict(use_pife=True, use_hdm=True, use_atmoe=True),
}
TABLE5_PARAMS = {"A": 86_407_680, "B": 87_988_224, "C": 95_962_624, "D": 98_792_960}
TABLE5_GMACS = {"A": 34.28, "D": 35.10}


def clip_b16_demo_config(**modules) -> DeMoConfig:
    return DeMoConfig(
        vision_config=clip_vit_b16_vision_config(),
        image_size=(256, 128),
        num_labels=171,
        num_cameras=4,
        atmoe_heads=4,
        direct_classifier=True,
        **modules,
    )


@pytest.mark.parametrize("variant", sorted(TABLE5_PARAMS))
def test_trainable_parameters_match_paper_table5(variant):
    with torch.device("meta"):
        model = DeMoModel(clip_b16_demo_config(**TABLE5_VARIANTS[variant]))
    assert count_trainable_parameters(model) == TABLE5_PARAMS[variant]


def _with_module_per_expert_heads(model: DeMoModel) -> DeMoModel:
    """The same model with the authors' formulation of HDM and ATMoE (one module per attention / expert)."""
    from module_per_expert_heads import ModulePerExpertDecoupling, ModulePerExpertMixture

    config = model.config
    if config.use_hdm:
        model.decoupling = ModulePerExpertDecoupling(config)
    if config.use_atmoe:
        model.mixture_of_experts = ModulePerExpertMixture(config)
    return model


@pytest.mark.parametrize("variant", sorted(TABLE5_GMACS))
def test_macs_per_triple_match_paper_table5(variant):
    """Counted on the authors' formulation of the heads, which the paper's figures are for."""
    model = _with_module_per_expert_heads(DeMoModel(clip_b16_demo_config(**TABLE5_VARIANTS[variant])))
    gmacs = count_macs(model) / 1e9
    assert gmacs == pytest.approx(TABLE5_GMACS[variant], rel=0.02)


def test_batched_heads_skip_the_hdm_key_and_value_projections():
    """Folding HDM's shared queries removes the key and value projections of every token of every combination:
    2 x (1 + 1 + 1 + 2 + 2 + 2 + 3) x 129 tokens x C^2 multiply-accumulates per triple (C = 512)."""
    model = DeMoModel(clip_b16_demo_config(**TABLE5_VARIANTS["D"]))
    removed = 2 * 12 * 129 * 512**2
    assert count_macs(model) == pytest.approx(TABLE5_GMACS["D"] * 1e9 - removed, rel=0.005)


def test_output_shapes_and_expert_weights(tiny_model, tiny_config):
    C = tiny_config.feature_dim
    out = tiny_model(random_triples(2), camera_ids=torch.tensor([0, 2]))
    assert out.ori_embeddings.shape == (2, 3 * C)
    assert out.moe_embeddings.shape == (2, 7 * C)
    assert out.embeddings.shape == (2, 10 * C)
    assert torch.equal(out.embeddings, torch.cat([out.ori_embeddings, out.moe_embeddings], dim=-1))
    assert list(out.logits) == list(out.features) == ["ori", "moe"]  # named supervised heads
    assert [t.shape for t in out.logits.values()] == [(2, tiny_config.num_labels)] * 2
    assert [f.shape[-1] for f in out.features.values()] == [3 * C, 7 * C]
    assert list(out.feature_sets) == ["ori", "moe", "all"]
    assert torch.equal(out.feature_sets["all"], out.embeddings) and torch.equal(out.features["moe"], out.moe_embeddings)
    assert out.expert_weights.shape == (2, tiny_config.atmoe_heads, 7)
    torch.testing.assert_close(out.expert_weights.sum(-1), torch.ones(2, tiny_config.atmoe_heads))


def test_per_modality_classifiers_supervise_each_modality():
    config = tiny_demo_config(direct_classifier=False, inference_features="moe")
    model = DeMoModel(config).eval()
    out = model(random_triples(2), camera_ids=torch.tensor([0, 1]))
    C = config.feature_dim
    assert list(out.logits) == list(out.features) == ["rgb", "nir", "tir", "moe"]
    assert [f.shape[-1] for f in out.features.values()] == [C, C, C, 7 * C]
    assert torch.equal(out.embeddings, out.moe_embeddings)
    for i, name in enumerate(("rgb", "nir", "tir")):
        assert torch.equal(out.features[name], out.ori_embeddings[:, i * C : (i + 1) * C])


@pytest.mark.parametrize("gating,moe_dim_factor", [("simple_add", 1), ("simple_concat", 7)])
def test_simple_gating_variants(gating, moe_dim_factor):
    config = tiny_demo_config(gating=gating)
    model = DeMoModel(config).eval()
    out = model(random_triples(2), camera_ids=torch.tensor([0, 1]))
    assert out.moe_embeddings.shape == (2, moe_dim_factor * config.feature_dim)
    # Simple gating: one softmax over the experts shared by all heads.
    assert torch.allclose(out.expert_weights[:, 0], out.expert_weights[:, 1])
    torch.testing.assert_close(out.expert_weights.sum(-1), torch.ones(2, config.atmoe_heads))


def test_gradients_reach_every_trainable_parameter(tiny_config):
    torch.manual_seed(0)
    model = DeMoModel(tiny_config).train()
    out = model(random_triples(6, seed=1), camera_ids=torch.tensor([0, 1, 2, 0, 1, 2]))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    loss = sum(F.cross_entropy(logits, labels) for logits in out.logits.values())
    loss = loss + sum(feature.pow(2).mean() for feature in out.features.values())
    loss.backward()
    without_grad = [
        name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert without_grad == []
    frozen = sorted(name for name, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["bnnecks.moe.bias", "bnnecks.ori.bias"]


def test_eval_is_deterministic_and_batch_size_one_works(tiny_model):
    pixels = random_triples(1)
    first = tiny_model(pixels, camera_ids=torch.tensor([1])).embeddings
    second = tiny_model(pixels, camera_ids=torch.tensor([1])).embeddings
    assert first.shape[0] == 1
    assert torch.equal(first, second)


def test_camera_embedding_changes_the_feature(tiny_model):
    pixels = random_triples(1)
    a = tiny_model(pixels, camera_ids=torch.tensor([0])).embeddings
    b = tiny_model(pixels, camera_ids=torch.tensor([2])).embeddings
    assert not torch.allclose(a, b)


def test_missing_modality_is_zeroed_normalized_pixels(tiny_model):
    pixels = random_triples(2)
    cams = torch.tensor([0, 1])
    mask = torch.tensor([[False, True, True], [True, True, False]])
    masked = tiny_model(pixels, camera_ids=cams, modality_mask=mask).embeddings
    zeroed = pixels.clone()
    zeroed[0, 0] = 0
    zeroed[1, 2] = 0
    torch.testing.assert_close(masked, tiny_model(zeroed, camera_ids=cams).embeddings)
    assert not torch.allclose(masked, tiny_model(pixels, camera_ids=cams).embeddings)


@pytest.mark.parametrize(
    "shape,match",
    [
        ((2, 3, 32, 16), "pixel_values must have shape"),
        ((2, 2, 3, 32, 16), "pixel_values must have shape"),
        ((2, 3, 3, 64, 32), "image_size=\\(32, 16\\)"),
    ],
)
def test_bad_pixel_values_raise_value_error(tiny_model, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(torch.zeros(shape))


def test_camera_id_out_of_range_raises_value_error(tiny_model):
    with pytest.raises(ValueError, match=r"camera_ids must be in \[0, 3\)"):
        tiny_model(random_triples(2), camera_ids=torch.tensor([0, 3]))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gating="softmax"), "gating must be one of"),
        (dict(use_hdm=False, use_atmoe=True), "use_atmoe=True needs use_hdm=True"),
        (dict(inference_features="cls"), "inference_features must be one of"),
        (dict(image_size=(30, 16)), "multiples of patch_size"),
        (dict(atmoe_heads=3), "atmoe_heads=3 must divide"),
    ],
)
def test_bad_config_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_demo_config(**kwargs)


def test_config_round_trips_through_json(tmp_path, tiny_config):
    tiny_config.save_pretrained(tmp_path)
    loaded = DeMoConfig.from_pretrained(tmp_path)
    assert loaded.image_size == (32, 16)
    assert loaded.vision_config.to_dict() == tiny_config.vision_config.to_dict()
    assert loaded.num_labels == 6 and loaded.num_cameras == 3 and loaded.backbone_type == "clip"


def test_save_pretrained_loads_in_fresh_process_with_remote_code(tmp_path, tiny_model):
    model_dir, work_dir = tmp_path / "model", tmp_path / "empty"
    work_dir.mkdir()
    tiny_model.save_pretrained(model_dir)
    files = {p.name for p in model_dir.iterdir()}
    # The family's files and DeMo's own, nothing else (no other model's code).
    assert {name for name in files if name.endswith(".py")} == {
        "modeling_demo.py", "configuration_demo.py", "modeling_reid.py", "configuration_reid.py"}
    assert {"model.safetensors", "config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    auto_map = json.loads((model_dir / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_demo.DeMoConfig", "AutoModel": "modeling_demo.DeMoModel"}

    pixels, cams = random_triples(3, seed=5), torch.tensor([0, 1, 2])
    save_file({"pixel_values": pixels, "camera_ids": cams}, tmp_path / "inputs.safetensors")
    expected = tiny_model(pixels, camera_ids=cams).embeddings
    script = textwrap.dedent(
        f"""
        import sys
        # The project must not be importable: only the files shipped in the checkpoint may be used.
        for name in ("configuration_demo", "modeling_demo", "mmreid"):
            sys.modules[name] = None
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = load_file({str(tmp_path / "inputs.safetensors")!r})
        with torch.no_grad():
            out = model(inputs["pixel_values"], camera_ids=inputs["camera_ids"])
        save_file({{"embeddings": out.embeddings.contiguous()}}, {str(tmp_path / "out.safetensors")!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=work_dir, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = load_file(tmp_path / "out.safetensors")["embeddings"]
    assert (loaded - expected).abs().max().item() < 1e-6


def _tiny_clip_vision(tmp_path, image_size=32):
    torch.manual_seed(0)
    source = CLIPVisionModelWithProjection(tiny_vision_config("clip", image_size=image_size)).eval()
    source.save_pretrained(tmp_path / "clip")
    return source, tmp_path / "clip"


def test_from_pretrained_towers_clip_matches_hf_tower(tmp_path):
    source, path = _tiny_clip_vision(tmp_path)
    # Same square size as pretraining: our class token must equal HF's projected image embedding.
    model = DeMoModel.from_pretrained_towers(path, image_size=(32, 32), num_labels=4, num_cameras=0).eval()
    pixels = random_triples(2, image_size=(32, 32))
    with torch.no_grad():
        ours = model.vision_tower(pixels[:, 0])
        theirs = source(pixel_values=pixels[:, 0])
    torch.testing.assert_close(ours[:, 0], theirs.image_embeds, atol=1e-5, rtol=1e-5)
    projected = source.visual_projection(source.vision_model.post_layernorm(theirs.last_hidden_state))
    torch.testing.assert_close(ours, projected, atol=1e-5, rtol=1e-5)


def test_from_pretrained_towers_resizes_position_table_bilinearly(tmp_path):
    source, path = _tiny_clip_vision(tmp_path)
    model = DeMoModel.from_pretrained_towers(path, image_size=(64, 32), num_labels=4, num_cameras=2)
    table = source.vision_model.embeddings.position_embedding.weight.detach()  # 1 + 4x4 rows
    resized = model.vision_tower.embeddings.position_embedding.detach()
    assert resized.shape == (1 + 8 * 4, table.shape[1])
    torch.testing.assert_close(resized[0], table[0])
    grid = table[1:].reshape(4, 4, -1)
    # Bilinear, align_corners=False, 4x4 -> 8x4: columns unchanged, rows 0 and 7 equal to the border rows,
    # row 1 = 0.75 * row0 + 0.25 * row1 of the source grid.
    new = resized[1:].reshape(8, 4, -1)
    torch.testing.assert_close(new[0], grid[0])
    torch.testing.assert_close(new[7], grid[3])
    torch.testing.assert_close(new[1], 0.75 * grid[0] + 0.25 * grid[1])
    torch.testing.assert_close(new[2], 0.25 * grid[0] + 0.75 * grid[1])


def test_from_pretrained_towers_accepts_full_clip_checkpoint(tmp_path):
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=tiny_vision_config("clip").to_dict(), projection_dim=64))
    clip.save_pretrained(tmp_path / "clip_full")
    model = DeMoModel.from_pretrained_towers(tmp_path / "clip_full", image_size=(32, 16), num_labels=4)
    torch.testing.assert_close(model.vision_tower.projection.weight, clip.visual_projection.weight)
    torch.testing.assert_close(
        model.vision_tower.layers[1].mlp.fc2.weight, clip.vision_model.encoder.layers[1].mlp.fc2.weight
    )


def test_from_pretrained_towers_vit_matches_hf_tower(tmp_path):
    torch.manual_seed(0)
    source = ViTModel(tiny_vision_config("vit"), add_pooling_layer=False).eval()
    source.save_pretrained(tmp_path / "vit")
    model = DeMoModel.from_pretrained_towers(tmp_path / "vit", image_size=(32, 32), num_labels=4).eval()
    assert model.config.backbone_type == "vit" and model.config.feature_dim == 32
    pixels = random_triples(2, image_size=(32, 32))
    with torch.no_grad():
        torch.testing.assert_close(
            model.vision_tower(pixels[:, 1]), source(pixel_values=pixels[:, 1]).last_hidden_state, atol=1e-5, rtol=1e-5
        )


def test_from_pretrained_towers_rejects_mismatched_config(tmp_path):
    _, path = _tiny_clip_vision(tmp_path)
    config = tiny_demo_config(vision_overrides=dict(num_hidden_layers=3))
    with pytest.raises(ValueError, match="num_hidden_layers"):
        DeMoModel.from_pretrained_towers(path, config=config)


def _kaiming_uniform_std(fan_in: int) -> float:
    # PyTorch's Linear default, kaiming-uniform(a=sqrt(5)): uniform(+-1/sqrt(fan_in)), std 1/sqrt(3 * fan_in).
    return (3 * fan_in) ** -0.5


def test_new_head_layers_start_from_pytorch_defaults():
    """Every new Linear (PIFE, ATMoE gate and experts) and the HDM attentions start as the authors' code leaves them."""
    torch.manual_seed(0)
    config = tiny_demo_config(vision_overrides=dict(projection_dim=256))  # C = 256, 2 heads: expert width 128
    model = DeMoModel(config)
    gate = model.mixture_of_experts.gate
    linears = [(gate.q_proj, 256), (gate.k_proj, 256), (gate.reduction, 7 * 256),
               (model.patch_integration["rgb"].dense, 512), (model.mixture_of_experts.experts[1][6].dense, 128)]
    for layer, fan_in in linears:
        assert layer.weight.std().item() == pytest.approx(_kaiming_uniform_std(fan_in), rel=0.06)
        assert layer.weight.abs().max().item() <= fan_in**-0.5
        if layer.bias is not None:
            assert 0 < layer.bias.abs().max().item() <= fan_in**-0.5
    attention = model.decoupling.attentions[3]
    bound = (6 / (256 + 3 * 256)) ** 0.5  # xavier-uniform over the (3C, C) in-projection
    assert attention.in_proj_weight.abs().max().item() <= bound
    assert attention.in_proj_weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    assert attention.in_proj_bias.abs().max().item() == 0 and attention.out_proj.bias.abs().max().item() == 0
    assert attention.out_proj.weight.std().item() == pytest.approx(_kaiming_uniform_std(256), rel=0.06)
    # unchanged: classifiers normal(0, 0.001), BN-necks (1, 0) with a frozen bias, the tower HF's normal(0.02)
    assert model.classifiers["moe"].weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.equal(model.bnnecks["ori"].weight, torch.ones(768)) and not model.bnnecks["ori"].bias.requires_grad
    tower_fc = model.vision_tower.layers[0].mlp.fc1
    assert tower_fc.weight.std().item() == pytest.approx(0.02, rel=0.1) and tower_fc.bias.abs().max().item() == 0


def test_head_init_normal_option():
    torch.manual_seed(0)
    model = DeMoModel(tiny_demo_config(head_init="normal", vision_overrides=dict(projection_dim=256)))
    gate = model.mixture_of_experts.gate
    assert gate.reduction.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert gate.reduction.bias.abs().max().item() == 0
    assert model.decoupling.attentions[0].out_proj.weight.std().item() == pytest.approx(0.02, rel=0.06)


def test_from_pretrained_keeps_loaded_head_weights(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    loaded = DeMoModel.from_pretrained(tmp_path)
    frozen = sorted(n for n, p in loaded.train().named_parameters() if not p.requires_grad)
    assert frozen == ["bnnecks.moe.bias", "bnnecks.ori.bias"]  # BN-neck biases stay frozen after a reload
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    "make_inputs, error, match",
    [
        (lambda x: dict(pixel_values=(x * 127 + 128).to(torch.uint8)), TypeError, "pixel_values has dtype torch.uint8"),
        (lambda x: dict(pixel_values=x.numpy()), TypeError, "pixel_values must be a torch.Tensor"),
        (lambda x: dict(pixel_values=x[:0]), ValueError, "empty batch"),
        (lambda x: dict(pixel_values=x, camera_ids=torch.tensor([0.0, 1.0])), TypeError, "camera_ids must be an integer"),
        (lambda x: dict(pixel_values=x, camera_ids=[0, 1]), TypeError, "camera_ids must be a torch.Tensor"),
        (lambda x: dict(pixel_values=x, modality_mask=torch.ones(2, 3).numpy()), TypeError, "modality_mask must be"),
        (lambda x: dict(pixel_values=x, lables=torch.tensor([0, 1])), TypeError, "lables"),
    ],
)
def test_forward_rejects_inputs_it_cannot_use(tiny_model, make_inputs, error, match):
    with pytest.raises(error, match=match):
        tiny_model(**make_inputs(random_triples(2)))


def test_new_parameters_are_the_camera_embedding_only():
    """The trainer gives the tower's pretrained weights the tower's learning rate and these the new layers'."""
    with_cameras = DeMoModel(tiny_demo_config(num_cameras=3)).vision_tower
    assert [p is with_cameras.embeddings.camera_embedding for p in with_cameras.new_parameters()] == [True]
    assert DeMoModel(tiny_demo_config(num_cameras=0)).vision_tower.new_parameters() == []


def test_from_pretrained_towers_loads_every_weight_of_a_full_clip_checkpoint(tmp_path):
    """A CLIPModel saved with save_pretrained: the tower holds exactly HF's CLIPVisionModelWithProjection weights
    (names mapped by hand here, not by the loader); only the camera embedding is new."""
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    vision = tiny_vision_config("clip", projection_dim=48).to_dict()  # the half's own projection_dim is not CLIP's
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)).save_pretrained(tmp_path)
    model = DeMoModel.from_pretrained_towers(tmp_path, image_size=(32, 32), num_labels=4, num_cameras=2)
    assert model.config.feature_dim == 64  # the parent's projection_dim
    reference = CLIPVisionModelWithProjection.from_pretrained(tmp_path, projection_dim=64).state_dict()
    renames = {"vision_model.": "", "encoder.layers.": "layers.", "pre_layrnorm": "pre_layernorm",
               "visual_projection": "projection", "position_embedding.weight": "position_embedding"}
    expected = {}
    for key, value in reference.items():
        for old, new in renames.items():
            key = key.replace(old, new)
        expected[key] = value
    expected.pop("embeddings.position_ids", None)
    ours = model.vision_tower.state_dict()
    assert set(ours) - set(expected) == {"embeddings.camera_embedding"} and set(expected) <= set(ours)
    for key, value in expected.items():
        assert torch.equal(ours[key], value), key


def test_from_backbone_config_builds_around_a_tower_config():
    clip = CLIPConfig(text_config=dict(hidden_size=32, num_attention_heads=2),
                      vision_config=tiny_vision_config("clip", projection_dim=48).to_dict(), projection_dim=64)
    config = DeMoConfig.from_backbone_config(clip, image_size=(32, 16), atmoe_heads=2, num_labels=5)
    assert config.vision_config.model_type == "clip_vision_model" and config.feature_dim == 64
    assert config.vision_config.hidden_size == 32 and config.num_labels == 5 and config.image_size == (32, 16)
    vit = DeMoConfig.from_backbone_config(tiny_vision_config("vit"), image_size=(32, 16), atmoe_heads=2)
    assert vit.backbone_type == "vit" and vit.feature_dim == 32


def test_legacy_config_json_with_backbone_type_and_loss_fields_loads(tmp_path, tiny_model):
    """config.json files written before backbone_type was derived and the loss recipe left the config."""
    tiny_model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    legacy = json.loads(path.read_text())
    assert "backbone_type" not in legacy and "id_loss_weight" not in legacy
    legacy.update(backbone_type="clip", id_loss_weight=0.25, triplet_loss_weight=1.0, label_smoothing=0.1,
                  triplet_margin=None)
    path.write_text(json.dumps(legacy))
    loaded = DeMoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone_type == "clip" and loaded.config.id_loss_weight == 0.25
    pixels, cams = random_triples(2), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(loaded(pixels, camera_ids=cams).embeddings, tiny_model(pixels, camera_ids=cams).embeddings)
    path.write_text(json.dumps({**legacy, "backbone_type": "vit"}))
    with pytest.raises(ValueError, match="backbone_type='vit' does not match vision_config.model_type='clip_vision_model'"):
        DeMoConfig.from_pretrained(tmp_path)


# Every option of the configs' __init__, as the option generator reads it: one `Args:` entry per option, in HF format
# `name (`type`, *optional*, defaults to `value`):` with the signature's default, followed by its description.
ARGS_ENTRY = re.compile(r"^ {8}(\w+) \(`([^`]+)`, \*optional\*, defaults to `(.+)`\):$")


def _documented_options(config_class) -> dict:
    lines = config_class.__doc__.splitlines()
    start = [i for i, line in enumerate(lines) if line.strip() == "Args:"]
    assert len(start) == 1, f"{config_class.__name__}: one Args: section"
    entries = {}
    for i, line in enumerate(lines[start[0] + 1 :], start[0] + 1):
        if line.strip() and not line.startswith(" " * 12):
            match = ARGS_ENTRY.match(line)
            assert match, f"{config_class.__name__}: not an HF-format Args entry: {line!r}"
            name, _, default = match.groups()
            assert name not in entries, f"{config_class.__name__}: {name} documented twice"
            assert lines[i + 1].startswith(" " * 12) and lines[i + 1].strip(), f"{name}: no description"
            entries[name] = default
    return entries


def _as_documented(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


@pytest.mark.parametrize("config_class", [ReIDConfig, DeMoConfig, NextConfig])
def test_every_config_option_is_annotated_and_documented_once(config_class):
    parameters = [p for p in inspect.signature(config_class.__init__).parameters.values()
                  if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert parameters, config_class.__name__
    unannotated = [p.name for p in parameters if p.annotation is inspect.Parameter.empty]
    assert unannotated == []
    documented = _documented_options(config_class)
    assert list(documented) == [p.name for p in parameters]  # exactly its own options, in signature order
    for p in parameters:
        assert documented[p.name] == _as_documented(p.default), p.name


def test_shared_options_are_defined_once_in_the_base():
    own = {cls: set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"} for cls in (DeMoConfig, NextConfig)}
    shared = set(inspect.signature(ReIDConfig.__init__).parameters) - {"self", "kwargs"}
    assert not (own[DeMoConfig] & shared) and not (own[NextConfig] & shared)
    for removed in ("backbone_type", "id_loss_weight", "triplet_loss_weight", "label_smoothing", "triplet_margin"):
        assert all(removed not in params for params in (*own.values(), shared)), removed

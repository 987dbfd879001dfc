"""Every image-tower family of the registry (modeling_reid.TOWER_ADAPTERS) on tiny random towers saved with
``save_pretrained``: the weights are loaded unchanged, the tokens are transformers' own, registers stay out, extra
tokens, SIE, the pixel normalisation, and bad --backbone / --text-backbone input."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import random_triples

from configuration_reid import BACKBONE_MODEL_TYPES
from modeling_demo import DeMoModel
from modeling_next import NextModel
from modeling_reid import TOWER_ADAPTERS
from mmreid.errors import UsageError
from mmreid.hub.backbones import tiny_demo_config, tiny_text_config, tiny_vision_config, tower_normalization

FAMILIES = list(BACKBONE_MODEL_TYPES)
IMAGE_SIZE = (32, 16)  # non-square, patch 8: a 4 x 2 grid (the ReID 256 x 128 in shape)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Checkpoint tensors a ReID model has no use for (mask tokens of masked-image pretraining, a ViT pooler).
UNUSED = ("mask_token", "pooler.")
NEXT_SIZES = dict(num_semantic_experts=2, num_structure_experts=2, structure_slots_per_expert=2, tokens_per_expert=2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


def save_tiny_tower(family: str, folder) -> None:
    """A tiny random tower of `family` as transformers saves it, with a processor config of its own statistics."""
    from transformers import ViTImageProcessorPil

    torch.manual_seed(hash(family) % 1000)
    config = tiny_vision_config(family)
    source_class = TOWER_ADAPTERS[family].source_class
    model = source_class(config)
    with torch.no_grad():  # no weight at its init constant: a tensor loaded from elsewhere would show
        for name, tensor in model.named_parameters():
            tensor.add_(torch.randn_like(tensor) * 0.05)
    model.save_pretrained(folder)
    mean, std = ((0.5,) * 3, (0.5,) * 3) if family == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
    ViTImageProcessorPil(image_mean=list(mean), image_std=list(std)).save_pretrained(folder)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    base = tmp_path_factory.mktemp("towers")
    folders = {}
    for family in FAMILIES:
        save_tiny_tower(family, base / family)
        folders[family] = base / family
    return folders


@pytest.fixture(scope="module")
def clip_text(tmp_path_factory):
    """A tiny CLIP text tower (text-only checkpoint) for NEXT on an image-only tower."""
    from transformers import CLIPTextModelWithProjection

    folder = tmp_path_factory.mktemp("clip-text")
    torch.manual_seed(5)
    CLIPTextModelWithProjection(tiny_text_config(projection_dim=48)).save_pretrained(folder)
    return folder


def build(model_name: str, folder, clip_text=None, num_cameras: int = 2):
    if model_name == "demo":
        return DeMoModel.from_pretrained_towers(folder, image_size=IMAGE_SIZE, num_labels=4, num_cameras=num_cameras,
                                                atmoe_heads=2)
    return NextModel.from_pretrained_towers(folder, text_pretrained_model_name_or_path=clip_text,
                                            image_size=IMAGE_SIZE, num_labels=4, num_cameras=num_cameras, **NEXT_SIZES)


@pytest.mark.parametrize("model_name", ["demo", "next"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_checkpoint_tensor_is_in_the_model_unchanged(towers, clip_text, family, model_name):
    """Found by value, not by name: each tensor of the tower's safetensors file is a tensor of the built tower (a
    class / register token without its singleton axes), except the position table (resized) and unused parts."""
    model = build(model_name, towers[family], clip_text)
    ours = [t.detach() for t in model.vision_tower.state_dict().values()]
    checkpoint = load_file(towers[family] / "model.safetensors")
    compared = 0
    for key, tensor in checkpoint.items():
        if any(part in key for part in UNUSED) or "position_embedding" in key:
            continue
        flat = tensor.reshape(-1)
        assert any(t.numel() == flat.numel() and torch.equal(t.reshape(-1), flat) for t in ours), key
        compared += 1
    assert compared >= len(checkpoint) - 4
    table = model.vision_tower.embeddings.position_embedding
    if family == "dinov3_vit":
        assert table is None  # rotary positions: nothing to resize
    else:
        class_rows = 0 if family.startswith("siglip") else 1
        assert table.shape == (class_rows + 4 * 2, 32)
    expected_mean = (0.5,) * 3 if family == "clip" else IMAGENET_MEAN  # the tower's processor config's
    assert model.config.image_mean == expected_mean
    if model_name == "next":
        assert model.config.text_bridge and model.text_bridge.in_features == 48  # the CLIP text size, bridged to 32


def transformers_tokens(family: str, source, images: torch.Tensor, our_table: torch.Tensor) -> torch.Tensor:
    """The tokens transformers' own model gives for `images`: (N, 1 + n, C), class (or pooled) token first, then the
    patch tokens, registers dropped. CLIP and ViT: the DeMo authors resize the position table bilinearly where
    transformers interpolates bicubically, so transformers' model is given our resized table (everything else is
    still its own computation; that table is the bilinear resize of the checkpoint's, test_model checks it)."""
    registers = getattr(source.config, "num_register_tokens", 0) or 0
    with torch.no_grad():
        if family in ("clip", "metaclip_2", "vit"):
            source.base_model.embeddings.interpolate_pos_encoding = lambda *args: our_table.unsqueeze(0)
            out = source(pixel_values=images, interpolate_pos_encoding=True)
            if family == "vit":
                return out.last_hidden_state
            return source.visual_projection(source.vision_model.post_layernorm(out.last_hidden_state))
        if family == "siglip":
            out = source(pixel_values=images, interpolate_pos_encoding=True)
            return torch.cat([out.pooler_output[:, None], out.last_hidden_state], dim=1)
        if family == "siglip2":
            from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

            patches = torch.stack([torch.from_numpy(convert_image_to_patches(image.numpy(), 8)) for image in images])
            shapes = torch.tensor([[4, 2]] * len(images))
            out = source(pixel_values=patches, pixel_attention_mask=torch.ones(len(images), 8, dtype=torch.long),
                         spatial_shapes=shapes)
            return torch.cat([out.pooler_output[:, None], out.last_hidden_state], dim=1)
        hidden = source(pixel_values=images).last_hidden_state  # DINOv2 (+ registers), DINOv3
        return torch.cat([hidden[:, :1], hidden[:, 1 + registers:]], dim=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_tower_tokens_are_the_transformers_models(towers, family):
    """With the camera embedding zero, the class (or stand-in) token and the patch tokens the heads receive
    (`encode_images`) equal transformers' forward on the same weights and a 32 x 16 input within 1e-5; the
    register tokens are not among the patches."""
    from transformers import AutoConfig

    from modeling_reid import load_tower_source

    model = build("demo", towers[family]).eval()
    with torch.no_grad():
        model.vision_tower.embeddings.camera_embedding.zero_()
    pixels = random_triples(2, IMAGE_SIZE, seed=3)
    cls_tokens, patch_tokens = model.encode_images(pixels, torch.tensor([0, 1]))
    assert patch_tokens.shape[2] == 4 * 2  # the config's grid, no register
    source = load_tower_source(towers[family], AutoConfig.from_pretrained(towers[family]), family).eval()
    table = model.vision_tower.embeddings.position_embedding
    expected = transformers_tokens(family, source, pixels.flatten(0, 1), table).view(2, 3, 9, -1)
    torch.testing.assert_close(cls_tokens, expected[:, :, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(patch_tokens, expected[:, :, 1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_extra_tokens_join_the_sequence_and_come_out_last(family):
    """`extra_tokens` (N, k, D) come out as the last k tokens, after the final norm / projection: each output
    follows its own input (swapping two inputs swaps their outputs), they attend with the image (the class and
    patch tokens change), and none passed equals k = 0."""
    torch.manual_seed(0)
    model = DeMoModel(tiny_demo_config(backbone_type=family, image_size=IMAGE_SIZE)).eval()
    tower = model.vision_tower
    images = random_triples(1, IMAGE_SIZE, seed=1)[:, 0].repeat(2, 1, 1, 1)
    extra = torch.randn(2, 3, 32)
    with torch.no_grad():
        plain = tower(images)
        empty = tower(images, extra_tokens=extra[:, :0])
        tokens = tower(images, extra_tokens=extra)
        swapped = tower(images, extra_tokens=extra[:, [1, 0, 2]])
    feature = model.config.feature_dim
    assert plain.shape == (2, 9, feature) and tokens.shape == (2, 12, feature)
    torch.testing.assert_close(empty, plain, atol=0, rtol=0)
    torch.testing.assert_close(swapped[:, 9:], tokens[:, [10, 9, 11]], atol=1e-5, rtol=0)
    torch.testing.assert_close(swapped[:, :9], tokens[:, :9], atol=1e-5, rtol=0)
    assert not torch.allclose(tokens[:, :9], plain, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_camera_embedding_is_new_and_moves_the_tokens(family):
    """SIE as for CLIP: the camera embedding is the tower's only new parameter (the trainer gives it the head rate),
    another camera changes the tokens, and the loss reaches it."""
    torch.manual_seed(0)
    model = DeMoModel(tiny_demo_config(backbone_type=family, image_size=IMAGE_SIZE)).train()
    tower = model.vision_tower
    assert [p is tower.embeddings.camera_embedding for p in tower.new_parameters()] == [True]
    pixels = random_triples(2, IMAGE_SIZE, seed=2)
    out_a = model(pixels, camera_ids=torch.tensor([0, 0]))
    out_b = model(pixels, camera_ids=torch.tensor([1, 1]))
    assert not torch.allclose(out_a.embeddings, out_b.embeddings, atol=1e-5)
    sum(logits.sum() for logits in out_a.logits.values()).backward()
    grad = tower.embeddings.camera_embedding.grad
    assert grad is not None and grad[0].abs().sum() > 0 and grad[2:].abs().sum() == 0


def test_normalization_is_the_towers_own(towers, tmp_path):
    """CLIP keeps the authors' 0.5 / 0.5; another tower takes its processor config's mean / std, which the collator,
    the checkpoint's image processor and the augmentation's black padding then use."""
    from PIL import Image

    from mmreid.data.augment import ReIDAugment
    from mmreid.data.collate import collator_for
    from mmreid.hub.backbones import backbone_config
    from mmreid.hub.processors import build_processor

    clip = tower_normalization(str(towers["clip"]), backbone_config(str(towers["clip"])))
    assert clip == {"image_mean": (0.5, 0.5, 0.5), "image_std": (0.5, 0.5, 0.5)}
    dino = tower_normalization(str(towers["dinov3_vit"]), backbone_config(str(towers["dinov3_vit"])))
    assert dino == {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    config = tiny_demo_config(backbone_type="dinov3_vit", image_size=IMAGE_SIZE, **dino)
    grey = Image.new("RGB", (16, 32), (128, 128, 128))
    batch = collator_for(config, train=False)([{"rgb": grey, "nir": grey, "tir": grey, "label": 0, "camid": 0,
                                                "pid": 0, "sceneid": 0}])
    expected = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(batch["pixel_values"][0, 0, :, 0, 0], torch.tensor(expected), atol=1e-5, rtol=0)
    processor = build_processor(config)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == list(IMAGENET_MEAN) and saved["image_std"] == list(IMAGENET_STD)
    from_processor = processor([grey, grey, grey], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_processor, batch["pixel_values"], atol=1e-5, rtol=0)
    augment = ReIDAugment(flip_prob=0.0, erasing_prob=0.0, padding=4)
    augment.set_black(config.image_mean, config.image_std)
    padded = augment._pad(torch.zeros(1, 3, 2, 2))
    black = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(padded[0, :, 0, 0], torch.tensor(black), atol=1e-6, rtol=0)


def test_unsupported_family_is_one_line_naming_the_supported(tmp_path):
    from transformers import ConvNextConfig

    from mmreid.hub.factory import ModelRecipe

    ConvNextConfig().save_pretrained(tmp_path)
    with pytest.raises(UsageError) as error:
        ModelRecipe.resolve("demo", str(tmp_path), {})
    message = str(error.value)
    assert "'convnext' checkpoint" in message and "DINOv3 ViT" in message and "SigLIP 2" in message
    assert "\n" not in message


def test_next_on_an_image_only_tower_needs_a_text_backbone(towers, clip_text):
    from mmreid.hub.factory import ModelRecipe

    with pytest.raises(UsageError, match=r"--backbone .*'dinov3_vit' image tower without a text tower.*"
                                         r"--text-backbone") as error:
        ModelRecipe.resolve("next", str(towers["dinov3_vit"]), {})
    assert "\n" not in str(error.value)
    assert ModelRecipe.resolve("next", str(towers["dinov3_vit"]), {"use_text": False}).text_backbone is None
    recipe = ModelRecipe.resolve("next", str(towers["dinov3_vit"]), dict(NEXT_SIZES), text_backbone=str(clip_text))
    config = recipe.config(num_labels=4, num_cameras=2, image_size=IMAGE_SIZE)
    assert config.text_bridge and config.text_config.model_type == "clip_text_model"
    assert config.image_mean == IMAGENET_MEAN
    chosen = ModelRecipe.resolve("demo", str(towers["dinov3_vit"]), {"image_mean": [0.5, 0.5, 0.5]})
    assert chosen.config(num_labels=4, num_cameras=2).image_mean == (0.5, 0.5, 0.5)  # --image-mean beats the tower's
    with pytest.raises(UsageError, match="--text-backbone: --model demo has no text tower"):
        ModelRecipe.resolve("demo", str(towers["dinov3_vit"]), {}, text_backbone=str(clip_text))
    with pytest.raises(UsageError, match="--text-backbone: --backbone tiny is a random-init tower"):
        ModelRecipe.resolve("next", "tiny", {}, text_backbone=str(clip_text))


def test_next_on_a_dual_siglip2_reads_captions_as_siglip_does(tmp_path):
    """A dual SigLIP 2 checkpoint gives NEXT both towers (no bridge: trained together); a caption's embedding is
    SigLIP 2's own sentence embedding of the caption padded to the tower's length (as SigLIP was trained), whatever
    the batch's padding."""
    from transformers import Siglip2Config, Siglip2Model

    shapes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(2)
    dual = Siglip2Model(Siglip2Config(text_config=dict(shapes, vocab_size=64, max_position_embeddings=16,
                                                       pad_token_id=0, bos_token_id=1, eos_token_id=2),
                                      vision_config=dict(shapes, patch_size=8, num_patches=16))).eval()
    dual.save_pretrained(tmp_path)
    model = NextModel.from_pretrained_towers(tmp_path, image_size=IMAGE_SIZE, num_labels=4, num_cameras=2,
                                             **NEXT_SIZES).eval()
    assert model.config.text_config.model_type == "siglip2_text_model" and not model.config.text_bridge
    assert not hasattr(model, "text_bridge")
    ids = torch.randint(3, 64, (1, 1, 7))
    mask = torch.ones_like(ids)
    mask[..., 5:] = 0  # a 5-token caption in a batch padded to 7
    with torch.no_grad():
        ours = model.get_text_features(ids, mask).view(-1)
        padded = torch.nn.functional.pad(ids[0, :, :5], (0, 16 - 5), value=0)
        expected = dual.text_model(input_ids=padded).pooler_output.view(-1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def caption_set(tmp_path_factory):
    from conftest import build_tiny_dataset

    return build_tiny_dataset(tmp_path_factory.mktemp("synthetic"), seed=1, num_train_ids=6, num_test_ids=3,
                              images_per_id=4, captions=True)


@pytest.fixture(scope="module")
def clip_text_with_tokenizer(tmp_path_factory, caption_set):
    """A tiny CLIP text tower with the word-level tokenizer of the set's captions saved beside it."""
    from datasets import load_from_disk
    from transformers import CLIPTextModelWithProjection

    from mmreid.data.text import build_caption_tokenizer

    train_split = load_from_disk(caption_set)["train"]
    texts = [t for column in ("caption_rgb", "caption_nir", "caption_tir") for t in train_split[column] if t]
    tokenizer = build_caption_tokenizer(texts, model_max_length=48)
    folder = tmp_path_factory.mktemp("clip-text-tok")
    torch.manual_seed(6)
    CLIPTextModelWithProjection(tiny_text_config(tokenizer, projection_dim=48)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


RUN = ["--image-size", "32", "16", "--num-identities", "3", "--num-instances", "2", "--max-steps", "2",
       "--per-device-eval-batch-size", "32", "--save-strategy", "no", "--logging-steps", "1", "--disable-tqdm", "true"]


def test_demo_trains_on_dinov3_with_its_lr_groups(towers, caption_set, tmp_path):
    """train.py --backbone <a DINOv3 folder>: the tower at the tower rate, its camera embedding at the head rate,
    and a couple of steps with finite losses."""
    import math

    import train
    from mmreid.training.arguments import parse_args

    run = parse_args(["--model", "demo", "--backbone", str(towers["dinov3_vit"]), "--atmoe-heads", "2", *RUN,
                      "--dataset", caption_set, "--output-dir", str(tmp_path / "out")])
    trainer = train.build_trainer(run)[0]
    assert trainer.model.config.backbone_type == "dinov3_vit"
    groups = {g["name"]: g for g in trainer.create_optimizer().param_groups}
    sie = trainer.model.vision_tower.embeddings.camera_embedding
    tower = {id(p) for n, p in trainer.model.named_parameters() if n.startswith("vision_tower.") and p is not sie}
    assert {id(p) for p in groups["vision_tower"]["params"]} == tower
    assert any(p is sie for p in groups["head"]["params"])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_next_trains_on_siglip2_with_a_clip_text_backbone(towers, caption_set, clip_text_with_tokenizer, tmp_path):
    """train.py --model next --backbone <a SigLIP 2 image tower> --text-backbone <a CLIP text tower>: the run
    trains, and the checkpoint records the tower's normalisation (config and processor), its text bridge, the
    text tower's tokenizer, and a card naming the tower and its licence."""
    import train
    from transformers import AutoTokenizer

    out = tmp_path / "next"
    result = train.main(["--model", "next", "--backbone", str(towers["siglip2"]), "--text-backbone",
                         str(clip_text_with_tokenizer), *RUN, *[f"--{k.replace('_', '-')}={v}" for k, v in
                                                              NEXT_SIZES.items()],
                         "--dataset", caption_set, "--output-dir", str(out)])
    assert result["global_step"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "siglip2_vision_model" and config["text_bridge"] is True
    assert config["image_mean"] == list(IMAGENET_MEAN) and config["image_std"] == list(IMAGENET_STD)
    saved = out / "preprocessor_config.json"
    processor = json.loads((saved if saved.is_file() else out / "processor_config.json").read_text())
    processor = processor.get("image_processor", processor)
    assert processor["image_mean"] == list(IMAGENET_MEAN)
    assert len(AutoTokenizer.from_pretrained(out)) == len(AutoTokenizer.from_pretrained(clip_text_with_tokenizer))
    card = (out / "README.md").read_text()
    assert "Image tower: SigLIP 2, licence: Apache-2.0" in card and "Text tower:" in card

"""Tower configurations: the papers' ViT-B/16 shapes (no download needed) and tiny ones for tests."""

from transformers import CLIPTextConfig, CLIPVisionConfig, ViTConfig

from configuration_demo import VIT_B16_SHAPES, DeMoConfig
from configuration_next import NextConfig


def clip_vit_b16_vision_config() -> CLIPVisionConfig:
    """Shapes of OpenAI CLIP ViT-B/16's image tower (weights come from `from_vision_pretrained`)."""
    return CLIPVisionConfig(**VIT_B16_SHAPES, projection_dim=512, hidden_act="quick_gelu")


def vit_b16_vision_config() -> ViTConfig:
    """Shapes of the ImageNet ViT-B/16 tower used by DeMo*."""
    return ViTConfig(**VIT_B16_SHAPES)


def tiny_vision_config(
    backbone_type: str = "clip",
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    patch_size: int = 8,
    image_size: int = 32,
    projection_dim: int = 64,
):
    """A few-thousand-parameter tower of the same architecture, for tests and the CPU demo run."""
    shapes = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        patch_size=patch_size,
        image_size=image_size,
    )
    if backbone_type == "clip":
        return CLIPVisionConfig(**shapes, projection_dim=projection_dim, hidden_act="quick_gelu")
    if backbone_type == "vit":
        return ViTConfig(**shapes)
    raise ValueError(f"backbone_type must be 'clip' or 'vit', got {backbone_type!r}")


def tiny_demo_config(
    num_labels: int = 8,
    num_cameras: int = 4,
    image_size: tuple[int, int] = (32, 16),
    backbone_type: str = "clip",
    vision_overrides: dict | None = None,
    **overrides,
) -> DeMoConfig:
    """A tiny DeMo configuration (feature size 64, 2 ATMoE heads) for tests and smoke runs."""
    vision = tiny_vision_config(backbone_type, **(vision_overrides or {}))
    overrides.setdefault("atmoe_heads", 2)
    return DeMoConfig(
        vision_config=vision,
        image_size=image_size,
        num_labels=num_labels,
        num_cameras=num_cameras,
        **overrides,
    )


def tiny_text_config(
    tokenizer=None,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    projection_dim: int = 64,
    max_position_embeddings: int | None = None,
) -> CLIPTextConfig:
    """A tiny CLIP text tower whose vocabulary and special ids are the tokenizer's (a 64-word stand-in without one)."""
    if tokenizer is not None:
        ids = dict(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        max_length = max_position_embeddings or tokenizer.model_max_length
    else:
        ids = dict(vocab_size=64, bos_token_id=62, eos_token_id=63, pad_token_id=0)
        max_length = max_position_embeddings or 32
    return CLIPTextConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        projection_dim=projection_dim,
        max_position_embeddings=max_length,
        hidden_act="quick_gelu",
        **ids,
    )


def tiny_next_config(
    tokenizer=None,
    num_labels: int = 8,
    num_cameras: int = 4,
    image_size: tuple[int, int] = (32, 16),
    vision_overrides: dict | None = None,
    text_overrides: dict | None = None,
    **overrides,
) -> NextConfig:
    """A tiny NEXT configuration (C = 64, 4x2 patches, 3 + 3 experts, k = 2) for tests and the CPU demo run.

    `tokenizer` (e.g. from `demo_reid.text.build_caption_tokenizer`) sets the text vocabulary, special ids and the
    maximum caption length; save it beside the model so `AutoTokenizer.from_pretrained(checkpoint)` finds it.
    """
    vision = tiny_vision_config("clip", **(vision_overrides or {}))
    text_overrides = dict(text_overrides or {})
    text_overrides.setdefault("projection_dim", vision.projection_dim)
    text = tiny_text_config(tokenizer, **text_overrides)
    for key, value in dict(
        num_semantic_experts=3, num_structure_experts=3, structure_slots_per_expert=2, tokens_per_expert=2
    ).items():
        overrides.setdefault(key, value)
    return NextConfig(
        vision_config=vision,
        text_config=text,
        image_size=image_size,
        num_labels=num_labels,
        num_cameras=num_cameras,
        **overrides,
    )

"""Vision tower configurations: the papers' ViT-B/16 shapes (no download needed) and tiny ones for tests."""

from transformers import CLIPVisionConfig, ViTConfig

from configuration_demo import VIT_B16_SHAPES, DeMoConfig


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

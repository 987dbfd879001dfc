"""Towers a model is built around: the papers' pretrained checkpoint, towers from random initialisation by name, and
tiny configurations for tests.

A backbone is named by ``--backbone``: a checkpoint (Hub id or local directory) of one of the tower families of
:data:`configuration_reid.BACKBONE_MODEL_TYPES` (CLIP, MetaCLIP 2, SigLIP, SigLIP 2, DINOv2 with or without registers,
DINOv3 ViT, ViT; a dual image-text checkpoint gives its image half), whose config :func:`backbone_config` reads and
whose weights the model's ``from_pretrained_towers`` loads; or one of :data:`RANDOM_BACKBONES`, shapes only, trained
from random initialisation (never by accident: only by name). ``--text-backbone`` names the text tower of a model that
reads captions when ``--backbone`` has none (:func:`text_backbone_config`). :func:`tower_normalization` reads the
pixel mean / std of a tower's own processor config.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from transformers import (
    AutoConfig,
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
    Dinov2Config,
    Dinov2WithRegistersConfig,
    DINOv3ViTConfig,
    MetaClip2VisionConfig,
    PretrainedConfig,
    Siglip2VisionConfig,
    SiglipVisionConfig,
    ViTConfig,
)

from configuration_demo import DeMoConfig
from configuration_next import TEXT_TOWER_MODEL_TYPES, NextConfig
from configuration_reid import (
    AUTHORS_IMAGE_MEAN,
    AUTHORS_IMAGE_STD,
    BACKBONE_MODEL_TYPES,
    CLIP_B16_TEXT_SHAPES,
    DUAL_MODEL_TYPES,
    VIT_B16_SHAPES,
    pretrained_normalization,
)

from ..errors import UsageError, first_line

__all__ = [
    "PRETRAINED_BACKBONE",
    "RANDOM_BACKBONES",
    "SUPPORTED_CHECKPOINT_TYPES",
    "backbone_config",
    "dinov3_vit_b16_vision_config",
    "text_backbone_config",
    "tower_normalization",
    "clip_vit_b16_vision_config",
    "hub_id_of",
    "local_or_hub",
    "tiny_demo_config",
    "tiny_next_config",
    "tiny_text_config",
    "tiny_vision_config",
    "vit_b16_vision_config",
]

# The authors always start from OpenAI CLIP ViT-B/16; the real presets load it through from_pretrained_towers.
PRETRAINED_BACKBONE = "openai/clip-vit-base-patch16"


def clip_vit_b16_vision_config() -> CLIPVisionConfig:
    """Shapes of OpenAI CLIP ViT-B/16's image tower (weights come from `from_pretrained_towers`)."""
    return CLIPVisionConfig(**VIT_B16_SHAPES, projection_dim=512, hidden_act="quick_gelu")


def vit_b16_vision_config() -> ViTConfig:
    """Shapes of the ImageNet ViT-B/16 tower used by DeMo*."""
    return ViTConfig(**VIT_B16_SHAPES)


def dinov3_vit_b16_vision_config() -> DINOv3ViTConfig:
    """Shapes of DINOv3 ViT-B/16 (4 register tokens, rotary positions; weights come from `from_pretrained_towers`)."""
    return DINOv3ViTConfig(**VIT_B16_SHAPES, num_register_tokens=4)


def _clip_b16_random() -> CLIPConfig:
    return CLIPConfig(vision_config=clip_vit_b16_vision_config().to_dict(), text_config=CLIP_B16_TEXT_SHAPES,
                      projection_dim=512)


def _tiny_clip() -> CLIPConfig:
    """The synthetic preset's tower: a 3-layer, 96-wide CLIP-shaped image tower (patch 8) and a 2-layer, 64-wide text
    tower, both projecting to 96; a minute of training on 2 CPU cores."""
    vision = tiny_vision_config("clip", hidden_size=96, num_hidden_layers=3, num_attention_heads=3, patch_size=8,
                                image_size=64, projection_dim=96)
    text = tiny_text_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=96)
    return CLIPConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), projection_dim=96)


# Towers built from random initialisation, only when asked for by name (shapes only: not the papers' recipe). A text
# tower's vocabulary and special ids are set from the run's tokenizer (see mmreid.hub.factory).
RANDOM_BACKBONES = {
    "tiny": _tiny_clip,
    "clip-b16-random": _clip_b16_random,
    "vit-b16-random": vit_b16_vision_config,
    "dinov3-vitb16-random": dinov3_vit_b16_vision_config,
}
# model_type of the checkpoints --backbone takes: every image tower of the family, and the dual models holding one.
SUPPORTED_CHECKPOINT_TYPES = (*BACKBONE_MODEL_TYPES.values(), *DUAL_MODEL_TYPES)
SUPPORTED_FAMILIES = "CLIP, MetaCLIP 2, SigLIP, SigLIP 2, DINOv2 (with or without registers), DINOv3 ViT or ViT"
BACKBONE_HINT = (f"point --backbone at a Hub id or local directory holding a {SUPPORTED_FAMILIES} checkpoint "
                 "(config.json + weights, e.g. saved with save_pretrained), or name a random-init tower: "
                 + ", ".join(RANDOM_BACKBONES))


def local_or_hub(name: str) -> str:
    """A local directory's path (``~`` expanded) when it exists, else the name as given (a Hub id)."""
    local = Path(name).expanduser()
    return str(local) if local.exists() else name


def _read_config(option: str, name: str, hint: str) -> PretrainedConfig:
    """The config.json of a checkpoint named by ``option`` (a local directory or a Hub id), or a one-line
    :class:`UsageError`."""
    local = Path(name).expanduser()
    if (name.startswith((".", "/", "~")) or local.exists()) and not (local / "config.json").is_file():
        raise UsageError(f"{option} {name}: no config.json in that directory; {hint}")
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would bury the one-line error below
    try:
        return AutoConfig.from_pretrained(local_or_hub(name))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{option} {name}: could not load it ({first_line(exc)}); {hint}") from None
    finally:
        hub_logger.setLevel(level)


def backbone_config(backbone: str) -> PretrainedConfig:
    """The config of ``--backbone``: the named random tower's shapes, or the checkpoint's own config.

    Raises :class:`UsageError` (one line, before anything is written) when it names no loadable checkpoint of a
    supported tower family.
    """
    if backbone in RANDOM_BACKBONES:
        return RANDOM_BACKBONES[backbone]()
    config = _read_config("--backbone", backbone, BACKBONE_HINT)
    if config.model_type not in SUPPORTED_CHECKPOINT_TYPES:
        raise UsageError(f"--backbone {backbone} is a {config.model_type!r} checkpoint; the supported tower families "
                         f"are {SUPPORTED_FAMILIES} ({', '.join(SUPPORTED_CHECKPOINT_TYPES)})")
    return config


TEXT_BACKBONE_HINT = ("point --text-backbone at a Hub id or local directory holding a CLIP, MetaCLIP 2, SigLIP or "
                      "SigLIP 2 checkpoint (the dual model or its text tower) with its tokenizer files")


def text_backbone_config(text_backbone: str) -> PretrainedConfig:
    """The config of ``--text-backbone``: a dual CLIP-like / SigLIP checkpoint or its text tower, or a one-line
    :class:`UsageError`."""
    config = _read_config("--text-backbone", text_backbone, TEXT_BACKBONE_HINT)
    if config.model_type not in (*TEXT_TOWER_MODEL_TYPES, *DUAL_MODEL_TYPES):
        raise UsageError(f"--text-backbone {text_backbone} is a {config.model_type!r} checkpoint; expected a text "
                         "tower "
                         f"({', '.join((*DUAL_MODEL_TYPES, *TEXT_TOWER_MODEL_TYPES))})")
    return config


def tower_normalization(backbone: str | None, tower_config: PretrainedConfig | None) -> dict:
    """``image_mean`` / ``image_std`` a run on ``--backbone`` normalises its pixels with
    (:func:`configuration_reid.pretrained_normalization`): the authors' mean = std = 0.5 on CLIP towers and on the
    random-init towers, else the tower's own processor config's. A folder without one keeps 0.5 / 0.5 (said once in
    the log)."""
    authors = {"image_mean": AUTHORS_IMAGE_MEAN, "image_std": AUTHORS_IMAGE_STD}
    if backbone is None or backbone in RANDOM_BACKBONES or tower_config is None:
        return authors
    values = pretrained_normalization(local_or_hub(backbone), tower_config.model_type)
    if not values:
        logging.getLogger(__name__).warning("--backbone %s: no preprocessor_config.json with image_mean / image_std; "
                                            "normalising with the authors' mean = std = 0.5", backbone)
        return authors
    return values


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
    if backbone_type == "metaclip_2":
        return MetaClip2VisionConfig(**shapes, projection_dim=projection_dim)
    if backbone_type == "siglip":
        return SiglipVisionConfig(**shapes)
    if backbone_type == "siglip2":
        shapes.pop("image_size")
        return Siglip2VisionConfig(**shapes, num_patches=(image_size // patch_size) ** 2)
    if backbone_type == "dinov2":
        return Dinov2Config(**shapes)
    if backbone_type == "dinov2_with_registers":
        return Dinov2WithRegistersConfig(**shapes, num_register_tokens=2)
    if backbone_type == "dinov3_vit":
        return DINOv3ViTConfig(**shapes, num_register_tokens=2, layerscale_value=0.5)
    if backbone_type == "vit":
        return ViTConfig(**shapes)
    raise ValueError(f"backbone_type must be one of {', '.join(BACKBONE_MODEL_TYPES)}, got {backbone_type!r}")


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
        ids = tokenizer_ids(tokenizer)
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


def tokenizer_ids(tokenizer) -> dict:
    """The text-config fields a random text tower takes from its tokenizer: vocabulary size and special ids."""
    return dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
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

    `tokenizer` (e.g. from `mmreid.data.text.build_caption_tokenizer`) sets the text vocabulary, special ids and
    the maximum caption length; save it beside the model so `AutoTokenizer.from_pretrained(checkpoint)` finds it.
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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id_of(backbone: str) -> str | None:
    """The Hub id of the pretrained tower, for a model card's ``base_model``: ``backbone`` itself when it names a
    Hub repo, the ``_name_or_path`` recorded in a local checkpoint's config.json when that is one; None otherwise."""
    if backbone in RANDOM_BACKBONES:
        return None
    local = Path(backbone).expanduser()
    if not local.exists():
        return backbone if _HUB_ID.match(backbone) else None
    try:
        recorded = json.loads((local / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, str) and _HUB_ID.match(recorded) and not Path(recorded).exists() else None

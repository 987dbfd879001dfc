"""Configuration of NEXT (arXiv 2505.20001): text-modulated multi-grained experts for multi-modal object ReID."""

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

try:
    from .configuration_demo import HEAD_INITS, VIT_B16_SHAPES
except ImportError:  # imported as a top-level module from a checkout
    from configuration_demo import HEAD_INITS, VIT_B16_SHAPES

# Shapes of OpenAI CLIP ViT-B/16's text tower (CLIPTextConfig's defaults, written out so they do not drift).
CLIP_B16_TEXT_SHAPES = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    projection_dim=512,
    hidden_act="quick_gelu",
)


def _sub_config(value, full_key: str, model_type: str, name: str, defaults: dict):
    """A CLIP vision / text sub-config from None (defaults), a config object, its dict, or a full CLIP config dict."""
    if value is None:
        return CONFIG_MAPPING[model_type](**defaults)
    if isinstance(value, PretrainedConfig):
        if value.model_type == "clip":  # a full CLIPConfig: keep its half
            value = getattr(value, full_key)
        if value.model_type != model_type:
            raise ValueError(f"{name} must be a {model_type!r} config (CLIP), got model_type={value.model_type!r}")
        return value
    if isinstance(value, dict):
        given_type = value.get("model_type", model_type)
        if given_type == "clip":
            value, given_type = value.get(full_key, {}), model_type
        if given_type != model_type:
            raise ValueError(f"{name} must be a {model_type!r} config (CLIP), got model_type={given_type!r}")
        return CONFIG_MAPPING[model_type](**{k: v for k, v in value.items() if k != "model_type"})
    raise TypeError(f"{name} must be a {model_type} config, a dict or None, got {type(value).__name__}")


class NextConfig(PretrainedConfig):
    r"""
    Configuration of a [`NextModel`]: one CLIP image tower shared by the RGB, NIR and TIR images of a triple, a frozen
    CLIP text tower for the captions, Text-Modulated Semantic Experts (TMSE), Context-Shared Structure Experts (CSSE)
    and Multi-Grained Feature Aggregation (MGFA).

    Args:
        vision_config (`CLIPVisionConfig` or `dict`, *optional*):
            The image tower. Its `image_size` is the size the pretrained position table was trained at; the table is
            resized once to `image_size` below. Defaults to CLIP ViT-B/16 shapes. A full `CLIPConfig` (or its dict)
            is accepted and its vision half kept.
        text_config (`CLIPTextConfig` or `dict`, *optional*):
            The frozen text tower. `vocab_size` and the `bos/eos/pad_token_id` must be those of the tokenizer saved
            with the model; its `projection_dim` must equal the image tower's (text and patches are compared by
            cosine). Defaults to CLIP ViT-B/16 text shapes.
        image_size (`tuple[int, int]`, *optional*, defaults to `(256, 128)`):
            Input (height, width) of every modality image.
        num_labels (`int`, *optional*, defaults to 171):
            Number of training identities (RGBNT201's 171 when neither it nor `id2label` is given).
        num_cameras (`int`, *optional*, defaults to 0):
            Cameras of the Side Information Embedding on the class token; 0 disables it.
        sie_coefficient (`float`, *optional*, defaults to 1.0):
            Scale of the camera embedding.
        num_semantic_experts (`int`, *optional*, defaults to 4):
            N_s, the TMSE experts; each reads its own caption sentences and selects its own patches.
        num_structure_experts (`int`, *optional*, defaults to 4):
            N_c, the CSSE experts behind the shared soft router.
        structure_slots_per_expert (`int`, *optional*, defaults to 4):
            Soft-MoE slots each structure expert processes (our choice; the figure does not show slots).
        tokens_per_expert (`int`, *optional*, defaults to 16):
            k, patches each semantic expert selects per modality (3k tokens in all); at most the patch count.
        caption_sentences_per_expert (`int`, *optional*, defaults to 2):
            Sentences of each modality's caption a semantic expert sees in training (read by the data collator;
            evaluation uses the whole caption).
        use_tmse / use_csse / use_text (`bool`, *optional*, default to `True`):
            Ablation switches. Without TMSE the text has nothing to modulate, so `use_text` then has no effect and no
            text tower is built; `use_text=False` replaces every caption by the experts' learned "no text" embedding.
        head_init (`str`, *optional*, defaults to `"pytorch"`):
            Initialisation of the new layers: `"pytorch"` (PyTorch's module defaults, as DeMo's authors leave them)
            or `"normal"` (normal(0, initializer_range), zero biases).
        id_loss_weight, triplet_loss_weight, label_smoothing, triplet_margin:
            Loss recipe read by the trainer, applied to every head; `triplet_margin=None` = soft-margin triplet.
    """

    model_type = "next_reid"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        image_size=(256, 128),
        num_labels=None,
        num_cameras=0,
        sie_coefficient=1.0,
        num_semantic_experts=4,
        num_structure_experts=4,
        structure_slots_per_expert=4,
        tokens_per_expert=16,
        caption_sentences_per_expert=2,
        use_tmse=True,
        use_csse=True,
        use_text=True,
        id_loss_weight=0.25,
        triplet_loss_weight=1.0,
        label_smoothing=0.1,
        triplet_margin=None,
        head_init="pytorch",
        initializer_range=0.02,
        **kwargs,
    ):
        backbone_type = kwargs.pop("backbone_type", "clip")
        if backbone_type != "clip":
            raise ValueError(f"NEXT needs a CLIP image tower (text and patches share its space), got {backbone_type!r}")
        self.vision_config = _sub_config(
            vision_config,
            "vision_config",
            "clip_vision_model",
            "vision_config",
            dict(**VIT_B16_SHAPES, projection_dim=512, hidden_act="quick_gelu"),
        )
        self.text_config = _sub_config(
            text_config, "text_config", "clip_text_model", "text_config", CLIP_B16_TEXT_SHAPES
        )

        image_size = tuple(int(s) for s in image_size)
        patch = self.vision_config.patch_size
        if len(image_size) != 2 or any(s <= 0 or s % patch for s in image_size):
            raise ValueError(
                f"image_size must be (height, width), both multiples of patch_size={patch}; got {image_size}"
            )
        self.image_size = image_size
        counts = dict(
            num_semantic_experts=num_semantic_experts,
            num_structure_experts=num_structure_experts,
            structure_slots_per_expert=structure_slots_per_expert,
            tokens_per_expert=tokens_per_expert,
            caption_sentences_per_expert=caption_sentences_per_expert,
        )
        for name, value in counts.items():
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_cameras < 0:
            raise ValueError(f"num_cameras must be >= 0, got {num_cameras}")
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")

        self.num_cameras = int(num_cameras)
        self.sie_coefficient = float(sie_coefficient)
        self.num_semantic_experts = int(num_semantic_experts)
        self.num_structure_experts = int(num_structure_experts)
        self.structure_slots_per_expert = int(structure_slots_per_expert)
        self.tokens_per_expert = int(tokens_per_expert)
        self.caption_sentences_per_expert = int(caption_sentences_per_expert)
        self.use_tmse = bool(use_tmse)
        self.use_csse = bool(use_csse)
        self.use_text = bool(use_text)
        self.id_loss_weight = float(id_loss_weight)
        self.triplet_loss_weight = float(triplet_loss_weight)
        self.label_smoothing = float(label_smoothing)
        self.triplet_margin = triplet_margin
        self.head_init = head_init
        self.initializer_range = initializer_range
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        elif "id2label" not in kwargs:
            kwargs["num_labels"] = 171
        super().__init__(**kwargs)

        rows, cols = self.patch_grid
        if self.tokens_per_expert > rows * cols:
            raise ValueError(
                f"tokens_per_expert={self.tokens_per_expert} exceeds the {rows * cols} patches per modality of "
                f"image_size={image_size} (patch grid {rows}x{cols})"
            )
        text_dim = self.text_config.projection_dim
        if self.feature_dim != text_dim:
            raise ValueError(
                f"vision_config.projection_dim={self.feature_dim} must equal text_config.projection_dim={text_dim}: "
                "the text relevance is a cosine between text and patch embeddings"
            )

    @property
    def backbone_type(self) -> str:
        """Always `"clip"` (read by the image tower shared with DeMo)."""
        return "clip"

    @property
    def feature_dim(self) -> int:
        """Size C of one token: the CLIP projection dimension (512 for ViT-B/16), shared by image and text."""
        return self.vision_config.projection_dim

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of `image_size`."""
        patch = self.vision_config.patch_size
        return self.image_size[0] // patch, self.image_size[1] // patch

    @property
    def uses_text(self) -> bool:
        """Whether captions reach the model: only the semantic experts read text."""
        return self.use_text and self.use_tmse


__all__ = ["NextConfig"]

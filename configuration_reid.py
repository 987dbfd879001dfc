"""The ReID family's shared configuration: `ReIDConfig`, the options every multi-modal (RGB / NIR / TIR) ReID model
here shares (one image tower, camera embedding, BN-neck heads), `MODALITIES`, and the option checks the models' own
configs use. DeMo's configuration_demo.py and NEXT's configuration_next.py build on it; ships with every checkpoint."""

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# The modalities of a triple, in the order of every modality axis: images, masks, captions, dataset columns.
MODALITIES = ("rgb", "nir", "tir")
# The image-tower families a ReID model here can be built on (their one list; modeling_reid.py's TOWER_ADAPTERS says
# how each is built and loaded): backbone_type -> model_type of the image tower's config.
BACKBONE_MODEL_TYPES = {
    "clip": "clip_vision_model",
    "metaclip_2": "metaclip_2_vision_model",
    "siglip": "siglip_vision_model",
    "siglip2": "siglip2_vision_model",
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2_with_registers",
    "dinov3_vit": "dinov3_vit",
    "vit": "vit",
}
# Dual (image + text) checkpoints: model_type -> (model_type of its image half, of its text half).
DUAL_MODEL_TYPES = {
    "clip": ("clip_vision_model", "clip_text_model"),
    "metaclip_2": ("metaclip_2_vision_model", "metaclip_2_text_model"),
    "siglip": ("siglip_vision_model", "siglip_text_model"),
    "siglip2": ("siglip2_vision_model", "siglip2_text_model"),
}
# Families whose image tower has a projection into the joint image-text space, applied to every token (CLIP's
# ln_post + visual projection); the feature size C is then the projection's, else the tower's width.
PROJECTED_FAMILIES = ("clip", "metaclip_2")
# Families without a class token: the SigLIP towers (what stands in for it: modeling_reid.ReIDVisionTower).
NO_CLASS_TOKEN_FAMILIES = ("siglip", "siglip2")
# Pixel normalisation of the authors' CLIP recipe (and the default of every config): mean = std = 0.5 per channel.
AUTHORS_IMAGE_MEAN = (0.5, 0.5, 0.5)
AUTHORS_IMAGE_STD = (0.5, 0.5, 0.5)
# Shapes of the ViT-B/16 image tower (OpenAI CLIP and ImageNet ViT alike); CLIP adds a 512-d projection.
VIT_B16_SHAPES = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16, image_size=224
)
CLIP_B16_VISION_SHAPES = dict(**VIT_B16_SHAPES, projection_dim=512, hidden_act="quick_gelu")
HEAD_INITS = ("pytorch", "normal")
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

# The modality phrases of the captions IDEA's authors train on (their data/datasets/*_Text.py with PREFIX: True), by
# dataset: a caption reads "An image of a " + (a model's placeholders) + the modality's phrase + the description.
_SPECTRA = ("visible spectrum", "near infrared spectrum", "thermal infrared spectrum")
_DETAILS = (", capturing natural colors and fine details", ", capturing contrasts and surface reflectance",
            ", capturing heat emissions as temperature gradients")
MODALITY_CAPTION_PREFIXES = {
    "rgbnt201": tuple(f"person in the {s}{d}: " for s, d in zip(_SPECTRA, _DETAILS)),
    "rgbnt100": tuple(f"vehicle in the {s}: " for s in _SPECTRA),
    "msvr310": tuple(f"vehicle in the {s}{d}: " for s, d in zip(_SPECTRA, _DETAILS)),
}
# Token position of the first learnable text prompt vector (IDEA's `TEXT_PROMPT`, NEXT's `num_text_prompts`): the
# captions of IDEA's authors start "An image of a X X person ...", so after the start token the placeholders "X" sit
# at positions 5, 6, ...
PROMPT_POSITION = 5


def check_text_prompts(num_text_prompts, text_config: PretrainedConfig) -> int:
    """`num_text_prompts` as an int >= 0 whose prompt vectors fit in `text_config`'s captions; one-line errors."""
    if isinstance(num_text_prompts, bool) or not isinstance(num_text_prompts, int) or num_text_prompts < 0:
        raise ValueError(f"num_text_prompts must be an integer >= 0, got {num_text_prompts!r}")
    if PROMPT_POSITION + num_text_prompts >= text_config.max_position_embeddings:
        raise ValueError(f"num_text_prompts={num_text_prompts} does not fit in captions of "
                         f"{text_config.max_position_embeddings} tokens (prompts start at position {PROMPT_POSITION})")
    return num_text_prompts


def caption_prefixes(dataset: str | None, num_text_prompts: int) -> tuple[str, str, str] | None:
    """The text before each modality's caption, as IDEA's authors format it (their data/datasets/*_Text.py): "An
    image of a ", one placeholder "X " per prompt vector (so the prompts land on the placeholders), then the
    modality's phrase of `dataset`'s captions. None when there is no prefix."""
    if dataset is None:
        return None
    return tuple("An image of a " + "X " * num_text_prompts + phrase for phrase in MODALITY_CAPTION_PREFIXES[dataset])


def check_choice(name: str, value, choices: tuple) -> None:
    """One-line error naming the option and its allowed values."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def positive_int(name: str, value) -> int:
    """`value` as an int, or a one-line error naming the option (bools and fractions are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def parse_tower_config(value, key: str, model_types: tuple[str, ...], defaults: dict) -> PretrainedConfig:
    """A tower's config from None (`defaults`, of `model_types[0]`), a config object, its dict, or a full dual
    (image + text) config such as CLIP's or SigLIP's (object or dict), of which the `key` half is kept; a CLIP-like
    half gets the parent's `projection_dim`: CLIPModel projects with the parent's, whatever its halves say."""
    if value is None:
        return CONFIG_MAPPING[model_types[0]](**defaults)
    if isinstance(value, PretrainedConfig):
        if value.model_type not in DUAL_MODEL_TYPES:
            if value.model_type not in model_types:
                raise ValueError(_wrong_type(key, model_types, value.model_type))
            return value
        value = value.to_dict()
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be a config, its dict or None, got {type(value).__name__}")
    if value.get("model_type") in DUAL_MODEL_TYPES:
        halves = DUAL_MODEL_TYPES[value["model_type"]]
        half = dict(value.get(key) or {})
        if "projection_dim" in value:
            half["projection_dim"] = value["projection_dim"]
        value = {**half, "model_type": halves[0] if key == "vision_config" else halves[1]}
    model_type = value.get("model_type", model_types[0])
    if model_type not in model_types:
        raise ValueError(_wrong_type(key, model_types, model_type))
    return CONFIG_MAPPING[model_type](**{k: v for k, v in value.items() if k != "model_type"})


def _wrong_type(key: str, model_types: tuple[str, ...], got: str) -> str:
    return f"{key} must be a {' or '.join(repr(t) for t in model_types)} config, got model_type={got!r}"


class ReIDConfig(PretrainedConfig):
    r"""
    The options every multi-modal ReID model here shares: one image tower that encodes the RGB, NIR and TIR images of
    a triple (with a camera embedding on its class token), and a BN-neck + identity classifier per supervised feature.
    [`DeMoConfig`] and [`NextConfig`] add their models' own options.

    Args:
        vision_config (`dict | PretrainedConfig | None`, *optional*, defaults to `None`):
            The image tower: a config of one of `tower_model_types` (CLIP, MetaCLIP 2, SigLIP, SigLIP 2, DINOv2 with
            or without registers, DINOv3 ViT, ViT: `BACKBONE_MODEL_TYPES`), its dict, or a full dual config such as
            `CLIPConfig` / `SiglipConfig` (its vision half; a CLIP-like one with the parent's `projection_dim`); None
            gives CLIP ViT-B/16's shapes.
        image_size (`tuple[int, int]`, *optional*, defaults to `(256, 128)`):
            Input (height, width) of every modality image, both multiples of the patch size; the position table is
            resized to it once, when pretrained towers are loaded.
        num_labels (`int | None`, *optional*, defaults to `None`):
            Training identities, i.e. classifier outputs; None means RGBNT201's 171 unless `id2label` names them.
        num_cameras (`int`, *optional*, defaults to `0`):
            Cameras of the Side Information Embedding (SIE) added to the class token; 0 disables it.
        sie_coefficient (`float`, *optional*, defaults to `1.0`):
            Scale of the camera embedding added to the class token.
        head_init (`str`, *optional*, defaults to `"pytorch"`):
            Initialisation of the new (not pretrained) layers: `"pytorch"` = PyTorch's module defaults, as the DeMo
            authors' code leaves them; `"normal"` = normal(0, `initializer_range`) weights and zero biases, the HF way.
        initializer_range (`float`, *optional*, defaults to `0.02`):
            Standard deviation of the normal initialisation of the tower (and of the new layers with
            `head_init="normal"`); pretrained weights overwrite the tower's.
        inference_features (`str | None`, *optional*, defaults to `None`):
            The retrieval feature `embeddings`, one of the model's `inference_feature_choices`; None gives the first
            (the model's default). DeMo: `"all"`, `"ori"`, `"moe"`; NEXT: `"final"`, `"all"` (each model's config
            says what they are).
        image_mean (`list[float]`, *optional*, defaults to `(0.5, 0.5, 0.5)`):
            Per-channel (R, G, B) mean of the pixel normalisation the model was trained with (training, evaluation,
            the checkpoint's image processor and pipeline all read it). The authors' CLIP recipe uses 0.5; a run on
            another tower takes its processor config's (`mmreid.hub.backbones.tower_normalization`) unless set.
        image_std (`list[float]`, *optional*, defaults to `(0.5, 0.5, 0.5)`):
            Per-channel standard deviation of that normalisation.
    """

    sub_configs = {"vision_config": AutoConfig}
    # model_type of the image-tower configs this model family can run (class attribute, not an option).
    tower_model_types = tuple(BACKBONE_MODEL_TYPES.values())
    # The retrieval features a model offers, its default first (class attribute; empty: any value is kept as is).
    inference_feature_choices: tuple[str, ...] = ()
    # Whether the model reads captions (class attribute or property): the run then loads a tokenizer, batches carry
    # captions, and checkpoints ship the caption processor (processing_reid.py) with the tokenizer.
    uses_text = False
    # Captions of a training sample: `caption_groups` sets (e.g. one per expert) of `caption_sentences_per_group`
    # sentences of each modality's caption (None: a count uniform in [1, n], seeded per sample); evaluation reads
    # the whole caption once. Read by the data collator of a model with `uses_text`.
    caption_groups = 1
    caption_sentences_per_group = None
    # False: training reads each caption whole too, one per modality, (B, 3, L), as evaluation does (IDEA's authors).
    caption_sampling = True
    # Text put before each modality's caption (RGB, NIR, TIR), an empty caption included, by the data collator and
    # the caption processor (a model trained on captions with a fixed modality prefix); None: none.
    caption_prefixes: tuple[str, str, str] | None = None

    def __init__(
        self,
        *,
        vision_config: dict | PretrainedConfig | None = None,
        image_size: tuple[int, int] = (256, 128),
        num_labels: int | None = None,
        num_cameras: int = 0,
        sie_coefficient: float = 1.0,
        head_init: str = "pytorch",
        initializer_range: float = 0.02,
        inference_features: str | None = None,
        image_mean: list[float] = AUTHORS_IMAGE_MEAN,
        image_std: list[float] = AUTHORS_IMAGE_STD,
        **kwargs,
    ):
        # Older config.json files stored backbone_type; it is derived from the tower now and only has to agree.
        legacy_backbone_type = kwargs.pop("backbone_type", None)
        self.vision_config = parse_tower_config(
            vision_config, "vision_config", self.tower_model_types, CLIP_B16_VISION_SHAPES
        )
        if legacy_backbone_type is not None and legacy_backbone_type != self.backbone_type:
            raise ValueError(
                f"backbone_type={legacy_backbone_type!r} does not match vision_config.model_type="
                f"{self.vision_config.model_type!r} (backbone_type {self.backbone_type!r})"
            )
        image_size = tuple(int(s) for s in image_size)
        patch = tower_patch_size(self.vision_config)
        if len(image_size) != 2 or any(s <= 0 or s % patch for s in image_size):
            raise ValueError(f"image_size must be (height, width), both multiples of patch_size={patch}; got {image_size}")
        if num_cameras < 0:
            raise ValueError(f"num_cameras must be >= 0, got {num_cameras}")
        check_choice("head_init", head_init, HEAD_INITS)
        image_mean, image_std = channel_triple("image_mean", image_mean), channel_triple("image_std", image_std)
        if min(image_std) <= 0:
            raise ValueError(f"image_std must be positive per channel, got {image_std}")

        self.image_size = image_size
        self.num_cameras = int(num_cameras)
        self.sie_coefficient = float(sie_coefficient)
        self.head_init = head_init
        self.image_mean = image_mean
        self.image_std = image_std
        self.initializer_range = initializer_range
        if self.inference_feature_choices:
            if inference_features is None:
                inference_features = self.inference_feature_choices[0]
            check_choice("inference_features", inference_features, self.inference_feature_choices)
        self.inference_features = inference_features
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        elif "id2label" not in kwargs:
            kwargs["num_labels"] = 171
        super().__init__(**kwargs)

    @classmethod
    def from_backbone_config(cls, backbone_config: PretrainedConfig, **kwargs) -> "ReIDConfig":
        """The config of a new model around a pretrained tower: `backbone_config` is the tower checkpoint's config
        (an image-tower config of `BACKBONE_MODEL_TYPES`, or a dual one such as `CLIPConfig`, e.g.
        `AutoConfig.from_pretrained(path)`), `kwargs` the other options."""
        return cls(vision_config=backbone_config, **kwargs)

    @property
    def backbone_type(self) -> str:
        """The tower family (a key of `BACKBONE_MODEL_TYPES`: `"clip"`, `"siglip2"`, `"dinov3_vit"`, ...), from the
        tower config's model_type."""
        return {v: k for k, v in BACKBONE_MODEL_TYPES.items()}[self.vision_config.model_type]

    @property
    def feature_dim(self) -> int:
        """Size C of one token's feature: the projection of a CLIP-like tower (512 for CLIP ViT-B/16), else the
        tower's width (768 for the base towers)."""
        if self.backbone_type in PROJECTED_FAMILIES:
            return self.vision_config.projection_dim
        return self.vision_config.hidden_size

    @property
    def has_class_token(self) -> bool:
        """Whether the tower has a class token (the SigLIP towers have none; see `ReIDVisionTower`)."""
        return self.backbone_type not in NO_CLASS_TOKEN_FAMILIES

    @property
    def num_register_tokens(self) -> int:
        """Register tokens of the tower (DINOv2 with registers, DINOv3): in its sequence, never in its output."""
        return int(getattr(self.vision_config, "num_register_tokens", 0) or 0)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of `image_size`."""
        patch = tower_patch_size(self.vision_config)
        return self.image_size[0] // patch, self.image_size[1] // patch


def pretrained_normalization(path, model_type: str) -> dict:
    """`image_mean` / `image_std` of a model around the pretrained tower at `path` (a folder or Hub id) whose config
    has `model_type`: the authors' 0.5 / 0.5 for CLIP (their recipe, on which the parity with their features
    depends), else the statistics of the tower's own processor config (`preprocessor_config.json`), the ones it was
    pretrained with; {} when it has none (the config's default then applies)."""
    if model_type in ("clip", "clip_vision_model"):
        return {"image_mean": AUTHORS_IMAGE_MEAN, "image_std": AUTHORS_IMAGE_STD}
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        values, _ = ImageProcessingMixin.get_image_processor_dict(path)
    except (OSError, ValueError):
        return {}
    if values.get("image_mean") is None or values.get("image_std") is None:
        return {}
    return {"image_mean": channel_triple("image_mean", values["image_mean"]),
            "image_std": channel_triple("image_std", values["image_std"])}


def tower_patch_size(vision_config: PretrainedConfig) -> int:
    """The tower's (square) patch size; DINOv3's config may give it as a pair."""
    patch = vision_config.patch_size
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise ValueError(f"vision_config.patch_size={list(patch)}: only square patches are supported")
        patch = patch[0]
    return int(patch)


def channel_triple(name: str, value) -> tuple[float, float, float]:
    """Three per-channel floats from a float or a 3-sequence, or a one-line error naming the option."""
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{name} must be three per-channel numbers (R, G, B), got {value!r}")
    return tuple(float(v) for v in values)


__all__ = ["MODALITIES", "MODALITY_CAPTION_PREFIXES", "BACKBONE_MODEL_TYPES", "DUAL_MODEL_TYPES", "ReIDConfig",
           "check_choice", "positive_int", "parse_tower_config", "pretrained_normalization", "tower_patch_size",
           "channel_triple", "PROMPT_POSITION", "caption_prefixes", "check_text_prompts"]

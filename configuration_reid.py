"""The ReID family's shared configuration: `ReIDConfig`, the options every multi-modal (RGB / NIR / TIR) ReID model
here shares (one image tower, camera embedding, BN-neck heads), `MODALITIES`, and the option checks the models' own
configs use. DeMo's configuration_demo.py and NEXT's configuration_next.py build on it; ships with every checkpoint."""

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# The modalities of a triple, in the order of every modality axis: images, masks, captions, dataset columns.
MODALITIES = ("rgb", "nir", "tir")
# backbone_type -> model_type of the image tower's config.
BACKBONE_MODEL_TYPES = {"clip": "clip_vision_model", "vit": "vit"}
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
    """A tower's config from None (`defaults`, of `model_types[0]`), a config object, its dict, or a full CLIP config
    (object or dict), of which the `key` half is kept with the parent's `projection_dim`: CLIPModel projects with
    the parent's, whatever its halves say."""
    if value is None:
        return CONFIG_MAPPING[model_types[0]](**defaults)
    if isinstance(value, PretrainedConfig):
        if value.model_type != "clip":
            if value.model_type not in model_types:
                raise ValueError(_wrong_type(key, model_types, value.model_type))
            return value
        value = value.to_dict()
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be a config, its dict or None, got {type(value).__name__}")
    if value.get("model_type") == "clip":
        half = dict(value.get(key) or {})
        if "projection_dim" in value:
            half["projection_dim"] = value["projection_dim"]
        value = {"model_type": model_types[0], **half}
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
            The image tower: a config of one of `tower_model_types` (`CLIPVisionConfig`, `ViTConfig`), its dict, or a
            full `CLIPConfig` (its vision half, with the parent's `projection_dim`); None gives CLIP ViT-B/16's shapes.
            Its `image_size` is the size the pretrained position table was trained at.
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
    """

    sub_configs = {"vision_config": AutoConfig}
    # model_type of the image-tower configs this model family can run (class attribute, not an option).
    tower_model_types = ("clip_vision_model", "vit")
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
        patch = self.vision_config.patch_size
        if len(image_size) != 2 or any(s <= 0 or s % patch for s in image_size):
            raise ValueError(f"image_size must be (height, width), both multiples of patch_size={patch}; got {image_size}")
        if num_cameras < 0:
            raise ValueError(f"num_cameras must be >= 0, got {num_cameras}")
        check_choice("head_init", head_init, HEAD_INITS)

        self.image_size = image_size
        self.num_cameras = int(num_cameras)
        self.sie_coefficient = float(sie_coefficient)
        self.head_init = head_init
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
        (`CLIPConfig`, `CLIPVisionConfig` or `ViTConfig`, e.g. `AutoConfig.from_pretrained(path)`), `kwargs` the
        other options."""
        return cls(vision_config=backbone_config, **kwargs)

    @property
    def backbone_type(self) -> str:
        """`"clip"` (ln_post and the visual projection applied to every token) or `"vit"`, from the tower's type."""
        return {v: k for k, v in BACKBONE_MODEL_TYPES.items()}[self.vision_config.model_type]

    @property
    def feature_dim(self) -> int:
        """Size C of one token's feature: the CLIP projection (512 for ViT-B/16) or the ViT width (768)."""
        if self.backbone_type == "clip":
            return self.vision_config.projection_dim
        return self.vision_config.hidden_size

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of `image_size`."""
        patch = self.vision_config.patch_size
        return self.image_size[0] // patch, self.image_size[1] // patch


__all__ = ["MODALITIES", "MODALITY_CAPTION_PREFIXES", "ReIDConfig", "check_choice", "positive_int",
           "parse_tower_config"]

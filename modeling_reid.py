"""The ReID family's shared model code: what every multi-modal (RGB / NIR / TIR) ReID model here builds on.

DeMo (modeling_demo.py) and NEXT (modeling_next.py) are peers on this base, and a new method of the family is its own
configuration + modeling file on it: `ReIDPreTrainedModel` (the image tower `ReIDVisionTower` and its one pass over a
batch of triples, the BN-neck identity heads, input checks, weight init per module class, frozen submodules,
`from_pretrained_towers`), the tower registry `TOWER_ADAPTERS` (CLIP, MetaCLIP 2, SigLIP, SigLIP 2, DINOv2 with or
without registers, DINOv3 ViT, ViT, built from transformers' own layers), the layers the models share (`ReIDLinear`,
`ReIDBatchNorm1d`, `QuickGELU`) and the conversion of transformers tower weights (`tower_state_dict_from_hf`).
Ships with every checkpoint of the family.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPVisionModelWithProjection
from transformers.models.dinov2.modeling_dinov2 import Dinov2Layer, Dinov2Model
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersLayer,
    Dinov2WithRegistersModel,
)
from transformers.models.dinov3_vit.modeling_dinov3_vit import (
    DINOv3ViTLayer,
    DINOv3ViTModel,
    DINOv3ViTRopePositionEmbedding,
)
from transformers.models.metaclip_2.modeling_metaclip_2 import (
    MetaClip2EncoderLayer,
    MetaClip2VisionModelWithProjection,
)
from transformers.models.siglip.modeling_siglip import (
    SiglipEncoderLayer,
    SiglipMultiheadAttentionPoolingHead,
    SiglipVisionModel,
)
from transformers.models.siglip2.modeling_siglip2 import (
    Siglip2EncoderLayer,
    Siglip2MultiheadAttentionPoolingHead,
    Siglip2VisionEmbeddings,
    Siglip2VisionModel,
)
from transformers.models.vit.modeling_vit import ViTLayer, ViTModel

try:
    from .configuration_reid import (
        BACKBONE_MODEL_TYPES,
        DUAL_MODEL_TYPES,
        PROMPT_POSITION,
        ReIDConfig,
        pretrained_normalization,
        tower_patch_size,
    )
except ImportError:  # imported as a top-level module from a checkout
    from configuration_reid import (
        BACKBONE_MODEL_TYPES,
        DUAL_MODEL_TYPES,
        PROMPT_POSITION,
        ReIDConfig,
        pretrained_normalization,
        tower_patch_size,
    )

def is_exporting() -> bool:
    """Whether torch.export (and so the ONNX exporter) is tracing. False in eager mode and on torch releases without
    the flag."""
    flag = getattr(torch.compiler, "is_exporting", None)
    return flag is not None and flag()


def is_tracing() -> bool:
    """Whether torch.compile or torch.export is tracing the forward: checks that read tensor values are skipped then,
    as a traced graph cannot branch on them without a graph break (and, on a GPU, a host sync every forward). Eager
    mode runs every check."""
    return torch.compiler.is_compiling() or is_exporting()


class ReIDLinear(nn.Linear):
    """A Linear layer of the new (not pretrained) head modules.

    Its own class so that `_init_weights` can start it per `config.head_init` (by default PyTorch's Linear default,
    as the DeMo authors' code does) while the tower's Linear layers keep the HF CLIP / ViT initialisation.
    """


class QuickGELU(nn.Module):
    """The GELU approximation CLIP was trained with: x * sigmoid(1.702 x)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * torch.sigmoid(1.702 * hidden_states)


def resize_position_embedding(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a `(1 + rows * cols, D)` position table to `grid`, bilinearly (align_corners=False); CLS row kept."""
    cls_row, patch_rows = table[:1], table[1:]
    old = int(round(math.sqrt(patch_rows.shape[0])))
    if old * old != patch_rows.shape[0]:
        raise ValueError(f"pretrained position table has {patch_rows.shape[0]} patch rows, not a square grid")
    if (old, old) == tuple(grid):
        return table.clone()
    patches = patch_rows.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(grid), mode="bilinear", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(table.dtype)
    return torch.cat([cls_row, patches], dim=0)


@dataclass(frozen=True)
class TowerAdapter:
    """How one image-tower family becomes a `ReIDVisionTower`: which of transformers' layer classes it is built
    from, which transformers model loads its pretrained weights (its state dict renamed by the shared
    `tower_state_dict_from_hf`, its position table resized by `resize_like_transformers`), and what its embedding
    stage and ends have (patch embedding, position table or rotary positions, CLIP's pre-norm and projection).
    Class and register tokens follow from the tower's config (`ReIDConfig.has_class_token`, `num_register_tokens`).

    The tower keeps transformers' own module names below `layers.N` (`q_proj` / `k_proj` / `v_proj` in every family
    here), so adapters (LoRA) target them by name as on the transformers model.
    """

    layer_class: type
    source_class: type  # loads the pretrained tower (the image half of a dual checkpoint)
    unused_keys: tuple[str, ...]  # checkpoint keys a ReID model has no use for: loaded quietly, dropped
    patch_bias: bool = True
    patch_linear: bool = False  # SigLIP 2 embeds flattened (row, col, channel) patches with a Linear layer
    pre_layernorm: bool = False  # CLIP's pre_layrnorm
    projection: bool = False  # CLIP's visual projection, applied to every token
    position: str = "table"  # "table" (added once, after the class token is in) or "rope" (DINOv3, in each layer)
    class_position_row: bool = True  # the position table has a row for the class token


# Keys of a pretrained checkpoint that loading one tower leaves unused by design (a dual checkpoint's other tower and
# logit scale / bias, a ViT's pooler or classifier, DINO's mask token): loaded quietly; any other unexpected key is
# still reported.
UNUSED_CLIP_VISION_KEYS = (r"^text_model\.", r"^text_projection\.", r"^logit_scale$")
UNUSED_CLIP_TEXT_KEYS = (r"^vision_model\.", r"^visual_projection\.", r"^logit_scale$")
UNUSED_SIGLIP_VISION_KEYS = (r"^text_model\.", r"^logit_scale$", r"^logit_bias$")
UNUSED_SIGLIP_TEXT_KEYS = (r"^vision_model\.", r"^logit_scale$", r"^logit_bias$")
UNUSED_VIT_KEYS = (r"^(vit\.)?pooler\.", r"^classifier\.")
UNUSED_DINO_KEYS = (r"mask_token$", r"^classifier\.")

# backbone_type (configuration_reid.BACKBONE_MODEL_TYPES) -> its adapter: the tower registry.
TOWER_ADAPTERS = {
    "clip": TowerAdapter(CLIPEncoderLayer, CLIPVisionModelWithProjection, UNUSED_CLIP_VISION_KEYS,
                         patch_bias=False, pre_layernorm=True, projection=True),
    "metaclip_2": TowerAdapter(MetaClip2EncoderLayer, MetaClip2VisionModelWithProjection, UNUSED_CLIP_VISION_KEYS,
                               patch_bias=False, pre_layernorm=True, projection=True),
    "siglip": TowerAdapter(SiglipEncoderLayer, SiglipVisionModel, UNUSED_SIGLIP_VISION_KEYS, class_position_row=False),
    "siglip2": TowerAdapter(Siglip2EncoderLayer, Siglip2VisionModel, UNUSED_SIGLIP_VISION_KEYS, patch_linear=True,
                            class_position_row=False),
    "dinov2": TowerAdapter(Dinov2Layer, Dinov2Model, UNUSED_DINO_KEYS),
    "dinov2_with_registers": TowerAdapter(Dinov2WithRegistersLayer, Dinov2WithRegistersModel, UNUSED_DINO_KEYS),
    "dinov3_vit": TowerAdapter(DINOv3ViTLayer, DINOv3ViTModel, UNUSED_DINO_KEYS, position="rope"),
    "vit": TowerAdapter(ViTLayer, ViTModel, UNUSED_VIT_KEYS),
}


class ReIDVisionEmbeddings(nn.Module):
    """The embedding stage of every tower family: patch embedding, class token with the camera's SIE vector, the
    position table sized for `image_size` (or none: DINOv3's positions are rotary, applied in its layers), register
    tokens.

    Its output sequence is `[class token, registers, extra tokens, patches]` whatever the family: attention is
    order-free apart from the positions, which are added here (DINOv3's rotary positions, applied inside each
    layer, take the patches as the sequence's last tokens, as transformers' DINOv3 does). `ReIDVisionTower` puts
    the tokens back in the order it returns.
    """

    def __init__(self, config: ReIDConfig):
        super().__init__()
        vision = config.vision_config
        adapter = TOWER_ADAPTERS[config.backbone_type]
        patch = tower_patch_size(vision)
        self.hidden_size = vision.hidden_size
        self.patch_size = patch
        self.sie_coefficient = config.sie_coefficient
        self.has_class_token = config.has_class_token
        if adapter.patch_linear:
            self.patch_embedding = nn.Linear(vision.num_channels * patch * patch, vision.hidden_size)
        else:
            self.patch_embedding = nn.Conv2d(vision.num_channels, vision.hidden_size, kernel_size=patch, stride=patch,
                                             bias=adapter.patch_bias)
        rows, cols = config.patch_grid
        if self.has_class_token:
            self.class_embedding = nn.Parameter(torch.zeros(vision.hidden_size))
        else:
            self.register_parameter("class_embedding", None)
        if adapter.position == "table":
            class_rows = 1 if adapter.class_position_row else 0
            self.position_embedding = nn.Parameter(torch.zeros(class_rows + rows * cols, vision.hidden_size))
        else:
            self.register_parameter("position_embedding", None)
        if config.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(config.num_register_tokens, vision.hidden_size))
        else:
            self.register_parameter("register_tokens", None)
        if config.num_cameras > 0:
            self.camera_embedding = nn.Parameter(torch.zeros(config.num_cameras, vision.hidden_size))
        else:
            self.register_parameter("camera_embedding", None)

    def embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, n, D) patch embeddings, row-major over the patch grid."""
        weight = self.patch_embedding.weight
        pixel_values = pixel_values.to(weight.dtype)
        if isinstance(self.patch_embedding, nn.Linear):
            # SigLIP 2's patch vectors: each patch's pixels in (row, column, channel) order.
            n, c, h, w = pixel_values.shape
            p = self.patch_size
            patches = pixel_values.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
            return self.patch_embedding(patches.reshape(n, (h // p) * (w // p), p * p * c))
        return self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)

    def forward(
        self,
        pixel_values: torch.Tensor,
        camera_ids: torch.Tensor | None = None,
        extra_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        patches = self.embed_patches(pixel_values)
        batch = patches.shape[0]
        camera = None
        if self.camera_embedding is not None and camera_ids is not None:
            camera = self.sie_coefficient * self.camera_embedding[camera_ids].unsqueeze(1).to(patches.dtype)
        prefix = []
        positions = self.position_embedding.to(patches.dtype) if self.position_embedding is not None else None
        if self.has_class_token:
            cls = self.class_embedding.to(patches.dtype).expand(batch, 1, -1)
            if camera is not None:
                cls = cls + camera  # SIE on the class token, before the position embedding (the authors' DeMo)
            if positions is not None:
                cls = cls + positions[:1]
                positions = positions[1:]
            prefix.append(cls)
        elif camera is not None:
            # No class token (SigLIP): the camera vector goes on every patch token (ours, after TransReID's SIE,
            # which adds it to all tokens).
            patches = patches + camera
        if positions is not None:
            patches = patches + positions
        if self.register_tokens is not None:
            prefix.append(self.register_tokens.to(patches.dtype).expand(batch, -1, -1))
        if extra_tokens is not None:
            prefix.append(extra_tokens.to(patches.dtype))
        return torch.cat([*prefix, patches], dim=1) if prefix else patches


class ReIDVisionTower(nn.Module):
    """An image tower of any family of `TOWER_ADAPTERS`, returning every token in the feature space (CLIP-like
    towers: after ln_post and the visual projection; the others: after their final LayerNorm).

    `forward(pixel_values, camera_ids=None, extra_tokens=None)` returns `(N, 1 + n + k, C)`: the class token (or
    its stand-in) first, then the n patch tokens of the config's grid (register tokens removed: they never reach
    the heads), then the k `extra_tokens` `(N, k, hidden_size)` a caller passes in. Those join the sequence after
    the embedding stage (class token, SIE, positions: a caller adds its own position / camera vectors to them),
    before the first norm and layer, and come out after the final norm / projection.

    SigLIP and SigLIP 2 have no class token. What stands in for it (ours): the output of SigLIP's own attention-
    pooling head over the patch tokens (its pooled image embedding, pretrained with the tower), or, for a tower
    built without the head (`vision_use_head=False`), the mean of the patch tokens. Why the head rather than the
    mean: DeMo fuses the class token with the mean of the patches (PIFE), which a mean stand-in would only repeat,
    and the head's output is the tower's pretrained global feature, as CLIP's class token is.

    Its weights come from a pretrained tower, except the camera embedding (SIE), which no tower checkpoint holds:
    `new_parameters()` lists those, so that a trainer can give the pretrained weights the tower's learning rate and
    these the new layers'.
    """

    # Names (within the tower) of the parameters no pretrained checkpoint provides.
    new_parameter_names = ("embeddings.camera_embedding",)

    def __init__(self, config: ReIDConfig):
        super().__init__()
        vision = config.vision_config
        adapter = TOWER_ADAPTERS[config.backbone_type]
        eps = vision.layer_norm_eps
        self.num_patches = config.patch_grid[0] * config.patch_grid[1]
        self.num_prefix_tokens = int(config.has_class_token) + config.num_register_tokens
        self.embeddings = ReIDVisionEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(vision.hidden_size, eps=eps) if adapter.pre_layernorm else nn.Identity()
        # DINOv3's rotary positions (no weights). Always as at evaluation (ours): the coordinate augmentation of its
        # pretraining would draw from the global RNG in every training step, outside the run's seeded draws, at
        # a fixed ReID input size.
        self.rope_embeddings = DINOv3ViTRopePositionEmbedding(vision) if adapter.position == "rope" else None
        self.layers = nn.ModuleList(adapter.layer_class(vision) for _ in range(vision.num_hidden_layers))
        self.post_layernorm = nn.LayerNorm(vision.hidden_size, eps=eps)
        projection_dim = getattr(vision, "projection_dim", None)
        self.projection = (nn.Linear(vision.hidden_size, projection_dim, bias=False) if adapter.projection
                           else nn.Identity())
        if config.has_class_token or not getattr(vision, "vision_use_head", False):
            self.head = None
        else:
            siglip2 = config.backbone_type == "siglip2"
            self.head = (Siglip2MultiheadAttentionPoolingHead if siglip2 else SiglipMultiheadAttentionPoolingHead)(vision)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.rope_embeddings is not None:
            self.rope_embeddings.eval()  # see __init__: no rotary-coordinate augmentation
        return self

    def forward(
        self,
        pixel_values: torch.Tensor,
        camera_ids: torch.Tensor | None = None,
        extra_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = self.pre_layernorm(self.embeddings(pixel_values, camera_ids, extra_tokens))
        layer_kwargs = {}
        if self.rope_embeddings is not None:
            layer_kwargs["position_embeddings"] = self.rope_embeddings(pixel_values.to(hidden_states.dtype))
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, **layer_kwargs)
        tokens = self.projection(self.post_layernorm(hidden_states))
        extra = tokens.shape[1] - self.num_prefix_tokens - self.num_patches
        start = self.num_prefix_tokens + extra
        patches = tokens[:, start:]
        added = tokens[:, self.num_prefix_tokens:start]
        if self.embeddings.has_class_token:
            first = tokens[:, :1]
        elif self.head is not None:
            first = self.head(patches).unsqueeze(1)
        else:
            first = patches.mean(dim=1, keepdim=True)
        return torch.cat([first, patches, added], dim=1)

    def new_parameters(self) -> list[nn.Parameter]:
        """The tower's parameters that are not pretrained (the camera embedding when `num_cameras > 0`)."""
        named = dict(self.named_parameters())
        return [named[name] for name in self.new_parameter_names if name in named]


def float32_region(tensor: torch.Tensor):
    """A region where autocast is off on `tensor`'s device: what runs in it keeps the dtype it is given."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


class ReIDBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose statistics are computed in float32 under mixed precision (bf16 / fp16 autocast).

    Why: a batch variance in bf16 keeps 8 bits of mantissa, and the running statistics accumulate it over the whole
    run into the evaluation model. The input is cast to the parameters' dtype (float32 unless the model itself was
    cast) with autocast off; the output stays in that dtype, and the next autocast op casts it down again.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with float32_region(input):
            return super().forward(input.to(self.running_mean.dtype if self.running_mean is not None else input.dtype))


class ReIDBNNeck(ReIDBatchNorm1d):
    """BN-neck of the strong ReID baseline: BatchNorm with a frozen (zero) bias before the identity classifier."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.bias.requires_grad_(False)

    def train(self, mode: bool = True):
        # Re-freeze on every mode switch: transformers' loader re-creates loaded parameters with requires_grad=True
        # and ends from_pretrained with eval(), so a reloaded model would otherwise train this bias.
        super().train(mode)
        self.bias.requires_grad_(False)
        return self


class ReIDIdentityClassifier(nn.Linear):
    """Bias-free identity classifier after a BN-neck; initialised with normal(0, 0.001) as in the original."""

    def __init__(self, dim: int, num_labels: int):
        super().__init__(dim, num_labels, bias=False)


# Layers a device map must not split: every family's tower layer (models list these in their _no_split_modules).
TOWER_LAYER_NAMES = sorted({adapter.layer_class.__name__ for adapter in TOWER_ADAPTERS.values()})
# Pretrained checkpoint model_type -> model_type of the image tower it holds (a dual checkpoint: its image half).
PRETRAINED_TOWER_TYPES = {
    **{tower: tower for tower in BACKBONE_MODEL_TYPES.values()},
    **{dual: halves[0] for dual, halves in DUAL_MODEL_TYPES.items()},
}
# Tower shapes a pretrained checkpoint must share with the config it is loaded into.
TOWER_SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


class ReIDPreTrainedModel(PreTrainedModel):
    """Base of the ReID models (DeMo, NEXT): what they all have and do the same way.

    - the image tower `vision_tower`, built here, and `encode_images`, its one pass over a batch of triples;
    - the BN-neck identity heads: `build_heads` makes `bnnecks` / `classifiers`, `head_logits` applies them;
    - `_check_inputs` for the image arguments, `_init_weights` for the shared module classes;
    - `train` keeping the submodules named in `_frozen_modules` in eval mode and frozen;
    - `from_pretrained_towers`, a new model around a pretrained HF tower.

    A model builds its own modules after `super().__init__(config)`, then calls `build_heads` and `post_init`.
    """

    config_class = ReIDConfig
    config: ReIDConfig
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    # Submodules that never train (e.g. NEXT's frozen text tower): always in eval mode, parameters frozen.
    _frozen_modules = ()

    def __init__(self, config: ReIDConfig):
        super().__init__(config)
        # The tower's layers read the attention backend from the vision sub-config: give them the resolved one.
        config.vision_config._attn_implementation = config._attn_implementation or "sdpa"
        self.vision_tower = ReIDVisionTower(config)

    def post_init(self):
        super().post_init()
        self.train(self.training)  # frozen submodules are frozen from the start, not only after a train() / eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a cut-short or damaged safetensors file is an OSError naming the
        folder (the safetensors reader's own error names no file)."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as exc:
            if type(exc).__name__ != "SafetensorError":
                raise
            raise OSError(f"{pretrained_model_name_or_path}: the safetensors weights are incomplete or corrupt "
                          f"({exc})") from exc

    def train(self, mode: bool = True):
        """As `nn.Module.train`, but the submodules of `_frozen_modules` stay in eval mode and frozen.

        Freezing again here matters: transformers 5's `from_pretrained` re-creates every loaded parameter with
        `requires_grad=True` and then calls `eval()`, and a trainer calls `train()` before its first step. (The
        BN-neck biases re-freeze themselves, in `ReIDBNNeck.train`.)"""
        super().train(mode)
        for name in self._frozen_modules:
            module = getattr(self, name, None)
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_tower.embeddings.patch_embedding

    def build_heads(self, head_dims: dict[str, int]) -> None:
        """A BN-neck + bias-free identity classifier per supervised feature (name -> size), in that order."""
        self.bnnecks = nn.ModuleDict({name: ReIDBNNeck(d) for name, d in head_dims.items()})
        self.classifiers = nn.ModuleDict(
            {name: ReIDIdentityClassifier(d, self.config.num_labels) for name, d in head_dims.items()}
        )

    def head_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Identity logits of each supervised feature, through its BN-neck and classifier (same keys and order)."""
        return {name: self.classifiers[name](self.bnnecks[name](feature)) for name, feature in features.items()}

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        camera_ids: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One tower pass over all 3B images of `pixel_values` (B, 3, 3, H, W) -> class tokens (B, 3, C) and patch
        tokens (B, 3, n, C). Missing modalities (`modality_mask` False) are zeroed first; a triple's camera id is
        given to each of its three images."""
        batch = pixel_values.shape[0]
        if modality_mask is not None:
            pixel_values = pixel_values * modality_mask.to(pixel_values.dtype)[:, :, None, None, None]
        tower_cameras = camera_ids.repeat_interleave(3) if camera_ids is not None else None
        tokens = self.vision_tower(pixel_values.flatten(0, 1), tower_cameras)
        tokens = tokens.view(batch, 3, tokens.shape[1], tokens.shape[2])
        return tokens[:, :, 0], tokens[:, :, 1:]

    def _check_inputs(self, pixel_values, camera_ids, modality_mask):
        """Reject image inputs the model cannot use, each with an error naming the argument and what was expected."""
        height, width = self.config.image_size
        expected = f"(batch, 3, 3, {height}, {width}) for the RGB, NIR and TIR images"
        for name, value in (("pixel_values", pixel_values), ("camera_ids", camera_ids), ("modality_mask", modality_mask)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor, got {type(value).__module__}.{type(value).__name__}; "
                    "convert it with torch.as_tensor(...)"
                )
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values has dtype {pixel_values.dtype}; expected floating-point images normalised with "
                f"config.image_mean={list(self.config.image_mean)}, image_std={list(self.config.image_std)}, i.e. "
                "(uint8 / 255 - mean) / std (the checkpoint's image processor does it)"
            )
        if pixel_values.dim() != 5 or pixel_values.shape[1:3] != (3, 3):
            raise ValueError(f"pixel_values must have shape {expected}, got {tuple(pixel_values.shape)}")
        if pixel_values.shape[0] == 0:
            raise ValueError(f"pixel_values is an empty batch (shape {tuple(pixel_values.shape)}); pass at least one triple")
        if tuple(pixel_values.shape[-2:]) != (height, width):
            raise ValueError(
                f"pixel_values has image size {tuple(pixel_values.shape[-2:])}, but the model was configured for "
                f"image_size=({height}, {width}); resize the images (shape {expected})"
            )
        batch = pixel_values.shape[0]
        if camera_ids is not None:
            if camera_ids.is_floating_point() or camera_ids.is_complex() or camera_ids.dtype == torch.bool:
                raise TypeError(f"camera_ids must be an integer tensor (torch.long), got dtype {camera_ids.dtype}")
            if camera_ids.shape != (batch,):
                raise ValueError(f"camera_ids must have shape ({batch},), got {tuple(camera_ids.shape)}")
            if self.config.num_cameras == 0:
                raise ValueError("camera_ids were given but the model has no camera embedding (num_cameras=0)")
            if not is_tracing() and bool(((camera_ids < 0) | (camera_ids >= self.config.num_cameras)).any()):
                raise ValueError(
                    f"camera_ids must be in [0, {self.config.num_cameras}) (num_cameras={self.config.num_cameras}), "
                    f"got values {sorted(set(camera_ids.tolist()))}"
                )
        if modality_mask is not None:
            if modality_mask.is_floating_point():
                raise TypeError(f"modality_mask must be a bool tensor (True = present), got dtype {modality_mask.dtype}")
            if modality_mask.shape != (batch, 3):
                raise ValueError(
                    f"modality_mask must have shape ({batch}, 3) (RGB, NIR, TIR), got {tuple(modality_mask.shape)}"
                )
        # Value checks read the tensors (a host sync): eager calls only, never while compiling or exporting.
        if is_tracing():
            return
        if modality_mask is not None and not bool(modality_mask.any(dim=1).all()):
            empty = (~modality_mask.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(f"modality_mask marks no modality present for sample(s) {empty[:8]}: every sample needs "
                             "at least one of RGB, NIR, TIR (an embedding of nothing is no embedding)")
        if not bool(torch.isfinite(pixel_values).all()):
            bad = (~torch.isfinite(pixel_values)).flatten(1).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"pixel_values holds NaN or infinite values (sample(s) {bad[:8]}); check the images and "
                             "their normalisation")

    @staticmethod
    def _check_caption_tensors(input_ids, attention_mask) -> bool:
        """The checks every captioned model makes first (types; no mask without ids): whether captions were given."""
        for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor, got {type(value).__module__}.{type(value).__name__}; "
                    "tokenize with return_tensors='pt'"
                )
            if value is not None and (value.is_floating_point() or value.is_complex()):
                raise TypeError(f"{name} must be an integer tensor (torch.long), got dtype {value.dtype}")
        if input_ids is None and attention_mask is not None:
            raise ValueError("attention_mask was given without input_ids")
        return input_ids is not None

    @staticmethod
    def _check_caption_length(input_ids, attention_mask, text_config=None) -> None:
        """A mask of the ids' shape, and (given the text tower's config) captions no longer than its context."""
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        if text_config is None:
            return
        limit = text_config.max_position_embeddings
        if input_ids.shape[-1] > limit:
            raise ValueError(
                f"input_ids has {input_ids.shape[-1]} tokens per caption but the text tower takes at most {limit}; "
                f"tokenize with truncation=True, max_length={limit}"
            )

    @torch.no_grad()
    def _init_weights(self, module):
        """Chosen per module class: the tower as HF initialises CLIP / ViT (class token normal(D^-0.5), position
        table normal(initializer_range), register tokens trunc-normal(initializer_range), LayerScale at the tower's
        layerscale_value, camera embedding trunc-normal(0.02)); the new layers (`ReIDLinear`,
        `nn.MultiheadAttention`) per `config.head_init`, by default PyTorch's module defaults as in the DeMo authors'
        code; classifiers normal(0, 0.001); BN-necks (1, 0)."""
        std = self.config.initializer_range
        torch_defaults = self.config.head_init == "pytorch"
        if isinstance(module, ReIDVisionEmbeddings):
            if module.class_embedding is not None:
                init.normal_(module.class_embedding, std=module.hidden_size**-0.5)
            if module.position_embedding is not None:
                init.normal_(module.position_embedding, std=std)
            if module.register_tokens is not None:
                init.trunc_normal_(module.register_tokens, std=std)
            if module.camera_embedding is not None:
                init.trunc_normal_(module.camera_embedding, std=0.02)
        elif isinstance(module, DINOv3ViTRopePositionEmbedding):
            init.copy_(module.inv_freq, 1 / module.base ** torch.arange(0, 1, 4 / module.head_dim, dtype=torch.float32))
        elif isinstance(getattr(module, "lambda1", None), nn.Parameter):  # DINOv2 / DINOv3 LayerScale
            init.constant_(module.lambda1, self.config.vision_config.layerscale_value)
        elif isinstance(getattr(module, "probe", None), nn.Parameter):  # SigLIP's attention-pooling head
            init.normal_(module.probe, std=std)
        elif isinstance(module, ReIDIdentityClassifier):
            init.normal_(module.weight, std=0.001)
        elif isinstance(module, ReIDLinear):
            init_new_linear(module, torch_defaults, std)
        elif isinstance(module, nn.MultiheadAttention):
            # PyTorch's own MultiheadAttention init (xavier in-projection, zero biases); its out-projection is a
            # Linear, initialised like the other new Linear layers (the child was visited first, with HF's default).
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
            init_new_linear(module.out_proj, torch_defaults, std)
            init.zeros_(module.out_proj.bias)
        else:
            super()._init_weights(module)

    @classmethod
    def from_pretrained_towers(
        cls, pretrained_model_name_or_path, config: ReIDConfig | None = None, **config_kwargs
    ) -> "ReIDPreTrainedModel":
        """A new model around a pretrained HF image tower; the rest is randomly initialised.

        Accepts a checkpoint (Hub id or directory) of any tower family of `TOWER_ADAPTERS` that the config class
        accepts (`tower_model_types`): an image tower (`CLIPVisionModel`, `Dinov2Model`, `DINOv3ViTModel`,
        `SiglipVisionModel`, `ViTModel`, ...) or a dual model whose image half is kept (`CLIPModel`, `SiglipModel`,
        `MetaClip2Model`, ...). The position table is resized once, here, to `config.image_size`
        (`resize_like_transformers`). Without `config`, one is built around the checkpoint's config:
        `config_class.from_backbone_config(AutoConfig.from_pretrained(path), **config_kwargs)`, with the tower's own
        `image_mean` / `image_std` (`pretrained_normalization`) unless `config_kwargs` sets them.
        """
        from transformers import AutoConfig

        path = pretrained_model_name_or_path
        source_config = AutoConfig.from_pretrained(path)
        tower_type = PRETRAINED_TOWER_TYPES.get(source_config.model_type)
        if tower_type not in cls.config_class.tower_model_types:
            accepted = [k for k, v in PRETRAINED_TOWER_TYPES.items() if v in cls.config_class.tower_model_types]
            raise ValueError(
                f"{path} is a {source_config.model_type!r} checkpoint; {cls.__name__} takes a "
                f"{', '.join(repr(t) for t in accepted)} checkpoint"
            )
        if config is None:
            for key, value in pretrained_normalization(path, source_config.model_type).items():
                config_kwargs.setdefault(key, value)  # the tower's own pixel statistics (CLIP: the authors' 0.5)
            config = cls.config_class.from_backbone_config(source_config, **config_kwargs)
        backbone_type = {v: k for k, v in BACKBONE_MODEL_TYPES.items()}[tower_type]
        if config.backbone_type != backbone_type:
            raise ValueError(f"config.backbone_type={config.backbone_type!r} but the checkpoint is {backbone_type!r}")
        source = load_tower_source(path, source_config, backbone_type)
        shapes = {field: getattr(source.config, field) for field in (*TOWER_SHAPE_FIELDS, "patch_size")}
        shapes["num_register_tokens"] = getattr(source.config, "num_register_tokens", 0) or 0
        check_tower_shapes("vision_config", config.vision_config,
                           {k: v for k, v in shapes.items() if hasattr(config.vision_config, k)}, path)
        model = cls(config)
        state = tower_state_dict_from_hf(source.state_dict(), backbone_type, config.patch_grid,
                                         resize_positions=lambda table: resize_like_transformers(source, table, config))
        missing, unexpected = model.vision_tower.load_state_dict(state, strict=False)
        if unexpected or set(missing) - set(model.vision_tower.new_parameter_names):
            raise ValueError(f"image tower weights do not fit: missing {missing}, unexpected {unexpected}")
        return model


def encode_text_with_prompts(
    text_tower: nn.Module, input_ids: torch.Tensor, prompts: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Global feature (M, C) of captions `input_ids` (M, L) read by a frozen CLIP-like text tower (`text_model` +
    `text_projection`: CLIP's, MetaCLIP 2's) with learnable prompt vectors `prompts` (P, width), or None, added to the
    token embeddings at positions `PROMPT_POSITION`, +1, ...: the mean of the projected outputs at the first
    end-of-text token and at the prompt positions. This is IDEA's text pass (its authors' modeling/clip/model.py);
    IDEA and NEXT's `num_text_prompts` share it, so the two cannot drift apart. Gradients reach `prompts` through the
    tower whether or not its own weights train.

    The ids are zero-padded to the full context, as CLIP's tokenize pads in the authors' code: the prompt positions
    exist whatever the caption's length (a short caption's prompts read the padding, as theirs do) and shapes are
    static. `attention_mask` (M, L), when given, marks the padding, which is zeroed first so that a caption's feature
    does not depend on its batch's padding. Causal attention only, as in CLIP: what follows the end-of-text token
    changes nothing there."""
    text = text_tower.text_model
    if attention_mask is not None:
        input_ids = torch.where(attention_mask.bool(), input_ids, 0)
    input_ids = F.pad(input_ids, (0, text_tower.config.max_position_embeddings - input_ids.shape[-1]))
    embeds = text.embeddings.token_embedding(input_ids)
    count = 0 if prompts is None else prompts.shape[0]
    if count:
        after = input_ids.shape[-1] - PROMPT_POSITION - count
        embeds = embeds + F.pad(prompts.to(embeds.dtype), (0, 0, PROMPT_POSITION, after))
    hidden = text.embeddings(inputs_embeds=embeds)
    # An explicit additive causal mask: every attention backend honours it (eager ignores `is_causal`).
    length = input_ids.shape[-1]
    mask = torch.full((length, length), torch.finfo(hidden.dtype).min, device=hidden.device, dtype=hidden.dtype)
    mask = mask.triu(1)[None, None]
    hidden = text.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
    hidden = text.final_layer_norm(hidden)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    eos = text_tower.config.eos_token_id
    if eos is None or eos == 2:  # legacy CLIP configs: the end-of-text token is the highest id
        ends = input_ids.argmax(dim=-1)
    else:  # the first end-of-text token (OpenAI's vocabulary: its highest id, where IDEA's authors pool)
        ends = (input_ids == eos).int().argmax(dim=-1)
    pooled = hidden[rows, ends].unsqueeze(1)
    if count:
        pooled = torch.cat([pooled, hidden[:, PROMPT_POSITION : PROMPT_POSITION + count]], dim=1)
    return text_tower.text_projection(pooled).mean(dim=1)


def load_tower_source(path, source_config: PretrainedConfig, backbone_type: str) -> PreTrainedModel:
    """The pretrained image tower at `path` as transformers builds it (the image half of a dual checkpoint; a full
    CLIP-like checkpoint projects with the parent's projection_dim, whatever its image half says)."""
    adapter = TOWER_ADAPTERS[backbone_type]
    kwargs = {}
    if backbone_type == "vit":
        kwargs["add_pooling_layer"] = False
    if adapter.projection and source_config.model_type in DUAL_MODEL_TYPES:
        kwargs["projection_dim"] = source_config.projection_dim
    return quiet_about(adapter.source_class, adapter.unused_keys).from_pretrained(path, **kwargs)


def resize_like_transformers(source: PreTrainedModel, table: torch.Tensor, config: ReIDConfig) -> torch.Tensor:
    """The pretrained position table of `source` (2-D, as stored) resized once to `config.image_size`.

    CLIP and ViT: bilinearly, as the DeMo authors' code does (`resize_position_embedding`). Every other family: by
    transformers' own interpolation of that family (DINOv2's bicubic, SigLIP's bicubic, SigLIP 2's antialiased
    bilinear), so that the tower's tokens at the ReID size are those of the transformers model at that size."""
    backbone_type = config.backbone_type
    grid = config.patch_grid
    height, width = config.image_size
    if backbone_type in ("clip", "metaclip_2", "vit"):
        return resize_position_embedding(table, grid)
    with torch.no_grad():
        if backbone_type == "siglip2":
            side = int(round(math.sqrt(table.shape[0])))
            shapes = torch.tensor([list(grid)])
            return Siglip2VisionEmbeddings.resize_positional_embeddings(
                table.reshape(side, side, -1), shapes, grid[0] * grid[1])[0]
        embeddings = source.embeddings
        class_rows = 0 if backbone_type == "siglip" else 1
        probe = torch.zeros(1, class_rows + grid[0] * grid[1], table.shape[-1], dtype=table.dtype)
        return embeddings.interpolate_pos_encoding(probe, height, width).reshape(-1, table.shape[-1]).clone()


def quiet_about(model_class: type, unused_keys: tuple[str, ...]) -> type:
    """`model_class` whose `from_pretrained` does not list `unused_keys` (regexes) as UNEXPECTED in its load report
    (transformers' `_keys_to_ignore_on_load_unexpected`), so that the report shows only what is really wrong."""
    ignored = [*(getattr(model_class, "_keys_to_ignore_on_load_unexpected", None) or []), *unused_keys]
    # The subclass keeps the class's module and name: transformers finds a model's checkpoint-key conversions
    # (e.g. ViT's legacy `encoder.layer.N` names) by them, and would otherwise load none of the weights.
    return type(model_class.__name__, (model_class,), {"_keys_to_ignore_on_load_unexpected": ignored,
                                                       "__module__": model_class.__module__,
                                                       "__qualname__": model_class.__qualname__})


def check_tower_shapes(key: str, config: PretrainedConfig, expected: dict, source) -> None:
    """One-line error for the first `config` field that differs from the pretrained checkpoint's (`expected`)."""
    for field, value in expected.items():
        if getattr(config, field) != value:
            raise ValueError(
                f"{key}.{field}={getattr(config, field)} does not match the checkpoint's {value} ({source})"
            )


def init_new_linear(layer: nn.Linear, torch_defaults: bool, std: float) -> None:
    """PyTorch's Linear default (kaiming-uniform(a=sqrt(5)) weight, uniform(+-1/sqrt(fan_in)) bias) or normal(std)."""
    if torch_defaults:
        init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
        if layer.bias is not None:
            bound = layer.in_features**-0.5
            init.uniform_(layer.bias, -bound, bound)
    else:
        init.normal_(layer.weight, std=std)
        if layer.bias is not None:
            init.zeros_(layer.bias)


# Prefixes of a transformers tower's state dict that the ReID tower does not keep.
SOURCE_PREFIXES = ("vision_model.", "vit.", "dinov2.")
# transformers' module names -> the ReID tower's, first match wins (the layers below `layers.N` keep theirs).
SOURCE_RENAMES = (
    ("pre_layrnorm.", "pre_layernorm."),
    ("encoder.layers.", "layers."),
    ("encoder.layer.", "layers."),
    ("model.layer.", "layers."),
    ("embeddings.patch_embeddings.projection.", "embeddings.patch_embedding."),
    ("embeddings.patch_embeddings.", "embeddings.patch_embedding."),
    ("layernorm.", "post_layernorm."),
    ("norm.", "post_layernorm."),
    ("visual_projection.", "projection."),
)
# Position tables as transformers stores them.
SOURCE_POSITION_KEYS = ("embeddings.position_embedding.weight", "embeddings.position_embeddings")
# Parts a ReID model has no use for: the mask token of masked-image pretraining, position ids, a ViT pooler.
SOURCE_DROPPED = ("embeddings.mask_token", "embeddings.position_ids", "pooler.", "classifier.")


def tower_state_dict_from_hf(state: dict, backbone_type: str, grid: tuple[int, int], resize_positions=None) -> dict:
    """Rename the state dict of a transformers image tower (`TOWER_ADAPTERS[backbone_type].source_class`) to
    `ReIDVisionTower` names. The position table is resized to `grid` by `resize_positions(table)` (default: the
    bilinear `resize_position_embedding`, the CLIP / ViT rule); class and register tokens lose their leading
    singleton axes; nothing else changes."""
    if resize_positions is None:
        resize_positions = lambda table: resize_position_embedding(table, grid)  # noqa: E731
    out = {}
    for key, value in state.items():
        name = next((key[len(p):] for p in SOURCE_PREFIXES if key.startswith(p)), key)
        if name.startswith(SOURCE_DROPPED):
            continue
        if name in SOURCE_POSITION_KEYS:
            out["embeddings.position_embedding"] = resize_positions(value.reshape(-1, value.shape[-1]))
            continue
        if name == "embeddings.cls_token":
            out["embeddings.class_embedding"] = value.reshape(-1)
            continue
        if name == "embeddings.register_tokens":
            out[name] = value.reshape(-1, value.shape[-1])
            continue
        for old, new in SOURCE_RENAMES:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name] = value
    return out


__all__ = [
    "ReIDPreTrainedModel", "ReIDVisionTower", "ReIDVisionEmbeddings", "ReIDLinear", "ReIDBatchNorm1d", "ReIDBNNeck",
    "ReIDIdentityClassifier", "QuickGELU", "tower_state_dict_from_hf", "resize_position_embedding", "is_tracing",
    "TOWER_ADAPTERS", "TOWER_LAYER_NAMES", "TowerAdapter", "encode_text_with_prompts",
]

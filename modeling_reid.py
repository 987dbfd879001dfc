"""The ReID family's shared model code: what every multi-modal (RGB / NIR / TIR) ReID model here builds on.

DeMo (modeling_demo.py) and NEXT (modeling_next.py) are peers on this base, and a new method of the family is its own
configuration + modeling file on it: `ReIDPreTrainedModel` (the image tower `ReIDVisionTower` and its one pass over a
batch of triples, the BN-neck identity heads, input checks, weight init per module class, frozen submodules,
`from_pretrained_towers`), the layers the models share (`ReIDLinear`, `ReIDBatchNorm1d`, `QuickGELU`) and the
conversion of HF CLIP / ViT tower weights (`tower_state_dict_from_hf`). Ships with every checkpoint of the family.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.models.vit.modeling_vit import ViTLayer

try:
    from .configuration_reid import ReIDConfig
except ImportError:  # imported as a top-level module from a checkout
    from configuration_reid import ReIDConfig

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


class ReIDVisionEmbeddings(nn.Module):
    """Patch embedding + class token (with the camera's SIE vector) + position table sized for `image_size`."""

    def __init__(self, config: ReIDConfig):
        super().__init__()
        vision = config.vision_config
        self.hidden_size = vision.hidden_size
        self.sie_coefficient = config.sie_coefficient
        self.patch_embedding = nn.Conv2d(
            vision.num_channels,
            vision.hidden_size,
            kernel_size=vision.patch_size,
            stride=vision.patch_size,
            bias=config.backbone_type == "vit",
        )
        rows, cols = config.patch_grid
        self.class_embedding = nn.Parameter(torch.zeros(vision.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1 + rows * cols, vision.hidden_size))
        if config.num_cameras > 0:
            self.camera_embedding = nn.Parameter(torch.zeros(config.num_cameras, vision.hidden_size))
        else:
            self.register_parameter("camera_embedding", None)

    def forward(self, pixel_values: torch.Tensor, camera_ids: torch.Tensor | None = None) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        if self.camera_embedding is not None and camera_ids is not None:
            # SIE is added to the class token before the position embedding.
            cls = cls + self.sie_coefficient * self.camera_embedding[camera_ids].unsqueeze(1).to(patches.dtype)
        tokens = torch.cat([cls, patches], dim=1)
        return tokens + self.position_embedding.to(patches.dtype)


class ReIDVisionTower(nn.Module):
    """CLIP or ViT image encoder returning every token in the feature space (CLIP: after ln_post and projection).

    Its weights come from a pretrained tower, except the camera embedding (SIE), which no tower checkpoint holds:
    `new_parameters()` lists those, so that a trainer can give the pretrained weights the tower's learning rate and
    these the new layers'.
    """

    # Names (within the tower) of the parameters no pretrained checkpoint provides.
    new_parameter_names = ("embeddings.camera_embedding",)

    def __init__(self, config: ReIDConfig):
        super().__init__()
        vision = config.vision_config
        eps = vision.layer_norm_eps
        self.embeddings = ReIDVisionEmbeddings(config)
        is_clip = config.backbone_type == "clip"
        layer_class = CLIPEncoderLayer if is_clip else ViTLayer
        self.pre_layernorm = nn.LayerNorm(vision.hidden_size, eps=eps) if is_clip else nn.Identity()
        self.layers = nn.ModuleList(layer_class(vision) for _ in range(vision.num_hidden_layers))
        self.post_layernorm = nn.LayerNorm(vision.hidden_size, eps=eps)
        self.projection = nn.Linear(vision.hidden_size, vision.projection_dim, bias=False) if is_clip else nn.Identity()

    def forward(
        self,
        pixel_values: torch.Tensor,
        camera_ids: torch.Tensor | None = None,
        extra_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`pixel_values` (N, 3, H, W) -> tokens (N, 1 + n + k, C): the class token, the n patch tokens, then the k
        `extra_tokens` (N, k, hidden_size), appended after the embedding stage (the caller adds whatever position or
        camera vectors they need) and encoded with the image tokens."""
        hidden_states = self.embeddings(pixel_values, camera_ids)
        if extra_tokens is not None:
            hidden_states = torch.cat([hidden_states, extra_tokens.to(hidden_states.dtype)], dim=1)
        hidden_states = self.pre_layernorm(hidden_states)
        for layer in self.layers:
            hidden_states = layer(hidden_states, None)
        return self.projection(self.post_layernorm(hidden_states))

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


# Pretrained checkpoint model_type -> model_type of the image tower it holds (a full CLIP checkpoint: its vision half).
PRETRAINED_TOWER_TYPES = {"clip": "clip_vision_model", "clip_vision_model": "clip_vision_model", "vit": "vit"}
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
                "mean = std = 0.5, i.e. (uint8 / 255 - 0.5) / 0.5"
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

    @torch.no_grad()
    def _init_weights(self, module):
        """Chosen per module class: the tower as HF initialises CLIP / ViT (class token normal(D^-0.5), position
        table normal(initializer_range), camera embedding trunc-normal(0.02)); the new layers (`ReIDLinear`,
        `nn.MultiheadAttention`) per `config.head_init`, by default PyTorch's module defaults as in the DeMo authors'
        code; classifiers normal(0, 0.001); BN-necks (1, 0)."""
        std = self.config.initializer_range
        torch_defaults = self.config.head_init == "pytorch"
        if isinstance(module, ReIDVisionEmbeddings):
            init.normal_(module.class_embedding, std=module.hidden_size**-0.5)
            init.normal_(module.position_embedding, std=std)
            if module.camera_embedding is not None:
                init.trunc_normal_(module.camera_embedding, std=0.02)
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

        Accepts a `CLIPModel` / `CLIPVisionModel(WithProjection)` or `ViTModel` checkpoint (hub id or directory),
        of a tower type the config class accepts (`tower_model_types`). The position table is resized once, here,
        bilinearly, from the pretrained grid to `config.image_size`. Without `config`, one is built around the
        checkpoint's config: `config_class.from_backbone_config(AutoConfig.from_pretrained(path), **config_kwargs)`.
        """
        from transformers import AutoConfig, CLIPVisionModelWithProjection, ViTModel

        path = pretrained_model_name_or_path
        source_config = AutoConfig.from_pretrained(path)
        tower_type = PRETRAINED_TOWER_TYPES.get(source_config.model_type)
        if tower_type not in cls.config_class.tower_model_types:
            accepted = [k for k, v in PRETRAINED_TOWER_TYPES.items() if v in cls.config_class.tower_model_types]
            raise ValueError(
                f"{path} is a {source_config.model_type!r} checkpoint; {cls.__name__} takes a "
                f"{' or '.join(repr(t) for t in accepted)} checkpoint"
            )
        if config is None:
            config = cls.config_class.from_backbone_config(source_config, **config_kwargs)
        if tower_type == "vit":
            source = quiet_about(ViTModel, UNUSED_VIT_KEYS).from_pretrained(path, add_pooling_layer=False)
            backbone_type = "vit"
        else:
            # A full CLIPModel projects with its own projection_dim, whatever its vision half says.
            projection = dict(projection_dim=source_config.projection_dim) if source_config.model_type == "clip" else {}
            tower_class = quiet_about(CLIPVisionModelWithProjection, UNUSED_CLIP_VISION_KEYS)
            source = tower_class.from_pretrained(path, **projection)
            backbone_type = "clip"
        if config.backbone_type != backbone_type:
            raise ValueError(f"config.backbone_type={config.backbone_type!r} but the checkpoint is {backbone_type!r}")
        shapes = {field: getattr(source.config, field) for field in (*TOWER_SHAPE_FIELDS, "patch_size")}
        check_tower_shapes("vision_config", config.vision_config, shapes, path)
        model = cls(config)
        state = tower_state_dict_from_hf(source.state_dict(), backbone_type, config.patch_grid)
        missing, unexpected = model.vision_tower.load_state_dict(state, strict=False)
        if unexpected or set(missing) - set(model.vision_tower.new_parameter_names):
            raise ValueError(f"image tower weights do not fit: missing {missing}, unexpected {unexpected}")
        return model


# Keys of a pretrained checkpoint that loading one tower leaves unused by design (a full CLIP checkpoint's other
# tower and logit scale, a ViT's pooler or classifier): loaded quietly; any other unexpected key is still reported.
UNUSED_CLIP_VISION_KEYS = (r"^text_model\.", r"^text_projection\.", r"^logit_scale$")
UNUSED_CLIP_TEXT_KEYS = (r"^vision_model\.", r"^visual_projection\.", r"^logit_scale$")
UNUSED_VIT_KEYS = (r"^(vit\.)?pooler\.", r"^classifier\.")


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


def tower_state_dict_from_hf(state: dict, backbone_type: str, grid: tuple[int, int]) -> dict:
    """Rename an HF `CLIPVisionModelWithProjection` / `ViTModel` state dict to `ReIDVisionTower` names."""
    out = {}
    if backbone_type == "clip":
        for key, value in state.items():
            if key == "visual_projection.weight":
                out["projection.weight"] = value
            elif key.startswith("vision_model."):
                name = key[len("vision_model.") :]
                name = name.replace("pre_layrnorm.", "pre_layernorm.").replace("encoder.layers.", "layers.")
                if name == "embeddings.position_embedding.weight":
                    out["embeddings.position_embedding"] = resize_position_embedding(value, grid)
                elif name != "embeddings.position_ids":
                    out[name] = value
    else:
        for key, value in state.items():
            name = key[len("vit.") :] if key.startswith("vit.") else key
            if name == "embeddings.cls_token":
                out["embeddings.class_embedding"] = value.reshape(-1)
            elif name == "embeddings.position_embeddings":
                out["embeddings.position_embedding"] = resize_position_embedding(value.reshape(value.shape[-2], -1), grid)
            elif name.startswith("embeddings.patch_embeddings.projection."):
                out[name.replace("patch_embeddings.projection", "patch_embedding")] = value
            elif name.startswith("layernorm."):
                out[name.replace("layernorm.", "post_layernorm.")] = value
            elif name.startswith("layers."):
                out[name] = value
    return out


__all__ = [
    "ReIDPreTrainedModel", "ReIDVisionTower", "ReIDVisionEmbeddings", "ReIDLinear", "ReIDBatchNorm1d", "ReIDBNNeck",
    "ReIDIdentityClassifier", "QuickGELU", "tower_state_dict_from_hf", "resize_position_embedding", "is_tracing",
]

"""Checkpoints saved by the DeMo authors' training code (CLIP backbone) as `DeMoModel` folders, and the entry point
that also converts the IDEA authors' (conversion_idea.py) (``data_scripts/convert_original_checkpoint.py`` is its
command line).

Everything the configuration needs (identities, cameras, ATMoE heads, direct or per-modality classifiers, tower
width and depth) is read from tensor shapes. The checkpoint is read with `torch.load(weights_only=True)`: tensors
only, no pickled code is executed.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from configuration_demo import DeMoConfig
from configuration_reid import MODALITIES
from modeling_demo import EXPERT_NAMES, DeMoModel

from ..publish import atomic_output
from .checkpoint_files import share_weights

__all__ = ["CheckpointFormatError", "convert_checkpoint", "convert_state_dict", "infer_config",
           "load_original_state_dict"]

TOWER = "BACKBONE.base."
# Per-layer renames inside `transformer.resblocks.{i}.` (the fused qkv projection is split separately).
LAYER_RENAMES = {
    "attn.out_proj.": "self_attn.out_proj.",
    "ln_1.": "layer_norm1.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
    "ln_2.": "layer_norm2.",
}
ORIGINAL_MODALITY = {"rgb": "r", "nir": "n", "tir": "t"}
# Training identities -> (dataset, input size) of the authors' configs; a checkpoint with one of these identity
# counts and another --image-size is refused unless --force (RGBNT201 256x128 and the vehicle sets' 128x256 have
# the same number of patch positions, so a swapped size would otherwise convert silently into a wrong model).
KNOWN_DATASETS = {171: ("RGBNT201", (256, 128)), 50: ("RGBNT100", (128, 256)), 155: ("MSVR310", (128, 256))}


class CheckpointFormatError(ValueError):
    """The file is not a state dict of the authors' DeMo implementation with a CLIP backbone."""


def load_original_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by name (a .pth read with ``weights_only``, or a .safetensors file), without a DDP
    ``module.`` prefix."""
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle / zip / safetensors errors come in many types
        raise CheckpointFormatError(f"{path}: not a readable torch checkpoint of tensors ({error})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointFormatError(f"{path}: expected a state dict (name -> tensor)")
    # Checkpoints saved from DistributedDataParallel carry a `module.` prefix.
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def check_image_size(state: dict[str, torch.Tensor], image_size: tuple[int, int], force: bool = False,
                     tower: str = TOWER, classifier_key: str | None = None) -> None:
    """Called after the checkpoint is known to be of the CLIP layout (image tower under ``tower``). Refuse an
    --image-size the checkpoint's position table cannot have been trained at, or (unless ``force``) one that
    disagrees with the dataset its identity count (rows of ``classifier_key``, by default DeMo's classifier) names."""
    conv = state[tower + "conv1.weight"]
    patch = conv.shape[-1]
    height, width = image_size
    if height <= 0 or width <= 0 or height % patch or width % patch:
        raise CheckpointFormatError(f"--image-size {height} {width}: both must be positive multiples of the patch "
                                    f"size {patch}")
    positions = state[tower + "positional_embedding"].shape[0] - 1
    if positions != (height // patch) * (width // patch):
        raise CheckpointFormatError(
            f"--image-size {height} {width} gives {(height // patch) * (width // patch)} patch positions, but the "
            f"checkpoint's position table has {positions}: pass the size it was trained at (256 128 for RGBNT201, "
            "128 256 for RGBNT100 / MSVR310)"
        )
    if classifier_key is None:
        classifier = state.get("classifier.weight", state.get("classifier_r.weight"))
    else:
        classifier = state[classifier_key]
    known = KNOWN_DATASETS.get(classifier.shape[0]) if classifier is not None else None
    if known and tuple(image_size) != known[1] and not force:
        raise CheckpointFormatError(
            f"--image-size {height} {width}: the checkpoint has {classifier.shape[0]} identities, as {known[0]}, "
            f"whose models are trained at {known[1][0]} {known[1][1]}; pass --image-size {known[1][0]} {known[1][1]}, "
            "or --force if it really was trained at this size"
        )


def clip_vision_config(state: dict[str, torch.Tensor], tower: str) -> dict:
    """The image tower's config (a dict) from the shapes of the authors' CLIP visual keys under ``tower``."""
    conv = state[tower + "conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    block = re.compile(re.escape(tower) + r"transformer\.resblocks\.(\d+)\.")
    depth = 1 + max(int(m.group(1)) for k in state if (m := block.match(k)))
    return dict(
        model_type="clip_vision_model",
        hidden_size=width,
        intermediate_size=state[tower + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=depth,
        num_attention_heads=max(1, width // 64),  # OpenAI CLIP uses 64-wide heads
        patch_size=patch,
        image_size=224,
        projection_dim=state[tower + "proj"].shape[1],
        hidden_act="quick_gelu",
    )


def map_clip_layers(take, take_prefix, out: dict, source: str, target: str, depth: int) -> None:
    """The authors' CLIP residual blocks ``{source}{i}.`` -> HF `CLIPEncoderLayer` names ``{target}{i}.`` (the fused
    qkv projection split into three)."""
    for i in range(depth):
        block, layer = f"{source}{i}.", f"{target}{i}."
        for kind in ("weight", "bias"):
            q, k, v = take(f"{block}attn.in_proj_{kind}").chunk(3, dim=0)
            for name, tensor in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                out[f"{layer}self_attn.{name}.{kind}"] = tensor.contiguous()
        for old, new in LAYER_RENAMES.items():
            take_prefix(block + old, layer + new)


def map_clip_vision_tower(take, take_prefix, out: dict, tower: str, depth: int, num_cameras: int) -> None:
    """The authors' CLIP image tower under ``tower`` (and their SIE table) -> `ReIDVisionTower` names."""
    emb = "vision_tower.embeddings."
    out[emb + "patch_embedding.weight"] = take(tower + "conv1.weight")
    out[emb + "class_embedding"] = take(tower + "class_embedding")
    out[emb + "position_embedding"] = take(tower + "positional_embedding")  # sized by check_image_size
    if num_cameras:
        out[emb + "camera_embedding"] = take("BACKBONE.cv_embed").reshape(num_cameras, -1)
    take_prefix(tower + "ln_pre.", "vision_tower.pre_layernorm.")
    take_prefix(tower + "ln_post.", "vision_tower.post_layernorm.")
    out["vision_tower.projection.weight"] = take(tower + "proj").t().contiguous()  # CLIP computes x @ proj
    map_clip_layers(take, take_prefix, out, tower + "transformer.resblocks.", "vision_tower.layers.", depth)


def infer_config(state: dict[str, torch.Tensor], image_size: tuple[int, int], force: bool = False) -> DeMoConfig:
    """Read the architecture from tensor shapes (after checking --image-size against them)."""
    if TOWER + "conv1.weight" not in state:
        raise CheckpointFormatError(
            f"missing {TOWER}conv1.weight: only the CLIP-backbone checkpoints of the original code are supported"
        )
    vision_config = clip_vision_config(state, TOWER)
    direct = "classifier.weight" in state
    classifier = state["classifier.weight" if direct else "classifier_r.weight"]
    experts = {int(m.group(1)) for k in state if (m := re.match(r"generalFusion\.moe\.experts\.(\d+)\.", k))}
    check_image_size(state, image_size, force)
    return DeMoConfig(
        vision_config=vision_config,
        image_size=image_size,
        num_labels=classifier.shape[0],
        num_cameras=state["BACKBONE.cv_embed"].shape[0] if "BACKBONE.cv_embed" in state else 0,
        use_pife="rgb_reduce.1.weight" in state,
        use_hdm="generalFusion.r_token" in state,
        use_atmoe=bool(experts),
        atmoe_heads=len(experts) or 4,
        direct_classifier=direct,
    )


class KeyMapper:
    """The bookkeeping of a state-dict conversion: `take` a tensor (noting it as mapped), `take_prefix` every tensor
    under a prefix into `out` under another, and `finish`, which refuses the conversion when any tensor of the
    checkpoint was left unmapped (a layout this converter does not know must fail loudly, not load half)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state
        self.out: dict[str, torch.Tensor] = {}
        self.consumed: set[str] = set()

    def take(self, key: str) -> torch.Tensor:
        self.consumed.add(key)
        return self.state[key]

    def take_prefix(self, source: str, target: str) -> None:
        for key in [k for k in self.state if k.startswith(source)]:
            self.out[target + key[len(source) :]] = self.take(key)

    def finish(self) -> dict[str, torch.Tensor]:
        leftover = sorted(k for k in self.state if k not in self.consumed)
        if leftover:
            raise CheckpointFormatError(
                f"{len(leftover)} tensors of the checkpoint were not mapped, e.g. {leftover[:5]}"
            )
        return self.out


def convert_state_dict(state: dict[str, torch.Tensor], config: DeMoConfig) -> dict[str, torch.Tensor]:
    """Rename (and split / transpose where the layouts differ) every tensor into `DeMoModel` names."""
    mapper = KeyMapper(state)
    out, take, take_prefix = mapper.out, mapper.take, mapper.take_prefix

    map_clip_vision_tower(take, take_prefix, out, TOWER, config.vision_config.num_hidden_layers, config.num_cameras)

    if config.use_pife:
        for modality in MODALITIES:
            take_prefix(f"{modality}_reduce.0.", f"patch_integration.{modality}.norm.")
            take_prefix(f"{modality}_reduce.1.", f"patch_integration.{modality}.dense.")
    if config.use_hdm:
        names = [name.lower() for name in EXPERT_NAMES]
        out["decoupling.queries"] = torch.cat([take(f"generalFusion.{n}_token").reshape(1, -1) for n in names])
        for index, name in enumerate(names):
            take_prefix(f"generalFusion.{name}.", f"decoupling.attentions.{index}.")
    if config.use_atmoe:
        gate = "generalFusion.moe.gating_network.gate."
        take_prefix(gate + "linear_re.0.", "mixture_of_experts.gate.reduction.")
        take_prefix(gate + "linear_re.2.", "mixture_of_experts.gate.reduction_norm.")
        out["mixture_of_experts.gate.q_proj.weight"] = take(gate + "q_.weight")
        out["mixture_of_experts.gate.k_proj.weight"] = take(gate + "k_.weight")
        for head in range(config.atmoe_heads):
            for expert in range(len(EXPERT_NAMES)):
                source = f"generalFusion.moe.experts.{head}.expertHead.{expert}.mlp."
                take_prefix(source + "0.", f"mixture_of_experts.experts.{head}.{expert}.dense.")
                take_prefix(source + "2.", f"mixture_of_experts.experts.{head}.{expert}.norm.")

    heads = {"ori": ""} if config.direct_classifier else {m: "_" + ORIGINAL_MODALITY[m] for m in MODALITIES}
    if config.use_hdm:
        heads["moe"] = "_moe"
    for name, suffix in heads.items():
        out[f"classifiers.{name}.weight"] = take(f"classifier{suffix}.weight")
        take_prefix(f"bottleneck{suffix}.", f"bnnecks.{name}.")
    return mapper.finish()


def convert_checkpoint(checkpoint: Path, image_size: tuple[int, int], output: Path, force: bool = False,
                       offset_factor: float | None = None):
    """Read ``checkpoint`` (the authors' DeMo or IDEA, recognised from its keys), check and convert it, and publish it
    as a ``save_pretrained`` folder at ``output`` (which must not exist or be an empty folder); nothing is left at
    ``output`` when any step fails. ``offset_factor`` overrides IDEA's CDA offset factor (refused for DeMo)."""
    from . import conversion_idea

    state = load_original_state_dict(Path(checkpoint))
    if conversion_idea.is_idea_checkpoint(state):
        config = conversion_idea.infer_config(state, image_size, force, offset_factor)
        converted = conversion_idea.convert_state_dict(state, config)
        model_class = conversion_idea.IdeaModel
    else:
        if offset_factor is not None:
            raise CheckpointFormatError(f"{checkpoint} is a DeMo checkpoint: --offset-factor applies to IDEA's only")
        config = infer_config(state, image_size, force)
        converted = convert_state_dict(state, config)
        model_class = DeMoModel
    model = model_class(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise CheckpointFormatError(f"{checkpoint}: missing {missing[:5]}, unexpected {unexpected[:5]} after mapping")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"--output {output} exists and is not an empty folder")
    with atomic_output(output, overwrite=True) as staging:  # overwrite: only an empty folder is replaced
        model.save_pretrained(staging)
        share_weights(staging)
    return model

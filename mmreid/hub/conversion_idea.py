"""Checkpoints saved by the IDEA authors' training code (924973292/IDEA, CLIP ViT backbone) as `IdeaModel` folders;
`conversion.convert_checkpoint` recognises them by their keys and calls this module.

Read from tensor shapes: the image and text towers' widths and depths, the learnable prompt vectors, the InverseNet,
CDA and its kernel, direct or per-modality heads, identities and cameras. What the weights do not carry comes from
the dataset the identity count names, as the authors' configs/*/IDEA.yml and data code set it: CDA's offset factor
(`OFF_FAC`, overridden by --offset-factor), the captions' modality prefix and the input size check; CDA's stride is
the authors' fixed 2.
"""

from __future__ import annotations

import re

import torch

from configuration_idea import IdeaConfig
from configuration_reid import MODALITIES
from modeling_idea import IdeaModel

from .conversion import (
    CheckpointFormatError,
    KeyMapper,
    check_image_size,
    clip_vision_config,
    map_clip_layers,
    map_clip_vision_tower,
)

__all__ = ["IdeaModel", "convert_state_dict", "infer_config", "is_idea_checkpoint"]

CLIP = "BACKBONE.base."
VISION = CLIP + "visual."
# Training identities -> (dataset, the authors' OFF_FAC for it) (configs/*/IDEA.yml).
OFFSET_FACTORS = {171: ("RGBNT201", 5.0), 50: ("RGBNT100", 21.0), 155: ("MSVR310", 25.0)}
# The authors' per-modality head suffixes.
ORIGINAL_MODALITY = {"rgb": "rgb", "nir": "nir", "tir": "tir"}


def is_idea_checkpoint(state: dict[str, torch.Tensor]) -> bool:
    """IDEA's checkpoints hold the whole CLIP model (image tower under `visual.`, the text tower beside it)."""
    return VISION + "conv1.weight" in state and CLIP + "token_embedding.weight" in state


def _depth(state: dict, prefix: str) -> int:
    return 1 + max(int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k)))


def _classifier_key(state: dict) -> str:
    for key in ("classifier_v.weight", "classifier_v_rgb.weight"):
        if key in state:
            return key
    raise CheckpointFormatError("no classifier_v.weight or classifier_v_rgb.weight: not a checkpoint of IDEA's heads")


def infer_config(state: dict[str, torch.Tensor], image_size: tuple[int, int], force: bool = False,
                 offset_factor: float | None = None) -> IdeaConfig:
    """Read the architecture from tensor shapes (after checking --image-size against them)."""
    if any(k.startswith("CDA.da_group.0.conv_offset_r.") for k in state):
        raise CheckpointFormatError("the checkpoint's CDA predicts offsets per modality (DA_SHARE: False); only the "
                                    "authors' published setting, offsets shared across modalities, is supported")
    if any(".adapter_" in k for k in state):
        raise CheckpointFormatError("the checkpoint has prompt / adapter tuning layers (MODEL.PROMPT / ADAPTER), "
                                    "which the authors' IDEA configs do not use; they are not supported")
    classifier_key = _classifier_key(state)
    check_image_size(state, image_size, force, tower=VISION, classifier_key=classifier_key)
    identities = state[classifier_key].shape[0]
    use_cda = "CDA.da_group.0.proj_q.weight" in state
    if offset_factor is None and use_cda:
        if identities not in OFFSET_FACTORS:
            raise CheckpointFormatError(
                f"the checkpoint has {identities} identities, none of the authors' datasets "
                f"({', '.join(f'{n} {d}' for n, (d, _) in OFFSET_FACTORS.items())}): pass --offset-factor (OFF_FAC)"
            )
        offset_factor = OFFSET_FACTORS[identities][1]
    text_width = state[CLIP + "ln_final.weight"].shape[0]
    text_config = dict(
        model_type="clip_text_model",
        vocab_size=state[CLIP + "token_embedding.weight"].shape[0],
        hidden_size=text_width,
        intermediate_size=state[CLIP + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_depth(state, CLIP + "transformer.resblocks."),
        num_attention_heads=max(1, text_width // 64),  # OpenAI CLIP uses 64-wide heads
        max_position_embeddings=state[CLIP + "positional_embedding"].shape[0],
        projection_dim=state[CLIP + "text_projection"].shape[1],
        hidden_act="quick_gelu",
        # OpenAI CLIP's start / end tokens are the vocabulary's last two (the model pools the highest id anyway).
        bos_token_id=state[CLIP + "token_embedding.weight"].shape[0] - 2,
        eos_token_id=state[CLIP + "token_embedding.weight"].shape[0] - 1,
    )
    prompts = state.get(CLIP + "text_prompt")
    dataset = OFFSET_FACTORS.get(identities, (None,))[0]
    return IdeaConfig(
        caption_prefix=dataset.lower() if dataset else None,  # unknown dataset: captions as given
        vision_config=clip_vision_config(state, VISION),
        text_config=text_config,
        image_size=image_size,
        num_labels=identities,
        num_cameras=state["BACKBONE.cv_embed"].shape[0] if "BACKBONE.cv_embed" in state else 0,
        num_text_prompts=0 if prompts is None else prompts.shape[0],
        use_inverse="BACKBONE.inverseNet.fc1.weight" in state,
        use_cda=use_cda,
        cda_offset_factor=offset_factor if use_cda else 5.0,
        cda_kernel_size=state["CDA.da_group.0.conv_offset.2.weight"].shape[-1] if use_cda else 4,
        concatenated_heads=classifier_key == "classifier_v.weight",
    )


def convert_state_dict(state: dict[str, torch.Tensor], config: IdeaConfig) -> dict[str, torch.Tensor]:
    """Rename (and split / transpose / reshape where the layouts differ) every tensor into `IdeaModel` names."""
    mapper = KeyMapper(state)
    out, take, take_prefix = mapper.out, mapper.take, mapper.take_prefix

    map_clip_vision_tower(take, take_prefix, out, VISION, config.vision_config.num_hidden_layers, config.num_cameras)
    position = take(VISION + "new_positional_embedding").reshape(-1)  # the extra token's; built even when unused
    take(CLIP + "logit_scale")  # CLIP's contrastive temperature: IDEA never reads it

    text = "text_tower.text_model."
    out[text + "embeddings.token_embedding.weight"] = take(CLIP + "token_embedding.weight")
    out[text + "embeddings.position_embedding.weight"] = take(CLIP + "positional_embedding")
    map_clip_layers(take, take_prefix, out, CLIP + "transformer.resblocks.", text + "encoder.layers.",
                    config.text_config.num_hidden_layers)
    take_prefix(CLIP + "ln_final.", text + "final_layer_norm.")
    out["text_tower.text_projection.weight"] = take(CLIP + "text_projection").t().contiguous()  # x @ projection
    if config.num_text_prompts:
        out["text_prompts"] = take(CLIP + "text_prompt")

    if config.use_inverse:
        take_prefix("BACKBONE.inverseNet.fc1.", "inverse_net.fc1.")
        take_prefix("BACKBONE.inverseNet.fc2.", "inverse_net.fc2.")
        out["inverse_net.position_embedding"] = position
    if config.use_cda:
        block = "CDA.da_group.0."
        for index in (0, 2, 4):
            take_prefix(f"{block}conv_offset.{index}.", f"aggregation.offset_net.{index}.")
        for name in ("q", "k", "v", "out"):  # 1x1 convolutions -> Linear layers
            weight = take(f"{block}proj_{name}.weight")
            out[f"aggregation.{name}_proj.weight"] = weight.reshape(weight.shape[0], weight.shape[1])
            out[f"aggregation.{name}_proj.bias"] = take(f"{block}proj_{name}.bias")

    if config.concatenated_heads:
        heads = {"V": "_v", "T": "_t"}
    else:
        heads = {f"{kind.upper()}_{m.upper()}": f"_{kind}_{ORIGINAL_MODALITY[m]}" for kind in "vt" for m in MODALITIES}
    for name, suffix in heads.items():
        out[f"classifiers.{name}.weight"] = take(f"classifier{suffix}.weight")
        take_prefix(f"bottleneck{suffix}.", f"bnnecks.{name}.")
    if config.use_cda:
        for name, kind in (("LOCAL_v", "visual"), ("LOCAL_t", "textual")):
            out[f"classifiers.{name}.weight"] = take(f"{kind}_classifier.weight")
            take_prefix(f"bottleneck_{kind}.", f"bnnecks.{name}.")
    return mapper.finish()

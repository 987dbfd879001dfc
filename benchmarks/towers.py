#!/usr/bin/env python
"""Sizes of DeMo and NEXT on each image-tower family at base size: parameters and MACs per RGB/NIR/TIR triple.

    python benchmarks/towers.py                       # prints the Markdown table of docs/towers.md (~2 min on 2 cores)
    python benchmarks/towers.py --json sizes.json     # also every figure as JSON, with the machine

Every tower is built from random weights with its family's base shapes (`BASE_TOWERS`: those of the checkpoint named
in the table), at the ReID input size 256 x 128, or the nearest multiple of the patch below it for patch-14 towers
(DINOv2: 252 x 126). MACs = FLOPs / 2 of one triple in evaluation mode, counted by `torch.utils.flop_counter` through
`mmreid.evaluation.complexity.count_macs` (eager attention; NEXT without captions: its frozen text tower runs once
per caption, not per image). The sizes do not depend on the machine; it is named for the run time only.

Each row is one (tower, model, tuning mode) triple: today every tower trains fully ("full"); a tuning-mode column
(frozen / LoRA trainable counts) fills in by adding modes to `TUNING_MODES` and a branch to `apply_tuning`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness import describe_machine

# Paper Table 5 (DeMo, CLIP ViT-B/16 at 256 x 128, model D: + ATMoE): what the CLIP row is read beside.
PAPER_TABLE5_CLIP = {"model": "DeMo", "trainable": 98_792_960, "gmacs": 35.10}
# The base tower of each family: (checkpoint whose shapes these are, config fields). Random weights: sizes only.
VIT_B = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
BASE_TOWERS = {
    "clip": ("openai/clip-vit-base-patch16", dict(VIT_B, patch_size=16, image_size=224, projection_dim=512,
                                                  hidden_act="quick_gelu")),
    "metaclip_2": ("ViT-B/16 shapes (MetaCLIP 2's smallest towers are not checked here)",
                   dict(VIT_B, patch_size=16, image_size=224, projection_dim=512)),
    "siglip": ("google/siglip-base-patch16-224 (also google/siglip2-base-patch16-224)",
               dict(VIT_B, patch_size=16, image_size=224)),
    "siglip2": ("google/siglip2-base-patch16-naflex", dict(VIT_B, patch_size=16, num_patches=256)),
    "dinov2": ("facebook/dinov2-base", dict(VIT_B, patch_size=14, image_size=518)),
    "dinov2_with_registers": ("facebook/dinov2-with-registers-base",
                              dict(VIT_B, patch_size=14, image_size=518, num_register_tokens=4)),
    "dinov3_vit": ("facebook/dinov3-vitb16-pretrain-lvd1689m", dict(VIT_B, patch_size=16, image_size=224,
                                                                    num_register_tokens=4)),
    "vit": ("google/vit-base-patch16-224-in21k", dict(VIT_B, patch_size=16, image_size=224)),
}
MODELS = ("demo", "next")
TUNING_MODES = ("full",)  # add "frozen", "lora" here once the tower-tuning modes exist
REID_SIZE = (256, 128)


@dataclass
class SizeRow:
    tower: str
    checkpoint: str
    model: str
    tuning: str
    image_size: str
    total_parameters: int
    trainable_parameters: int
    gmacs: float
    seconds: float


def reid_size(patch: int) -> tuple[int, int]:
    """256 x 128, or the nearest multiple of the patch below it (DINOv2's patch 14: 252 x 126)."""
    return tuple(patch * (side // patch) for side in REID_SIZE)


def build(family: str, model_name: str):
    """The ViT-B-sized model of `family`, random weights (171 identities, 4 cameras: the RGBNT201 set-up)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from configuration_reid import BACKBONE_MODEL_TYPES, CLIP_B16_TEXT_SHAPES
    from mmreid.models import BUILTIN_MODELS

    _, fields = BASE_TOWERS[family]
    vision = CONFIG_MAPPING[BACKBONE_MODEL_TYPES[family]](**fields)
    options = dict(vision_config=vision, image_size=reid_size(fields["patch_size"]), num_labels=171, num_cameras=4)
    if model_name == "next":
        # The paper's CLIP text tower; through the learned bridge when the image tower is not CLIP's (as
        # train.py --text-backbone builds it).
        options.update(text_config=dict(CLIP_B16_TEXT_SHAPES, model_type="clip_text_model"),
                       text_bridge=family != "clip")
    entry = BUILTIN_MODELS[model_name]
    return entry.model_class(entry.config_class(**options))


def apply_tuning(model, mode: str):
    """The model as it trains in tuning `mode` (only "full" today: every parameter but the frozen ones)."""
    if mode != "full":
        raise ValueError(f"tuning mode {mode!r} is not implemented yet")
    return model


def measure(family: str, model_name: str, mode: str) -> SizeRow:
    from mmreid.evaluation.complexity import count_macs, count_trainable_parameters

    start = time.perf_counter()
    torch.manual_seed(0)
    model = apply_tuning(build(family, model_name), mode)
    height, width = model.config.image_size
    row = SizeRow(
        tower=family, checkpoint=BASE_TOWERS[family][0], model=model_name, tuning=mode,
        image_size=f"{height}x{width}", total_parameters=sum(p.numel() for p in model.parameters()),
        trainable_parameters=count_trainable_parameters(model), gmacs=count_macs(model) / 1e9, seconds=0.0,
    )
    row.seconds = time.perf_counter() - start
    return row


def markdown(rows: list[SizeRow]) -> str:
    lines = [
        "| tower | model | input | parameters (total) | trainable (full tuning) | GMACs per triple |",
        "|---|---|---|---|---|---|",
        f"| paper Table 5, CLIP ViT-B/16 | {PAPER_TABLE5_CLIP['model']} | 256x128 | - | "
        f"{PAPER_TABLE5_CLIP['trainable']:,} | {PAPER_TABLE5_CLIP['gmacs']:.2f} |",
    ]
    lines += [f"| {r.tower} | {r.model} | {r.image_size} | {r.total_parameters:,} | {r.trainable_parameters:,} | "
              f"{r.gmacs:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--towers", nargs="+", choices=list(BASE_TOWERS), default=list(BASE_TOWERS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--json", type=Path, default=None, help="also write every figure and the machine here")
    args = parser.parse_args(argv)
    rows = [measure(family, model, mode) for family in args.towers for model in args.models for mode in TUNING_MODES]
    machine = describe_machine("cpu")
    print(markdown(rows))
    print(f"\nmachine: {machine['cpu']} ({machine['isa']}), {machine['usable_cores']} cores, torch {machine['torch']}; "
          f"{sum(r.seconds for r in rows):.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

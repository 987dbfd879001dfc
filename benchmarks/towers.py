#!/usr/bin/env python
"""Sizes of DeMo and NEXT on each image-tower family at base size: parameters and MACs per RGB/NIR/TIR triple.

    python benchmarks/towers.py                       # prints the Markdown table of docs/towers.md (~2 min on 2 cores)
    python benchmarks/towers.py --json sizes.json     # also every figure as JSON, with the machine

Every tower is built from random weights with its family's base shapes (`BASE_TOWERS`: those of the checkpoint named
in the table), at the ReID input size 256 x 128, or the nearest multiple of the patch below it for patch-14 towers
(DINOv2: 252 x 126). MACs = FLOPs / 2 of one triple in evaluation mode, counted by `torch.utils.flop_counter` through
`mmreid.evaluation.complexity.count_macs` (eager attention; NEXT without captions: its frozen text tower runs once
per caption, not per image). The sizes do not depend on the machine; it is named for the run time only.

Each row is one (tower, model, tuning mode) triple; the tuning modes are `train.py --tower-tuning`'s, applied by
`mmreid.training.tuning.apply_tower_tuning` (LoRA at its defaults: rank 8 on the attention's q/k/v projections).

    python benchmarks/towers.py --step-times          # also one training step per tower and tuning mode (DeMo)

`--step-times` times one optimizer step (forward, the trainer's loss, backward, AdamW) of DeMo on a P x K batch of
2 x 2 triples, for every tower and tuning mode, each tower's modes interleaved round by round with CLIP full tuning in
one process (`harness.interleaved_seconds`), and reports each as a ratio against CLIP with full tuning (the median of
the per-round ratios, so drift on the shared machine hits both sides). Only ratios are comparable across towers.
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
TUNING_MODES = ("full", "frozen", "lora")
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
    """The model as `train.py --tower-tuning mode` trains it (LoRA at the defaults)."""
    from mmreid.training.tuning import apply_tower_tuning

    apply_tower_tuning(model, mode)
    return model


def measure(family: str, model_name: str) -> list[SizeRow]:
    """The rows of every tuning mode: MACs counted once (tuning does not change them), trainable counts per mode."""
    from mmreid.evaluation.complexity import count_macs, count_trainable_parameters

    rows, gmacs = [], None
    for mode in TUNING_MODES:
        start = time.perf_counter()
        torch.manual_seed(0)
        model = apply_tuning(build(family, model_name), mode)
        height, width = model.config.image_size
        if gmacs is None:
            gmacs = count_macs(model) / 1e9
        rows.append(SizeRow(
            tower=family, checkpoint=BASE_TOWERS[family][0], model=model_name, tuning=mode,
            image_size=f"{height}x{width}", total_parameters=sum(p.numel() for p in model.parameters()),
            trainable_parameters=count_trainable_parameters(model), gmacs=gmacs,
            seconds=time.perf_counter() - start,
        ))
    return rows


def markdown(rows: list[SizeRow]) -> str:
    """One line per (tower, model): total parameters, trainable ones per tuning mode, MACs (the same in every mode)."""
    modes = [mode for mode in TUNING_MODES if any(r.tuning == mode for r in rows)]
    lines = [
        "| tower | model | input | parameters (total) | " + " | ".join(f"trainable ({m})" for m in modes)
        + " | GMACs per triple |",
        "|---|---|---|---|" + "---|" * len(modes) + "---|",
        f"| paper Table 5, CLIP ViT-B/16 | {PAPER_TABLE5_CLIP['model']} | 256x128 | - | "
        f"{PAPER_TABLE5_CLIP['trainable']:,} |" + " - |" * (len(modes) - 1) + f" {PAPER_TABLE5_CLIP['gmacs']:.2f} |",
    ]
    groups: dict[tuple[str, str], dict[str, SizeRow]] = {}
    for r in rows:
        groups.setdefault((r.tower, r.model), {})[r.tuning] = r
    for (tower, model), by_mode in groups.items():
        first = next(iter(by_mode.values()))
        trainable = " | ".join(f"{by_mode[m].trainable_parameters:,}" if m in by_mode else "-" for m in modes)
        lines.append(f"| {tower} | {model} | {first.image_size} | {first.total_parameters:,} | {trainable} | "
                     f"{first.gmacs:.2f} |")
    return "\n".join(lines)


def step_function(family: str, mode: str, batch_size: int = 4):
    """One training step of DeMo on `family` in tuning `mode`: forward, the trainer's loss, backward, AdamW step."""
    from mmreid.training.losses import ReIDLoss

    torch.manual_seed(0)
    model = apply_tuning(build(family, "demo"), mode).train()
    height, width = model.config.image_size
    pixel_values = torch.randn(batch_size, 3, 3, height, width)
    camera_ids = torch.arange(batch_size) % model.config.num_cameras
    labels = torch.arange(batch_size) // 2  # P x K = 2 x 2: two identities, two triples each
    loss = ReIDLoss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss(model(pixel_values, camera_ids=camera_ids), labels).loss.backward()
        optimizer.step()

    return step


def step_times(towers: list[str], repeats: int) -> list[dict]:
    """Each tower's modes interleaved with CLIP full tuning, one tower at a time (all 24 base-size models with their
    optimizer states would not fit in memory at once); ratios against CLIP full from the same rounds."""
    from harness import interleaved_seconds

    reference = step_function("clip", "full")
    rows = []
    for family in towers:
        steps = {"clip/full (reference)": reference}
        steps.update({f"{family}/{mode}": step_function(family, mode) for mode in TUNING_MODES
                      if (family, mode) != ("clip", "full")})
        result = interleaved_seconds(steps, repeats=repeats, warmup=1)
        for name in list(steps)[1:]:
            rows.append({"tower": family, "tuning": name.split("/")[1], "median_s": result["median_s"][name],
                         "ratio_to_clip_full": 1.0 / result["ratio_median"][name]})
        if family == "clip":
            rows.insert(len(rows) - 2, {"tower": "clip", "tuning": "full", "median_s": result["median_s"][
                "clip/full (reference)"], "ratio_to_clip_full": 1.0})
        del steps
        print(f"  {family}: done", file=sys.stderr, flush=True)
    return rows


def step_markdown(rows: list[dict]) -> str:
    lines = ["| tower | " + " | ".join(f"{m} (s, x CLIP full)" for m in TUNING_MODES) + " |",
             "|---|" + "---|" * len(TUNING_MODES)]
    for tower in dict.fromkeys(r["tower"] for r in rows):
        cells = {r["tuning"]: f"{r['median_s']:.2f} s, {r['ratio_to_clip_full']:.2f}x" for r in rows if r["tower"] == tower}
        lines.append(f"| {tower} | " + " | ".join(cells.get(m, "-") for m in TUNING_MODES) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--towers", nargs="+", choices=list(BASE_TOWERS), default=list(BASE_TOWERS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--json", type=Path, default=None, help="also write every figure and the machine here")
    parser.add_argument("--step-times", action="store_true", help="also time one DeMo training step per tower and mode")
    parser.add_argument("--no-sizes", action="store_true", help="skip the parameter / MAC table")
    parser.add_argument("--repeats", type=int, default=5, help="--step-times: interleaved rounds (median reported)")
    args = parser.parse_args(argv)
    rows = [] if args.no_sizes else [row for family in args.towers for model in args.models
                                     for row in measure(family, model)]
    machine = describe_machine("cpu")
    if rows:
        print(markdown(rows))
    steps = step_times(args.towers, args.repeats) if args.step_times else []
    if steps:
        print("\n" + step_markdown(steps))
    print(f"\nmachine: {machine['cpu']} ({machine['isa']}), {machine['usable_cores']} cores, torch {machine['torch']}; "
          f"{sum(r.seconds for r in rows):.0f} s for the sizes")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": [asdict(r) for r in rows], "step_times": steps},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The GPU check of issue 20, ready to run on a machine with a CUDA GPU (about 5-10 minutes on one GPU):

    python benchmarks/gpu_check.py                  # writes benchmarks/results/cuda.md and cuda-check.json
    python benchmarks/gpu_check.py --dry-run        # the same steps on CPU at toy sizes (seconds): does it start?

What it measures, on the ViT-B/16 DeMo at 256x128 (random weights, model_suite's model):
1. training steps in bf16 (autocast) and fp16 (autocast + GradScaler, the authors' mode), each with and without
   torch.compile, and inference, triples/s (median of repeats after warm-up, compiled warm-up = compile time);
2. the fraction of the GPU's dense bf16 peak (model_suite.run_gpu_fraction);
3. the CUDA ranking path against the CPU one on the same distance matrix: equal mAP, mINP and CMC;
4. decoding throughput with 1..N DataLoader workers against the bf16 training step's demand (triples/s), and the
   workers a run needs.
5. the same bf16 steps (eager and compiled, training and inference) on DeMo with the DINOv3 ViT-B/16 tower
   (random weights, 4 registers, rotary positions; `OTHER_TOWERS`), beside the CLIP rows.
The dry run replaces the model by the tiny test config, CUDA by CPU and inductor by aot_eager, so CI can check that
every step runs and the report is written without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
import torch

from harness import describe_machine, median_seconds

AMP_MODES = ("bfloat16", "float16")
# Towers timed beside CLIP (bf16 only), by tower family (configuration_reid.BACKBONE_MODEL_TYPES).
OTHER_TOWERS = ("dinov3_vit",)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, aot_eager: check that every step runs")
    p.add_argument("--output-dir", type=Path, default=HERE / "results")
    p.add_argument("--batch", type=int, default=32, help="triples per training / inference step")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-workers", type=int, default=None, help="decode with 1..N workers (default: min(8, cores))")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    return p.parse_args(argv)


class Setup:
    """What differs between the real check and the dry run: device, model, sizes, compile backend."""

    def __init__(self, dry_run: bool, batch: int):
        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda"
        self.image_size = (32, 16) if dry_run else (256, 128)
        self.batch = 8 if dry_run else batch  # 2 identities x 4 (the triplet loss needs 2)
        self.backend = "aot_eager" if dry_run else "inductor"
        self.sync = (lambda: None) if dry_run else torch.cuda.synchronize

    def model(self, tower: str = "clip"):
        from modeling_demo import DeMoModel

        if self.dry_run:
            from mmreid.hub.backbones import tiny_demo_config

            torch.manual_seed(0)
            return DeMoModel(tiny_demo_config(num_labels=171, num_cameras=4, image_size=self.image_size,
                                              backbone_type=tower))
        if tower == "clip":
            from model_suite import build_model

            return build_model(self.image_size, self.device)
        from configuration_demo import DeMoConfig
        from mmreid.hub.backbones import dinov3_vit_b16_vision_config

        vision = {"dinov3_vit": dinov3_vit_b16_vision_config}[tower]()
        torch.manual_seed(0)
        return DeMoModel(DeMoConfig(vision_config=vision, image_size=self.image_size, num_labels=171, num_cameras=4,
                                    attn_implementation="sdpa")).to(self.device)


def training_step(model, optimizer, scaler, batch: dict, device: str, amp: str):
    """One step as the Trainer takes it under --bf16 / --fp16: autocast forward + loss; fp16 scales the loss."""
    from model_suite import LOSS

    def step():
        with torch.autocast(device_type=device, dtype=getattr(torch, amp)):
            out = model(pixel_values=batch["pixel_values"], camera_ids=batch["camera_ids"])
            loss = LOSS(out, batch["labels"]).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def check_steps(setup: Setup, repeats: int, log, tower: str = "clip", amp_modes=AMP_MODES) -> list[dict]:
    from model_suite import inference_pass, make_batch

    rows = []
    data = make_batch(setup.batch, setup.image_size, setup.device)
    for amp in amp_modes:
        for compiled in (False, True):
            torch._dynamo.reset()
            model = setup.model(tower).to(setup.device)
            runnable = torch.compile(model, backend=setup.backend) if compiled else model
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
            scaler = torch.amp.GradScaler(setup.device) if amp == "float16" else None
            for mode in ("train", "inference"):
                model.train(mode == "train")
                fn = (training_step(runnable, optimizer, scaler, data, setup.device, amp) if mode == "train"
                      else inference_pass(runnable, data, setup.device, amp))
                seconds, times = median_seconds(fn, repeats, warmup=2, sync=setup.sync)
                row = {"tower": tower, "amp": amp, "compile": compiled, "mode": mode, "batch": setup.batch,
                       "median_s": seconds,
                       "times_s": times, "triples_per_s": setup.batch / seconds}
                if mode == "train":
                    row["loss_finite"] = bool(torch.isfinite(fn()).item())
                    row["grad_scale"] = float(scaler.get_scale()) if scaler is not None else None
                rows.append(row)
                log(f"  {tower} {amp} compile={compiled} {mode}: {row['triples_per_s']:.1f} triples/s")
            del model, runnable, optimizer
    return rows


def check_ranking(setup: Setup, log) -> dict:
    """reid_metrics on the GPU and on the CPU, same matrix: the results must be equal."""
    import numpy as np

    from mmreid.evaluation.metrics import reid_metrics
    from ranking_suite import make_case

    size = (200, 1000) if setup.dry_run else (1715, 8675)
    dist, q_pids, g_pids, q_cams, g_cams = make_case(*size, "trained")
    on_cpu = reid_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    on_device = reid_metrics(torch.from_numpy(dist).to(setup.device), q_pids, g_pids, q_cams, g_cams)
    diff = float(max(abs(on_cpu["mAP"] - on_device["mAP"]), abs(on_cpu["mINP"] - on_device["mINP"]),
                     np.abs(np.asarray(on_cpu["cmc"]) - np.asarray(on_device["cmc"])).max()))
    result = {"size": f"{size[0]}x{size[1]}", "mAP": float(on_cpu["mAP"]), "max_difference": diff,
              "equal": diff == 0.0}
    log(f"  ranking {result['size']} on {setup.device} vs cpu: max difference {diff:.1e}")
    return result


def check_decode(setup: Setup, demand: float, max_workers: int, log) -> dict:
    from decode_suite import run_decode_suite

    workers = list(range(1, max_workers + 1))
    rows = run_decode_suite(workers, [setup.image_size if setup.dry_run else (256, 128)], repeats=1 if setup.dry_run
                            else 2, ids=4 if setup.dry_run else 20, images_per_id=4 if setup.dry_run else 20, log=log)
    enough = [r["workers"] for r in rows if r["triples_per_s"] >= demand]
    return {"rows": rows, "training_demand_triples_per_s": demand,
            "workers_needed": min(enough) if enough else None}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# GPU check (issue 20){' - DRY RUN on CPU, toy sizes: not a measurement' if result['dry_run'] else ''}",
             "", f"Machine: {m.get('gpu', 'no GPU')}, CUDA {m.get('cuda')}, {m['cpu']} ({m.get('isa')}, {m['usable_cores']} cores), "
             f"torch {m['torch']}. Command: `{result['command']}` ({result['started']}).", "",
             f"**Steps** (DeMo, {result['model']}, batch {result['steps'][0]['batch']}; median of repeats after "
             "warm-up)", "", "| autocast | compile | mode | triples/s | loss finite | grad scale |",
             "|---|---|---|---|---|---|"]
    for r in result["steps"]:
        lines.append(f"| {r['amp']} | {r['compile']} | {r['mode']} | {r['triples_per_s']:.1f} | "
                     f"{r.get('loss_finite', '-')} | {r.get('grad_scale') or '-'} |")
    if result.get("tower_steps"):
        lines += ["", "**Other towers** (DeMo, same batch and input size, random weights; CLIP's bf16 rows above)", "",
                  "| tower | autocast | compile | mode | triples/s | vs CLIP | loss finite |", "|---|---|---|---|---|---|---|"]
        clip = {(r["amp"], r["compile"], r["mode"]): r["triples_per_s"] for r in result["steps"]}
        for r in result["tower_steps"]:
            ratio = r["triples_per_s"] / clip[(r["amp"], r["compile"], r["mode"])]
            lines.append(f"| {r['tower']} | {r['amp']} | {r['compile']} | {r['mode']} | {r['triples_per_s']:.1f} | "
                         f"{ratio:.2f}x | {r.get('loss_finite', '-')} |")
    g = result.get("gpu_fraction")
    if g:
        lines += ["", f"**Fraction of bf16 peak** ({g['gpu']}, {g['bf16_peak_tflops']} TFLOP/s dense bf16, batch "
                  f"{g['batch']}): inference {g['inference']['fraction_of_peak']:.1%}, training "
                  f"{g['train']['fraction_of_peak']:.1%}"]
    r = result["ranking"]
    lines += ["", f"**Ranking** {r['size']}: CUDA path vs CPU path, max difference {r['max_difference']:.1e} "
              f"({'equal' if r['equal'] else 'DIFFERENT'})", "",
              f"**Decoding** vs the bf16 training step's demand of {result['decode']['training_demand_triples_per_s']:.0f} "
              f"triples/s (workers needed: {result['decode']['workers_needed'] or 'more than measured'})", "",
              "| workers | triples/s |", "|---|---|"]
    lines += [f"| {d['workers']} | {d['triples_per_s']:.0f} |" for d in result["decode"]["rows"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import datetime

    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: no CUDA device is visible; run it on a GPU machine, or pass --dry-run")
    setup = Setup(args.dry_run, args.batch)
    log = lambda line: print(line, flush=True)  # noqa: E731
    repeats = 1 if args.dry_run else args.repeats
    result = {"dry_run": args.dry_run, "command": "python benchmarks/gpu_check.py " + shlex.join(
        sys.argv[1:] if argv is None else argv), "machine": describe_machine(setup.device),
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": "tiny test config" if args.dry_run else "CLIP ViT-B/16 shapes, 256x128"}
    print("steps: bf16 / fp16 x compile off / on", flush=True)
    result["steps"] = check_steps(setup, repeats, log)
    print(f"other towers: {', '.join(OTHER_TOWERS)} (bf16)", flush=True)
    result["tower_steps"] = [row for tower in OTHER_TOWERS
                             for row in check_steps(setup, repeats, log, tower, amp_modes=("bfloat16",))]
    if not args.dry_run:
        from model_suite import run_gpu_fraction

        print("fraction of bf16 peak", flush=True)
        result["gpu_fraction"] = run_gpu_fraction(64, setup.image_size, repeats, 2, True, "sdpa", args.peak_tflops,
                                                  log=log)
    print("ranking: device vs cpu", flush=True)
    result["ranking"] = check_ranking(setup, log)
    demand = next(r["triples_per_s"] for r in result["steps"]
                  if r["amp"] == "bfloat16" and r["compile"] and r["mode"] == "train")
    max_workers = args.max_workers or (2 if args.dry_run else min(8, os.cpu_count() or 1))
    print(f"decode with 1..{max_workers} workers", flush=True)
    result["decode"] = check_decode(setup, demand, max_workers, log)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = "cuda-dry-run" if args.dry_run else "cuda"
    (args.output_dir / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.output_dir / f"{stem}.md").write_text(markdown(result))
    print(f"wrote {args.output_dir / stem}.md and .json", flush=True)
    failed = ([r for r in result["steps"] + result["tower_steps"] if r.get("loss_finite") is False]
              or not result["ranking"]["equal"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

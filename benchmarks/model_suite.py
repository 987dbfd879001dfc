"""Training-step and inference throughput of the ViT-B/16-shaped DeMo, and its achieved fraction of the peak.

Why: the issue asks what a training step and an inference pass cost (triples/s, peak memory) at the paper's image
sizes, and on a GPU how close they come to the device's bf16 peak. The model is the paper's (CLIP ViT-B/16 shapes,
171 identities, 4 cameras, PIFE + HDM + ATMoE) with random weights, so nothing is downloaded; a training step is
the trainer's: forward, the ReID loss (label-smoothed CE + batch-hard triplet over a P x 4 batch), backward, Adam.
FLOPs come from torch.utils.flop_counter on the eager model with eager attention (the counter has no formula for
CPU's fused attention), counted at batch 4 and scaled linearly (every layer is per-sample).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from configuration_demo import DeMoConfig
from mmreid.hub.backbones import clip_vit_b16_vision_config
from mmreid.training.losses import ReIDLoss
from modeling_demo import DeMoModel

from harness import PeakMemory, median_seconds

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name fragment, most specific first.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
)
IDENTITIES_PER_BATCH_ROW = 4  # K of the P x K sampler


def bf16_peak_tflops(device_name: str) -> float | None:
    for fragment, tflops in BF16_PEAK_TFLOPS:
        if fragment in device_name:
            return tflops
    return None


def build_model(image_size, device: str, attention: str = "sdpa") -> DeMoModel:
    config = DeMoConfig(
        vision_config=clip_vit_b16_vision_config(),
        image_size=tuple(image_size),
        num_labels=171,
        num_cameras=4,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return DeMoModel(config).to(device)


def make_batch(batch: int, image_size, device: str, per_identity: int = IDENTITIES_PER_BATCH_ROW) -> dict:
    gen = torch.Generator().manual_seed(batch)
    return {
        "pixel_values": (torch.rand(batch, 3, 3, *image_size, generator=gen) * 2 - 1).to(device),
        "camera_ids": torch.randint(0, 4, (batch,), generator=gen).to(device),
        "labels": (torch.arange(batch) // per_identity).to(device),
    }


LOSS = ReIDLoss()  # the trainer's default loss: the authors' recipe


def _autocast(device: str, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=getattr(torch, amp))


def training_step(model, optimizer, batch: dict, device: str, amp: str | None):
    """One optimisation step as the trainer takes it; returns a callable."""

    def step():
        with _autocast(device, amp):
            out = model(pixel_values=batch["pixel_values"], camera_ids=batch["camera_ids"])
            loss = LOSS(out, batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def inference_pass(model, batch: dict, device: str, amp: str | None):
    def run():
        with torch.inference_mode(), _autocast(device, amp):
            model(pixel_values=batch["pixel_values"], camera_ids=batch["camera_ids"])

    return run


def count_flops(model: DeMoModel, image_size, device: str, train: bool, batch: int = 4) -> int:
    """FLOPs of one forward (``train``: forward + backward) per triple, counted with eager attention at ``batch``."""
    vision = model.config.vision_config
    saved, was_training = vision._attn_implementation, model.training
    vision._attn_implementation = "eager"
    model.train(train)
    data = make_batch(batch, image_size, device, per_identity=2)  # the triplet loss needs 2 identities
    try:
        with FlopCounterMode(display=False) as counter:
            out = model(pixel_values=data["pixel_values"], camera_ids=data["camera_ids"])
            if train:
                LOSS(out, data["labels"]).loss.backward()
    finally:
        vision._attn_implementation = saved
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops() // batch


def cpu_matmul_gflops(repeats: int = 10, size: int = 2048) -> float:
    """Best-case fp32 matmul throughput of this CPU (fastest of ``repeats`` torch.mm of two size x size matrices):
    the reference peak a CPU figure is read against (the best of several runs, as a peak should be)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    _, times = median_seconds(lambda: torch.mm(a, b), repeats, warmup=2)
    return 2 * size**3 / min(times) / 1e9


def run_model_suite(device: str, sizes, batches, repeats: int, warmup: int, amp: str | None, compile_model: bool,
                    attention: str, train_repeats: int | None = None, log=print) -> list[dict]:
    """Train and inference rows for every image size x batch size."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for image_size in sizes:
        model = build_model(image_size, device, attention)
        flops = {mode: count_flops(model, image_size, device, mode == "train") for mode in ("train", "inference")}
        runnable = torch.compile(model) if compile_model else model
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
        for batch_size in batches:
            batch = make_batch(batch_size, image_size, device)
            for mode in ("train", "inference"):
                model.train(mode == "train")
                fn = (training_step(runnable, optimizer, batch, device, amp) if mode == "train"
                      else inference_pass(runnable, batch, device, amp))
                n = train_repeats if (mode == "train" and train_repeats) else repeats
                seconds, times = median_seconds(fn, n, warmup, sync)
                with PeakMemory(device) as peak:
                    fn()
                row = {
                    "mode": mode, "image_size": f"{image_size[0]}x{image_size[1]}", "batch": batch_size,
                    "median_s": seconds, "times_s": times, "triples_per_s": batch_size / seconds,
                    "peak_memory_gib": peak.gib, "gflop_per_triple": flops[mode] / 1e9,
                    "achieved_tflops": flops[mode] * batch_size / seconds / 1e12,
                }
                rows.append(row)
                log(f"  {mode:9s} {row['image_size']} batch {batch_size:3d}: {row['triples_per_s']:.2f} triples/s "
                    f"(median of {n}), peak {peak.gib:.2f} GiB")
        del model, runnable, optimizer
    return rows


def run_gpu_fraction(batch: int, image_size, repeats: int, warmup: int, compile_model: bool, attention: str,
                     peak_tflops: float | None, log=print) -> dict:
    """Achieved fraction of the GPU's dense bf16 peak for inference and training at ``batch`` triples (bf16 autocast).

    Not measured on this project's CPU machines; needs a CUDA device.
    """
    name = torch.cuda.get_device_properties(0).name
    peak = peak_tflops or bf16_peak_tflops(name)
    model = build_model(image_size, "cuda", attention)
    runnable = torch.compile(model) if compile_model else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
    data = make_batch(batch, image_size, "cuda")
    result = {"gpu": name, "bf16_peak_tflops": peak, "batch": batch, "image_size": f"{image_size[0]}x{image_size[1]}",
              "compile": compile_model, "attention": attention}
    for mode in ("inference", "train"):
        flops = count_flops(model, image_size, "cuda", mode == "train") * batch
        model.train(mode == "train")
        fn = (training_step(runnable, optimizer, data, "cuda", "bfloat16") if mode == "train"
              else inference_pass(runnable, data, "cuda", "bfloat16"))
        seconds, _ = median_seconds(fn, repeats, warmup, torch.cuda.synchronize)
        achieved = flops / seconds / 1e12
        result[mode] = {"median_s": seconds, "triples_per_s": batch / seconds, "tflop_per_step": flops / 1e12,
                        "achieved_tflops": achieved,
                        "fraction_of_peak": achieved / peak if peak else math.nan}
        log(f"  {mode}: {achieved:.1f} TFLOP/s" + (f" = {achieved / peak:.1%} of {peak:.0f}" if peak else ""))
    return result

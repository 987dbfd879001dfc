#!/usr/bin/env python
"""Train DeMo for multi-modal (RGB / NIR / TIR) object re-identification.

    python train.py                                   # CPU demo: synthetic RGBNT201-layout set, tiny model
    accelerate launch train.py --preset rgbnt201 --dataset data/rgbnt201 --backbone openai/clip-vit-base-patch16
    torchrun --nproc_per_node 2 train.py --use-cpu ...   # 2 CPU processes (gloo)

Options come from --preset, then --config FILE.yaml, then flags (highest). See docs/training.md.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a plain checkout too

import torch  # noqa: E402
from transformers import TrainerCallback, set_seed  # noqa: E402
from transformers.trainer_utils import enable_full_determinism, get_last_checkpoint  # noqa: E402

from demo_reid.training_args import DeMoScriptArguments, DeMoTrainingArguments, parse_args  # noqa: E402

logger = logging.getLogger("train")

SYNTHETIC = {"layout": "RGBNT201", "seed": 0, "num_train_ids": 40, "num_test_ids": 20, "images_per_id": 12}


class CrashAfterCheckpoint(TrainerCallback):
    """Testing aid for resume: stop abruptly right after the checkpoint at ``step`` is written."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise SimulatedCrash(f"simulated crash after the checkpoint at step {state.global_step}")


class SimulatedCrash(RuntimeError):
    pass


def prepare_synthetic(path: str | Path, training_args: DeMoTrainingArguments) -> Path:
    """Build (once) the synthetic RGBNT201-layout DatasetDict at ``path``."""
    from demo_reid.dataset_builder import build_dataset, save_dataset
    from demo_reid.synthetic import make_synthetic

    path = Path(path)
    with training_args.main_process_first(desc="synthetic dataset"):
        if not (path / "dataset_dict.json").is_file():
            with tempfile.TemporaryDirectory() as raw:
                root = make_synthetic(SYNTHETIC["layout"], raw, seed=SYNTHETIC["seed"],
                                      num_train_ids=SYNTHETIC["num_train_ids"], num_test_ids=SYNTHETIC["num_test_ids"],
                                      images_per_id=SYNTHETIC["images_per_id"])
                with tempfile.TemporaryDirectory() as cache:
                    save_dataset(build_dataset(SYNTHETIC["layout"], root, cache_dir=cache), path, overwrite=True)
    return path


def build_model(script_args: DeMoScriptArguments, num_labels: int, num_cameras: int):
    """DeMoModel for ``--backbone``: tiny / clip-b16 / vit-b16 shapes from random init, or a pretrained tower."""
    from configuration_demo import DeMoConfig
    from demo_reid.backbones import clip_vit_b16_vision_config, tiny_vision_config, vit_b16_vision_config
    from modeling_demo import DeMoModel

    common = dict(
        image_size=(script_args.image_height, script_args.image_width),
        num_labels=num_labels,
        num_cameras=num_cameras,
        sie_coefficient=script_args.sie_coefficient,
        atmoe_heads=script_args.atmoe_heads,
        direct_classifier=script_args.direct_classifier,
        id_loss_weight=script_args.id_loss_weight,
        triplet_loss_weight=script_args.triplet_loss_weight,
        label_smoothing=script_args.label_smoothing,
        triplet_margin=script_args.triplet_margin,
    )
    backbone = script_args.backbone
    if backbone == "tiny":
        vision = tiny_vision_config(
            "clip",
            hidden_size=script_args.tiny_hidden_size,
            num_hidden_layers=script_args.tiny_num_layers,
            num_attention_heads=max(1, script_args.tiny_hidden_size // 32),
            patch_size=script_args.tiny_patch_size,
            image_size=max(script_args.image_height, script_args.image_width),
            projection_dim=script_args.tiny_hidden_size,
        )
        return DeMoModel(DeMoConfig(vision_config=vision, **common))
    if backbone in ("clip-b16", "vit-b16"):
        logger.warning("--backbone %s: random initialisation (shapes only); pass a checkpoint path for real runs",
                       backbone)
        vision = clip_vit_b16_vision_config() if backbone == "clip-b16" else vit_b16_vision_config()
        return DeMoModel(DeMoConfig(vision_config=vision, **common))
    return DeMoModel.from_vision_pretrained(backbone, **common)


def _num_cameras(dsdict) -> int:
    return 1 + max(max(dsdict[s]["camid"]) for s in ("train", "query", "gallery"))


def main(argv: list[str] | None = None) -> dict:
    script_args, training_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if training_args.deterministic:
        enable_full_determinism(training_args.seed)
    else:
        set_seed(training_args.seed)

    from demo_reid.data import load_reid_dataset
    from demo_reid.trainer import DeMoTrainer, RunInfoCallback, collect_run_info

    dataset_path = script_args.dataset or prepare_synthetic(script_args.synthetic_dir, training_args)
    dsdict = load_reid_dataset(dataset_path)
    num_labels = len(set(dsdict["train"]["label"]))
    model = build_model(script_args, num_labels, _num_cameras(dsdict))

    if script_args.select_best_on_test:
        training_args.load_best_model_at_end = True
        training_args.metric_for_best_model = "mAP"
        training_args.greater_is_better = True
        if training_args.save_strategy != training_args.eval_strategy:
            raise ValueError("--select-best-on-test: --save-strategy must equal --eval-strategy")

    run_info = collect_run_info(
        {"script": asdict(script_args), "training": training_args.to_dict()},
        seed=training_args.seed,
        world_size=training_args.world_size,
        dataset=str(dataset_path),
        synthetic=None if script_args.dataset else SYNTHETIC,
    )
    callbacks = [RunInfoCallback(run_info)]
    if script_args.crash_after_steps:
        callbacks.append(CrashAfterCheckpoint(script_args.crash_after_steps))
    trainer = DeMoTrainer(
        model=model,
        args=training_args,
        train_dataset=dsdict["train"],
        query_dataset=dsdict["query"],
        gallery_dataset=dsdict["gallery"],
        callbacks=callbacks,
    )
    trainer.select_best_on_test = script_args.select_best_on_test

    resume = None
    if script_args.resume:
        resume = get_last_checkpoint(training_args.output_dir)
        if resume is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=resume)

    metrics = trainer.evaluate()
    label = "best epoch selected on TEST split (optimistic)" if script_args.select_best_on_test else "final epoch"
    result = {
        "mAP": metrics["eval_mAP"],
        "Rank-1": metrics["eval_Rank-1"],
        "Rank-5": metrics.get("eval_Rank-5"),
        "Rank-10": metrics.get("eval_Rank-10"),
        "mINP": metrics.get("eval_mINP"),
        "selection": label,
        "train_loss": train_result.training_loss,
        "global_step": trainer.state.global_step,
        "world_size": training_args.world_size,
    }
    trainer.save_model(training_args.output_dir)  # save_pretrained: safetensors + remote code
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        (out / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        trainer.model_card_info = {
            "name": out.name,
            "dataset": script_args.dataset or f"synthetic {SYNTHETIC['layout']} layout ({SYNTHETIC})",
            "backbone": script_args.backbone,
            "recipe": {
                "preset": script_args.preset,
                "image_size": f"{script_args.image_height}x{script_args.image_width}",
                "P x K": f"{training_args.num_identities} x {training_args.num_instances}",
                "epochs": training_args.num_train_epochs,
                "lr (head / bias / tower)": f"{training_args.learning_rate} / "
                f"{training_args.learning_rate * training_args.bias_lr_factor} / {training_args.vision_tower_lr}",
                "scheduler": training_args.lr_scheduler_type,
                "world_size": training_args.world_size,
                "seed": training_args.seed,
            },
            "metrics": {k: result[k] for k in ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP") if result[k] is not None}
            | {"selection": label},
        }
        trainer.create_model_card()
        print(
            f"[{label}] mAP {result['mAP']:.2f}  Rank-1 {result['Rank-1']:.2f}  Rank-5 {result['Rank-5']:.2f}  "
            f"Rank-10 {result['Rank-10']:.2f}  (world size {result['world_size']}, saved to {out})"
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="DeMo training run")
    return result


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()

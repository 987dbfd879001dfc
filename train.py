#!/usr/bin/env python
"""Train a multi-modal (RGB / NIR / TIR) object re-identification model: DeMo, NEXT, or any model that honours
docs/interfaces.md (``python train.py --help``; docs/training.md).

Bad input (unknown preset, option or backbone, missing dataset, incompatible flags, an output directory holding a
previous run) is reported in one line naming the argument, with exit status 2, before anything is written.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a plain checkout too

from transformers import set_seed  # noqa: E402
from transformers.trainer_utils import enable_full_determinism  # noqa: E402

from demo_reid.errors import UsageError, run_cli  # noqa: E402
from demo_reid.evaluation.metrics import METRIC_KEYS  # noqa: E402
from demo_reid.hub.model_card import BEST_ON_TEST, FINAL_EPOCH, ModelCardInfo, build_model_card  # noqa: E402
from demo_reid.training.arguments import TrainRun, parse_args  # noqa: E402

logger = logging.getLogger("train")


def load_data(run: TrainRun):
    """The run's DatasetDict and its path: ``--dataset``, or the default synthetic set (built once)."""
    from demo_reid.data.loading import load_reid_dataset
    from demo_reid.data.synthetic import prepare_default_set

    if run.script.dataset:
        try:
            return load_reid_dataset(run.script.dataset), run.script.dataset
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(f"--dataset: {exc}") from None
    with run.training.main_process_first(desc="synthetic dataset"):
        path = prepare_default_set(run.script.synthetic_dir)
    return load_reid_dataset(path), str(path)


def card_info(run: TrainRun, model, train_split, metrics: dict, selection: str, global_step: int) -> ModelCardInfo:
    """What the model card says about this run."""
    from demo_reid.data.synthetic import DEFAULT_SET, describe_default_set
    from demo_reid.hub.backbones import hub_id_of

    script, training = run.script, run.training
    out = Path(training.output_dir)
    dataset_name = (train_split.info.dataset_name or Path(script.dataset).name if script.dataset
                    else f"synthetic-{DEFAULT_SET['layout'].lower()}")
    height, width = model.config.image_size
    return ModelCardInfo(
        model_type=model.config.model_type,
        name=out.name,
        repo_id=training.hub_model_id or f"path/to/{out.name}",
        dataset_name=dataset_name,
        dataset_description=f"the dataset at {script.dataset}" if script.dataset else describe_default_set(),
        backbone=script.backbone,
        base_model=hub_id_of(script.backbone),
        research_only_data=bool(script.dataset),
        uses_text=bool(getattr(model.config, "uses_text", False)),
        uses_cameras=model.config.num_cameras > 0,
        metrics={k: metrics[k] for k in METRIC_KEYS if metrics.get(k) is not None},
        selection=selection,
        recipe={
            "model": script.model,
            "preset": script.preset or script.config,
            "image_size": f"{height}x{width}",
            "P x K": f"{training.num_identities} x {training.num_instances}",
            "optimizer steps": global_step,
            "lr (head / bias / tower)": f"{training.learning_rate} / "
            f"{training.learning_rate * training.bias_lr_factor} / {training.vision_tower_lr}",
            "lr schedule": training.lr_schedule,
            "world_size": training.world_size,
            "seed": training.seed,
        },
    )


def build_trainer(run: TrainRun):
    """Everything before training: checks, seed, data, tokenizer, model, loss, augmentation -> (trainer, the
    checkpoint to resume from or None). Bad input raises :class:`UsageError` before anything is written."""
    from demo_reid.data.augment import ReIDAugment
    from demo_reid.hub.factory import ModelRecipe
    from demo_reid.hub.processors import build_processor
    from demo_reid.training.checkpoints import clear_previous_run, resolve_resume
    from demo_reid.training.losses import ReIDLoss
    from demo_reid.training.options import parse_overrides
    from demo_reid.training.profiling import ProfilerCallback, make_deterministic
    from demo_reid.training.run_info import RunInfoCallback, collect_run_info
    from demo_reid.training.trainer import ReIDTrainer

    script, training = run.script, run.training
    resume = resolve_resume(training.output_dir, script.resume, training.resume_from_checkpoint,
                            script.overwrite_output_dir)
    try:
        options = {**run.model_options, **parse_overrides(script.config_overrides)}
        loss, augment = ReIDLoss(**run.loss), ReIDAugment(**run.augment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    recipe = ModelRecipe.resolve(script.model, script.backbone, options)  # option errors before any work
    (enable_full_determinism if training.deterministic else set_seed)(training.seed)

    dsdict, dataset_path = load_data(run)
    tokenizer = recipe.tokenizer(dsdict["train"])
    num_cameras = 1 + max(max(dsdict[s]["camid"]) for s in ("train", "query", "gallery"))
    model = recipe.build(recipe.config(len(set(dsdict["train"]["label"])), num_cameras, script.image_size, tokenizer))
    if training.deterministic:
        make_deterministic(model)  # math SDPA only: the fused attention kernels vary run to run
    if script.overwrite_output_dir and training.process_index == 0:
        clear_previous_run(training.output_dir)
    run_info = collect_run_info(
        {"script": asdict(script), "training": training.to_dict(), "model_options": options, "loss": run.loss,
         "augment": run.augment},
        seed=training.seed, world_size=training.world_size, dataset=dataset_path, resumed_from=resume,
    )
    trainer = ReIDTrainer(
        model=model,
        args=training,
        train_dataset=dsdict["train"],
        eval_dataset={"query": dsdict["query"], "gallery": dsdict["gallery"]},
        loss=loss,
        augment=augment,
        callbacks=[RunInfoCallback(run_info), *([ProfilerCallback()] if script.profile else [])],
        processing_class=build_processor(model.config, tokenizer),  # saved with every checkpoint and the final model
    )
    return trainer, resume


def main(argv: list[str] | None = None) -> dict:
    run = parse_args(argv)
    training = run.training
    logging.basicConfig(level=logging.INFO if training.should_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trainer, resume = build_trainer(run)
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
    trainer.close_event_writers()  # --report-to tensorboard: the final evaluation's point is on disk
    selection = BEST_ON_TEST if training.select_best_on_test else FINAL_EPOCH
    result = {**{k: metrics.get(k) for k in METRIC_KEYS}, "selection": selection,
              "train_loss": train_result.training_loss, "global_step": trainer.state.global_step,
              "world_size": training.world_size}
    trainer.save_model(training.output_dir)  # save_pretrained: safetensors + remote code + processor
    trainer.save_state()  # trainer_state.json with the log history (losses and learning rates per logged step)
    if trainer.is_world_process_zero():
        out = Path(training.output_dir)
        (out / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        info = card_info(run, trainer.model, trainer.train_dataset, result, selection, trainer.state.global_step)
        build_model_card(info).save(out / "README.md")
        print(f"[{selection}] " + "  ".join(f"{k} {result[k]:.2f}" for k in METRIC_KEYS if result[k] is not None)
              + f"  (world size {result['world_size']}, saved to {out})")
    if training.push_to_hub:
        trainer.push_to_hub(commit_message=f"{run.script.model} training run")
    return result


def cli(argv: list[str] | None = None) -> int:
    """``main`` with bad input reported as ``train.py: error: ...`` (one line) and exit status 2."""
    return run_cli(lambda: main(argv), "train.py")


if __name__ == "__main__":
    sys.exit(cli())

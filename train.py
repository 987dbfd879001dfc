#!/usr/bin/env python
"""Train a multi-modal (RGB / NIR / TIR) object re-identification model: DeMo, NEXT, or any model that honours
docs/interfaces.md (``python train.py --help``; docs/training.md).

Bad input (unknown preset, option or backbone, missing dataset, incompatible flags, an output directory holding a
previous run, in use by another run, or not writable) is reported in one line naming the argument, with exit status
2, before anything is written; so is a full disk. SIGTERM (and the signals of --checkpoint-on-signal) finish the
step, write a complete checkpoint and exit with 128 + the signal number; Ctrl-C is one line, status 130.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from transformers import set_seed
from transformers.trainer_utils import enable_full_determinism

from mmreid.errors import UsageError, run_cli
from mmreid.evaluation.metrics import METRIC_KEYS
from mmreid.hub.model_card import ModelCardInfo, save_model_card
from mmreid.machine import describe_cpu
from mmreid.training.arguments import TrainRun, parse_args

logger = logging.getLogger("train")


def dataset_hub_id(script) -> str | None:
    """The Hub id ``--dataset`` names, or None for a local folder (or the default synthetic set)."""
    return None if not script.dataset or Path(script.dataset).expanduser().exists() else script.dataset


def load_data(run: TrainRun):
    """The run's DatasetDict and its path or Hub id: ``--dataset`` (a local folder, or a Hub dataset id at
    ``--dataset-revision``), or the default synthetic set (built once)."""
    from mmreid.data.loading import open_reid_dataset
    from mmreid.data.synthetic import prepare_default_set

    script = run.script
    if script.dataset:
        try:
            with run.training.main_process_first(desc="dataset"):  # one download per machine
                dsdict = open_reid_dataset(script.dataset, revision=script.dataset_revision)
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(f"--dataset: {exc}") from None
        return dsdict, script.dataset
    if script.dataset_revision:
        raise UsageError("--dataset-revision applies to a Hub --dataset; none is given")
    with run.training.main_process_first(desc="synthetic dataset"):
        path = prepare_default_set(run.script.synthetic_dir)
    return open_reid_dataset(path), str(path)


def card_info(run: TrainRun, model, train_split, metrics: dict, selection: str, state,
              in_progress: bool = False) -> ModelCardInfo:
    """What the model card says about this run (``state``: the trainer state, for the steps and epochs trained;
    ``in_progress``: the card of an intermediate checkpoint)."""
    from mmreid.data.synthetic import DEFAULT_SET, describe_default_set
    from mmreid.hub.backbones import RANDOM_BACKBONES, hub_id_of
    from mmreid.training.tuning import TUNING_CONFIG_KEY, describe_tuning

    script, training = run.script, run.training
    out = Path(training.output_dir)
    dataset_name = (train_split.info.dataset_name or Path(script.dataset).name if script.dataset
                    else f"synthetic-{DEFAULT_SET['layout'].lower()}")
    dataset_id = dataset_hub_id(script)
    if dataset_id:
        revision = f" (revision {script.dataset_revision})" if script.dataset_revision else ""
        dataset_description = f"the Hub dataset {dataset_id}{revision}"
    else:
        dataset_description = f"the dataset at {script.dataset}" if script.dataset else describe_default_set()
    height, width = model.config.image_size
    steps, epochs = state.global_step, round(float(state.epoch or 0.0), 2)
    return ModelCardInfo(
        model_type=model.config.model_type,
        name=out.name,
        repo_id=training.hub_model_id or f"path/to/{out.name}",
        dataset_name=dataset_name,
        dataset_description=dataset_description,
        dataset_id=dataset_id,
        dataset_revision=script.dataset_revision,
        backbone=script.backbone,
        base_model=hub_id_of(script.backbone),
        tower=None if script.backbone in RANDOM_BACKBONES else getattr(model.config, "backbone_type", None),
        text_tower=script.text_backbone,
        research_only_data=bool(script.dataset),
        uses_text=bool(getattr(model.config, "uses_text", False)),
        uses_cameras=model.config.num_cameras > 0,
        tower_tuning=describe_tuning(getattr(model.config, TUNING_CONFIG_KEY, None) or run.tuning.record()),
        metrics={k: metrics[k] for k in METRIC_KEYS if metrics.get(k) is not None},
        selection=selection,
        in_progress=f"step {steps} of {state.max_steps} (epoch {epochs:g})" if in_progress else None,
        recipe={
            "model": script.model,
            "preset": script.preset or script.config,
            "image_size": f"{height}x{width}",
            "P x K": f"{training.num_identities} x {training.num_instances}",
            "optimizer steps trained": steps,
            "epochs trained": f"{epochs:g}",
            "lr (head / bias / tower)": f"{training.learning_rate} / "
            f"{training.learning_rate * training.bias_lr_factor} / {training.vision_tower_lr}",
            "lr schedule": training.lr_schedule,
            "parameters (trainable / total)": _trainable_of_total(model),
            "world_size": training.world_size,
            "seed": training.seed,
        },
    )


def _trainable_of_total(model) -> str:
    from mmreid.training.tuning import parameter_counts

    counts = parameter_counts(model)
    return f"{counts['trainable']:,} / {counts['total']:,}"


def check_tuning_targets(recipe, tuning) -> None:
    """--tower-tuning lora: the target modules are checked against the tower's layer names before any work, on the
    model built on the meta device (no memory, no weights). A model that cannot be built there is checked when it is
    built for real (apply_tower_tuning raises the same line)."""
    import torch

    from mmreid.training.tuning import resolve_target_modules

    if tuning.mode != "lora":
        return
    try:
        with torch.device("meta"):
            model = recipe.model_class(recipe.config(num_labels=2, num_cameras=1))
    except Exception:  # noqa: BLE001 - a third-party model's constructor may need real tensors
        return
    try:
        resolve_target_modules(model.vision_tower, tuning.lora_target_modules)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def build_trainer(run: TrainRun):
    """Everything before training: checks, seed, data, tokenizer, model, loss, augmentation -> (trainer, the
    checkpoint to resume from or None). Bad input raises :class:`UsageError` before anything is written."""
    from mmreid.data.augment import ReIDAugment
    from mmreid.data.missing import FILL_CONFIG_KEY, announce_missing, handling_note
    from mmreid.hub.checkpoint_files import attach_pipeline
    from mmreid.hub.factory import ModelRecipe
    from mmreid.hub.processors import build_processor
    from mmreid.training.checkpoints import check_resume_config, check_resume_weights, resolve_resume
    from mmreid.training.losses import ReIDLoss
    from mmreid.training.preemption import PreemptionCallback
    from mmreid.training.options import parse_overrides
    from mmreid.training.profiling import ProfilerCallback, make_deterministic
    from mmreid.training.run_info import RunInfoCallback, collect_run_info
    from mmreid.training.trainer import ReIDTrainer, trainable_parameter_counts
    from mmreid.training.tuning import TUNING_CONFIG_KEY, apply_tower_tuning, describe_tuning, require_lora_state

    script, training = run.script, run.training
    if script.resume and training.hub_model_id and not training.resume_from_checkpoint:
        from mmreid.hub.resume import fetch_hub_checkpoint

        with training.main_process_first(desc="checkpoint from the Hub"):  # the others then find it on disk
            fetch_hub_checkpoint(training.output_dir, training.hub_model_id, training.hub_revision, training.hub_token)
    resume = resolve_resume(training.output_dir, script.resume, training.resume_from_checkpoint,
                            script.overwrite_output_dir)
    try:
        options = {**run.model_options, **parse_overrides(script.config_overrides)}
        loss, augment = ReIDLoss(**run.loss), ReIDAugment(**run.augment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # option errors before any work
    recipe = ModelRecipe.resolve(script.model, script.backbone, options, script.text_backbone)
    check_tuning_targets(recipe, run.tuning)
    (enable_full_determinism if training.deterministic else set_seed)(training.seed)

    dsdict, dataset_path = load_data(run)
    try:  # a modality missing in every row is said once, here; filling from RGB needs RGB images
        announce_missing(dsdict, f"--dataset {dataset_path}", handling_note(script.fill_missing_modalities),
                         script.fill_missing_modalities)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    num_identities = len(set(dsdict["train"]["label"]))
    if training.num_identities > num_identities:
        raise UsageError(f"--num-identities {training.num_identities} (P, identities per batch): the train split of "
                         f"{dataset_path} has {num_identities} identities; use at most {num_identities}")
    tokenizer = recipe.tokenizer(dsdict["train"])
    num_cameras = 1 + max(max(dsdict[s]["camid"]) for s in ("train", "query", "gallery"))
    config = recipe.config(num_identities, num_cameras, script.image_size, tokenizer)
    setattr(config, TUNING_CONFIG_KEY, run.tuning.record())  # compared with a resumed checkpoint's
    if resume:
        check_resume_config(resume, config)  # another model's run: one line, before any weights are loaded
    model = recipe.build(config)
    if resume:
        check_resume_weights(resume, model)  # before the adapters change the tower's parameter names
    try:
        apply_tower_tuning(model, run.tuning)
        if resume and run.tuning.mode == "lora":
            require_lora_state(resume, model)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    parameters = trainable_parameter_counts(model, training)
    logger.info("tower tuning: %s; parameters: %s trainable of %s (tower: %s of %s; per optimizer group: %s)",
                describe_tuning(getattr(model.config, TUNING_CONFIG_KEY)), f"{parameters['trainable']:,}",
                f"{parameters['total']:,}", f"{parameters['tower_trainable']:,}", f"{parameters['tower']:,}",
                ", ".join(f"{name} {count:,}" for name, count in parameters["groups"].items()))
    if training.vision_tower_lr == 0 and parameters["groups"].get("vision_tower"):
        logger.info("--vision-tower-lr 0: the tower's pretrained weights do not move; --tower-tuning frozen does the "
                    "same without computing their gradients or keeping their optimizer state")
    if script.fill_missing_modalities != "none":  # in config.json: eval.py and embed.py fill as the model trained
        setattr(model.config, FILL_CONFIG_KEY, script.fill_missing_modalities)
    attach_pipeline(model.config)  # pipeline("image-feature-extraction", model=<any checkpoint>, trust_remote_code=True)
    if training.deterministic:
        make_deterministic(model)  # math SDPA only: the fused attention kernels vary run to run
    run_info = collect_run_info(
        {"script": asdict(script), "training": training.to_dict(), "model_options": options, "loss": run.loss,
         "augment": run.augment, "tuning": asdict(run.tuning)},
        seed=training.seed, world_size=training.world_size, dataset=dataset_path, resumed_from=resume,
        tower_tuning=getattr(model.config, TUNING_CONFIG_KEY), parameters=parameters,
    )
    trainer = ReIDTrainer(
        model=model,
        args=training,
        train_dataset=dsdict["train"],
        eval_dataset={"query": dsdict["query"], "gallery": dsdict["gallery"]},
        loss=loss,
        augment=augment,
        callbacks=[RunInfoCallback(run_info), *([ProfilerCallback()] if script.profile else []),
                   PreemptionCallback(script.checkpoint_on_signal)],
        processing_class=build_processor(model.config, tokenizer),  # saved with every checkpoint and the final model
    )
    if training.push_to_hub:
        from mmreid.hub.push import HubPushCallback

        selection = training.selection

        def write_card(folder: Path, state) -> None:  # the card of every checkpoint push
            save_model_card(card_info(run, model, dsdict["train"], {}, selection, state, in_progress=True), folder)

        trainer.add_callback(HubPushCallback(trainer.hub_model_id, write_card))
    return trainer, resume


def main(argv: list[str] | None = None) -> dict:
    """Train, evaluate and save one run; the output directory is locked for it (one run per directory)."""
    from mmreid.training.lock import OutputDirLock

    from mmreid.training.distributed import launcher_shortfall

    run = parse_args(argv)
    training = run.training
    logging.basicConfig(level=logging.INFO if training.should_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shortfall = launcher_shortfall(training.world_size)
    if shortfall:
        logger.warning(shortfall)
    lock = OutputDirLock(training.output_dir) if training.process_index == 0 else contextlib.nullcontext()
    with lock:
        try:
            return train_and_save(run)
        except Exception as exc:  # a full disk anywhere (checkpoint, final model, metrics): one line
            from mmreid.training.disk_space import disk_full_error

            full = disk_full_error(exc, training.output_dir)
            if full is None:
                raise
            raise full from None


def replace_previous_run(trainer, output_dir: str) -> None:
    """--overwrite-output-dir: delete the previous run's checkpoints now, after every check and just before the new
    run writes (its final model files are replaced when the new model is saved), and say what was deleted."""
    from mmreid.training.checkpoints import clear_previous_run

    if trainer.is_world_process_zero():
        deleted = clear_previous_run(output_dir)
        if deleted:
            logger.warning("--overwrite-output-dir: deleted %s from %s", ", ".join(deleted), output_dir)
    trainer.accelerator.wait_for_everyone()


def train_and_save(run: TrainRun) -> dict:
    from mmreid.training.preemption import Preempted, PreemptionCallback
    from mmreid.training.trainer import trainable_parameter_counts
    from mmreid.training.tuning import TUNING_CONFIG_KEY

    training = run.training
    trainer, resume = build_trainer(run)
    if run.script.overwrite_output_dir:
        replace_previous_run(trainer, training.output_dir)
    preemption = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, PreemptionCallback))
    try:
        train_result = trainer.train(resume_from_checkpoint=resume)
    finally:
        preemption.uninstall()
    if preemption.stopped_signal is not None:
        checkpoint = Path(training.output_dir) / f"checkpoint-{preemption.stopped_step}"
        raise Preempted(preemption.stopped_signal, preemption.stopped_step, str(checkpoint))
    metrics = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
    trainer.close_event_writers()  # --report-to tensorboard: the final evaluation's point is on disk
    selection = training.selection  # a checkpoint chosen on the query/gallery split says so, wherever it is reported
    result = {**{k: metrics.get(k) for k in METRIC_KEYS}, "selection": selection,
              "train_loss": train_result.training_loss, "global_step": trainer.state.global_step,
              "world_size": training.world_size, "tower_tuning": getattr(trainer.model.config, TUNING_CONFIG_KEY),
              "parameters": trainable_parameter_counts(trainer.model, training)}
    trainer.save_state()  # trainer_state.json with the log history (losses and learning rates per logged step)
    if trainer.is_world_process_zero():
        out = Path(training.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "final_metrics.json").write_text(json.dumps({**result, "cpu": describe_cpu()}, indent=2) + "\n")
        save_model_card(card_info(run, trainer.model, trainer.train_dataset, result, selection, trainer.state), out)
    # save_pretrained: safetensors + remote code + processor + pipeline; with --push-to-hub the Trainer then pushes
    # the folder (ReIDTrainer.push_to_hub), its card and metrics included
    trainer.save_model(training.output_dir)
    if trainer.is_world_process_zero():
        print(f"[{selection}] " + "  ".join(f"{k} {result[k]:.2f}" for k in METRIC_KEYS if result[k] is not None)
              + f"  (world size {result['world_size']}, saved to {training.output_dir})")
    return result


def cli(argv: list[str] | None = None) -> int:
    """``main`` with bad input reported as ``train.py: error: ...`` (one line) and exit status 2; a checkpoint
    signal (SIGTERM) as one line and status 128 + its number, after the checkpoint; Ctrl-C as one line, 130."""
    from mmreid.training.preemption import Preempted

    try:
        return run_cli(lambda: main(argv), "train.py",
                       interrupted="--resume continues from the last complete checkpoint")
    except Preempted as exc:
        if os.environ.get("RANK", "0") == "0":  # one line per run, not one per process
            print(f"train.py: {exc}", file=sys.stderr)
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(cli())

"""``ReIDTrainer``: one ``transformers.Trainer`` for any multi-modal ReID model of this project's contract
(docs/interfaces.md). It knows no model: what it reads of one is

- the model's inputs: the collator's keys (``labels`` and the augmentation seeds are taken out first);
- ``outputs.logits`` / ``outputs.features``, handed to the loss module passed in (default
  :class:`~mmreid.training.losses.ReIDLoss`), whose named components are logged whatever they are;
- ``model.vision_tower`` (its parameters train at ``vision_tower_lr``, except the new ones: those its
  ``new_parameters()`` lists and LoRA adapters, see :mod:`mmreid.training.tuning`);
- ``outputs.embeddings`` and ``outputs.feature_sets`` in evaluation.

What it changes, and why:

- ``get_train_dataloader``: batches come from :meth:`get_batch_sampler` (P ids x K images, rank-aware; every index
  tagged with its augmentation seed); the loader is *not* passed through ``accelerator.prepare`` because accelerate
  would re-shard an already rank-aware batch sampler.
- ``compute_loss``: tensor augmentation on the training device, then the loss module. The loss is the mean over one
  complete P x K batch, so the Trainer divides it by the accumulation steps (``loss_is_scaled_for_ga = False``):
  exact under accumulation since all micro-batches have the same size.
- ``create_optimizer``: ``--optim`` (the authors' Adam by default, else the Trainer's own resolution, see
  :mod:`mmreid.training.optimizers`) over three named groups (tower, head weights, head biases x2);
  ``create_scheduler`` adds the per-epoch ``demo_cosine`` / ``demo_cosine_plain`` schedules.
- checkpoints are written under ``<output_dir>/.incomplete/`` and renamed into place once complete (complete or
  invisible, see :mod:`mmreid.training.checkpoints`); ``save_model`` gives every saved model
  ``training_args.json`` instead of the pickled ``training_args.bin``, and the checkpoint pipeline's code
  (:mod:`mmreid.hub.checkpoint_files`). A model with LoRA adapters in its tower (``--tower-tuning lora``) is saved
  with the adapters merged into the tower (it loads without peft), and each checkpoint also holds the unmerged
  adapters, which a resume loads back (:mod:`mmreid.training.tuning`).
- the Hub: checkpoints are pushed once published, by :class:`~mmreid.hub.push.HubPushCallback` (the Trainer's own
  checkpoint push would read the staging folder after it is renamed away); ``push_to_hub`` uploads the output folder
  without hidden folders, local checkpoints or pickles (:func:`~mmreid.hub.push.push_output_dir`).
- ``--torch-compile``: random ops fall back to PyTorch's generator under inductor, so a compiled run draws the eager
  run's dropout masks (the same training, step for step; tests/test_train_compile.py).
- ``evaluate``: query/gallery retrieval (mAP, CMC, mINP) through :mod:`mmreid.evaluation.protocol`, with the
  random streams restored afterwards (training does not depend on when or whether it is evaluated).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..data.augment import ReIDAugment
from ..data.collate import CAPTION_COLUMNS, collator_for
from ..data.sampler import PKBatchSampler, SeededBatchSampler
from ..data.seeded import EpochDataLoader, SeededCollator, SeededDataset
from ..errors import UsageError, first_line
from ..evaluation.metrics import METRIC_KEYS
from ..hub.checkpoint_files import complete_saved_model, share_weights
from ..hub.processors import tokenizer_of
from .checkpoints import STAGING_DIR, WEIGHT_FILES
from .disk_space import disk_full_error
from .distributed import convert_to_global_batchnorm
from .losses import ReIDLoss
from .optimizers import build_optimizer, optimizer_cls_and_kwargs
from .scheduler import EPOCH_SCHEDULES, DeMoCosineLR
from .tuning import is_adapter_parameter, merged_lora_layers, parameter_counts, restoring_lora_state, save_lora_state

__all__ = ["GROUP_LR_LOG", "PARAM_GROUPS", "ReIDTrainer", "build_param_groups", "trainable_parameter_counts"]

# The optimizer's parameter groups, named once here: build_param_groups tags each group with its name and the trainer
# logs each group's lr as ``learning_rate/<name>`` (TensorBoard: ``train/learning_rate/<name>``). Head first: the
# Trainer's own ``learning_rate`` log is group 0's.
HEAD_GROUP, HEAD_BIAS_GROUP, TOWER_GROUP = "head", "head_bias", "vision_tower"
PARAM_GROUPS = (HEAD_GROUP, HEAD_BIAS_GROUP, TOWER_GROUP)
GROUP_LR_LOG = "learning_rate/{}"


@contextlib.contextmanager
def random_state_kept():
    """Restore the random streams training draws from (Python, NumPy, torch's CPU generator and every CUDA
    device's) after the block: evaluation draws from them (each DataLoader iterator takes a seed from torch's
    generator), and the dropout masks of the steps after it must not depend on whether or when it ran."""
    python_state, numpy_state, cpu_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def build_param_groups(
    model: torch.nn.Module,
    learning_rate: float,
    bias_lr_factor: float,
    vision_tower_lr: float,
    weight_decay: float,
) -> list[dict]:
    """Adam groups of the recipe: the pretrained parameters of ``model.vision_tower`` at ``vision_tower_lr``; other
    weights (the tower's new parameters included: those it lists in ``new_parameters()``, e.g. the SIE camera
    embedding, and LoRA adapters) at ``learning_rate``; other biases at ``learning_rate * bias_lr_factor``;
    ``weight_decay`` everywhere. Parameters that do not train (``requires_grad`` off) are in no group."""
    model = getattr(model, "module", model)  # DDP-wrapped
    tower = getattr(model, "vision_tower", None)
    if not isinstance(tower, torch.nn.Module):
        raise ValueError("the model must expose its pretrained image tower as `model.vision_tower` (an nn.Module): "
                         "its parameters train at --vision-tower-lr (docs/interfaces.md)")
    new = {id(p) for p in getattr(tower, "new_parameters", list)()}
    new |= {id(p) for name, p in tower.named_parameters() if is_adapter_parameter(name)}
    pretrained = {id(p) for p in tower.parameters()} - new
    groups = {name: [] for name in PARAM_GROUPS}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in pretrained:
            groups[TOWER_GROUP].append(param)
        elif name.endswith("bias"):
            groups[HEAD_BIAS_GROUP].append(param)
        else:
            groups[HEAD_GROUP].append(param)
    lrs = {TOWER_GROUP: vision_tower_lr, HEAD_GROUP: learning_rate, HEAD_BIAS_GROUP: learning_rate * bias_lr_factor}
    return [
        {"params": params, "lr": lrs[name], "weight_decay": weight_decay, "name": name}
        for name, params in groups.items()
        if params
    ]


def trainable_parameter_counts(model: torch.nn.Module, args) -> dict:
    """The model's parameters in all and those that train (:func:`~mmreid.training.tuning.parameter_counts`), with
    the count of each optimizer group (:func:`build_param_groups` under ``args``' learning rates)."""
    groups = build_param_groups(model, args.learning_rate, args.bias_lr_factor, args.vision_tower_lr,
                                args.weight_decay)
    return {**parameter_counts(model),
            "groups": {group["name"]: sum(p.numel() for p in group["params"]) for group in groups}}


class ReIDTrainer(Trainer):
    """Trainer for any ReID model of this project's contract (see the module docstring for what is overridden).

    Five private methods of the Trainer are overridden, because no public hook reaches what they do:
    ``_get_output_dir`` (where the Trainer writes a checkpoint: the staging folder, so a checkpoint is complete or
    invisible; the Trainer has no option for it), ``_save_checkpoint`` (the rename out of the staging folder once every
    process has written its files, the best-checkpoint path fixed to the published folder, rotation of the published
    ones, a full disk as one line; ``on_save`` callbacks run only after the Trainer's own rotation and push) and
    ``_push_from_checkpoint`` (emptied: the Trainer would upload the staging folder in the background after it is renamed
    away; :class:`~mmreid.hub.push.HubPushCallback` pushes the published checkpoint from ``on_save``),
    ``_load_from_checkpoint`` and ``_load_best_model`` (with LoRA adapters in the tower, the checkpoint's merged
    weights are loaded into plain layers and its unmerged adapters into the LoRA layers, so a resumed run continues
    exactly). What used to be another, ``_save``, is the public ``save_model`` now.

    Args:
        model, args, callbacks, processing_class, ...: as for ``transformers.Trainer``; ``args`` is a
            :class:`~mmreid.training.arguments.ReIDTrainingArguments`. The ``processing_class`` (the
            checkpoint's processor, see :func:`~mmreid.hub.processors.build_processor`, or a bare tokenizer) is
            saved with every checkpoint; its tokenizer encodes the captions of text-conditioned models.
        train_dataset: the ``train`` split (needs a ``label`` column).
        eval_dataset: a mapping with the ``query`` and ``gallery`` splits, for :meth:`evaluate`.
        data_collator: the row collator of training (default: :func:`~mmreid.data.collate.collator_for` the
            model's config); evaluation builds its own (:func:`~mmreid.evaluation.protocol.extract_features`).
        loss: the loss module, called as ``loss(outputs, labels)``, returning the total ``loss`` and its named
            ``components`` (default: :class:`ReIDLoss` with the authors' recipe).
        augment: the tensor augmentation, called as ``augment(pixel_values, seeds)`` (default: :class:`ReIDAugment`).
    """

    # compute_loss returns the mean over one full P x K batch; the Trainer divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model=None,
        args=None,
        train_dataset=None,
        eval_dataset=None,
        data_collator=None,
        loss: torch.nn.Module | None = None,
        augment: torch.nn.Module | None = None,
        **kwargs,
    ):
        if model is None:
            raise ValueError("ReIDTrainer needs `model`")
        if eval_dataset is not None and not {"query", "gallery"} <= set(eval_dataset):
            raise ValueError(f"`eval_dataset` must map 'query' and 'gallery' to datasets, got keys {list(eval_dataset)}")
        tokenizer = tokenizer_of(kwargs.get("processing_class"))
        with_captions = train_dataset is None or all(
            c in getattr(train_dataset, "column_names", CAPTION_COLUMNS) for c in CAPTION_COLUMNS)
        if data_collator is None:
            data_collator = collator_for(model.config, train=True, tokenizer=tokenizer, with_captions=with_captions)
        if train_dataset is not None and hasattr(train_dataset, "column_names"):
            columns = list(getattr(data_collator, "columns", train_dataset.column_names))
            missing = [c for c in columns if c not in train_dataset.column_names]
            if missing:
                raise ValueError(f"`train_dataset` lacks column(s) {missing}; has {train_dataset.column_names}")
            train_dataset = train_dataset.select_columns(columns)
        super().__init__(
            model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            data_collator=data_collator, **kwargs,
        )
        # The loss does not need `num_items_in_batch` (see the class docstring); skipping it also skips the
        # per-step all-gather of label counts that the Trainer would do under DDP.
        self.model_accepts_loss_kwargs = False
        # Global-batch BatchNorm statistics under several processes (before accelerate wraps the model in DDP).
        if self.args.world_size > 1:
            self.model = convert_to_global_batchnorm(self.model)
        if self.args.torch_compile:
            # Inductor draws dropout masks from its own generator, so a compiled run would train on other masks than
            # an eager one with the same seed; falling back to PyTorch's generator for random ops (one unfused
            # kernel per dropout) makes --torch-compile the same training as eager, step for step.
            import torch._inductor.config

            torch._inductor.config.fallback_random = True
        self.loss = loss if loss is not None else ReIDLoss()
        self.augment = augment if augment is not None else ReIDAugment()
        if isinstance(self.augment, ReIDAugment) and getattr(model.config, "image_mean", None) is not None:
            self.augment.set_black(model.config.image_mean, model.config.image_std)  # the tower's normalisation
        self._component_sums: dict[str, float] = {}
        self._component_steps = 0
        self._step_lrs: dict[str, float] = {}
        self._batch_sampler: SeededBatchSampler | None = None

    # ---- data -------------------------------------------------------------------------------------------------

    def get_batch_sampler(self) -> SeededBatchSampler:
        """The batch sampler of training (built once; the Trainer sets its epoch): this rank's share of each global
        P x K batch, every index paired with its augmentation seed. Override it to sample otherwise."""
        if self._batch_sampler is None:
            ds = self.train_dataset
            if ds is None or "label" not in getattr(ds, "column_names", ()):
                raise ValueError("training needs a `train_dataset` (datasets.Dataset) with a `label` column")
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = PKBatchSampler(
                [int(v) for v in ds["label"]],
                num_identities=self.args.num_identities,
                num_instances=self.args.num_instances,
                seed=seed,
                num_replicas=self.args.world_size,
                rank=self.args.process_index,
            )
            self._batch_sampler = SeededBatchSampler(sampler, seed=seed)
        return self._batch_sampler

    def get_train_dataloader(self) -> DataLoader:
        num_workers = self.args.dataloader_num_workers
        kwargs = {}
        if num_workers > 0:
            kwargs["persistent_workers"] = self.args.dataloader_persistent_workers
            kwargs["prefetch_factor"] = self.args.dataloader_prefetch_factor
            if self.args.dataloader_multiprocessing_context:
                kwargs["multiprocessing_context"] = self.args.dataloader_multiprocessing_context
        return EpochDataLoader(
            SeededDataset(self.train_dataset),
            batch_sampler=self.get_batch_sampler(),
            collate_fn=SeededCollator(self.data_collator),
            num_workers=num_workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            **kwargs,
        )

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, as the Trainer counts them."""
        batches = len(self.get_batch_sampler())
        ga = self.args.gradient_accumulation_steps
        return max(batches // ga + int(batches % ga > 0), 1)

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def _get_output_dir(self, trial) -> str:
        """Where the Trainer writes checkpoints: always the staging folder; :meth:`_save_checkpoint` publishes them."""
        return os.path.join(super()._get_output_dir(trial), STAGING_DIR)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written under ``.incomplete/`` and renamed into place once complete.

        Every process writes its files (rank 0 the weights, optimizer and state; each rank its RNG state) into the
        staging folder; after a barrier, rank 0 renames it to ``checkpoint-N`` and rotates old checkpoints.
        """
        staging = Path(self._get_output_dir(trial))
        run_dir = staging.parent
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = staging / name, run_dir / name
        if self.args.should_save and staged.exists():
            shutil.rmtree(staged)  # left by a run killed while saving
        self.accelerator.wait_for_everyone()
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:  # the unmerged LoRA adapters, for --resume (model.safetensors holds them merged)
                save_lora_state(self.accelerator.unwrap_model(self.model), staged)
        except Exception as exc:
            full = disk_full_error(exc, run_dir)
            if full is None:
                raise
            shutil.rmtree(staged, ignore_errors=True)  # nothing half-written stays; the earlier checkpoints do
            raise full from None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if self.state.best_model_checkpoint is not None and Path(self.state.best_model_checkpoint).parent == staging:
                self.state.best_model_checkpoint = str(run_dir / Path(self.state.best_model_checkpoint).name)
                self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
            if final.exists():
                shutil.rmtree(final)
            os.replace(staged, final)
            if not any(staging.iterdir()):
                staging.rmdir()
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's save (weights, config, processor), then the files every saved model carries beyond it
        (training_args.json, the pipeline code; :func:`~mmreid.hub.checkpoint_files.complete_saved_model`), then
        -- for a save of the final model with ``--push-to-hub`` -- the push of the completed folder."""
        folder = Path(output_dir or self.args.output_dir)
        try:
            # LoRA adapters merged into the tower while it is saved: the weights load without peft
            with merged_lora_layers(self.accelerator.unwrap_model(self.model)):
                super().save_model(str(folder), _internal_call=True)  # the push waits for the completed folder
            if self.args.should_save:
                config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
                complete_saved_model(folder, self.args, config)
                share_weights(folder)
        except Exception as exc:
            full = disk_full_error(exc, folder)
            if full is None:
                raise
            if folder.parent.name != STAGING_DIR:  # the final model: no truncated weights file is left behind
                for name in WEIGHT_FILES:
                    (folder / name).unlink(missing_ok=True)
            raise full from None
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """The Trainer's load of a checkpoint's weights, with LoRA adapters restored unmerged (see the class
        docstring)."""
        target = self.accelerator.unwrap_model(self.model if model is None else model)
        with restoring_lora_state(target, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        """The Trainer's load of the best checkpoint at the end, with LoRA adapters restored unmerged."""
        with restoring_lora_state(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint):
            super()._load_best_model()

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Nothing: the Trainer calls this on the staging folder, which is renamed away before a background upload
        would read it; :class:`~mmreid.hub.push.HubPushCallback` pushes the published checkpoint instead."""

    def init_hf_repo(self, token=None, private=None) -> None:
        """The Trainer's repo creation (``--push-to-hub``, when the trainer is built), with a Hub that cannot be
        reached or refuses the repo reported as one line (:class:`~mmreid.errors.UsageError`) before training."""
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as exc:  # HTTP errors (OSErrors) and the HTTP client's connection errors (not OSErrors)
            name = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
            raise UsageError(f"--push-to-hub: cannot create or reach the model repo {name} on the Hub "
                             f"({type(exc).__name__}: {first_line(exc, 200)})") from None

    def push_to_hub(self, commit_message: str | None = "End of training", token=None, revision=None, **card_kwargs):
        """Upload the output folder as it is on disk (call :meth:`save_model` first; with ``--push-to-hub`` it calls
        this), after the checkpoint pushes still running: one blocking commit, without hidden folders, local
        checkpoints or pickles. ``card_kwargs`` (the Trainer's model-card fields) are not used: train.py writes the
        card. Raises :class:`~mmreid.errors.UsageError` when the upload fails."""
        from ..hub.push import HubPushCallback, push_output_dir

        if self.hub_model_id is None:
            self.init_hf_repo(token=token)
        if not self.is_world_process_zero():
            return None
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, HubPushCallback):
                callback.wait()
        return push_output_dir(self.args.output_dir, self.hub_model_id, commit_message,
                               token=token if token is not None else self.args.hub_token,
                               revision=revision if revision is not None else self.args.hub_revision)

    # ---- optimisation -----------------------------------------------------------------------------------------

    @staticmethod
    def get_optimizer_cls_and_kwargs(args, model=None) -> tuple[type, dict]:
        """``--optim`` resolved: the authors' Adam (the default), else the Trainer's own resolution of its names
        (:func:`~mmreid.training.optimizers.optimizer_cls_and_kwargs`)."""
        return optimizer_cls_and_kwargs(args, model)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """``--optim`` (:meth:`get_optimizer_cls_and_kwargs`) over the three named parameter groups of
        :func:`build_param_groups`; an ``--optim-args`` key it does not read is refused
        (:func:`~mmreid.training.optimizers.build_optimizer`)."""
        if self.optimizer is None:
            model = self.model if model is None else model
            groups = build_param_groups(model, self.args.learning_rate, self.args.bias_lr_factor,
                                        self.args.vision_tower_lr, self.args.weight_decay)
            resolved = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = build_optimizer(groups, self.args, resolved)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None and self.args.lr_schedule in EPOCH_SCHEDULES:
            steps_per_epoch = self.steps_per_epoch()
            if self.args.max_steps > 0:
                num_epochs = math.ceil(num_training_steps / steps_per_epoch)
            else:
                num_epochs = math.ceil(self.args.num_train_epochs)
            lr = self.args.learning_rate
            self.lr_scheduler = DeMoCosineLR(
                optimizer or self.optimizer,
                num_epochs=num_epochs,
                steps_per_epoch=steps_per_epoch,
                warmup_epochs=self.args.warmup_epochs,
                warmup_start_lr=self.args.warmup_factor * lr,
                min_lr=self.args.min_lr_factor * lr,
                noise=self.args.lr_schedule == "demo_cosine",
                noise_seed=self.args.lr_noise_seed,
            )
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss module on the model's output, after the augmentation (training only).

        ``num_items_in_batch`` is not needed: every micro-batch is a full P x K batch (see the class docstring).
        """
        inputs = dict(inputs)
        if "labels" not in inputs:
            raise ValueError(f"training batches need `labels`; got keys {sorted(inputs)}")
        labels = inputs.pop("labels")
        seeds = inputs.pop("aug_seeds", None)
        if model.training and seeds is not None:
            inputs["pixel_values"] = self.augment(inputs["pixel_values"], seeds)
        outputs = model(**inputs)
        out = self.loss(outputs, labels)
        if model.training:
            for name, value in out.components.items():
                self._component_sums[name] = self._component_sums.get(name, 0.0) + value
            self._component_steps += 1
        return (out.loss, outputs) if return_outputs else out.loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Notes each group's lr before the step: the lr the optimizer step uses, which is what the Trainer logs as
        ``learning_rate`` (the scheduler has stepped by the time ``log`` runs)."""
        if self.optimizer is not None:
            self._step_lrs = {
                GROUP_LR_LOG.format(group.get("name", f"group_{i}")): float(group["lr"])
                for i, group in enumerate(self.optimizer.param_groups)
            }
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds to training logs the mean of each loss component since the last log (over the global batch) and
        every group's lr (the Trainer's ``learning_rate`` is the first group's only)."""
        if "loss" in logs:
            logs.update(self._step_lrs)
        if "loss" in logs and self._component_steps:
            names = sorted(self._component_sums)
            means = torch.stack([torch.as_tensor(self._component_sums[n], dtype=torch.float32).to(self.args.device)
                                 for n in names]) / self._component_steps
            means = self.accelerator.reduce(means, reduction="mean")
            logs.update({name: round(float(value), 6) for name, value in zip(names, means)})
            self._component_sums, self._component_steps = {}, 0
        super().log(logs, start_time)

    # ---- evaluation -------------------------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """mAP / Rank-1/5/10 / mINP (percent) on query vs gallery through :mod:`mmreid.evaluation.protocol`.

        The headline numbers are those of the model's retrieval feature (``outputs.embeddings``); the other named
        feature sets of the output are logged as ``eval_<name>_mAP`` / ``eval_<name>_Rank-1``.
        """
        from ..evaluation.protocol import evaluate_retrieval

        splits = eval_dataset if eval_dataset is not None else self.eval_dataset
        if splits is None:
            raise ValueError("evaluation needs `eval_dataset` with the 'query' and 'gallery' splits")
        with random_state_kept():  # the training after an evaluation draws what it would have drawn without it
            results, main = evaluate_retrieval(
                self.model,
                splits["query"],
                splits["gallery"],
                batch_size=self.args.per_device_eval_batch_size,
                accelerator=self.accelerator,
                progress=False,
                tokenizer=tokenizer_of(self.processing_class),
            )
        metrics = {f"{metric_key_prefix}_{k}": float(results[main][k]) for k in METRIC_KEYS if k in results[main]}
        for name, res in results.items():
            if name != main:
                metrics[f"{metric_key_prefix}_{name}_mAP"] = float(res["mAP"])
                metrics[f"{metric_key_prefix}_{name}_Rank-1"] = float(res["Rank-1"])
        self.log(dict(metrics))
        if self.args.load_best_model_at_end:
            metrics[f"{metric_key_prefix}_selection"] = self.args.selection
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def close_event_writers(self) -> None:
        """Close TensorBoard's event writer: the Trainer closes it at the end of training, but a log after that
        (train.py's final evaluation) reopens it, and it must be flushed and closed before the process ends."""
        from transformers.integrations import TensorBoardCallback

        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                callback.tb_writer.close()
                callback.tb_writer = None

    def create_model_card(self, *args, **kwargs) -> None:
        """Nothing: the checkpoint's card is written by train.py from the final metrics
        (:func:`mmreid.hub.model_card.build_model_card`); the Trainer's generic card would replace it."""

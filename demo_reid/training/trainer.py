"""``ReIDTrainer``: one ``transformers.Trainer`` for the multi-modal ReID models (DeMo, NEXT): CE + triplet on every
named head, P x K batches, the authors' lr recipe. Nothing in it depends on which model it trains:

- the model's inputs are the collator's keys (``labels`` and the augmentation seeds are taken out first);
- the model's output names its supervised heads (``logits`` and ``features``: head name -> tensor), and the loss
  module passed in (default :class:`~demo_reid.losses.ReIDLoss` from the model config) applies to each named pair;
- evaluation ranks ``outputs.embeddings`` plus every named row of ``outputs.feature_sets``.

What it changes, and why:

- ``get_train_dataloader``: batches come from :class:`~demo_reid.sampler.PKBatchSampler` (P ids x K images per
  device, rank-aware), every index tagged with its augmentation seed; the loader is *not* passed through
  ``accelerator.prepare`` because accelerate would re-shard an already rank-aware batch sampler.
- ``compute_loss``: tensor augmentation on the training device, then ``id_w * CE_ls + tri_w * triplet`` summed over
  every (logits, features) pair the model returns. The loss is the mean over one complete P x K batch, so the
  Trainer divides it by the accumulation steps (``loss_is_scaled_for_ga = False``): exact under accumulation since
  all micro-batches have the same size.
- ``create_optimizer``: Adam with three named groups (tower, head weights, head biases x2); ``create_scheduler`` adds
  the per-epoch ``demo_cosine`` / ``demo_cosine_plain`` schedules.
- ``log``: training logs also carry ``id_loss`` / ``triplet_loss`` and each group's ``learning_rate/<group>``, so
  ``--report-to tensorboard`` plots them.
- ``evaluate``: query/gallery retrieval (mAP, CMC, mINP) through :mod:`demo_reid.evaluation.protocol`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..data.augment import ReIDAugment
from .checkpoints import STAGING_DIR
from ..data.collate import CAPTION_COLUMNS, collator_for
from .distributed import all_gather_with_grad, convert_to_global_batchnorm
from .losses import ReIDLoss
from ..evaluation.metrics import METRIC_KEYS
from ..hub.model_card import ModelCardInfo, build_model_card
from ..hub.processors import tokenizer_of
from ..data.sampler import PKBatchSampler, SeededBatchSampler
from .scheduler import SCHEDULER_TYPES, DeMoCosineLR

__all__ = [
    "DeMoTrainer",
    "ReIDTrainer",
    "EpochDataLoader",
    "RunInfoCallback",
    "SeededCollator",
    "SeededDataset",
    "collect_run_info",
    "build_param_groups",
    "PARAM_GROUPS",
    "GROUP_LR_LOG",
]

TOWER_PREFIX = "vision_tower."
# The optimizer's parameter groups, named once here: build_param_groups tags each group with its name and the trainer
# logs each group's lr as ``learning_rate/<name>`` (TensorBoard: ``train/learning_rate/<name>``). Head first: the
# Trainer's own ``learning_rate`` log is group 0's.
HEAD_GROUP, HEAD_BIAS_GROUP, TOWER_GROUP = "head", "head_bias", "vision_tower"
PARAM_GROUPS = (HEAD_GROUP, HEAD_BIAS_GROUP, TOWER_GROUP)
GROUP_LR_LOG = "learning_rate/{}"
# Parameters that live in the tower module but are new (not in the pretrained checkpoint): they train at the head
# learning rate, as in the original, where only the pretrained CLIP parameters get the tower's rate.
NEW_TOWER_PARAMETERS = ("vision_tower.embeddings.camera_embedding",)


class SeededDataset(Dataset):
    """Reads ``(index, seed)`` keys from :class:`SeededBatchSampler`; adds the seed to the row as ``aug_seed``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        row = dict(self.dataset[int(index)])
        row["aug_seed"] = seed
        return row

    def __getitems__(self, keys):
        indices = [int(i) for i, _ in keys]
        if hasattr(self.dataset, "column_names"):  # datasets.Dataset: one batched read
            columns = self.dataset[indices]
            rows = [{k: v[j] for k, v in columns.items()} for j in range(len(indices))]
        else:
            rows = [dict(self.dataset[i]) for i in indices]
        for row, (_, seed) in zip(rows, keys):
            row["aug_seed"] = seed
        return rows


class SeededCollator:
    """Wraps a row collator: hands it the rows' seeds (for caption sampling) and adds them to the batch as
    ``aug_seeds`` (B,) int64 for the augmentation."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        seeds = [row["aug_seed"] for row in rows]
        batch = self.collator([{k: v for k, v in row.items() if k != "aug_seed"} for row in rows], seeds=seeds)
        batch["aug_seeds"] = torch.tensor(seeds, dtype=torch.int64)
        return batch


class EpochDataLoader(DataLoader):
    """A DataLoader whose ``set_epoch`` reaches its batch sampler (the Trainer calls it at every epoch start)."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)


def build_param_groups(
    model: torch.nn.Module,
    learning_rate: float,
    bias_lr_factor: float,
    vision_tower_lr: float,
    weight_decay: float,
) -> list[dict]:
    """Adam groups of the recipe: every pretrained ``vision_tower.*`` parameter at ``vision_tower_lr``; other weights
    (the camera / SIE embedding included) at ``learning_rate``; other biases at ``learning_rate * bias_lr_factor``;
    ``weight_decay`` everywhere."""
    groups = {name: [] for name in PARAM_GROUPS}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = name.removeprefix("module.")
        if name.startswith(TOWER_PREFIX) and name not in NEW_TOWER_PARAMETERS:
            groups[TOWER_GROUP].append(param)
        elif name.endswith("bias"):
            groups[HEAD_BIAS_GROUP].append(param)
        else:
            groups[HEAD_GROUP].append(param)
    lrs = {TOWER_GROUP: vision_tower_lr, HEAD_GROUP: learning_rate, HEAD_BIAS_GROUP: learning_rate * bias_lr_factor}
    if not groups[TOWER_GROUP]:
        raise ValueError(
            f"found no trainable parameter named `{TOWER_PREFIX}*`: the model must expose its tower as `vision_tower`"
        )
    return [
        {"params": params, "lr": lrs[name], "weight_decay": weight_decay, "name": name}
        for name, params in groups.items()
        if params
    ]


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def collect_run_info(config: Mapping[str, Any] | None = None, **extra) -> dict:
    """Resolved config, seed, library versions and git revision, for ``run_info.json``."""
    import accelerate
    import datasets
    import transformers

    info = {
        "config": dict(config or {}),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "accelerate": accelerate.__version__,
            "numpy": np.__version__,
        },
        "git_revision": _git_revision(),
        "platform": platform.platform(),
    }
    info.update(extra)
    return info


class RunInfoCallback(TrainerCallback):
    """Writes ``run_info.json`` into the output dir at train start; the trainer adds it to every checkpoint."""

    def __init__(self, info: dict):
        self.info = info

    def write(self, folder: str | os.PathLike) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "run_info.json").write_text(json.dumps(self.info, indent=2, default=str) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(args.output_dir)


class ReIDTrainer(Trainer):
    """Trainer for any ReID model of this project (see the module docstring for what is overridden).

    Args:
        model, args, callbacks, processing_class, ...: as for ``transformers.Trainer``; ``args`` is a
            :class:`~demo_reid.training_args.DeMoTrainingArguments`. The ``processing_class`` (the checkpoint's
            processor, see :func:`~demo_reid.processors.build_processor`, or a bare tokenizer) is saved with every
            checkpoint; its tokenizer encodes the captions of text-conditioned models.
        train_dataset: the ``train`` split (needs a ``label`` column).
        query_dataset / gallery_dataset: splits for :meth:`evaluate`.
        data_collator / eval_collator: row collators for training / evaluation (default:
            :func:`~demo_reid.data.collator_for` the model's config).
        loss: the loss module, called as ``loss(logits, features, labels, pool_features, pool_labels)`` with the
            output's head mappings (default: :meth:`ReIDLoss.from_config` of the model's config).
        augment: tensor augmentation (default: built from ``args``).
    """

    # compute_loss returns the mean over one full P x K batch; the Trainer divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model=None,
        args=None,
        train_dataset=None,
        query_dataset=None,
        gallery_dataset=None,
        data_collator=None,
        eval_collator=None,
        loss=None,
        augment: ReIDAugment | None = None,
        **kwargs,
    ):
        if model is None:
            raise ValueError("ReIDTrainer needs `model` (a DeMoModel or NextModel)")
        tokenizer = tokenizer_of(kwargs.get("processing_class"))
        with_captions = train_dataset is None or all(
            c in getattr(train_dataset, "column_names", CAPTION_COLUMNS) for c in CAPTION_COLUMNS)
        if data_collator is None:
            data_collator = collator_for(model.config, train=True, tokenizer=tokenizer, with_captions=with_captions)
        self.eval_collator = eval_collator or collator_for(model.config, train=False, tokenizer=tokenizer,
                                                           with_captions=with_captions)
        if train_dataset is not None and hasattr(train_dataset, "column_names"):
            columns = list(getattr(data_collator, "columns", train_dataset.column_names))
            missing = [c for c in columns if c not in train_dataset.column_names]
            if missing:
                raise ValueError(f"`train_dataset` lacks column(s) {missing}; has {train_dataset.column_names}")
            train_dataset = train_dataset.select_columns(columns)
        self.query_dataset = query_dataset
        self.gallery_dataset = gallery_dataset
        eval_dataset = None
        if query_dataset is not None and gallery_dataset is not None:
            eval_dataset = {"query": query_dataset, "gallery": gallery_dataset}
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
        self.loss = loss if loss is not None else ReIDLoss.from_config(model.config)
        self.augment = augment or self.build_augment(self.args)
        self._loss_parts = {"id_loss": 0.0, "triplet_loss": 0.0, "n": 0}
        self._step_lrs: dict[str, float] = {}
        self._pk_sampler: PKBatchSampler | None = None
        self.select_best_on_test = False

    @staticmethod
    def build_augment(args) -> ReIDAugment:
        """The training augmentation of ``args`` (flip, pad + crop, random erasing; per modality image by default)."""
        return ReIDAugment(
            flip_prob=args.flip_prob,
            padding=args.padding,
            erasing_prob=args.erasing_prob,
            independent_modalities=args.modality_augment == "independent",
        )

    # ---- data -------------------------------------------------------------------------------------------------

    def _train_labels(self) -> list[int]:
        ds = self.train_dataset
        if hasattr(ds, "column_names"):
            return [int(v) for v in ds["label"]]
        if hasattr(ds, "labels"):
            return [int(v) for v in ds.labels]
        raise ValueError("`train_dataset` must be a datasets.Dataset with a `label` column (or expose `.labels`)")

    def get_pk_sampler(self) -> PKBatchSampler:
        """The rank-aware P x K sampler of this run (built once; its epoch is set by the Trainer)."""
        if self._pk_sampler is None:
            if self.train_dataset is None:
                raise ValueError("DeMoTrainer: training requires a train_dataset")
            self._pk_sampler = PKBatchSampler(
                self._train_labels(),
                num_identities=self.args.num_identities,
                num_instances=self.args.num_instances,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
                num_replicas=self.args.world_size,
                rank=self.args.process_index,
            )
        return self._pk_sampler

    def get_train_dataloader(self) -> DataLoader:
        sampler = self.get_pk_sampler()
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        num_workers = self.args.dataloader_num_workers
        kwargs = {}
        if num_workers > 0:
            kwargs["persistent_workers"] = self.args.dataloader_persistent_workers
            kwargs["prefetch_factor"] = self.args.dataloader_prefetch_factor
            if self.args.dataloader_multiprocessing_context:
                kwargs["multiprocessing_context"] = self.args.dataloader_multiprocessing_context
        return EpochDataLoader(
            SeededDataset(self.train_dataset),
            batch_sampler=SeededBatchSampler(sampler, seed=seed),
            collate_fn=SeededCollator(self.data_collator),
            num_workers=num_workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            **kwargs,
        )

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, as the Trainer counts them."""
        batches = len(self.get_pk_sampler())
        ga = self.args.gradient_accumulation_steps
        return max(batches // ga + int(batches % ga > 0), 1)

    # ---- checkpoints ------------------------------------------------------------------------------------------

    _staging_checkpoint = False

    def _get_output_dir(self, trial):
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging_checkpoint else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written under ``.incomplete/`` and renamed into place once complete.

        Every process writes its files (rank 0 the weights, optimizer and state; each rank its RNG state) into the
        staging folder; after a barrier, rank 0 renames it to ``checkpoint-N`` and rotates old checkpoints.
        """
        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = run_dir / STAGING_DIR / name, run_dir / name
        if self.args.should_save and staged.exists():
            shutil.rmtree(staged)  # left by a run killed while saving
        self.accelerator.wait_for_everyone()
        self._staging_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_checkpoint = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if self.state.best_model_checkpoint == str(staged):
                self.state.best_model_checkpoint = str(final)
                self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, RunInfoCallback):
                    callback.write(staged)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staged, final)
            if not any(staged.parent.iterdir()):
                staged.parent.rmdir()
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    # ---- optimisation -----------------------------------------------------------------------------------------

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            groups = build_param_groups(
                self.model if model is None else model,
                self.args.learning_rate,
                self.args.bias_lr_factor,
                self.args.vision_tower_lr,
                self.args.weight_decay,
            )
            self.optimizer = torch.optim.Adam(
                groups,
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None and self.args.lr_scheduler_type in SCHEDULER_TYPES:
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
                noise=self.args.lr_scheduler_type == "demo_cosine",
                noise_seed=self.args.lr_noise_seed,
            )
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss module on the model's named heads (DeMo: paper eq. 16-17), this rank's rows as anchors.

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
        pool_features = pool_labels = None
        if self.args.world_size > 1:  # this rank's anchors, mined against the whole global P x K batch
            pool_features = {name: all_gather_with_grad(f) for name, f in outputs.features.items()}
            pool_labels = all_gather_with_grad(labels)
        out = self.loss(outputs.logits, outputs.features, labels, pool_features, pool_labels)
        if model.training:
            self._loss_parts["id_loss"] += out.id_loss
            self._loss_parts["triplet_loss"] += out.triplet_loss
            self._loss_parts["n"] += 1
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
        """Adds to training logs the mean ID and triplet parts since the last log and every group's lr (the
        Trainer's ``learning_rate`` is the first group's only)."""
        if "loss" in logs:
            logs.update(self._step_lrs)
        if "loss" in logs and self._loss_parts["n"]:
            n = self._loss_parts["n"]
            parts = torch.stack([torch.as_tensor(self._loss_parts[k], dtype=torch.float32).to(self.args.device)
                                 for k in ("id_loss", "triplet_loss")]) / n
            parts = self.accelerator.reduce(parts, reduction="mean")  # the global batch's loss parts
            logs["id_loss"], logs["triplet_loss"] = (round(float(v), 6) for v in parts)
            self._loss_parts = {"id_loss": 0.0, "triplet_loss": 0.0, "n": 0}
        super().log(logs, start_time)

    # ---- evaluation -------------------------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """mAP / Rank-1/5/10 / mINP (percent) on query vs gallery through :mod:`demo_reid.evaluation.protocol`.

        The headline numbers are those of the model's retrieval feature (``outputs.embeddings``); the other named
        feature sets of the output are logged as ``eval_<name>_mAP`` / ``eval_<name>_Rank-1``.
        """
        from ..evaluation.protocol import evaluate_retrieval

        if eval_dataset is not None:
            query, gallery = eval_dataset["query"], eval_dataset["gallery"]
        else:
            query, gallery = self.query_dataset, self.gallery_dataset
        if query is None or gallery is None:
            raise ValueError("evaluation needs `query_dataset` and `gallery_dataset`")
        results, main = evaluate_retrieval(
            self.model,
            query,
            gallery,
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
        if self.select_best_on_test:
            metrics[f"{metric_key_prefix}_selection"] = "best epoch selected on TEST split (optimistic)"
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

    # ---- model card -------------------------------------------------------------------------------------------

    model_card_info: ModelCardInfo | None = None  # set by train.py once the final metrics are known

    def create_model_card(self, *args, **kwargs) -> None:
        """README.md with Hub metadata, usage, results and recipe (written by train.py; pushed by ``push_to_hub``).

        Without ``model_card_info`` (a run that never finished) no card is written: a card without results would
        describe a model nobody evaluated.
        """
        if not self.is_world_process_zero() or self.model_card_info is None:
            return
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        build_model_card(self.model_card_info).save(Path(self.args.output_dir) / "README.md")


DeMoTrainer = ReIDTrainer  # the name of the first version, kept for code written against it

"""The row side of per-sample seeds: datasets, collators and loaders that carry each sample's seed.

:class:`~mmreid.data.sampler.SeededBatchSampler` yields ``(index, seed)`` pairs; these wrappers hand the seed to
the row, the collator (caption sampling) and the batch (``aug_seeds``, for the augmentation on the training device),
so that no random draw depends on the data-loader workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["EpochDataLoader", "SeededCollator", "SeededDataset"]


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

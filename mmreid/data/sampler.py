"""P x K identity sampling for batch-hard triplet training, rank-aware, seeded by (seed, epoch).

Why a batch sampler of our own: batch-hard mining needs every batch to hold exactly P identities with K images
each, and the number of processes must not change the math. So P x K is the *global* batch (the authors' 64 =
8 x 8 on RGBNT201, whatever the number of GPUs): :class:`PKBatchSampler` draws P distinct identities per step and
hands rank ``r`` of N the identities ``r * P/N .. (r + 1) * P/N - 1`` of that draw, all K images of an identity on
one rank. Concatenating the ranks' batches in rank order gives exactly the single-process batch.

Epoch length follows the original ``RandomIdentitySampler``: each identity is cut into ``max(n, K) // K`` chunks of K
images (identities with fewer than K images are drawn with replacement), and an epoch has ``total_chunks // P``
steps. It is fixed in advance (the Trainer needs ``len``) and at least large enough to visit every identity once,
which the sampler guarantees. Identities are drawn with probability proportional to their remaining chunks; when
an identity's chunks run out and it is drawn again, a fresh set of K images is drawn for it.

Everything depends only on ``(seed, epoch)`` and the labels, never on global RNG state or dataloader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["PKBatchSampler", "SeededBatchSampler", "sample_seed"]


def _default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class PKBatchSampler(Sampler[list[int]]):
    """Yields, for this rank, its share of each global P x K batch: ``P / N * K`` dataset indices.

    Args:
        labels: identity label of every dataset row (any hashable ints).
        num_identities: P, identities per global batch (must be divisible by the number of processes).
        num_instances: K, images per identity.
        seed: base seed; the draw for an epoch depends only on ``(seed, epoch)``.
        num_replicas / rank: process count and index (default: from ``torch.distributed``, else 1 / 0).
    """

    def __init__(
        self,
        labels: Sequence[int],
        num_identities: int,
        num_instances: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        if int(num_identities) < 2:
            raise ValueError(f"`num_identities` (P) must be >= 2 for batch-hard mining, got {num_identities}")
        if int(num_instances) < 1:
            raise ValueError(f"`num_instances` (K) must be >= 1, got {num_instances}")
        default_rank, default_world = _default_rank_world()
        num_replicas = default_world if num_replicas is None else int(num_replicas)
        rank = default_rank if rank is None else int(rank)
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"`rank` must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
        if int(num_identities) % num_replicas:
            raise ValueError(
                f"P = num_identities = {num_identities} identities per global batch cannot be split evenly over "
                f"{num_replicas} processes: use a multiple of {num_replicas} (or another number of processes)"
            )
        labels = np.asarray(list(labels))
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("`labels` must be a non-empty 1-D sequence of identity labels")
        self.num_identities = int(num_identities)
        self.num_instances = int(num_instances)
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

        self.identities, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))
        self.index_lists = np.split(order, bounds[:-1])  # dataset rows of each identity, ascending
        per_step = self.num_identities
        if len(self.identities) < per_step:
            raise ValueError(
                f"P x K sampling needs at least num_identities = {per_step} identities, "
                f"the dataset has {len(self.identities)}"
            )
        self.chunk_counts = np.array([max(len(ix), self.num_instances) // self.num_instances for ix in self.index_lists])
        self.num_steps = max(int(self.chunk_counts.sum()) // per_step, math.ceil(len(self.identities) / per_step))

    @property
    def identities_per_rank(self) -> int:
        return self.num_identities // self.num_replicas

    @property
    def batch_size(self) -> int:
        """This rank's batch: P / N identities x K images."""
        return self.identities_per_rank * self.num_instances

    @property
    def sampler(self) -> PKBatchSampler:
        """Self-reference so code that looks for ``batch_sampler.sampler.set_epoch`` reaches :meth:`set_epoch`."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw :meth:`__iter__` yields (the draw depends only on ``(seed, epoch)``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_steps

    def _draw_instances(self, ident: int, gen: torch.Generator) -> list[list[int]]:
        """Cut one identity's rows into K-sized chunks in a random order (with replacement if it has fewer than K)."""
        rows = self.index_lists[ident]
        k = self.num_instances
        if len(rows) < k:
            picks = torch.randint(len(rows), (k,), generator=gen)
            return [rows[picks.numpy()].tolist()]
        perm = torch.randperm(len(rows), generator=gen).numpy()
        shuffled = rows[perm]
        n_chunks = len(rows) // k
        return [shuffled[i * k : (i + 1) * k].tolist() for i in range(n_chunks)]

    def global_steps(self, epoch: int | None = None) -> list[list[list[int]]]:
        """All steps of an epoch for all ranks: ``steps[s][r]`` is rank r's batch at step s."""
        epoch = self.epoch if epoch is None else int(epoch)
        gen = torch.Generator()
        gen.manual_seed(int(np.random.SeedSequence([self.seed, epoch, 0x5E1EC7]).generate_state(1, np.uint64)[0] >> 1))
        n_ids = len(self.identities)
        chunks = [self._draw_instances(i, gen) for i in range(n_ids)]
        remaining = torch.tensor([len(c) for c in chunks], dtype=torch.float64)
        unseen = torch.ones(n_ids, dtype=torch.bool)
        per_step = self.num_identities
        steps = []
        for s in range(self.num_steps):
            steps_left = self.num_steps - s
            # Force enough unseen identities in so that all are visited by the end of the epoch.
            n_forced = max(0, int(unseen.sum()) - (steps_left - 1) * per_step)
            chosen = []
            if n_forced:
                unseen_ids = unseen.nonzero().flatten()
                chosen = unseen_ids[torch.randperm(len(unseen_ids), generator=gen)[:n_forced]].tolist()
            weights = remaining.clone()
            weights[chosen] = 0.0
            need = per_step - len(chosen)
            available = int((weights > 0).sum())
            if available >= need:
                picked = torch.multinomial(weights, need, replacement=False, generator=gen).tolist() if need else []
            else:
                picked = (weights > 0).nonzero().flatten().tolist()
                rest = torch.ones(n_ids, dtype=torch.float64)
                rest[chosen + picked] = 0.0
                picked += torch.multinomial(rest, need - len(picked), replacement=False, generator=gen).tolist()
            ids = chosen + picked
            # Random order inside the step so forced identities don't always land on rank 0.
            ids = [ids[i] for i in torch.randperm(len(ids), generator=gen).tolist()]
            batch_rows = []
            for ident in ids:
                if remaining[ident] > 0:
                    remaining[ident] -= 1
                    batch_rows.append(chunks[ident].pop())
                else:
                    batch_rows.append(self._draw_instances(ident, gen)[0])
                unseen[ident] = False
            p = self.identities_per_rank
            steps.append([sum(batch_rows[r * p : (r + 1) * p], []) for r in range(self.num_replicas)])
        return steps

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.global_steps():
            yield step[self.rank]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A well-mixed 63-bit seed for one sample, from ``(seed, epoch, position in the epoch's sample order)``."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(position)]).generate_state(1, np.uint64)[0] >> 1)


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Tags every index of a rank-aware batch sampler with its own augmentation seed: ``(index, seed)`` pairs.

    The seed depends on ``(seed, epoch, global position)`` where the global position of item ``j`` of this rank's
    ``b``-th batch is ``(b * num_replicas + rank) * batch_size + j``, unique across ranks and steps. Data loader
    workers only ever see these pairs, so the worker count cannot change any random draw.
    """

    def __init__(self, batch_sampler: PKBatchSampler, seed: int = 0):
        self.batch_sampler = batch_sampler
        self.seed = int(seed)

    @property
    def sampler(self):
        return self.batch_sampler

    @property
    def epoch(self) -> int:
        return self.batch_sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        world = getattr(self.batch_sampler, "num_replicas", 1)
        rank = getattr(self.batch_sampler, "rank", 0)
        epoch = self.epoch
        for b, batch in enumerate(self.batch_sampler):
            base = (b * world + rank) * len(batch)
            yield [(int(i), sample_seed(self.seed, epoch, base + j)) for j, i in enumerate(batch)]

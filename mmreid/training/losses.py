"""Re-ID training losses: label-smoothed identity loss and batch-hard triplet loss.

DeMo (like TransReID / MambaPro before it) supervises every (logits, features) pair the model returns with
``id_weight * CE_ls(logits) + triplet_weight * triplet(features)`` and sums over pairs (paper eq. 16-17). The triplet
uses the raw (not L2-normalised) pre-BN features and euclidean distances, hardest positive / hardest negative per
anchor, and the soft-margin form ``softplus(d_ap - d_an)`` unless a margin is given.

:class:`ReIDLoss` is the module the trainer is given: it owns the loss options (their one definition: train.py's
loss options are generated from its signature), mines triplets over the global batch of all processes, and reports
its named components for logging.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributed import all_gather_with_grad

__all__ = [
    "ReIDLossOutput",
    "batch_hard_mining",
    "batch_hard_triplet_loss",
    "euclidean_distance",
    "label_smoothed_cross_entropy",
    "ReIDLoss",
    "reid_loss",
]


def _check_labels(labels: torch.Tensor, batch: int, name: str = "labels") -> None:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != batch:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"`{name}` must be a 1-D tensor of length {batch} (one id per row), got {shape}")
    if labels.dtype.is_floating_point:
        raise ValueError(f"`{name}` must hold integer identity labels, got dtype {labels.dtype}")


def label_smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Cross entropy against ``(1 - eps) * one_hot + eps / num_classes`` targets, averaged over the batch.

    Same value as the original ``CrossEntropyLabelSmooth``; ``epsilon=0`` gives plain cross entropy.
    """
    if logits.dim() != 2:
        raise ValueError(f"`logits` must be 2-D (batch, num_classes), got shape {tuple(logits.shape)}")
    _check_labels(labels, logits.shape[0])
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"`epsilon` (label smoothing) must be in [0, 1), got {epsilon}")
    num_classes = logits.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"`labels` must be in [0, {num_classes - 1}] for logits with {num_classes} classes, "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )
    # Computed in float32, autocast off: bf16 log-softmax over hundreds of classes loses the smoothing term.
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.cross_entropy(logits.float(), labels, label_smoothing=epsilon)


def euclidean_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise euclidean distances (m, n), clamped at 1e-12 before the sqrt so the gradient stays finite.

    Computed in float32 with autocast off (autocast would run the matmul in bf16 / fp16): |x|^2 + |y|^2 - 2 x.y
    cancels catastrophically in 8 mantissa bits, and the batch-hard triplet picks its pairs from these distances.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected 2-D features with equal widths, got {tuple(x.shape)} and {tuple(y.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.float(), y.float()
        sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1, keepdim=True).t() - 2.0 * x @ y.t()
        return sq.clamp(min=1e-12).sqrt()


def batch_hard_mining(
    dist: torch.Tensor, anchor_labels: torch.Tensor, pool_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each anchor row: the largest distance to a same-id column and the smallest to a different-id column."""
    is_pos = anchor_labels[:, None] == pool_labels[None, :]
    if not bool(is_pos.any(1).all()):
        raise ValueError("batch-hard mining: every anchor needs at least one positive in the pool")
    if not bool((~is_pos).any(1).all()):
        raise ValueError(
            "batch-hard mining needs at least two identities in the batch (an anchor has no negative); "
            "use P x K sampling with P >= 2"
        )
    neg_inf = torch.finfo(dist.dtype).min
    pos_inf = torch.finfo(dist.dtype).max
    dist_ap = dist.masked_fill(~is_pos, neg_inf).max(1).values
    dist_an = dist.masked_fill(is_pos, pos_inf).min(1).values
    return dist_ap, dist_an


def batch_hard_triplet_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    margin: float | None = None,
    pool_features: torch.Tensor | None = None,
    pool_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch-hard triplet loss, mean over anchors.

    ``margin=None`` gives the soft-margin form ``softplus(d_ap - d_an)`` (the original's ``SoftMarginLoss``);
    a float gives ``relu(d_ap - d_an + margin)``. ``pool_features`` / ``pool_labels`` (e.g. gathered from all
    processes) replace the batch as the set positives and negatives are mined from; anchors stay ``features``.
    """
    if features.dim() != 2:
        raise ValueError(f"`features` must be 2-D (batch, dim), got shape {tuple(features.shape)}")
    _check_labels(labels, features.shape[0])
    if (pool_features is None) != (pool_labels is None):
        raise ValueError("`pool_features` and `pool_labels` must be given together")
    if pool_features is None:
        pool_features, pool_labels = features, labels
    else:
        _check_labels(pool_labels, pool_features.shape[0], "pool_labels")
    if margin is not None and margin < 0:
        raise ValueError(f"`margin` must be None (soft margin) or >= 0, got {margin}")
    dist = euclidean_distance(features, pool_features)
    dist_ap, dist_an = batch_hard_mining(dist, labels, pool_labels)
    if margin is None:
        return F.softplus(dist_ap - dist_an).mean()
    return F.relu(dist_ap - dist_an + margin).mean()


@dataclass
class ReIDLossOutput:
    """The total loss, and its named parts (detached, unweighted) that the trainer logs."""

    loss: torch.Tensor
    components: dict[str, torch.Tensor]


def reid_loss(
    logits: Sequence[torch.Tensor],
    features: Sequence[torch.Tensor],
    labels: torch.Tensor,
    id_loss_weight: float,
    triplet_loss_weight: float,
    label_smoothing: float,
    triplet_margin: float | None,
    pool_features: Sequence[torch.Tensor] | None = None,
    pool_labels: torch.Tensor | None = None,
) -> ReIDLossOutput:
    """Sum over aligned (logits, features) pairs of ``id_w * CE_ls + tri_w * triplet`` (paper eq. 16-17).

    ``pool_features`` (one tensor per pair) and ``pool_labels`` widen the triplet mining pool, see
    :func:`batch_hard_triplet_loss`.
    """
    if len(logits) != len(features) or len(logits) == 0:
        raise ValueError(
            f"`logits` and `features` must be non-empty and aligned, got {len(logits)} logits and "
            f"{len(features)} feature tensors"
        )
    if pool_features is not None and len(pool_features) != len(features):
        raise ValueError(f"`pool_features` must have one tensor per head ({len(features)}), got {len(pool_features)}")
    id_total = logits[0].new_zeros((), dtype=torch.float32)
    tri_total = logits[0].new_zeros((), dtype=torch.float32)
    for i, (head_logits, head_feat) in enumerate(zip(logits, features)):
        id_total = id_total + label_smoothed_cross_entropy(head_logits, labels, label_smoothing)
        tri_total = tri_total + batch_hard_triplet_loss(
            head_feat,
            labels,
            triplet_margin,
            pool_features=None if pool_features is None else pool_features[i],
            pool_labels=None if pool_features is None else pool_labels,
        )
    loss = id_loss_weight * id_total + triplet_loss_weight * tri_total
    return ReIDLossOutput(loss=loss, components={"id_loss": id_total.detach(), "triplet_loss": tri_total.detach()})


class ReIDLoss(torch.nn.Module):
    """The trainer's loss: ``id_w * CE_ls + tri_w * triplet`` on every named supervised head of a model output.

    Called as ``loss(outputs, labels)`` with any model output whose ``logits`` and ``features`` are mappings with the
    same head names (DeMo: ``ori`` / per-modality heads and ``moe``; NEXT: ``cls``, ``semantic``, ``structure``,
    ``final``). Under several processes each rank's rows are the anchors and the positives and negatives are mined
    over the whole global P x K batch, gathered here with gradients, which makes N processes compute the
    single-process loss.

    Args:
        id_loss_weight: Weight of the label-smoothed identity (cross-entropy) loss, summed over the heads.
        triplet_loss_weight: Weight of the batch-hard triplet loss, summed over the heads.
        label_smoothing: Label smoothing epsilon of the identity loss.
        triplet_margin: Margin of the triplet loss; unset (None) selects the soft-margin form softplus(d_ap - d_an),
            the authors' choice.
    """

    def __init__(
        self,
        id_loss_weight: float = 0.25,
        triplet_loss_weight: float = 1.0,
        label_smoothing: float = 0.1,
        triplet_margin: float | None = None,
    ):
        super().__init__()
        for name, value in (("id_loss_weight", id_loss_weight), ("triplet_loss_weight", triplet_loss_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if triplet_margin is not None and triplet_margin < 0:
            raise ValueError(f"triplet_margin must be unset (soft margin) or >= 0, got {triplet_margin}")
        self.id_loss_weight = float(id_loss_weight)
        self.triplet_loss_weight = float(triplet_loss_weight)
        self.label_smoothing = float(label_smoothing)
        self.triplet_margin = triplet_margin

    def extra_repr(self) -> str:
        return (f"id_loss_weight={self.id_loss_weight}, triplet_loss_weight={self.triplet_loss_weight}, "
                f"label_smoothing={self.label_smoothing}, triplet_margin={self.triplet_margin}")

    def forward(self, outputs, labels: torch.Tensor) -> ReIDLossOutput:
        logits, features = getattr(outputs, "logits", None), getattr(outputs, "features", None)
        if not isinstance(logits, Mapping) or not isinstance(features, Mapping):
            raise TypeError("the model output must name its supervised heads: `logits` and `features` must be "
                            f"mappings of head name -> tensor, got {type(logits).__name__} / {type(features).__name__}")
        if list(logits) != list(features):
            raise ValueError(f"`logits` and `features` must name the same heads, got {list(logits)} and {list(features)}")
        names = list(logits)
        pool = [all_gather_with_grad(features[n]) for n in names]
        return reid_loss(
            [logits[n] for n in names],
            [features[n] for n in names],
            labels,
            id_loss_weight=self.id_loss_weight,
            triplet_loss_weight=self.triplet_loss_weight,
            label_smoothing=self.label_smoothing,
            triplet_margin=self.triplet_margin,
            pool_features=pool,
            pool_labels=all_gather_with_grad(labels),
        )

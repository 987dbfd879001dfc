"""The ranking algorithm of the authors' evaluation, as the benchmark's reference (written here, not copied).

Why it exists: `mmreid.metrics.reid_metrics` claims to be faster than the Re-ID protocol loop
the authors evaluate with; this is that algorithm, so the claim is measured on the same matrix in
the same process. For every query: rank the whole gallery row with numpy's default ``argsort``,
drop the junk entries (same identity and same camera / scene), and read CMC, AP and INP off the
kept matches, AP as the mean over true matches of the precision vector computed at every kept
rank (as the authors' code computes it).

numpy's default argsort is not stable, so the order of tied distances is unspecified;
``kind="stable"`` gives the tie rule of `reid_metrics` (gallery order) for an exact comparison.
"""

from __future__ import annotations

import numpy as np


def reference_reid_metrics(distmat, q_pids, g_pids, q_groups, g_groups, max_rank: int = 50, kind: str = "quicksort"):
    """mAP, CMC (length ``min(max_rank, G)``) and mINP, one query at a time; ``q_groups`` are cameras or scenes."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_groups, g_groups = np.asarray(q_groups), np.asarray(g_groups)
    max_rank = min(max_rank, distmat.shape[1])
    ap_sum = inp_sum = 0.0
    cmc_sum = np.zeros(max_rank)
    valid = 0
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind=kind)
        same_id = g_pids[order] == q_pids[i]
        junk = same_id & (g_groups[order] == q_groups[i])
        hits = same_id[~junk]
        if not hits.any():
            continue
        found = np.cumsum(hits)
        last = np.flatnonzero(hits)[-1]
        inp_sum += found[last] / (last + 1)
        cmc_sum += np.minimum(found[:max_rank], 1)
        precision = found / np.arange(1, len(hits) + 1)
        ap_sum += float((precision * hits).sum() / found[-1])
        valid += 1
    if valid == 0:
        raise ValueError("no query has a true match")
    return {"mAP": ap_sum / valid, "cmc": cmc_sum / valid, "mINP": inp_sum / valid, "num_valid_queries": valid}

"""ReID mAP / CMC / mINP as a self-contained Hugging Face `evaluate` module.

Why self-contained: the folder can be pushed to the Hub on its own, so it imports only numpy,
datasets, evaluate and the standard library. The numbers equal `mmreid.evaluation.metrics` (the
repository's fast, blocked implementation) and are reported like `eval.py`: in percent, under
the keys `mAP`, `Rank-1`, `Rank-5`, `Rank-10`, `mINP`. This version ranks one query at a time,
which is slower but easy to check against the protocol.
"""

import datasets
import evaluate
import numpy as np

# Rank-k accuracies reported besides the CMC curve (as eval.py prints them).
REPORTED_RANKS = (1, 5, 10)

_DESCRIPTION = """\
Retrieval metrics of object re-identification, in percent: mean average precision (mAP), the
CMC curve (Rank-k accuracy) and mean inverse negative penalty (mINP). Each example is one query:
its row of distances to the gallery (smaller = closer), its identity and its camera. For every
query, gallery entries of the same identity seen by the same camera (camera protocol, config
"camera", the default) or in the same scene (scene protocol, config "scene") are removed; queries
with no remaining true match are skipped. Ties in the distances are broken by gallery order.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row of distances to the gallery per query.
    references (`list` of `int`): identity (pid) of each query.
    query_camids (`list` of `int`): camera of each query.
    query_sceneids (`list` of `int`): scene of each query (config "scene" only).
    gallery_pids (`list` of `int`): identity of each gallery entry (required).
    gallery_camids (`list` of `int`): camera of each gallery entry (required).
    gallery_sceneids (`list` of `int`): scene of each gallery entry (required with config "scene").
    max_rank (`int`, defaults to 50): length of the CMC curve (capped at the gallery size).
Returns:
    mAP (`float`), Rank-1 / Rank-5 / Rank-10 (`float`), mINP (`float`): all in percent [0, 100];
        a Rank-k whose k exceeds the gallery size is left out.
    cmc (`list` of `float`): the CMC curve in percent, entry k-1 is Rank-k.
    num_valid_queries (`int`): queries that had at least one true match.
Examples:
    >>> reid_map = evaluate.load("./metrics/reid_map")
    >>> reid_map.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 2], query_camids=[0, 0],
    ...                  gallery_pids=[1, 2], gallery_camids=[1, 1])["mAP"]
    100.0
"""

_CITATION = """\
@inproceedings{wang2025demo,
  title={DeMo: Decoupled Feature-Based Mixture of Experts for Multi-Modal Object Re-Identification},
  author={Wang, Yuhao and Liu, Yang and Zheng, Aihua and Zhang, Pingping},
  booktitle={AAAI},
  year={2025}
}
@article{ye2021deep,
  title={Deep Learning for Person Re-identification: A Survey and Outlook},
  author={Ye, Mang and Shen, Jianbing and Lin, Gaojie and Xiang, Tao and Shao, Ling and Hoi, Steven C. H.},
  journal={IEEE TPAMI},
  year={2021}
}
"""


def _ids(values, name, length):
    """1-D int64 ids with the expected length, or a one-line error naming the argument."""
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != length:
        raise ValueError(f"{name} must be a flat list of {length} ids, got shape {arr.shape}")
    return arr.astype(np.int64)


def rank_one_query(distances, query_pid, query_group, gallery_pids, gallery_groups):
    """Ranks (1-based, junk removed) of the true matches of one query, in ranking order.

    Junk: gallery entries of the query's identity in the query's group (camera or scene). They
    are dropped from the ranking, so they neither count as hits nor push other entries down.
    A stable sort breaks ties by gallery order.
    """
    order = np.argsort(distances, kind="stable")
    same_id = gallery_pids[order] == query_pid
    junk = same_id & (gallery_groups[order] == query_group)
    hits = same_id[~junk]
    return np.flatnonzero(hits) + 1


def reid_scores(distmat, query_pids, gallery_pids, query_groups, gallery_groups, max_rank=50):
    """Fractions: mAP, CMC (length min(max_rank, gallery size)), mINP and the number of valid queries."""
    num_gallery = distmat.shape[1]
    if num_gallery == 0:
        raise ValueError("the gallery is empty: pass at least one gallery entry")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if np.isnan(distmat).any():
        raise ValueError("the distance matrix contains NaN: check the features for NaN/inf values")
    curve_length = min(int(max_rank), num_gallery)
    cmc_sum = np.zeros(curve_length)
    ap_sum = inp_sum = 0.0
    num_valid = 0
    for row, pid, group in zip(distmat, query_pids, query_groups):
        ranks = rank_one_query(row, pid, group, gallery_pids, gallery_groups)
        if len(ranks) == 0:  # no true match outside the query's own camera / scene: skipped
            continue
        num_valid += 1
        # CMC: the query counts as found at every k from its first true match on.
        cmc_sum[ranks[0] - 1 :] += 1.0
        # AP: precision (i-th match / its rank) averaged over the true matches.
        ap_sum += float(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        # INP: share of the list up to the hardest true match that is true matches.
        inp_sum += len(ranks) / float(ranks[-1])
    if num_valid == 0:
        raise ValueError("no query has a true match in the gallery outside its own camera/scene: "
                         "check that query and gallery share identities and that the ids are right")
    return {"mAP": ap_sum / num_valid, "cmc": cmc_sum / num_valid, "mINP": inp_sum / num_valid,
            "num_valid_queries": num_valid}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ReidMap(evaluate.Metric):
    """Why a module: lets Trainer-style code call `compute` like any other HF metric."""

    def _info(self):
        if self.config_name not in ("default", "camera", "scene"):
            raise ValueError(f"unknown config {self.config_name!r}: use 'camera' (default) or 'scene'")
        features = {
            "predictions": datasets.Sequence(datasets.Value("float64")),
            "references": datasets.Value("int64"),
            "query_camids": datasets.Value("int64"),
        }
        if self.config_name == "scene":
            features["query_sceneids"] = datasets.Value("int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
        )

    def _compute(
        self,
        predictions,
        references,
        query_camids,
        query_sceneids=None,
        gallery_pids=None,
        gallery_camids=None,
        gallery_sceneids=None,
        max_rank=50,
    ):
        if gallery_pids is None or gallery_camids is None:
            raise ValueError("pass gallery_pids= and gallery_camids= to compute()")
        scene = self.config_name == "scene"
        if scene and gallery_sceneids is None:
            raise ValueError("config 'scene' needs gallery_sceneids= in compute()")
        if not scene and gallery_sceneids is not None:
            raise ValueError("gallery_sceneids given but config is 'camera': load the module with config_name='scene'")
        lengths = {len(row) for row in predictions}
        if len(lengths) > 1:
            raise ValueError(f"every prediction row must have one distance per gallery entry; got lengths {sorted(lengths)}")
        num_query = len(predictions)
        if num_query == 0:
            raise ValueError("no query rows: add predictions before compute()")
        num_gallery = lengths.pop()
        distmat = np.asarray(predictions, dtype=np.float64).reshape(num_query, num_gallery)
        query_pids = _ids(references, "references", num_query)
        g_pids = _ids(gallery_pids, "gallery_pids", num_gallery)
        if scene:
            q_groups = _ids(query_sceneids, "query_sceneids", num_query)
            g_groups = _ids(gallery_sceneids, "gallery_sceneids", num_gallery)
        else:
            q_groups = _ids(query_camids, "query_camids", num_query)
            g_groups = _ids(gallery_camids, "gallery_camids", num_gallery)
        _ids(gallery_camids, "gallery_camids", num_gallery)  # required by both protocols, so checked by both
        res = reid_scores(distmat, query_pids, g_pids, q_groups, g_groups, max_rank)
        cmc = [100.0 * float(c) for c in res["cmc"]]
        out = {"mAP": 100.0 * res["mAP"]}
        for k in REPORTED_RANKS:
            if k <= len(cmc):
                out[f"Rank-{k}"] = cmc[k - 1]
        out["mINP"] = 100.0 * res["mINP"]
        out["cmc"] = cmc
        out["num_valid_queries"] = int(res["num_valid_queries"])
        return out

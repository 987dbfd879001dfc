"""ReID mAP / CMC / mINP as a Hugging Face `evaluate` module, wrapping `demo_reid.metrics.reid_metrics`."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Retrieval metrics of object re-identification: mean average precision (mAP), the CMC curve
(Rank-k accuracy) and mean inverse negative penalty (mINP). Each example is one query: its row
of distances to the gallery (smaller = closer), its identity and its camera. For every query,
gallery entries of the same identity seen by the same camera (camera protocol, config "camera")
or in the same scene (scene protocol, config "scene") are removed; queries with no remaining true
match are skipped. Ties are broken by gallery order.
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
    mAP (`float`), mINP (`float`), rank-1 / rank-5 / rank-10 (`float`), all in [0, 1];
    cmc (`list` of `float`): CMC curve; num_valid_queries (`int`).
Examples:
    >>> reid_map = evaluate.load("./metrics/reid_map")
    >>> reid_map.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 2], query_camids=[0, 0],
    ...                  gallery_pids=[1, 2], gallery_camids=[1, 1])["mAP"]
    1.0
"""

_CITATION = """\
@inproceedings{wang2025demo,
  title={DeMo: Decoupled Feature-Based Mixture of Experts for Multi-Modal Object Re-Identification},
  author={Wang, Yuhao and Liu, Yang and Zheng, Aihua and Zhang, Pingping},
  booktitle={AAAI},
  year={2025}
}
"""


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
        try:
            from demo_reid.metrics import reid_metrics
        except ImportError:
            raise ImportError(
                "reid_map needs the demo_reid package: run from the repository root or `pip install -e .` there"
            ) from None
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
        res = reid_metrics(
            np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1),
            references,
            gallery_pids,
            query_camids,
            gallery_camids,
            query_sceneids if scene else None,
            gallery_sceneids if scene else None,
            max_rank=max_rank,
        )
        cmc = [float(x) for x in res["cmc"]]
        out = {"mAP": float(res["mAP"]), "mINP": float(res["mINP"])}
        for k in (1, 5, 10):
            if k <= len(cmc):
                out[f"rank-{k}"] = cmc[k - 1]
        out["cmc"] = cmc
        out["num_valid_queries"] = int(res["num_valid_queries"])
        return out

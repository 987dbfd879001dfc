"""Query/gallery evaluation of a ReID model (DeMo, NEXT): feature extraction, metrics per named feature row,
the missing-modality sweep of paper Tables 3-4, and the JSON / Markdown report.

Used by ``eval.py`` and, for periodic evaluation, by the trainer. Extraction runs on one or
several processes (``accelerate``); metrics are computed from extracted features by the pure
function :func:`compute_retrieval_metrics`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from ..data.collate import MODALITY_COLUMNS
from ..inference import NoImageLeftError, run_over_split
from .metrics import DISTANCE_METRICS, METRIC_KEYS, reid_metrics, reid_metrics_from_features, summarize
from .reranking import re_ranking

# The rows are named by the model (``outputs.feature_sets``: DeMo ori / moe / all, NEXT cls / semantic / structure /
# final / all); "embeddings" names the retrieval feature when it is none of them.
EMBEDDINGS = "embeddings"
# Missing-modality settings (paper Table 3): the mask keeps (RGB, NIR, TIR); False = missing in query AND gallery.
MISSING_SETTINGS = {
    "r": (False, True, True),
    "n": (True, False, True),
    "t": (True, True, False),
    "rn": (False, False, True),
    "rt": (False, True, False),
    "nt": (True, False, False),
}
MISSING_LABELS = {
    "r": "M (RGB)", "n": "M (NIR)", "t": "M (TIR)",
    "rn": "M (RGB+NIR)", "rt": "M (RGB+TIR)", "nt": "M (NIR+TIR)",
}


class EvaluationInputError(ValueError):
    """Bad input for an evaluation (wrong split, camera ids, setting...); the message says what to do."""


# ------------------------------------------------------------------------------------------ inputs
def modality_mask_for(setting) -> Optional[torch.Tensor]:
    """A (3,) bool mask (RGB, NIR, TIR) from a setting name ("r", "nt", ...), a sequence of 3 bools, or None."""
    if setting is None:
        return None
    if isinstance(setting, str):
        key = setting.strip().lower()
        if key not in MISSING_SETTINGS:
            raise EvaluationInputError(
                f"unknown missing-modality setting {setting!r}: use one of {', '.join(MISSING_SETTINGS)} "
                "(r = RGB missing, rn = RGB and NIR missing, ...)"
            )
        return torch.tensor(MISSING_SETTINGS[key])
    mask = torch.as_tensor(setting, dtype=torch.bool)
    if mask.shape != (3,):
        raise EvaluationInputError(f"modality_mask must have 3 entries (RGB, NIR, TIR), got shape {tuple(mask.shape)}")
    return mask


def choose_protocol(query_sceneids, gallery_sceneids) -> str:
    """"scene" when every query and gallery row has a scene id (>= 0), else "camera"."""
    q, g = np.asarray(query_sceneids), np.asarray(gallery_sceneids)
    return "scene" if len(q) and len(g) and (q >= 0).all() and (g >= 0).all() else "camera"


def check_split(split, name: str, num_cameras: int) -> None:
    """Fail early, in one line, on an empty split or on camera ids the model has no embedding for."""
    if split is None or len(split) == 0:
        raise EvaluationInputError(f"the {name} split is empty: rebuild the dataset with query images "
                                   "(data_scripts/build_dataset.py) or pass another --dataset")
    missing = [c for c in (*MODALITY_COLUMNS, "pid", "camid") if c not in split.column_names]
    if missing:
        raise EvaluationInputError(f"the {name} split lacks column(s) {missing}: build it with data_scripts/build_dataset.py")
    if num_cameras > 0:
        camids = np.asarray(split["camid"])
        bad = sorted(set(camids[(camids < 0) | (camids >= num_cameras)].tolist()))
        if bad:
            raise EvaluationInputError(
                f"the {name} split has camera ids {bad[:8]} but the model was trained with num_cameras={num_cameras} "
                f"(ids 0..{num_cameras - 1}): evaluate on the dataset the model was trained for"
            )


# -------------------------------------------------------------------------------------- extraction
@dataclass
class ExtractedFeatures:
    """Features of one split in dataset order (on CPU), with the ids the metric needs.

    ``feature_sets`` maps the model's row names to (N, D) features; ``headline`` names the row that is the model's
    retrieval feature (``outputs.embeddings``).
    """

    feature_sets: dict[str, torch.Tensor]
    headline: str
    pids: np.ndarray
    camids: np.ndarray
    sceneids: np.ndarray
    expert_weights: Optional[torch.Tensor] = None  # (N, heads, experts)

    def available(self) -> tuple[str, ...]:
        return tuple(self.feature_sets)

    def get(self, name: str) -> torch.Tensor:
        """Feature row by name (see :meth:`available`)."""
        if name not in self.feature_sets:
            raise EvaluationInputError(f"unknown feature set {name!r}: this model gives {', '.join(self.feature_sets)}")
        return self.feature_sets[name]

    def __len__(self) -> int:
        return len(self.pids)


def _named_rows(out) -> tuple[dict[str, torch.Tensor], str]:
    """The output's named retrieval rows and the name of the one that is ``out.embeddings``."""
    rows = dict(getattr(out, "feature_sets", None) or {})
    for name, value in rows.items():  # the row that is the embeddings tensor first: another may equal it
        if value is out.embeddings:
            return rows, name
    for name, value in rows.items():
        if value.shape == out.embeddings.shape and torch.equal(value, out.embeddings):
            return rows, name
    rows[EMBEDDINGS] = out.embeddings
    return rows, EMBEDDINGS


def _unwrap(model, accelerator):
    return accelerator.unwrap_model(model) if accelerator is not None else getattr(model, "module", model)


@torch.no_grad()
def extract_features(
    model,
    dataset_split,
    batch_size: int = 64,
    modality_mask=None,
    accelerator=None,
    collator=None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "features",
    tokenizer=None,
) -> ExtractedFeatures:
    """Run the model over a split and collect its named feature rows, ids and expert weights.

    The batches hold the model's inputs by name (see :func:`mmreid.data.collator_for`; pass the ``tokenizer`` of
    a text-conditioned model) plus the metric's ids, which are taken out before the call. ``modality_mask``
    (setting name or 3 bools) marks modalities missing for every row, on top of the images a row lacks (the
    collator's ``modality_mask``). With an ``accelerate.Accelerator`` each
    process embeds its shard and the results are gathered (``gather_for_metrics`` drops the padding duplicates),
    so every process returns the whole split.
    """
    base = _unwrap(model, accelerator)
    check_split(dataset_split, desc, getattr(base.config, "num_cameras", 0))
    headline = None

    def keep(out) -> dict[str, torch.Tensor]:
        nonlocal headline
        rows, headline = _named_rows(out)
        item = {f"row:{name}": value.float() for name, value in rows.items()}
        if getattr(out, "expert_weights", None) is not None:
            item["expert_weights"] = out.expert_weights.float()
        return item

    try:
        cat = run_over_split(model, dataset_split, keep, batch_size, accelerator, collator=collator,
                             tokenizer=tokenizer, modality_mask=modality_mask_for(modality_mask),
                             num_workers=num_workers, progress=progress, desc=desc)
    except NoImageLeftError:
        raise EvaluationInputError(
            f"{desc}: with modality setting {modality_mask!r} some rows have no image left (they lack the others); "
            "choose a setting that keeps a modality these rows have") from None
    return ExtractedFeatures(
        feature_sets={k[len("row:"):]: v for k, v in cat.items() if k.startswith("row:")},
        headline=headline,
        pids=cat["pids"].numpy(),
        camids=cat["camids"].numpy(),
        sceneids=cat["sceneids"].numpy(),
        expert_weights=cat.get("expert_weights"),
    )


# ----------------------------------------------------------------------------------------- metrics
def check_feature_names(feature_names, available: Sequence[str]) -> tuple[str, ...]:
    """The rows to rank: ``None`` = every row the model gives; otherwise names it gives (one-line error if not)."""
    if feature_names is None:
        return tuple(available)
    names = (feature_names,) if isinstance(feature_names, str) else tuple(feature_names)
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise EvaluationInputError(f"unknown feature set {unknown[0] if unknown else None!r}: this model gives "
                                   f"{', '.join(available)}")
    return names


def compute_retrieval_metrics(
    query: ExtractedFeatures,
    gallery: ExtractedFeatures,
    feature_names: Optional[Sequence[str]] = None,
    distance: str = "euclidean",
    rerank: bool = False,
    rerank_params: Optional[dict] = None,
    protocol: str = "auto",
    max_rank: int = 50,
) -> dict:
    """Pure function from extracted features to ``{feature_name: metrics}`` (percent, as the papers print).

    Each entry has mAP, Rank-1/5/10, mINP, the CMC curve, ``num_valid_queries`` and ``protocol``.
    ``feature_names=None`` ranks every row the model gives.
    """
    feature_names = check_feature_names(feature_names, query.available())
    if distance not in DISTANCE_METRICS:
        raise EvaluationInputError(f"unknown distance {distance!r}: use one of {', '.join(DISTANCE_METRICS)}")
    if protocol == "auto":
        protocol = choose_protocol(query.sceneids, gallery.sceneids)
    if protocol not in ("camera", "scene"):
        raise EvaluationInputError(f"protocol must be 'auto', 'camera' or 'scene', got {protocol!r}")
    ids = dict(q_pids=query.pids, g_pids=gallery.pids, q_camids=query.camids, g_camids=gallery.camids)
    if protocol == "scene":
        ids.update(q_sceneids=query.sceneids, g_sceneids=gallery.sceneids)
    results = {}
    for name in feature_names:
        qf, gf = query.get(name), gallery.get(name)
        try:
            if rerank:
                distmat = re_ranking(qf, gf, metric=distance, **(rerank_params or {}))
                res = reid_metrics(distmat, max_rank=max_rank, **ids)
            else:
                res = reid_metrics_from_features(qf, gf, metric=distance, max_rank=max_rank, **ids)
        except ValueError as exc:  # e.g. no query has a true match: nothing can be ranked
            raise EvaluationInputError(f"{len(query)} queries, {len(gallery)} gallery: {exc}") from None
        entry = summarize(res)
        entry.update(cmc=[100.0 * float(c) for c in res["cmc"]], num_valid_queries=int(res["num_valid_queries"]),
                     protocol=res["protocol"])
        results[name] = entry
    return results


def _broadcast(obj, accelerator):
    """Share the main process's result so every rank returns the same dict (the trainer may branch on it)."""
    if accelerator is None or accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def evaluate_retrieval(
    model,
    query_split,
    gallery_split,
    batch_size: int = 64,
    feature_names: Optional[Sequence[str]] = None,
    distance: str = "euclidean",
    rerank: bool = False,
    modality_mask=None,
    accelerator=None,
    progress: bool = True,
    rerank_params: Optional[dict] = None,
    max_rank: int = 50,
    tokenizer=None,
) -> tuple[dict, str]:
    """Extract query and gallery features; return ``({feature_name: metrics}, headline row name)`` (see
    :func:`compute_retrieval_metrics`; the headline row is the model's retrieval feature, ``outputs.embeddings``).

    Under several processes the metric is computed on the main process and broadcast.
    """
    query = extract_features(model, query_split, batch_size, modality_mask, accelerator, progress=progress,
                             desc="query", tokenizer=tokenizer)
    gallery = extract_features(model, gallery_split, batch_size, modality_mask, accelerator, progress=progress,
                               desc="gallery", tokenizer=tokenizer)
    result = None
    if accelerator is None or accelerator.is_main_process:
        result = compute_retrieval_metrics(query, gallery, feature_names, distance, rerank, rerank_params,
                                           max_rank=max_rank)
    return _broadcast(result, accelerator), query.headline


def missing_modality_sweep(
    model,
    query_split,
    gallery_split,
    batch_size: int = 64,
    feature_names: Optional[Sequence[str]] = None,
    settings: Sequence[str] = tuple(MISSING_SETTINGS),
    distance: str = "euclidean",
    rerank: bool = False,
    accelerator=None,
    progress: bool = True,
    rerank_params: Optional[dict] = None,
    tokenizer=None,
) -> dict:
    """Paper Tables 3-4: metrics with each setting's modalities missing in query and gallery.

    Returns ``{"settings": {setting: {feature: metrics}}, "average": {feature: {"mAP", "Rank-1"}} or None,
    "expert_weights": {setting: mean (7,) query expert weights}}``; the average is given only when all six
    settings were run, as in the paper.
    """
    out = {"settings": {}, "average": None, "expert_weights": {}}
    for setting in settings:
        mask = modality_mask_for(setting)
        q = extract_features(model, query_split, batch_size, mask, accelerator, progress=progress,
                             desc=f"query {setting}", tokenizer=tokenizer)
        g = extract_features(model, gallery_split, batch_size, mask, accelerator, progress=progress,
                             desc=f"gallery {setting}", tokenizer=tokenizer)
        if accelerator is None or accelerator.is_main_process:
            out["settings"][setting] = compute_retrieval_metrics(q, g, feature_names, distance, rerank, rerank_params)
            if q.expert_weights is not None:
                out["expert_weights"][setting] = q.expert_weights.mean(dim=(0, 1)).tolist()
    if set(out["settings"]) == set(MISSING_SETTINGS):
        names = next(iter(out["settings"].values())).keys()
        out["average"] = {
            n: {k: float(np.mean([out["settings"][s][n][k] for s in MISSING_SETTINGS])) for k in ("mAP", "Rank-1")}
            for n in names
        }
    return _broadcast(out, accelerator)


# ------------------------------------------------------------------------------------------ report
def _fmt(v) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "-"


def format_markdown(report: dict) -> str:
    """The report as Markdown tables (printed by eval.py and written next to the JSON)."""
    lines = [f"# Evaluation of `{report.get('model', '?')}`", ""]
    lines.append(
        f"Dataset `{report.get('dataset', '?')}`: {report.get('num_query', '?')} queries "
        f"({report.get('num_valid_queries', '?')} with a true match in the gallery, the ones ranked), "
        f"{report.get('num_gallery', '?')} gallery; {report.get('protocol', '?')} protocol; "
        f"{report.get('distance', 'euclidean')} distance{' + k-reciprocal re-ranking' if report.get('rerank') else ''}."
    )
    lines += ["", "## Retrieval (all modalities)", "", "| Features | mAP | Rank-1 | Rank-5 | Rank-10 | mINP |",
              "|---|---|---|---|---|---|"]
    for name, m in report["results"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in METRIC_KEYS) + " |")
    sweep = report.get("missing_sweep")
    if sweep and sweep["settings"]:
        settings = list(sweep["settings"])
        cols = [MISSING_LABELS[s] for s in settings] + (["Average"] if sweep.get("average") else [])
        lines += ["", "## Missing modalities (paper Tables 3-4: the listed modalities are missing in query and gallery)", "",
                  "| Features | " + " | ".join(f"{c} mAP | {c} R-1" for c in cols) + " |",
                  "|---|" + "---|" * (2 * len(cols))]
        for name in next(iter(sweep["settings"].values())):
            cells = []
            for s in settings:
                cells += [_fmt(sweep["settings"][s][name]["mAP"]), _fmt(sweep["settings"][s][name]["Rank-1"])]
            if sweep.get("average"):
                cells += [_fmt(sweep["average"][name]["mAP"]), _fmt(sweep["average"][name]["Rank-1"])]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cx = report.get("complexity")
    if cx:
        text = f" (with three {cx['caption_length']}-token captions)" if cx.get("caption_length") else ""
        lines += ["", "## Complexity (paper Table 5)", "", f"| Params (M) | MACs per triple{text} (G) |", "|---|---|",
                  f"| {cx['params'] / 1e6:.2f} | {cx['macs'] / 1e9:.3f} |"]
    if report.get("figures"):
        lines += ["", "## Figures", ""] + [f"- `{f}`" for f in report["figures"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict, output_dir: str | Path, stem: str = "eval_results") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``output_dir``; returns both paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / f"{stem}.json", output_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(format_markdown(report))
    return json_path, md_path

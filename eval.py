"""Evaluate a saved ReID model (DeMo, NEXT or any model with remote code) on the query/gallery splits of a dataset built by data_scripts/build_dataset.py.

    python eval.py --model outputs/demo-synthetic --dataset outputs/synthetic-rgbnt201
    python eval.py --model DIR --dataset PATH --missing-sweep --visualize --output eval_out
    torchrun --nproc_per_node 2 eval.py --model DIR --dataset PATH      # several processes

The model type is read from the checkpoint. Prints and writes (JSON + Markdown) mAP, Rank-1/5/10 and mINP per
feature row the model names (DeMo: ori, moe, all; NEXT: cls, semantic, structure, final, all),
the missing-modality table of paper Tables 3-4, and parameters / MACs per triple (Table 5).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmreid.errors import UsageError, run_cli
from mmreid.machine import describe_cpu
from mmreid.output_paths import check_output_dir

# The rank-list picture has one row per query: 64 rows of 96 px cells stay a readable page (about 6,200 px high).
MAX_VISUALIZED_QUERIES = 64

def parse_args(argv=None) -> argparse.Namespace:
    from mmreid.data.missing import FILL_HELP, FILL_MODES
    from mmreid.evaluation.protocol import MISSING_SETTINGS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="directory written by save_pretrained (train.py --output-dir)")
    parser.add_argument("--dataset", required=True,
                        help="DatasetDict with query and gallery splits: a folder saved with save_to_disk, or a Hub "
                             "dataset id (build_dataset.py --push-to-hub)")
    parser.add_argument("--dataset-revision", default=None,
                        help="branch, tag or commit of a Hub --dataset (default: its main branch)")
    parser.add_argument("--features", default=None,
                        help="one feature row the model names (DeMo: ori, moe, all; NEXT: cls, semantic, structure, "
                             "final, all); unset: every row")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--missing", default=None,
                       help=f"comma-separated missing-modality settings among {','.join(MISSING_SETTINGS)} "
                            "(modalities missing in query and gallery)")
    group.add_argument("--missing-sweep", action="store_true", help="all six settings and their average (paper Tables 3-4)")
    parser.add_argument("--fill-missing-modalities", choices=FILL_MODES, default=None,
                        help=f"{FILL_HELP} Default: the checkpoint's setting (none when it has none).")
    parser.add_argument("--distance", choices=("euclidean", "cosine"), default="euclidean",
                        help="euclidean on L2-normalised features (the original's default) or cosine")
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    parser.add_argument("--rerank-k1", type=int, default=50)
    parser.add_argument("--rerank-k2", type=int, default=15)
    parser.add_argument("--rerank-lambda", type=float, default=0.3)
    parser.add_argument("--max-rank", type=int, default=50, help="length of the CMC curve in the JSON")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--output", default=None, help="output directory (default: <model>/eval)")
    parser.add_argument("--visualize", action="store_true",
                        help="write rank-list, expert-weight and feature-map PNGs (t-SNE; PCA without scikit-learn)")
    parser.add_argument("--num-visualize", type=int, default=4,
                        help=f"queries shown in the rank-list picture (1 to {MAX_VISUALIZED_QUERIES})")
    parser.add_argument("--no-complexity", action="store_true", help="skip the parameter / MAC count")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.missing is not None:
        settings = [s.strip().lower() for s in args.missing.split(",") if s.strip()]
        bad = [s for s in settings if s not in MISSING_SETTINGS]
        if bad or not settings:
            raise UsageError(f"--missing {args.missing!r}: each setting must be one of {', '.join(MISSING_SETTINGS)} "
                             "(e.g. --missing r,nt), or use --missing-sweep for all six")
        args.missing = list(dict.fromkeys(settings))
    elif args.missing_sweep:
        args.missing = list(MISSING_SETTINGS)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 1 <= args.num_visualize <= MAX_VISUALIZED_QUERIES:
        raise UsageError(f"--num-visualize {args.num_visualize}: expected 1 to {MAX_VISUALIZED_QUERIES} queries (one "
                         "row each in the rank-list picture)")
    # before the feature extraction: the report's folder must be a writable folder
    check_output_dir(args.output if args.output else Path(args.model).expanduser() / "eval", "--output")
    return args


def load_dataset(path: str, revision: str | None = None):
    """The query and gallery splits of ``--dataset``: a local folder, or a Hub dataset id at ``revision``."""
    from mmreid.data.loading import open_reid_dataset

    try:
        return open_reid_dataset(path, splits=("query", "gallery"), revision=revision)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(f"--dataset: {exc}; eval.py needs query and gallery splits as written by "
                         "data_scripts/build_dataset.py") from None
    except IndexError:  # datasets cannot reload a split saved with 0 rows (it has no data file)
        empty = [s for s in ("query", "gallery") if _has_no_data_files(Path(path).expanduser() / s)]
        raise UsageError(f"the {' and '.join(empty) or 'query or gallery'} split is empty in --dataset {path}: "
                         "rebuild the dataset with data_scripts/build_dataset.py or pass another --dataset") from None


def _has_no_data_files(split_dir: Path) -> bool:
    try:
        return not json.loads((split_dir / "state.json").read_text()).get("_data_files")
    except (OSError, ValueError):
        return False


def expert_names_of(model) -> tuple[str, ...]:
    """The model's names for its expert weights (`model.expert_names`, else its module's EXPERT_NAMES)."""
    from mmreid.evaluation.visualize import DEFAULT_EXPERT_NAMES

    names = getattr(model, "expert_names", None)
    if names is None:
        names = getattr(sys.modules.get(type(model).__module__), "EXPERT_NAMES", DEFAULT_EXPERT_NAMES)
    return tuple(names)


def complexity_of(model, caption_length: int | None = None) -> dict:
    """Trainable parameters and MACs per triple; with ``caption_length`` (an evaluation that reads captions) the
    MACs include the text tower on three captions of that length, the longest the tokenizer makes."""
    from mmreid.evaluation.complexity import count_macs, count_trainable_parameters

    return {"params": int(count_trainable_parameters(model)), "macs": int(count_macs(model, None, caption_length)),
            "image_size": list(model.config.image_size), "caption_length": caption_length}


def write_figures(args, model, dsdict, query, gallery, sweep, out_dir: Path, feature_name: str,
                  tokenizer=None) -> list[str]:
    """Rank lists, expert weights (per query and per missing setting) and the t-SNE (or PCA) feature map."""
    import torch

    from mmreid.evaluation.protocol import MISSING_LABELS, MISSING_SETTINGS, choose_protocol, extract_features
    from mmreid.evaluation.visualize import (choose_embedding_method, plot_expert_weights, plot_expert_weights_by_setting,
                                     plot_feature_scatter, rank_list_for_queries, write_rank_lists)

    scene = choose_protocol(query.sceneids, gallery.sceneids) == "scene"
    q_groups, g_groups = (query.sceneids, gallery.sceneids) if scene else (query.camids, gallery.camids)
    chosen, ranked, correct = rank_list_for_queries(
        query.get(feature_name), gallery.get(feature_name), query.pids, gallery.pids, q_groups, g_groups,
        num_queries=args.num_visualize, distance=args.distance)
    height, width = model.config.image_size
    cell = (96, max(24, round(96 * width / height)))
    paths = [write_rank_lists(dsdict["query"], dsdict["gallery"], chosen, ranked, correct, out_dir / "rank_lists.png", cell)]

    names = expert_names_of(model)
    if query.expert_weights is not None and len(names) != query.expert_weights.shape[-1]:
        names = tuple(f"expert {i + 1}" for i in range(query.expert_weights.shape[-1]))
    if query.expert_weights is not None:
        n = min(len(query), 24)
        labels = [f"{i}:{query.pids[i]}" for i in range(n)]
        paths.append(plot_expert_weights(query.expert_weights[:n], out_dir / "expert_weights.png", labels, names,
                                         xlabel="query (index:pid)"))
        by_setting = {"Full": query.expert_weights.mean(dim=(0, 1)).tolist()}
        done = (sweep or {}).get("expert_weights", {})
        from mmreid.data.missing import FILL_CONFIG_KEY, rows_left_without_image

        fill = getattr(model.config, FILL_CONFIG_KEY, None)
        for s in MISSING_SETTINGS:
            if rows_left_without_image(dsdict["query"], MISSING_SETTINGS[s], fill):
                continue  # the setting leaves query rows that lack the other modalities without any image
            if s not in done:  # only the query split is needed for the weights
                q = extract_features(model, dsdict["query"], args.batch_size, s, progress=not args.no_progress,
                                     desc=f"query {s} (weights)", tokenizer=tokenizer)
                done = dict(done, **{s: q.expert_weights.mean(dim=(0, 1)).tolist()})
            by_setting[MISSING_LABELS[s]] = done[s]
        paths.append(plot_expert_weights_by_setting(
            by_setting, out_dir / "expert_weights_missing.png", names,
            xlabel="Full = all modalities; M (X) = modality X missing in query and gallery"))
    if list(dsdict["query"]["name"]) == list(dsdict["gallery"]["name"]):  # RGBNT201: query and gallery are one set
        feats, pids, is_query = gallery.get(feature_name), list(gallery.pids), None
    else:
        feats = torch.cat([query.get(feature_name), gallery.get(feature_name)])
        pids = list(query.pids) + list(gallery.pids)
        is_query = [True] * len(query) + [False] * len(gallery)
    method = choose_embedding_method()  # t-SNE with scikit-learn, else PCA (logged); the file is named after it
    paths.append(plot_feature_scatter(feats, pids, out_dir / f"feature_{method}.png", is_query,
                                      subject=f"'{feature_name}' retrieval features", method=method))
    return [str(p) for p in paths]


def use_fill_mode(args, model, dsdict) -> str:
    """What missing images become (--fill-missing-modalities, else the checkpoint's setting), set on the model's
    config for the collator; the data's missing modalities are said once, and a --missing setting that would leave
    a row without any image is refused before any feature is extracted."""
    from mmreid.data.missing import FILL_CONFIG_KEY, announce_missing, handling_note, rows_left_without_image
    from mmreid.evaluation.protocol import MISSING_SETTINGS

    fill = args.fill_missing_modalities or getattr(model.config, FILL_CONFIG_KEY, None) or "none"
    setattr(model.config, FILL_CONFIG_KEY, fill)
    splits = {s: dsdict[s] for s in ("query", "gallery")}
    try:
        announce_missing(splits, f"--dataset {args.dataset}", handling_note(fill), fill)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for setting in args.missing or ():
        empty = sum(rows_left_without_image(x, MISSING_SETTINGS[setting], fill) for x in splits.values())
        if empty:
            raise UsageError(f"--missing {setting}: {empty} query / gallery row(s) would have no image left (they lack "
                             "the modalities this setting keeps); choose settings that keep a modality every row has")
    return fill


def run(args) -> dict:
    from mmreid.training.distributed import inference_accelerator
    from mmreid.evaluation.protocol import (EvaluationInputError, check_split, choose_protocol, compute_retrieval_metrics,
                                      extract_features, format_markdown, missing_modality_sweep, write_report)

    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from mmreid.hub.loading import load_checkpoint, load_checkpoint_tokenizer

    accelerator = inference_accelerator()
    dsdict = load_dataset(args.dataset, args.dataset_revision)  # cheap checks first
    model = load_checkpoint(args.model)
    for split in ("query", "gallery"):
        check_split(dsdict[split], split, model.config.num_cameras)
    fill = use_fill_mode(args, model, dsdict)
    tokenizer = load_checkpoint_tokenizer(args.model, model)
    captions = caption_use(tokenizer, dsdict)
    if captions == CAPTIONS_ABSENT and accelerator.is_main_process:
        print(f"eval.py: note: {args.dataset} has no captions; the {model.config.model_type} model reads captions, so "
              "it is evaluated without text (its no-caption embeddings); build the dataset with --captions to use "
              "them", file=sys.stderr)
    model.to(accelerator.device).eval()
    feature_names = (args.features,) if args.features else None  # None: every row the model names
    rerank_params = dict(k1=args.rerank_k1, k2=args.rerank_k2, lambda_value=args.rerank_lambda)
    progress = not args.no_progress

    query = extract_features(model, dsdict["query"], args.batch_size, None, accelerator, num_workers=args.num_workers,
                             progress=progress, desc="query", tokenizer=tokenizer)
    gallery = extract_features(model, dsdict["gallery"], args.batch_size, None, accelerator,
                               num_workers=args.num_workers, progress=progress, desc="gallery", tokenizer=tokenizer)
    if args.features and args.features not in query.available():
        raise EvaluationInputError(f"--features {args.features}: this model names the rows "
                                   f"{', '.join(query.available())}")
    sweep = None
    if args.missing:
        sweep = missing_modality_sweep(model, dsdict["query"], dsdict["gallery"], args.batch_size, feature_names,
                                       args.missing, args.distance, args.rerank, accelerator, progress, rerank_params,
                                       tokenizer=tokenizer)
    if not accelerator.is_main_process:
        return {}

    results = compute_retrieval_metrics(query, gallery, feature_names, args.distance, args.rerank, rerank_params,
                                        max_rank=args.max_rank)
    out_dir = Path(args.output) if args.output else Path(args.model) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "model": str(args.model),
        "dataset": str(args.dataset),
        "num_query": len(query),
        # queries without a true match in the gallery (outside their own camera / scene) are not ranked
        "num_valid_queries": results[args.features or query.headline]["num_valid_queries"],
        "num_gallery": len(gallery),
        "protocol": choose_protocol(query.sceneids, gallery.sceneids),
        "distance": args.distance,
        "rerank": rerank_params if args.rerank else False,
        "model_type": model.config.model_type,
        "headline_features": query.headline,
        "captions": captions,
        "num_processes": accelerator.num_processes,
        "fill_missing_modalities": fill,
        "cpu": describe_cpu(),  # the instruction sets decide the float rounding, so the exact figures depend on them
        "results": results,
        "missing_sweep": sweep,
        "complexity": None if args.no_complexity else complexity_of(
            accelerator.unwrap_model(model), tokenizer.model_max_length if captions == CAPTIONS_USED else None),
    }
    if args.visualize:
        shown = args.features or query.headline
        report["figures"] = write_figures(args, model, dsdict, query, gallery, sweep, out_dir, shown, tokenizer)
    json_path, md_path = write_report(report, out_dir)
    print(format_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return report


# What the report's "captions" says: the model read the dataset's captions, the model reads captions but the dataset
# has none (evaluated without text), or the model reads no captions.
CAPTIONS_USED, CAPTIONS_ABSENT, CAPTIONS_NOT_READ = "used", "absent from the dataset: evaluated without text", None


def caption_use(tokenizer, dsdict) -> str | None:
    """Whether the evaluation reads captions: a model that reads them (it has a tokenizer) and a dataset whose query
    and gallery splits hold the caption columns (the rule of ``extract_features``)."""
    from mmreid.data.collate import CAPTION_COLUMNS

    if tokenizer is None:
        return CAPTIONS_NOT_READ
    present = all(c in dsdict[split].column_names for split in ("query", "gallery") for c in CAPTION_COLUMNS)
    return CAPTIONS_USED if present else CAPTIONS_ABSENT


def main(argv=None) -> int:
    from mmreid.evaluation.protocol import EvaluationInputError

    return run_cli(lambda: run(parse_args(argv)), "eval.py", errors=(EvaluationInputError,))


if __name__ == "__main__":
    sys.exit(main())

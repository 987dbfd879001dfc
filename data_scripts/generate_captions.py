#!/usr/bin/env python
"""Caption a multi-modal ReID dataset with the NEXT pipeline: attributes with confidence from
vision-language models, merged across modalities and models, written into fixed templates.

    python data_scripts/generate_captions.py --dataset /data/RGBNT201 --backend openai \
        --endpoint http://localhost:8000/v1 --model Qwen/Qwen2.5-VL-7B-Instruct --output captions/201
    python data_scripts/generate_captions.py --dataset /data/RGBNT201 --backend transformers \
        --model /models/Qwen2.5-VL-3B-Instruct --output captions/201
    python data_scripts/generate_captions.py --stats-only /data/next_captions/201

--dataset is the raw release folder (or its parent), as for build_dataset.py: caption items are
the image file names, exactly as in the released caption files.  The output folder holds
{train,test}_{RGB,NI,TI}.json; rerunning the same command skips the items already captioned.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mmreid.captioning.backends import BACKENDS, BackendError, make_backend
from mmreid.captioning.items import find_layout, list_items
from mmreid.captioning.merge import DEFAULT_MIN_CONFIDENCE
from mmreid.captioning.pipeline import CaptionRun, RunSummary
from mmreid.captioning.render import TEMPLATE_VERSION
from mmreid.captioning.schema import KINDS
from mmreid.captioning.stats import CAPTION_SPLITS, folder_stats, format_stats, stats_to_json
from mmreid.captioning.store import check_manifest
from mmreid.data.builder import LAYOUTS, DatasetLayoutError
from mmreid.errors import RunFailed, UsageError, run_cli
from mmreid.output_paths import check_output_dir

KEPT = "the captions saved so far are kept; rerun the same command to continue"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path,
                   help="raw release folder (RGBNT201/, MSVR310/, ...) or the folder holding it")
    p.add_argument("--name", choices=sorted(LAYOUTS) + ["MSVWild863"], help="dataset layout (default: recognised)")
    p.add_argument("--backend", choices=BACKENDS, help="transformers (local model folder) or openai (chat endpoint)")
    p.add_argument("--model", action="append", default=[], metavar="NAME_OR_PATH",
                   help="vision-language model; repeat to merge several models by confidence")
    p.add_argument("--output", type=Path, help="caption folder to write (or resume)")
    p.add_argument("--kind", choices=KINDS, help="attribute schema (default: person for RGBNT201, else vehicle)")
    p.add_argument("--splits", nargs="+", choices=CAPTION_SPLITS, default=list(CAPTION_SPLITS),
                   help="caption splits to do (test = query + gallery)")
    p.add_argument("--limit", type=int, default=None, help="caption only the first N items of each split")
    p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE,
                   help="answers below this confidence are ignored when merging (default %(default)s)")
    p.add_argument("--rewrite-model", default=None, metavar="NAME_OR_PATH",
                   help="text LLM that rewrites the template into prose; the template is kept when it drops "
                        "or invents attributes")
    p.add_argument("--save-every", type=int, default=32, help="items per saved chunk (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit (default %(default)s)")
    p.add_argument("--skip-incomplete", action="store_true", help="skip triples with a modality file missing")
    g = p.add_argument_group("openai backend")
    g.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default %(default)s; unset = no key)")
    g.add_argument("--concurrency", type=int, default=4, help="parallel requests (default %(default)s)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    g.add_argument("--retries", type=int, default=3, help="retries per request (default %(default)s)")
    g.add_argument("--backoff", type=float, default=1.0,
                   help="first retry delay in seconds, doubled at each retry (default %(default)s)")
    g = p.add_argument_group("transformers backend")
    g.add_argument("--batch-size", type=int, default=8, help="images per generate call (default %(default)s)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g = p.add_argument_group("statistics")
    g.add_argument("--stats-only", type=Path, metavar="CAPTION_DIR",
                   help="print the statistics of an existing caption folder and exit")
    g.add_argument("--json", action="store_true", help="with --stats-only: print JSON instead of a table")
    return p.parse_args(argv)


def _check(args: argparse.Namespace) -> None:
    """Argument checks argparse cannot express, before any request is sent."""
    for flag in ("dataset", "backend", "output"):
        if getattr(args, flag) is None:
            raise UsageError(f"--{flag} is required (or use --stats-only CAPTION_DIR)")
    if not args.model:
        raise UsageError("--model is required; repeat it to merge several models")
    if len(set(args.model)) != len(args.model):
        raise UsageError(f"--model: the same model is named twice ({', '.join(args.model)})")
    if args.backend == "openai" and not args.endpoint:
        raise UsageError("--endpoint URL is required with --backend openai, e.g. http://localhost:8000/v1")
    if args.backend == "transformers" and args.endpoint:
        raise UsageError("--endpoint is only used with --backend openai")
    if not 0.0 <= args.min_confidence <= 1.0:
        raise UsageError(f"--min-confidence {args.min_confidence}: expected a number from 0 to 1")
    for flag in ("concurrency", "batch_size", "save_every", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected at least 1")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected at least 1")
    if args.timeout <= 0 or args.retries < 0 or args.backoff < 0:
        raise UsageError("--timeout must be > 0, --retries and --backoff >= 0")
    if args.backend == "transformers":
        for model in args.model + ([args.rewrite_model] if args.rewrite_model else []):
            looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
            if not Path(model).expanduser().is_dir() and not looks_like_hub_id:
                raise UsageError(f"--model {model}: no such model folder (expected a local transformers model)")
    check_output_dir(args.output, "--output")  # before any request is sent


def _summary_lines(summary: RunSummary, splits) -> list[str]:
    per = lambda c: ", ".join(f"{s} {c[s]}" for s in splits)  # noqa: E731
    lines = [f"this run: {summary.total_new} new item(s) ({per(summary.new)}), "
             f"{sum(summary.skipped.values())} already captioned, {sum(summary.failed.values())} failed; "
             f"{summary.requests} request(s)"]
    if summary.rewrites_kept or summary.rewrites_rejected:
        lines.append(f"rewrites: {summary.rewrites_kept} kept, {summary.rewrites_rejected} replaced by the template")
    if summary.total_new:
        top = summary.unknown_attributes.most_common(6)
        if top:
            lines.append("attributes most often unknown in this run: " + ", ".join(
                f"{name} {100.0 * n / summary.total_new:.1f}%" for name, n in top))
    return lines


def _stats_only(folder: Path, as_json: bool) -> None:
    stats = folder_stats(folder)
    print(json.dumps(stats_to_json(stats), indent=2) if as_json else format_stats(stats, title=str(folder)))


def run(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.stats_only is not None:
            return _stats_only(args.stats_only, args.json)
        _check(args)
        layout, base = find_layout(args.dataset, args.name)
        kind = args.kind or layout.kind
        output = args.output.expanduser().absolute()
        settings = {"dataset_layout": layout.name, "kind": kind, "backend": args.backend, "models": args.model,
                    "rewrite_model": args.rewrite_model, "min_confidence": args.min_confidence,
                    "template_version": TEMPLATE_VERSION}
        check_manifest(output, settings)
        items = list_items(layout, base, args.splits, args.skip_incomplete)
        if args.limit:
            items = {s: t[: args.limit] for s, t in items.items()}
        backend = make_backend(args.backend, endpoint=args.endpoint, api_key_env=args.api_key_env,
                               concurrency=args.concurrency, timeout=args.timeout, retries=args.retries,
                               backoff=args.backoff, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, device=args.device)
    except (DatasetLayoutError, ValueError, FileExistsError) as exc:  # the dataset, the caption folder, the URL
        raise UsageError(str(exc)) from None

    total = sum(len(t) for t in items.values())
    logging.info("captioning %d item(s) of %s (%s) with %s model(s) %s into %s", total, layout.name, kind,
                 args.backend, ", ".join(args.model), output)
    run = CaptionRun(backend, kind, args.model, min_confidence=args.min_confidence,
                     rewrite_model=args.rewrite_model, save_every=args.save_every)
    try:
        summary = run.run(items, output, manifest=settings)
    except (BackendError, DatasetLayoutError) as exc:  # an endpoint that stops answering, an unreadable image
        raise UsageError(f"{exc}; {KEPT}") from None
    finally:
        backend.close()

    for line in _summary_lines(summary, args.splits):
        print(line)
    if output.is_dir() and any(output.glob("*_*.json")):
        print(format_stats(folder_stats(output), title=str(output)))
    failed = sum(summary.failed.values())
    if failed:
        raise RunFailed(f"{failed} item(s) got no answer after {args.retries} retries; rerun the same command to "
                        "caption them")


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: run(args), "generate_captions.py", interrupted=KEPT)


if __name__ == "__main__":
    sys.exit(main())

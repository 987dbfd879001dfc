#!/usr/bin/env python
"""Embed a collection with a trained checkpoint into a datasets.Dataset (metadata + L2-normalised embedding), and
optionally build its FAISS gallery index beside it.

    python data_scripts/embed.py --model outputs/demo-synthetic --dataset outputs/synthetic-rgbnt201 \
        --split gallery --output outputs/gallery-synthetic --index exact
    python data_scripts/embed.py --model CKPT --dataset /data/RGBNT201 --split gallery --output DIR   # image folder
    torchrun --nproc_per_node 2 data_scripts/embed.py --model CKPT --dataset DATA --output DIR   # N processes

--dataset is a folder saved by build_dataset.py, a Hub dataset id, or a folder of image triples in a release layout
(a release root or one split folder; file names that do not parse get pid/camid -1). Every process embeds its
shard; rank 0 writes everything into a hidden folder renamed to --output at the end, so a killed run leaves
nothing at --output. Bad input is one line naming the argument, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from demo_reid.errors import UsageError, first_line, run_cli
from demo_reid.retrieval.index import INDEX_KINDS, NPROBE_SHARE, IndexSpec


def parse_args(argv=None) -> argparse.Namespace:
    defaults = IndexSpec()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True,
                   help="checkpoint folder written by save_pretrained (train.py --output-dir)")
    p.add_argument("--dataset", required=True,
                   help="saved DatasetDict, Hub dataset id, or folder of image triples in a release layout")
    p.add_argument("--split", default="gallery", help="split to embed (default: gallery)")
    p.add_argument("--layout", default=None, help="release layout of an image folder (RGBNT201, RGBNT100, MSVR310, "
                                                 "WMVEID863) when it cannot be told from the sub-folders")
    p.add_argument("--dataset-revision", default=None, help="branch, tag or commit of a Hub --dataset")
    p.add_argument("--output", required=True, type=Path, help="folder to write (save_to_disk + retrieval.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--index", choices=("none", *INDEX_KINDS), default="none",
                   help="also build this FAISS index into --output: exact (flat, eval.py's ranking), ivf, or ivfpq "
                        "(PCA + IVF + PQ + re-scoring, for large galleries)")
    p.add_argument("--nlist", type=int, default=None, help="ivf / ivfpq: k-means cells (default about 4 sqrt(rows))")
    p.add_argument("--nprobe", type=int, default=None, help=f"ivf / ivfpq: cells visited per query (default "
                   f"{NPROBE_SHARE:.0%}% of --nlist; saved as the default, search.py --nprobe overrides)")
    p.add_argument("--pca-dim", type=int, default=None, help="ivfpq: PCA output size (default min(256, dim))")
    p.add_argument("--pq-m", type=int, default=None, help="ivfpq: code bytes per row (default pca-dim / 4)")
    p.add_argument("--refine", type=int, default=defaults.refine,
                   help="ivfpq: re-score refine x k candidates on stored 4-bit embeddings (0: off)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                   help="also push the embeddings to this dataset repo, as its --split split (the FAISS "
                        "index stays in --output)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    for name in ("nlist", "nprobe", "pca_dim", "pq_m"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.refine < 0:
        raise UsageError(f"--refine must be >= 0, got {args.refine}")
    args.output = args.output.expanduser().absolute()
    if args.output.exists() and not args.overwrite:
        raise UsageError(f"--output {args.output} already exists (pass --overwrite to replace it)")
    return args


def run(args) -> Path | None:
    from demo_reid.retrieval.embed import embed_to_folder

    if args.no_progress:
        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    spec = None
    if args.index != "none":
        spec = IndexSpec(kind=args.index, nlist=args.nlist, nprobe=args.nprobe, pca_dim=args.pca_dim, pq_m=args.pq_m,
                         refine=args.refine)
    result = embed_to_folder(args.model, args.dataset, args.output, split=args.split, layout=args.layout,
                             revision=args.dataset_revision, index_spec=spec, batch_size=args.batch_size,
                             overwrite=args.overwrite, progress=not args.no_progress)
    if result is None:  # not rank 0
        return None
    output, dataset, manifest = result
    chain = f", {manifest['index_chain']} index" if spec is not None else ""
    print(f"wrote {len(dataset)} embeddings ({manifest['dim']}-d{chain}) to {output}")
    if args.push_to_hub:
        try:
            dataset.push_to_hub(args.push_to_hub, split=args.split, private=args.private)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--push-to-hub {args.push_to_hub}: {first_line(exc, 200)} (the embeddings are saved "
                             f"in {output})") from None
    return output


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_args(argv)), "embed.py")


if __name__ == "__main__":
    sys.exit(main())

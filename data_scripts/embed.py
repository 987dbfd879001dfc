#!/usr/bin/env python
"""Embed a collection with a trained checkpoint into a gallery: a FAISS folder (datasets Arrow files + a FAISS
index; the default, one machine) or a Milvus collection (a Milvus Lite .db file, or a Milvus server by URI).

    python data_scripts/embed.py --model outputs/demo-synthetic --dataset outputs/synthetic-rgbnt201 \
        --split gallery --output outputs/gallery-synthetic --index exact
    python data_scripts/embed.py --model CKPT --dataset /data/RGBNT201 --split gallery --output DIR   # image folder
    python data_scripts/embed.py --model CKPT --dataset DATA --output gallery.db --index hnsw   # Milvus Lite
    MILVUS_TOKEN=... python data_scripts/embed.py --model CKPT --dataset DATA --output http://host:19530 \
        --collection city --index ivfpq   # a Milvus server (token from $MILVUS_TOKEN)
    python data_scripts/embed.py --model CKPT --dataset NEW_TRIPLES --output DIR_OR_DB --append   # add new rows
    torchrun --nproc_per_node 2 data_scripts/embed.py --model CKPT --dataset DATA --output DIR   # N processes

--dataset is a folder saved by build_dataset.py, a Hub dataset id, or a folder of image triples in a release layout
(a release root or one split folder; file names that do not parse get pid/camid -1). --append embeds only rows
whose name the gallery lacks (a rerun after a killed append completes it). Every process embeds its shard; rank 0
writes: a FAISS folder is replaced as a whole (a killed run leaves it as it was), Milvus takes whole rows per
insert. Bad input is one line naming the argument, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmreid.errors import UsageError, first_line, run_cli
from mmreid.retrieval.index import INDEX_KINDS, NPROBE_SHARE, SPEC_OPTIONS, IndexSpec
from mmreid.retrieval.milvus_store import MILVUS_INDEX_KINDS, SCANN_NPROBE_SHARE, SCANN_REFINE, check_index_options
from mmreid.retrieval.store import store_kind


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
    p.add_argument("--output", required=True,
                   help="the gallery: a folder (FAISS), a Milvus Lite file ending in .db, or a Milvus server URI "
                        "(http://host:19530; token from $MILVUS_TOKEN)")
    p.add_argument("--store", choices=("faiss", "milvus"), default=None,
                   help="the gallery store (default: told by --output's form; given, it must match it)")
    p.add_argument("--collection", default=None, help="Milvus: the collection (default: gallery)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output (or collection)")
    p.add_argument("--append", action="store_true",
                   help="add the rows the existing gallery lacks (by name), with the model that embedded it")
    p.add_argument("--retrain", action="store_true",
                   help="with --append to a FAISS ivf / ivfpq folder: train the index again on all rows (pays once "
                        "the gallery has grown several times past the rows it was trained on; docs/retrieval.md)")
    p.add_argument("--index", choices=("none", *dict.fromkeys((*INDEX_KINDS, *MILVUS_INDEX_KINDS))), default=None,
                   help="the index: exact (eval.py's ranking), ivf, ivfpq (FAISS: PCA + IVF + PQ + re-scoring; "
                        "Milvus: IVF_PQ, servers only), hnsw, scann (Milvus only; scann: servers only); FAISS "
                        "default none (embeddings only), Milvus default exact (FLAT)")
    p.add_argument("--nlist", type=int, default=None, help="ivf / ivfpq / scann: k-means cells (default about 4 "
                   "sqrt(rows); Milvus: rows of one segment)")
    p.add_argument("--nprobe", type=int, default=None, help=f"ivf / ivfpq / scann: cells visited per query (default "
                   f"{NPROBE_SHARE:.0%}% of --nlist, Milvus scann {SCANN_NPROBE_SHARE:.0%}%; saved as the default, "
                   "search.py --nprobe overrides)")
    p.add_argument("--pca-dim", type=int, default=None, help="FAISS ivfpq: PCA output size (default min(256, dim))")
    p.add_argument("--pq-m", type=int, default=None, help="ivfpq: code bytes per row (default FAISS pca-dim / 4, "
                   "Milvus 64)")
    p.add_argument("--refine", type=int, default=None, help=f"FAISS ivfpq / Milvus scann: re-score refine x k "
                   f"candidates (default FAISS {defaults.refine}, Milvus {SCANN_REFINE}; FAISS: on stored 4-bit "
                   "embeddings, 0: off; saved as the default, search.py --refine overrides)")
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
    if args.refine is not None and args.refine < 0:
        raise UsageError(f"--refine must be >= 0, got {args.refine}")
    kind = store_kind(args.output)
    if args.store is not None and args.store != kind:
        raise UsageError(f"--store {args.store}: --output {args.output} is a {kind} gallery (a Milvus gallery is a "
                         ".db file or an http(s):// URI, a FAISS gallery a folder)")
    args.store = kind
    if kind == "faiss":
        args.output = str(Path(args.output).expanduser().absolute())
        if args.index not in (None, "none", *INDEX_KINDS):
            raise UsageError(f"--index {args.index} is a Milvus index; a FAISS folder takes exact, ivf or ivfpq")
        if args.collection is not None:
            raise UsageError(f"--collection {args.collection}: a FAISS folder holds one gallery; --collection is for "
                             "Milvus (a .db file or a server URI)")
        if Path(args.output).exists() and not (args.overwrite or args.append):
            raise UsageError(f"--output {args.output} already exists (pass --overwrite to replace it, --append to "
                             "add to it)")
        if args.append and not Path(args.output).exists():
            raise UsageError(f"--append: --output {args.output} does not exist; embed without --append first")
    elif args.retrain:
        raise UsageError("--retrain is for FAISS ivf / ivfpq folders: Milvus builds the index of each sealed segment "
                         "itself as rows arrive")
    elif args.push_to_hub:
        raise UsageError("--push-to-hub pushes a FAISS folder's embeddings Dataset; a Milvus gallery stays in Milvus")
    elif args.index == "none":
        raise UsageError(f"--index none: a Milvus collection always has an index ({', '.join(MILVUS_INDEX_KINDS)})")
    if args.append and args.overwrite:
        raise UsageError("--append adds to the gallery, --overwrite replaces it: give one")
    if args.append and args.index is not None:
        raise UsageError(f"--index {args.index}: an append keeps the gallery's index (--retrain trains it again)")
    if args.retrain and not args.append:
        raise UsageError("--retrain retrains the index of an existing gallery: use it with --append")
    check_index_settings(args)
    return args


def check_index_settings(args) -> None:
    """--nlist, --nprobe, --pca-dim, --pq-m and --refine set up a new index of a kind that uses them."""
    given = {name: getattr(args, name) for name in SPEC_OPTIONS if getattr(args, name) is not None}
    if not given:
        return
    flag = "--" + next(iter(given)).replace("_", "-")
    if args.append:
        raise UsageError(f"{flag}: an append keeps the gallery's index and its saved settings (search.py takes "
                         "--nprobe and --refine per query)")
    if args.store == "milvus":
        check_index_options(args.index or "exact", {("m" if k == "pq_m" else k): v for k, v in given.items()})
        return
    for name in given:
        if (args.index or "none") not in SPEC_OPTIONS[name]:
            raise UsageError(f"--{name.replace('_', '-')} is for a FAISS {' / '.join(SPEC_OPTIONS[name])} index, "
                             f"not --index {args.index or 'none'}")


def run(args):
    from mmreid.retrieval.embed import embed_into_gallery

    if args.no_progress:
        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    spec = None
    if args.store == "faiss" and args.index not in (None, "none"):
        spec = IndexSpec(kind=args.index, **{name: getattr(args, name) for name in SPEC_OPTIONS
                                             if getattr(args, name) is not None})
    result = embed_into_gallery(args.model, args.dataset, args.output, split=args.split, layout=args.layout,
                                revision=args.dataset_revision, index_spec=spec,
                                index_kind=args.index if args.store == "milvus" else None,
                                index_options={"nlist": args.nlist, "m": args.pq_m, "nprobe": args.nprobe,
                                               "refine": args.refine} if args.store == "milvus" else None,
                                collection=args.collection, append=args.append, retrain=args.retrain,
                                overwrite=args.overwrite, batch_size=args.batch_size, progress=not args.no_progress)
    if result is None:  # not rank 0
        return None
    store, added = result
    with store:
        chain = store.info.get("index_chain") or store.info.get("index_type") or store.info.get("index") or "no"
        print(f"{'added' if args.append else 'wrote'} {added} embeddings ({store.dim}-d, {chain} index) to "
              f"{store.location}: {len(store)} rows")
        if args.push_to_hub:
            import datasets

            try:
                datasets.load_from_disk(str(store.folder)).push_to_hub(args.push_to_hub, split=args.split, private=args.private)
            except (OSError, ValueError) as exc:
                raise UsageError(f"--push-to-hub {args.push_to_hub}: {first_line(exc, 200)} (the embeddings are "
                                 f"saved in {store.location})") from None
    return store.location


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_args(argv)), "embed.py")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Search a gallery written by data_scripts/embed.py (a FAISS folder, a Milvus Lite .db file or a Milvus server
URI): by an image triple (any of the three may be left out; captions for NEXT) through the checkpoint that embedded
the gallery, or by an embedding; filters apply before ranking.

    python data_scripts/search.py --index outputs/gallery-synthetic --rgb a.jpg --nir b.jpg --tir c.jpg --k 10
    python data_scripts/search.py --index DIR --rgb a.jpg --camera 2 --drop-same-camera --rerank --json
    python data_scripts/search.py --index gallery.db --embedding query.npy --where camid=1,2 --since 2026-05-01
    MILVUS_TOKEN=... python data_scripts/search.py --index http://host:19530 --collection city --embedding q.npy

Prints the top k, best first, one line each: rank, the gallery item's name, identity, camera and distance (squared
euclidean on L2-normalised embeddings, as eval.py ranks; the re-ranked distance with --rerank); --json prints one
JSON object instead (the same for every store). Bad input is one line naming the argument, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmreid.errors import UsageError, first_line, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    from mmreid.retrieval.search import Rerank

    rerank = Rerank()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, help="the gallery: a FAISS folder (embed.py --index ...), a Milvus Lite "
                                                   ".db file, or a Milvus server URI (token from $MILVUS_TOKEN)")
    p.add_argument("--collection", default=None, help="Milvus: the collection (default: gallery)")
    for modality in ("rgb", "nir", "tir"):
        p.add_argument(f"--{modality}", type=Path, default=None, help=f"{modality.upper()} image of the query")
        p.add_argument(f"--caption-{modality}", default=None, help=f"caption of the {modality.upper()} image (NEXT)")
    p.add_argument("--embedding", type=Path, default=None,
                   help="query by a (D,) embedding in a .npy file instead of images")
    p.add_argument("--model", default=None, help="checkpoint to embed the query with (default: the one that "
                                                 "embedded the gallery, from retrieval.json)")
    p.add_argument("--k", type=int, default=10, help="results to print")
    p.add_argument("--camera", type=int, default=None, help="the query's camera id (as in the training data)")
    p.add_argument("--drop-same-camera", action="store_true",
                   help="drop gallery rows of the query's --camera (the camera protocol)")
    p.add_argument("--where", action="append", default=[], metavar="FIELD=V1,V2",
                   help="keep only rows whose FIELD is one of the values (FIELD!=... drops them); fields: name, "
                        "pid, camid, sceneid, time; repeatable")
    p.add_argument("--since", default=None, help="only rows taken at or after this time (ISO 8601 or unix seconds)")
    p.add_argument("--until", default=None, help="only rows taken before this time (ISO 8601 or unix seconds)")
    p.add_argument("--nprobe", type=int, default=None, help="ivf / ivfpq: cells visited (default: the index's)")
    p.add_argument("--refine", type=int, default=None, help="ivfpq / scann: candidates re-scored, x k (default: the index's)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking of the --rerank-top nearest rows")
    p.add_argument("--rerank-top", type=int, default=rerank.top)
    p.add_argument("--rerank-k1", type=int, default=rerank.k1)
    p.add_argument("--rerank-k2", type=int, default=rerank.k2)
    p.add_argument("--rerank-lambda", type=float, default=rerank.lambda_value)
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = p.parse_args(argv)
    images = [args.rgb, args.nir, args.tir]
    if args.embedding is None and all(i is None for i in images):
        raise UsageError("give the query: at least one of --rgb, --nir, --tir, or --embedding")
    if args.embedding is not None and any(i is not None for i in images):
        raise UsageError("--embedding replaces the images: give one or the other")
    for name in ("k", "rerank_top", "nprobe", "refine"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.drop_same_camera and args.camera is None:
        raise UsageError("--drop-same-camera needs the query's --camera")
    args.row_filter = row_filter(args)
    return args


def row_filter(args):
    """The --where / --since / --until rule (checked before anything loads)."""
    from mmreid.retrieval.filters import RowFilter, parse_time, parse_where

    include, exclude = parse_where(args.where)
    since = None if args.since is None else parse_time(args.since, "--since")
    until = None if args.until is None else parse_time(args.until, "--until")
    return RowFilter(include, exclude, since, until)


def query_embedding(args, gallery):
    import numpy as np

    from mmreid.retrieval.query import QueryEncoder, open_image

    if args.embedding is not None:
        try:
            vector = np.load(args.embedding, allow_pickle=False).astype(np.float32).reshape(-1)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--embedding {args.embedding}: not a readable .npy array "
                             f"({first_line(exc, 120)})") from None
        if vector.shape != (gallery.dim,):
            raise UsageError(f"--embedding {args.embedding}: {vector.shape[0]} values, the gallery has {gallery.dim}")
        return vector / max(float(np.linalg.norm(vector)), 1e-12)
    images = [None if p is None else open_image(p, f"--{m}") for m, p in zip(("rgb", "nir", "tir"),
                                                                              (args.rgb, args.nir, args.tir))]
    encoder = QueryEncoder(args.model or gallery.info["model"])
    gallery.check_model(encoder.fingerprint, None, f"--model {encoder.checkpoint}")
    captions = [args.caption_rgb, args.caption_nir, args.caption_tir]
    query = encoder.embed(images, captions, camera_id=args.camera)
    gallery.check_model(None, query.embedding.shape[0], f"--model {encoder.checkpoint}")
    return query.embedding


def quiet_progress() -> None:
    """No progress bars for a one-query command (loading bars would bury the result lines)."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def run(args) -> list:
    from mmreid.retrieval.index import SPEC_OPTIONS
    from mmreid.retrieval.search import Rerank, search_gallery
    from mmreid.retrieval.store import open_gallery

    quiet_progress()
    with open_gallery(args.index, args.collection) as gallery:
        if gallery.kind == "faiss":
            kind = gallery.index.spec.kind if gallery.index is not None else "none (embeddings only)"
            for name in ("nprobe", "refine"):
                if getattr(args, name) is not None and kind not in SPEC_OPTIONS[name]:
                    raise UsageError(f"--{name} is for a FAISS {' / '.join(SPEC_OPTIONS[name])} index; {args.index} "
                                     f"has {kind}")
            if gallery.index is not None:
                gallery.index.set_search(nprobe=args.nprobe, refine=args.refine)
        elif gallery.kind == "milvus":
            gallery.set_search(nprobe=args.nprobe, refine=args.refine)
        vector = query_embedding(args, gallery)
        rerank = (Rerank(args.rerank_top, args.rerank_k1, args.rerank_k2, args.rerank_lambda) if args.rerank
                  else None)
        hits = search_gallery(gallery, vector, args.k, camera_id=args.camera,
                              drop_same_camera=args.drop_same_camera, rerank=rerank, where=args.row_filter)
    if args.json:
        print(json.dumps({"index": str(args.index), "k": args.k, "results": [h.to_dict() for h in hits]}))
    else:
        width = max(len(h.name) for h in hits) if hits else 0
        for h in hits:
            print(f"{h.rank:>3}  {h.name:<{width}}  pid {h.pid:<6} cam {h.camid:<3} distance {h.distance:.4f}")
    return hits


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_args(argv)), "search.py")


if __name__ == "__main__":
    sys.exit(main())

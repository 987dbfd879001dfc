#!/usr/bin/env python
"""Convert a downloaded RGBNT201 / RGBNT100 / MSVR310 / WMVEID863 release into a DatasetDict.

    python data_scripts/build_dataset.py --name RGBNT201 --root /data --output data/rgbnt201 \
        [--captions /data/next_captions/201] [--skip-incomplete] [--push-to-hub user/rgbnt201]

The Arrow files are built in a temporary folder next to --output and renamed into place at the
end, so a failure (bad file, Ctrl-C) never leaves a partial dataset at --output. A dataset card
(README.md: source paper, terms of use, splits, columns, this command) is written inside --output
with the data and, with --push-to-hub, pushed before the data so that the Hub card keeps its text
and gains the `dataset_info` / `configs` metadata `push_to_hub` adds.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from pathlib import Path

from mmreid.data.builder import DatasetLayoutError, build_dataset, save_dataset
from mmreid.data.releases import release_names
from mmreid.hub.dataset_card import make_dataset_card, push_dataset_with_card
from mmreid.errors import RunFailed, UsageError, first_line, run_cli
from mmreid.output_paths import check_output_dir


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, choices=release_names(),
                   help="the release (mmreid/data/releases/)")
    p.add_argument("--root", required=True, type=Path, help="the dataset folder, or the folder containing it")
    p.add_argument("--output", required=True, type=Path, help="where to save_to_disk the DatasetDict")
    p.add_argument("--captions", type=Path, default=None,
                   help="folder with {train,test}_{RGB,NI,TI}.json caption lists (NEXT format)")
    p.add_argument("--skip-incomplete", action="store_true",
                   help="drop (and count) triples with a modality file missing instead of failing")
    p.add_argument("--allow-size-mismatch", action="store_true",
                   help="keep triples whose modality images differ in size (the collator resizes each)")
    p.add_argument("--num-proc", type=int, default=None, help="processes decoding images (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                   help="also push the dataset card, then the data, to this dataset repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    return p.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output = args.output.expanduser().absolute()
    if output.exists() and not args.overwrite:
        raise UsageError(f"--output {output} already exists (pass --overwrite to replace it)")
    check_output_dir(output, "--output")  # before any image is read
    if args.push_to_hub:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(args.push_to_hub)
        except HFValidationError as exc:
            raise UsageError(f"--push-to-hub {args.push_to_hub}: not a repo id ({first_line(exc, 300)})") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    # The Arrow files of the build (a scratch cache, removed at the end); save_dataset copies them into --output
    # and publishes it whole.
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.build-", dir=output.parent) as cache:
        dsdict = build_dataset(args.name, args.root, captions_dir=args.captions, skip_incomplete=args.skip_incomplete,
                               num_proc=args.num_proc, allow_size_mismatch=args.allow_size_mismatch, cache_dir=cache)
        card = make_dataset_card(dsdict, args.name, output=str(args.output), repo_id=args.push_to_hub,
                                 command=shlex.join(["python", "data_scripts/build_dataset.py", *argv]))
        save_dataset(dsdict, output, overwrite=args.overwrite, card=card)
        print(dsdict)
        print(f"saved to {output} (dataset card: {output / 'README.md'})")
        if args.push_to_hub:
            try:
                push_dataset_with_card(dsdict, card, args.push_to_hub, private=args.private)
            except Exception as exc:  # HTTP, auth, offline mode...: one line; the local copy is complete
                raise RunFailed(f"--push-to-hub {args.push_to_hub}: {type(exc).__name__}: {first_line(exc, 300)} "
                                f"(the dataset is saved at {output})") from None
            print(f"pushed to the dataset repo {args.push_to_hub}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    return run_cli(lambda: run(args, argv), "build_dataset.py", errors=(DatasetLayoutError, FileExistsError))


if __name__ == "__main__":
    sys.exit(main())

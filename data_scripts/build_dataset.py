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
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout too

from demo_reid.data.builder import DatasetLayoutError, build_dataset, save_dataset  # noqa: E402
from demo_reid.data.releases import release_names  # noqa: E402
from demo_reid.hub.dataset_card import make_dataset_card, push_dataset_with_card  # noqa: E402
from demo_reid.errors import UsageError, first_line  # noqa: E402
from demo_reid.output_paths import check_output_dir  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, choices=release_names(),
                   help="the release (demo_reid/data/releases/)")
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output = args.output.expanduser().absolute()
    if output.exists() and not args.overwrite:
        print(f"error: --output {output} already exists (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    try:
        check_output_dir(output, "--output")  # before any image is read
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.push_to_hub:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(args.push_to_hub)
        except HFValidationError as exc:
            print(f"error: --push-to-hub {args.push_to_hub}: not a repo id ({first_line(exc, 300)})", file=sys.stderr)
            return 2
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.build-", dir=output.parent))
    try:
        dsdict = build_dataset(args.name, args.root, captions_dir=args.captions, skip_incomplete=args.skip_incomplete,
                               num_proc=args.num_proc, allow_size_mismatch=args.allow_size_mismatch, cache_dir=work)
        card = make_dataset_card(dsdict, args.name, output=str(args.output), repo_id=args.push_to_hub,
                                 command=shlex.join(["python", "data_scripts/build_dataset.py", *argv]))
        save_dataset(dsdict, output, overwrite=args.overwrite, card=card)
        print(dsdict)
        print(f"saved to {output} (dataset card: {output / 'README.md'})")
        if args.push_to_hub:
            try:
                push_dataset_with_card(dsdict, card, args.push_to_hub, private=args.private)
            except Exception as exc:  # HTTP, auth, offline mode...: one line; the local copy is complete
                print(f"error: --push-to-hub {args.push_to_hub}: {type(exc).__name__}: {first_line(exc, 300)} "
                      f"(the dataset is saved at {output})", file=sys.stderr)
                return 1
            print(f"pushed to the dataset repo {args.push_to_hub}")
    except (DatasetLayoutError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

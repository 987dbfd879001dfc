#!/usr/bin/env python
"""Write a small synthetic dataset on disk in a public release's layout (real JPEGs, real names).

    python data_scripts/make_synthetic.py --layout RGBNT201 --out data/synthetic
    python data_scripts/build_dataset.py --name RGBNT201 --root data/synthetic --output data/synthetic_rgbnt201 \
        [--captions data/synthetic/RGBNT201/captions]

Captions in the NEXT release's format are written to <dataset folder>/captions/ unless --no-captions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmreid.data.synthetic import CAPTIONS_DIR, SYNTHETIC_LAYOUTS, make_synthetic
from mmreid.errors import run_cli
from mmreid.output_paths import check_output_dir


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", required=True, choices=SYNTHETIC_LAYOUTS)
    p.add_argument("--out", required=True, type=Path, help="parent folder; the dataset folder is created inside")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train-ids", type=int, default=20)
    p.add_argument("--num-test-ids", type=int, default=10)
    p.add_argument("--images-per-id", type=int, default=10)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="size of one modality image (default 64 32 for RGBNT201, 32 64 for vehicles)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.add_argument("--captions", action=argparse.BooleanOptionalAction, default=True,
                   help="write {train,test}_{RGB,NI,TI}.json captions to <dataset folder>/captions "
                        "(default; the images are the same either way)")
    return p.parse_args(argv)


def run(a: argparse.Namespace) -> None:
    check_output_dir(a.out, "--out")
    path = make_synthetic(a.layout, a.out, seed=a.seed, num_train_ids=a.num_train_ids, num_test_ids=a.num_test_ids,
                          images_per_id=a.images_per_id, image_size=a.image_size, overwrite=a.overwrite,
                          captions=a.captions)
    print(f"wrote {path}" + (f" (captions in {path / CAPTIONS_DIR})" if a.captions else ""))


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: run(args), "make_synthetic.py", errors=(ValueError, FileExistsError))


if __name__ == "__main__":
    sys.exit(main())

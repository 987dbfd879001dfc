#!/usr/bin/env python
"""Write a small synthetic dataset on disk in a public release's layout (real JPEGs, real names).

    python data_scripts/make_synthetic.py --layout RGBNT201 --out data/synthetic
    python data_scripts/build_dataset.py --name RGBNT201 --root data/synthetic --output data/synthetic_rgbnt201
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout too

from demo_reid.synthetic import SYNTHETIC_LAYOUTS, make_synthetic  # noqa: E402


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
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        path = make_synthetic(a.layout, a.out, seed=a.seed, num_train_ids=a.num_train_ids, num_test_ids=a.num_test_ids,
                              images_per_id=a.images_per_id, image_size=a.image_size, overwrite=a.overwrite)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

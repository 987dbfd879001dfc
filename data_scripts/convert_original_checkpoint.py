#!/usr/bin/env python
"""Convert a checkpoint saved by the DeMo or the IDEA authors' training code (CLIP backbone; recognised from its keys)
into a `save_pretrained` directory.

    python data_scripts/convert_original_checkpoint.py --checkpoint model.pth --image-size 256 128 --output DIR

Everything the configuration needs (identities, cameras, DeMo's ATMoE heads, IDEA's prompts, InverseNet and CDA,
direct or per-modality classifiers, tower widths and depths) is read from tensor shapes; IDEA's CDA offset factor,
which no tensor holds, from the dataset its identity count names (--offset-factor overrides it). The checkpoint is read with `torch.load(weights_only=True)`: tensors
only, no pickled code is executed. The output is written to a hidden folder and moved into place at the end
(mmreid/hub/conversion.py does the work).
"""

import argparse
import sys
from pathlib import Path

from mmreid.errors import UsageError, run_cli
from mmreid.hub.conversion import CheckpointFormatError, convert_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="state dict saved by the original code (.pth)")
    parser.add_argument(
        "--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), required=True,
        help="input size the checkpoint was trained at (256 128 for RGBNT201, 128 256 for RGBNT100/MSVR310)",
    )
    parser.add_argument("--output", type=Path, required=True, help="directory to write (must not exist or be empty)")
    parser.add_argument("--offset-factor", type=float, default=None,
                        help="IDEA only: CDA's offset factor (OFF_FAC); by default the authors' value for the dataset "
                             "the identity count names (5 RGBNT201, 21 RGBNT100, 25 MSVR310)")
    parser.add_argument("--force", action="store_true",
                        help="accept an --image-size other than the one of the dataset the identity count names")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    try:
        model = convert_checkpoint(args.checkpoint, tuple(args.image_size), args.output, args.force,
                                   args.offset_factor)
    except FileExistsError as error:
        raise UsageError(str(error)) from None
    config = model.config
    vision = config.vision_config
    print(f"wrote {args.output}: {config.model_type}, {config.num_labels} identities, {config.num_cameras} cameras, "
          f"tower {vision.num_hidden_layers}x{vision.hidden_size}")


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: run(args), "convert_original_checkpoint.py", errors=(CheckpointFormatError,),
                   interrupted=f"nothing written to {args.output}")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Do a trained NEXT checkpoint's captions matter? Prints how much two different captions (and a caption vs none)
move its features on the first query triples of a dataset, and the size of its text-modulation weights against a
fresh initialisation of the same config (issue 21: they used to collapse to ~0 in training, and the captions then
changed nothing).

    python data_scripts/next_caption_effect.py --model outputs/next-synthetic --dataset outputs/synthetic-rgbnt201

Relative change = max |a - b| / max |a| over the features of the triples (docs/next.md).
"""

import argparse
import json
import os
import sys

from mmreid.errors import UsageError, run_cli
from mmreid.output_paths import check_output_file
from mmreid.publish import atomic_output


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a NEXT directory written by save_pretrained (train.py)")
    parser.add_argument("--dataset", required=True, help="an Arrow dataset built by build_dataset.py (its query split)")
    parser.add_argument("--triples", type=int, default=32, help="query triples to embed (default 32)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def run(args) -> dict:
    from mmreid.data.collate import collator_for
    from mmreid.data.loading import open_reid_dataset
    from mmreid.evaluation.caption_effect import caption_effect, modulation_size
    from mmreid.hub.loading import load_checkpoint, load_checkpoint_tokenizer

    from transformers.utils import logging as hf_logging

    if args.triples < 1:
        raise UsageError(f"--triples must be >= 1, got {args.triples}")
    if args.json:
        check_output_file(args.json, "--json", suffix=".json")  # before the model is loaded
    hf_logging.disable_progress_bar()
    model = load_checkpoint(args.model).eval()
    if not getattr(model.config, "uses_text", False):
        raise UsageError(f"--model {args.model}: a {model.config.model_type} model that reads no captions "
                         "(a NEXT checkpoint with use_text and use_tmse is needed)")
    tokenizer = load_checkpoint_tokenizer(args.model, model)
    try:
        query = open_reid_dataset(args.dataset)["query"]
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(f"--dataset: {exc}") from None
    rows = [query[i] for i in range(min(args.triples, len(query)))]
    pixel_values = collator_for(model.config, train=False)(rows)["pixel_values"]
    report = {"modulation_size": modulation_size(model), "caption_effect": caption_effect(model, tokenizer, pixel_values)}
    for name, ratio in report["modulation_size"].items():
        print(f"modulation {name}: mean |w| / fresh init = {ratio:.3g}")
    for row, effect in report["caption_effect"].items():
        print(f"{row}: two captions {effect['two_captions']:.3g}, caption vs none {effect['caption_vs_none']:.3g} "
              f"(relative change, {len(rows)} triples)")
    if args.json:
        with atomic_output(args.json, overwrite=True) as staged:
            staged.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    return run_cli(lambda: run(args), "next_caption_effect.py")


if __name__ == "__main__":
    sys.exit(main())

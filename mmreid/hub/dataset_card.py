"""The dataset card (``README.md``) written beside a DatasetDict built by ``data_scripts/build_dataset.py``.

A converted copy of a public release must say where the images come from, whom to cite and on what terms they may be
used, and must describe what the conversion produced (splits, columns) and how to load it. The split and identity
counts are read from the built dataset itself, so the card cannot disagree with the data it sits beside.

The card links nothing: no download location or paper URL is given, only what identifies the source (dataset name,
paper title, authors, venue), so users obtain the data from its authors under their terms.
"""

from __future__ import annotations

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from ..data.columns import CAPTION_COLUMNS, MODALITY_COLUMNS
from ..data.releases import get_release

__all__ = ["COLUMN_DESCRIPTIONS", "LICENCE_NOTE", "make_dataset_card", "one_schema", "push_dataset_with_card"]

# What evaluation ranks against, per protocol (the release's record names its protocol).
PROTOCOL_NOTES = {
    "camera": "a gallery image of the query's identity taken by the query's camera is left out of its ranking",
    "scene": "a gallery image of the query's identity taken in the query's scene is left out of its ranking",
}


LICENCE_NOTE = (
    "The {name} images are released by their authors for research use only. This conversion grants no rights of its "
    "own: obtain {name} from its original authors, accept and respect their terms of use, and cite their paper "
    "(below) in any work that uses it. Use of this copy is only for those who hold that permission; redistribution "
    "is subject to the same terms. This card gives no download location."
)

# Every column build_dataset can write (dataset_builder.dataset_features), with what it means.
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "rgb": "the RGB (visible-light) image",
    "nir": "the near-infrared image of the same sample, aligned with `rgb`",
    "tir": "the thermal-infrared image of the same sample, aligned with `rgb`",
    "pid": "identity id as numbered in the source release",
    "label": "training class index: 0..N-1 over the train identities, in increasing `pid` order (a copy pushed to "
    "the Hub, where all splits share one schema, has -1 in `query` and `gallery`)",
    "camid": "0-based camera (view) index",
    "sceneid": "scene index where the release has one, else -1",
    "name": "file name in the source release (image `path` fields hold only this name, never a local path)",
    **{c: f"text description of the `{m}` image (NEXT caption files); empty string where the caption "
       "files have none" for c, m in zip(CAPTION_COLUMNS, MODALITY_COLUMNS)},
}

TAGS = ("re-identification", "multi-modal", "rgb", "near-infrared", "thermal-infrared", "retrieval")


def _size_category(num_rows: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if num_rows < bound:
            return label
    return "1M<n<10M"


def _feature_type(feature) -> str:
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value):
        return feature.dtype
    return type(feature).__name__


def _split_table(dsdict: datasets.DatasetDict) -> list[str]:
    rows = ["| split | rows (image triples) | identities | cameras |", "|---|---|---|---|"]
    for split in dsdict:
        ds = dsdict[split]
        rows.append(f"| {split} | {ds.num_rows} | {len(ds.unique('pid'))} | {len(ds.unique('camid'))} |")
    return rows


def _column_table(dsdict: datasets.DatasetDict) -> list[str]:
    order: dict[str, tuple[str, list[str]]] = {}
    for split, ds in dsdict.items():
        for column, feature in ds.features.items():
            order.setdefault(column, (_feature_type(feature), []))[1].append(split)
    rows = ["| column | type | splits | meaning |", "|---|---|---|---|"]
    for column, (kind, splits) in order.items():
        where = "all" if len(splits) == len(dsdict) else ", ".join(splits)
        rows.append(f"| `{column}` | {kind} | {where} | {COLUMN_DESCRIPTIONS.get(column, '')} |")
    return rows


def make_dataset_card(
    dsdict: datasets.DatasetDict,
    name: str,
    *,
    command: str | None = None,
    output: str | None = None,
    repo_id: str | None = None,
) -> DatasetCard:
    """The card of ``dsdict``, built from release ``name`` (a registered release's name or alias; its record in
    :mod:`mmreid.data.releases` gives the summary, the paper and the BibTeX).

    ``command`` is the build command shown under "How it was built"; ``output`` the folder shown in the
    ``load_from_disk`` example; ``repo_id``, when the dataset is pushed, adds the ``load_dataset`` example.
    """
    layout = get_release(name)
    source = layout.source
    split_of_folder: dict[str, str] = {}  # RGBNT201: query and gallery are both the `test` folder
    for split, folder in layout.split_dirs.items():
        split_of_folder.setdefault(folder, split)
    shared = {f for f in split_of_folder if list(layout.split_dirs.values()).count(f) > 1}
    unique_rows = sum(dsdict[s].num_rows for s in split_of_folder.values() if s in dsdict)
    data = DatasetCardData(
        license="other",
        license_name="research-only",
        task_categories=["image-feature-extraction"],
        tags=[*TAGS, f"{layout.kind}-re-identification"],
        pretty_name=f"{layout.name} (RGB / NIR / TIR {layout.kind} re-identification)",
        size_categories=[_size_category(unique_rows)],
    )
    body = [
        f"# {layout.name}",
        "",
        f"{layout.name} is {source.summary}. This is a conversion of the {layout.name} release into a "
        "`datasets.DatasetDict` (splits `train`, `query`, `gallery`), made with `data_scripts/build_dataset.py` of "
        "the DeMo / NEXT multi-modal re-identification code. Images, identities and cameras are those of the "
        "release; only the `label` index (and the cutting of RGBNT100's side-by-side images into their three views) "
        "is derived here.",
        "",
        "## Source",
        "",
        f"- Dataset: {layout.name}",
        f"- Introduced in: {source.paper} (BibTeX under Citation)",
        "",
        "## Licence and terms of use",
        "",
        LICENCE_NOTE.format(name=layout.name),
        "",
        "## Splits",
        "",
        *_split_table(dsdict),
        "",
    ]
    if shared:
        both = [s for s, d in layout.split_dirs.items() if d in shared]
        body += [f"`{'` and `'.join(both)}` are the same rows (the release's `{', '.join(sorted(shared))}` folder), "
                 "as in the original evaluation protocol.", ""]
    body += [
        "`train` trains the model; `query` rows are searched in `gallery` for the retrieval metrics (mAP, CMC), with "
        f"the {layout.protocol} protocol: {PROTOCOL_NOTES[layout.protocol]}.",
        "",
        "## Columns",
        "",
        *_column_table(dsdict),
        "",
        "## How it was built",
        "",
        "```bash",
        command or f"python data_scripts/build_dataset.py --name {layout.name} --root <release> --output <folder>",
        "```",
        "",
        f"Built with `datasets` {datasets.__version__}. Every image was fully decoded once while building; file names "
        "were parsed into `pid`, `camid` and `sceneid` as described in docs/datasets.md of that code.",
        "",
        "## How to load",
        "",
        "```python",
        "from datasets import load_from_disk",
        "",
        f'dsd = load_from_disk("{output or "<the folder holding this README.md>"}")  # the folder written by '
        "build_dataset.py",
        "```",
        "",
    ]
    if repo_id:
        body += [
            "From the Hub:",
            "",
            "```python",
            "from datasets import load_dataset",
            "",
            f'dsd = load_dataset("{repo_id}")',
            "```",
            "",
            "(`train.py --dataset` reads a `save_to_disk` folder: `dsd.save_to_disk(path)` first.)",
            "",
        ]
    body += ["## Citation", "", "```bibtex", source.bibtex, "```", ""]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def one_schema(dsdict: datasets.DatasetDict) -> datasets.DatasetDict:
    """The splits with one set of columns, as the Hub needs (one schema per config; ``DatasetDict.push_to_hub``
    refuses splits whose features differ): ``query`` / ``gallery`` get ``label`` = -1 (no training class), and every
    split the train split's column order. Memory-mapped: nothing is copied."""
    reference = dsdict["train"] if "train" in dsdict else next(iter(dsdict.values()))
    out = {}
    for split, ds in dsdict.items():
        if "label" in reference.column_names and "label" not in ds.column_names:
            ds = ds.add_column("label", [-1] * ds.num_rows, feature=reference.features["label"])
        missing = sorted(set(reference.column_names) ^ set(ds.column_names))
        if missing:
            raise ValueError(f"split {split!r} and {str(reference.split)!r} differ in column(s) {missing}")
        out[split] = ds.select_columns(reference.column_names)
    return datasets.DatasetDict(out)


def push_dataset_with_card(dsdict: datasets.DatasetDict, card: DatasetCard, repo_id: str, private: bool = False):
    """Push the card, then the data (:func:`one_schema` of it).

    ``DatasetDict.push_to_hub`` reads the README.md already in the repo, keeps its text and metadata and only sets
    its ``dataset_info`` and ``configs`` fields (with no README it writes a card holding just those). Pushing our card
    first therefore ends with our card plus datasets' metadata; pushing it last would drop that metadata.
    """
    from huggingface_hub import HfApi

    hub_dsdict = one_schema(dsdict)  # before anything is pushed: a schema problem leaves the repo untouched
    HfApi().create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    card.push_to_hub(repo_id, repo_type="dataset", commit_message="Add dataset card")
    return hub_dsdict.push_to_hub(repo_id, private=private, commit_message="Upload dataset")

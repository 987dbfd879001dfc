"""Convert the public multi-modal ReID releases into a ``datasets.DatasetDict``.

Training, evaluation and the NEXT text branch read only the Arrow dataset, so every quirk of
the public releases (folder names, file-name schemes, RGBNT100's side-by-side images, caption
files) is handled here, once.  What differs between releases (folders, file names, splits) is read from their
records in :mod:`mmreid.data.releases`: adding a dataset means adding one module there.

Rows are streamed to Arrow files (never all images in memory); each image is fully decoded
once while building, so a broken JPEG fails the build instead of a training run hours later.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from PIL import Image as PILImage
from tqdm.auto import tqdm

import datasets
from datasets.arrow_writer import ArrowWriter
from configuration_reid import MODALITIES

from ..publish import atomic_output
from .columns import CAPTION_COLUMNS
from .pixels import HIGH_BIT_MODES, to_8bit
from .release import SPLITS, DatasetLayoutError, Release
from .releases import RELEASES, get_release

logger = logging.getLogger(__name__)

# Caption file names use the NEXT release's modality tags; query and gallery share the test files.
CAPTION_FILE_TAGS = {"rgb": "RGB", "nir": "NI", "tir": "TI"}
CAPTION_SPLIT_OF = {"train": "train", "query": "test", "gallery": "test"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}  # TIFF: 16-bit thermal frames


class DatasetBuildWarning(UserWarning):
    """Something was dropped or left unmatched while building (skipped triples, unused captions)."""


# The releases, under the builder's names: one record per release in mmreid/data/releases/ (layout, file-name
# parser, splits, protocol, citation, synthetic naming).
Layout = Release
LAYOUTS = RELEASES
get_layout = get_release


def resolve_root(layout: Layout, root: str | Path) -> Path:
    """Accept either the dataset's own folder or its parent; fail naming what is missing."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"--root {root}: folder does not exist")
    split_dirs = sorted(set(layout.split_dirs.values()))
    candidates = [root / f for f in layout.folders] + [root]
    for cand in candidates:
        if cand.is_dir() and any((cand / d).is_dir() for d in split_dirs):
            missing = [str(cand / d) for d in split_dirs if not (cand / d).is_dir()]
            if missing:
                raise DatasetLayoutError(
                    f"{layout.name}: split folder(s) missing: {', '.join(missing)} "
                    f"(expected {', '.join(split_dirs)} under {cand})"
                )
            return cand
    raise DatasetLayoutError(
        f"--root {root}: no {layout.name} data found; expected {' or '.join(layout.folders)} "
        f"under it, or the split folders {', '.join(split_dirs)} directly in it"
    )


# --------------------------------------------------------------------------------------------
# Scanning a split into triples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Triple:
    """One sample before decoding: three files (RGB, NIR, TIR) or one side-by-side file."""

    name: str
    sources: tuple[Path, ...]
    pid: int
    camid: int
    sceneid: int


def _image_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetLayoutError(f"{folder}: modality folder does not exist")
    return {
        p.name: p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    }


def _group_dirs(layout: Layout, split_dir: Path) -> list[Path]:
    if not layout.nested:
        return [split_dir]
    return sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan_split(layout: Layout, split_dir: Path, skip_incomplete: bool = False) -> list[Triple]:
    """List the triples of one split folder, sorted by file name, with names parsed."""
    found: list[tuple[str, tuple[Path, ...]]] = []
    incomplete: list[str] = []
    for group in _group_dirs(layout, split_dir):
        if layout.modality_dirs is None:
            found.extend((n, (p,)) for n, p in _image_files(group).items())
            continue
        files = [_image_files(group / m) for m in layout.modality_dirs]
        for name in sorted(set().union(*files)):
            have = [name in f for f in files]
            if all(have):
                found.append((name, tuple(f[name] for f in files)))
                continue
            missing = [str(group / m / name) for m, h in zip(layout.modality_dirs, have) if not h]
            if not skip_incomplete:
                present = [m for m, h in zip(layout.modality_dirs, have) if h]
                raise DatasetLayoutError(
                    f"incomplete triple: {', '.join(missing)} missing (found in {', '.join(present)}); "
                    "pass --skip-incomplete (skip_incomplete=True) to drop such triples"
                )
            incomplete.append(missing[0])
    if incomplete:
        msg = (f"{layout.name} {split_dir.name}: skipped {len(incomplete)} incomplete triple(s), "
               f"e.g. {incomplete[0]} missing")
        warnings.warn(msg, DatasetBuildWarning, stacklevel=3)

    triples, seen, junk = [], {}, 0
    for name, sources in sorted(found):
        if name in seen:
            raise DatasetLayoutError(f"duplicate file name {name!r} in {seen[name]} and {sources[0].parent}")
        seen[name] = sources[0].parent
        try:
            parsed = layout.parse_name(name)
        except DatasetLayoutError as exc:
            raise DatasetLayoutError(f"{sources[0]}: {exc}") from None
        if parsed.pid == -1:  # Market-style junk images carry pid -1: not an identity
            junk += 1
            continue
        triples.append(Triple(name, sources, parsed.pid, parsed.camid, parsed.sceneid))
    if junk:
        warnings.warn(f"{split_dir}: dropped {junk} junk image(s) with pid -1", DatasetBuildWarning, stacklevel=3)
    if not triples:
        raise DatasetLayoutError(f"{split_dir}: no complete image triples found")
    return triples


# --------------------------------------------------------------------------------------------
# Decoding (runs in worker processes when num_proc > 1)
# --------------------------------------------------------------------------------------------


def _decode(raw: bytes, path: Path) -> PILImage.Image:
    try:
        img = PILImage.open(io.BytesIO(raw))
        img.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise DatasetLayoutError(f"{path}: unreadable or truncated image ({exc})") from None
    return img


def _image_cell(raw: bytes, stored_name: str) -> dict:
    return {"bytes": raw, "path": stored_name}


def load_triple(triple: Triple, allow_size_mismatch: bool = False) -> dict:
    """Read and fully decode the images of one triple; return the three Image cells.

    Separate files keep their original bytes.  A side-by-side file (RGBNT100) is cut into
    equal thirds (x 0-256, 256-512, 512-768 for the 768x128 release), each stored as
    lossless PNG so the pixels equal cropping the decoded JPEG, as the original code does.
    """
    if len(triple.sources) == 3:
        cells, sizes = {}, []
        for modality, path in zip(MODALITIES, triple.sources):
            raw = path.read_bytes()
            img = _decode(raw, path)
            sizes.append(img.size)
            if img.mode in HIGH_BIT_MODES:  # 16 / 32-bit (thermal): stored as 8-bit PNG, min-max per image
                raw = _png_bytes(to_8bit(img, str(path)))
            cells[modality] = _image_cell(raw, triple.name)
        if not allow_size_mismatch and len(set(sizes)) > 1:
            detail = ", ".join(f"{p} is {w}x{h}" for p, (w, h) in zip(triple.sources, sizes))
            raise DatasetLayoutError(
                f"modality images of {triple.name!r} differ in size ({detail}); expected equal "
                "sizes (pass --allow-size-mismatch to keep them; the collator resizes each one)"
            )
        return cells
    (path,) = triple.sources
    img = _decode(path.read_bytes(), path)
    width, height = img.size
    if width % 3:
        raise DatasetLayoutError(
            f"{path}: width {width} is not divisible by 3; expected RGB, NIR and TIR side by side "
            "(768x128 in the public release)"
        )
    third, cells, stem = width // 3, {}, Path(triple.name).stem
    for i, modality in enumerate(MODALITIES):
        part = to_8bit(img.crop((i * third, 0, (i + 1) * third, height)), f"{path} ({modality})")
        cells[modality] = _image_cell(_png_bytes(part), f"{stem}_{modality}.png")
    return cells


def _png_bytes(img: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _load_triple_star(args: tuple[Triple, bool]) -> dict:
    return load_triple(*args)


def _iter_loaded(triples: Sequence[Triple], allow_size_mismatch: bool, num_proc: Optional[int]) -> Iterator[dict]:
    jobs = [(t, allow_size_mismatch) for t in triples]
    if not num_proc or num_proc <= 1 or len(jobs) < 2:
        yield from map(_load_triple_star, jobs)
        return
    with multiprocessing.get_context().Pool(num_proc) as pool:
        yield from pool.imap(_load_triple_star, jobs, chunksize=max(1, min(32, len(jobs) // (4 * num_proc))))


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

Captions = dict[str, dict[str, dict[str, str]]]  # caption split -> modality -> file name -> text


def read_caption_file(path: Path) -> dict[str, str]:
    """Read one ``[{"item": name, "description": text}, ...]`` file into ``{name: text}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetLayoutError(f"caption file {path}: not readable JSON ({exc})") from None
    if not isinstance(data, list):
        raise DatasetLayoutError(
            f"caption file {path}: expected a JSON list of {{\"item\", \"description\"}} objects, "
            f"got a JSON {type(data).__name__}"
        )
    out: dict[str, str] = {}
    for i, entry in enumerate(data):
        if not (isinstance(entry, dict) and isinstance(entry.get("item"), str)
                and isinstance(entry.get("description"), str)):
            raise DatasetLayoutError(
                f"caption file {path}: entry {i} is {str(entry)[:80]!r}; expected an object with "
                "string fields 'item' (image file name) and 'description'"
            )
        out.setdefault(entry["item"], entry["description"])  # first caption wins on duplicates
    return out


def load_captions(captions_dir: str | Path) -> Captions:
    """Read the six ``{train,test}_{RGB,NI,TI}.json`` files of a caption folder."""
    captions_dir = Path(captions_dir).expanduser()
    if not captions_dir.is_dir():
        raise DatasetLayoutError(f"--captions {captions_dir}: folder does not exist")
    expected = {(s, m): captions_dir / f"{s}_{tag}.json"
                for s in ("train", "test") for m, tag in CAPTION_FILE_TAGS.items()}
    missing = [p.name for p in expected.values() if not p.is_file()]
    if missing:
        raise DatasetLayoutError(f"--captions {captions_dir}: missing caption file(s) {', '.join(missing)}")
    captions: Captions = {"train": {}, "test": {}}
    for (split, modality), path in expected.items():
        captions[split][modality] = read_caption_file(path)
    return captions


def _warn_unmatched_captions(captions: Captions, names_by_caption_split: Mapping[str, set[str]], captions_dir) -> None:
    for split, per_modality in captions.items():
        names = names_by_caption_split.get(split, set())
        for modality, items in per_modality.items():
            unmatched = [item for item in items if item not in names]
            if unmatched:
                msg = (f"{Path(captions_dir) / f'{split}_{CAPTION_FILE_TAGS[modality]}.json'}: "
                       f"{len(unmatched)} of {len(items)} caption item(s) match no image, "
                       f"e.g. {unmatched[0]!r}")
                warnings.warn(msg, DatasetBuildWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def dataset_features(split: str, with_captions: bool) -> datasets.Features:
    """The column schema of one split (``label`` exists only in ``train``)."""
    cols: dict = {m: datasets.Image() for m in MODALITIES}
    cols["pid"] = datasets.Value("int64")
    if split == "train":
        cols["label"] = datasets.Value("int64")
    cols.update(camid=datasets.Value("int64"), sceneid=datasets.Value("int64"), name=datasets.Value("string"))
    if with_captions:
        cols.update({c: datasets.Value("string") for c in CAPTION_COLUMNS})
    return datasets.Features(cols)


def _rows(triples, labels, captions, allow_size_mismatch, num_proc, desc) -> Iterator[dict]:
    loaded = _iter_loaded(triples, allow_size_mismatch, num_proc)
    for triple, cells in tqdm(zip(triples, loaded), total=len(triples), desc=desc, unit="triple"):
        row = dict(cells, pid=triple.pid)
        if labels is not None:
            row["label"] = labels[triple.pid]
        row.update(camid=triple.camid, sceneid=triple.sceneid, name=triple.name)
        if captions is not None:
            row.update({c: captions[m].get(triple.name, "") for c, m in zip(CAPTION_COLUMNS, MODALITIES)})
        yield row


def _write_split(path: Path, features: datasets.Features, rows: Iterable[dict], split: str,
                 dataset_name: str) -> datasets.Dataset:
    writer = ArrowWriter(features=features, path=str(path), writer_batch_size=64)
    try:
        for row in rows:
            writer.write(row)
        writer.finalize()
    except BaseException:
        writer.stream.close()
        raise
    # The layout name travels in each split's DatasetInfo (the model card of a run names its dataset from it).
    info = datasets.DatasetInfo(features=features, dataset_name=dataset_name)
    return datasets.Dataset.from_file(str(path), info=info, split=split)


def build_dataset(
    name: str,
    root: str | Path,
    captions_dir: str | Path | None = None,
    skip_incomplete: bool = False,
    num_proc: Optional[int] = None,
    *,
    allow_size_mismatch: bool = False,
    cache_dir: str | Path | None = None,
) -> datasets.DatasetDict:
    """Build the ``train``/``query``/``gallery`` DatasetDict of one public release.

    ``root`` is the dataset folder or its parent.  The Arrow files are written under
    ``cache_dir`` (default: a fresh folder in the ``datasets`` cache), so nothing is held in
    memory; ``save_dataset`` then copies them to their final place.
    """
    layout = get_layout(name)
    base = resolve_root(layout, root)
    captions = load_captions(captions_dir) if captions_dir is not None else None

    # Scan everything before decoding anything: layout errors surface in seconds.
    triples_of: dict[str, list[Triple]] = {}
    for split_dir in dict.fromkeys(layout.split_dirs.values()):
        triples_of[split_dir] = scan_split(layout, base / split_dir, skip_incomplete)
    if captions is not None:
        names = {s: set() for s in ("train", "test")}
        for split, split_dir in layout.split_dirs.items():
            names[CAPTION_SPLIT_OF[split]].update(t.name for t in triples_of[split_dir])
        _warn_unmatched_captions(captions, names, captions_dir)

    train_pids = sorted({t.pid for t in triples_of[layout.split_dirs["train"]]})
    labels = {pid: i for i, pid in enumerate(train_pids)}

    if cache_dir is None:
        cache_dir = Path(datasets.config.HF_DATASETS_CACHE) / "mmreid"
    work = Path(cache_dir) / f"{layout.name}-{uuid.uuid4().hex[:12]}"
    work.mkdir(parents=True, exist_ok=False)

    try:
        return _build_splits(layout, triples_of, labels, captions, allow_size_mismatch, num_proc, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # no half-written Arrow files left behind
        raise


def _build_splits(layout, triples_of, labels, captions, allow_size_mismatch, num_proc, work) -> datasets.DatasetDict:
    out: dict[str, datasets.Dataset] = {}
    built_by_dir: dict[str, datasets.Dataset] = {}
    for split in SPLITS:
        split_dir = layout.split_dirs[split]
        if split != "train" and split_dir in built_by_dir:  # RGBNT201: query and gallery share `test`
            first = built_by_dir[split_dir]
            arrow_file = first.cache_files[0]["filename"]
            out[split] = datasets.Dataset.from_file(arrow_file, info=first.info.copy(), split=split)
            continue
        triples = triples_of[split_dir]
        rows = _rows(
            triples,
            labels if split == "train" else None,
            captions[CAPTION_SPLIT_OF[split]] if captions is not None else None,
            allow_size_mismatch,
            num_proc,
            desc=f"{layout.name} {split}",
        )
        ds = _write_split(work / f"{split}.arrow", dataset_features(split, captions is not None), rows, split,
                          layout.name)
        out[split] = built_by_dir[split_dir] = ds
        logger.info("%s %s: %d triples, %d identities", layout.name, split, len(ds), len({t.pid for t in triples}))
    return datasets.DatasetDict(out)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_dataset(dsdict: datasets.DatasetDict, output: str | Path, overwrite: bool = False, card=None) -> Path:
    """``save_to_disk`` through :func:`mmreid.publish.atomic_output`, so an interrupted or failed save never leaves
    a partial dataset at ``output``.

    ``card`` (a ``huggingface_hub.DatasetCard`` or its text) is written as ``README.md`` inside the
    folder before the rename, so the data never appears without it (``load_from_disk`` ignores it)."""
    output = Path(output).expanduser().absolute()
    if output.exists() and not overwrite:
        raise FileExistsError(f"--output {output} already exists (pass --overwrite to replace it)")
    with atomic_output(output, overwrite=overwrite) as work:
        dsdict.save_to_disk(str(work))
        if card is not None:
            (work / "README.md").write_text(str(card), encoding="utf-8")
    return output

"""Caption statistics as the NEXT authors report them: captions, words, mean length in words,
and the unknown rate (the share of captions containing "none", "unknown" or "unclear").

Words are whitespace-separated tokens; with that count the released RGBNT201 captions give the
paper's word counts exactly (201,934 / 190,389 / 167,144 for RGB / NIR / TIR).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..data.builder import CAPTION_FILE_TAGS, DatasetLayoutError, read_caption_file

UNKNOWN_WORDS = ("none", "unknown", "unclear")  # the authors' definition of an unknown caption
_UNKNOWN_RE = re.compile(r"\b(" + "|".join(UNKNOWN_WORDS) + r")\b", re.IGNORECASE)
CAPTION_SPLITS = ("train", "test")


def is_unknown(caption: str) -> bool:
    return _UNKNOWN_RE.search(caption) is not None


@dataclass(frozen=True)
class Counts:
    captions: int = 0
    unknown: int = 0
    words: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.captions + other.captions, self.unknown + other.unknown, self.words + other.words)

    @property
    def unknown_rate(self) -> float:
        return 100.0 * self.unknown / self.captions if self.captions else 0.0

    @property
    def mean_words(self) -> float:
        return self.words / self.captions if self.captions else 0.0


def count(captions: Iterable[str]) -> Counts:
    total = Counts()
    for text in captions:
        total = total + Counts(1, int(is_unknown(text)), len(text.split()))
    return total


@dataclass(frozen=True)
class FolderStats:
    files: dict[str, Counts]  # "train_RGB.json" -> counts, for the files present
    modalities: dict[str, Counts]  # "RGB" -> counts over train + test
    overall: Counts


def folder_stats(folder: str | Path) -> FolderStats:
    """Statistics of the ``{train,test}_{RGB,NI,TI}.json`` files present in ``folder``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetLayoutError(f"caption folder {folder}: does not exist")
    files, modalities = {}, {}
    for split in CAPTION_SPLITS:
        for tag in CAPTION_FILE_TAGS.values():
            path = folder / f"{split}_{tag}.json"
            if path.is_file():
                files[path.name] = count(read_caption_file(path).values())
                modalities[tag] = modalities.get(tag, Counts()) + files[path.name]
    if not files:
        names = ", ".join(f"{s}_{t}.json" for s in CAPTION_SPLITS for t in CAPTION_FILE_TAGS.values())
        raise DatasetLayoutError(f"caption folder {folder}: none of {names} found")
    return FolderStats(files, modalities, sum(modalities.values(), Counts()))


def format_stats(stats: FolderStats, title: str = "") -> str:
    """A plain-text table: one row per file, per modality and overall."""
    head = f"{'':<16}{'captions':>10}{'words':>11}{'mean words':>12}{'unknown':>9}{'unknown %':>11}"
    rows = [title] if title else []
    rows.append(head)

    def row(name: str, c: Counts) -> str:
        return f"{name:<16}{c.captions:>10}{c.words:>11}{c.mean_words:>12.2f}{c.unknown:>9}{c.unknown_rate:>11.2f}"

    rows += [row(name, c) for name, c in stats.files.items()]
    rows += [row(f"modality {tag}", c) for tag, c in stats.modalities.items()]
    rows.append(row("overall", stats.overall))
    return "\n".join(rows)


def stats_to_json(stats: FolderStats) -> Mapping:
    enc = lambda c: dict(captions=c.captions, words=c.words, mean_words=round(c.mean_words, 4),  # noqa: E731
                         unknown=c.unknown, unknown_rate=round(c.unknown_rate, 4))
    return {"files": {k: enc(v) for k, v in stats.files.items()},
            "modalities": {k: enc(v) for k, v in stats.modalities.items()},
            "overall": enc(stats.overall)}

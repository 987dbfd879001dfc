"""What one public dataset release is, as a record: where it keeps its splits and modalities, how its file names
read, which evaluation protocol it uses, whom to cite, its training preset and how the synthetic generator names
files like it.

Why one record: the builder, the synthetic generator, the dataset card and the folder reader of ``embed.py`` all
need these facts; each reads them from the release's one module in :mod:`mmreid.data.releases`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np

SPLITS = ("train", "query", "gallery")
KINDS = ("person", "vehicle")
PROTOCOLS = ("camera", "scene")


class DatasetLayoutError(ValueError):
    """A folder, image or caption file does not match what its dataset layout promises."""


@dataclass(frozen=True)
class ParsedName:
    """What a file name says: identity, 0-based camera and scene (-1 where the release has none)."""

    pid: int
    camid: int
    sceneid: int = -1


def bad_name(name: str, expected: str) -> DatasetLayoutError:
    """The error of a file name that does not parse, naming the form expected."""
    return DatasetLayoutError(f"cannot parse file name {name!r}: expected {expected}")


@dataclass(frozen=True)
class Source:
    """What the dataset card says about a release: a summary, the paper that introduced it, and its BibTeX
    (only fields checked against the papers' reference lists; no URL: users obtain the data from its authors)."""

    summary: str
    paper: str  # title, authors, venue and year, as one line
    bibtex: str


# (pid, camera as written in the name, scene, image index k, capture flag) -> file name
FileNamer = Callable[[int, int, int, int, int], str]
# (pid, the identity's generator, its two scenes, its flag) -> (scenes, flag): a release's own capture conditions
CaptureHook = Callable[[int, np.random.Generator, tuple, int], tuple[tuple, int]]


@dataclass(frozen=True)
class SyntheticNaming:
    """How the synthetic generator writes files like the release's (the folders come from the layout)."""

    train_cams: tuple[int, ...]  # camera numbers as written in file names
    test_cams: tuple[int, ...]
    with_scenes: bool  # names carry a scene id
    default_size: tuple[int, int]  # (H, W) of one modality image
    file_name: FileNamer
    captures: Optional[CaptureHook] = None  # None: every identity as drawn


@dataclass(frozen=True)
class Release:
    """One public release.

    ``folders``: the dataset's own folder as found under a parent root (first match wins; the synthetic generator
    writes the first). ``split_dirs``: the folder of each split (query and gallery may share one).
    ``modality_dirs``: RGB, NIR, TIR sub-folder names, or ``None`` when one file holds all three side by side.
    ``nested``: one sub-folder per identity above the modality folders. ``kind``: what the identities are, for
    captions and cards. ``protocol``: what evaluation ranks against ("camera": same identity under the same camera
    is junk; "scene": same identity in the same scene; chosen from the scene ids, see
    ``mmreid.evaluation.protocol.choose_protocol``). ``preset``: its recipe, ``configs/<preset>.yaml``.
    """

    name: str
    kind: str
    folders: tuple[str, ...]
    split_dirs: Mapping[str, str]
    modality_dirs: Optional[tuple[str, str, str]]
    nested: bool
    parse_name: Callable[[str], ParsedName]
    protocol: str
    source: Source
    preset: str
    synthetic: SyntheticNaming
    aliases: tuple[str, ...] = field(default=())

    def __post_init__(self):
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} is not one of {KINDS}")
        if self.protocol not in PROTOCOLS:
            problems.append(f"protocol {self.protocol!r} is not one of {PROTOCOLS}")
        if tuple(self.split_dirs) != SPLITS:
            problems.append(f"split_dirs must map {SPLITS} in that order, got {tuple(self.split_dirs)}")
        if self.modality_dirs is not None and len(self.modality_dirs) != 3:
            problems.append("modality_dirs must name three folders (RGB, NIR, TIR) or be None")
        if not self.folders:
            problems.append("folders must name at least one folder")
        if problems:
            raise ValueError(f"release {self.name}: " + "; ".join(problems))

"""RGBNT100: multi-spectral vehicle re-identification, one file per sample holding RGB, NIR and TIR side by side,
Li et al., AAAI 2020."""

from __future__ import annotations

import re

from ..release import ParsedName, Release, Source, SyntheticNaming, bad_name

_NAME = re.compile(r"([-\d]+)_c([-\d]+)")


def parse_name(name: str) -> ParsedName:
    """``<pid>_c<cam>...``: the regex ``([-\\d]+)_c([-\\d]+)``, cameras 1..8 stored as 0..7."""
    m = _NAME.search(name)
    try:
        pid, cam = int(m.group(1)), int(m.group(2))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        raise bad_name(name, "'<pid>_c<camera>_....jpg' matching ([-\\d]+)_c([-\\d]+)") from None
    if cam < 1:
        raise bad_name(name, f"a camera number >= 1 after '_c' (got {cam})")
    return ParsedName(pid=pid, camid=cam - 1)


RELEASE = Release(
    name="RGBNT100",
    kind="vehicle",
    folders=("RGBNT100/rgbir", "rgbir"),
    split_dirs={"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"},
    modality_dirs=None,  # one 768x128 file = RGB | NIR | TIR
    nested=False,
    parse_name=parse_name,
    protocol="camera",
    preset="rgbnt100",
    source=Source(
        summary="a multi-spectral vehicle re-identification benchmark; each source image holds the RGB, NIR and TIR "
        "views side by side and is stored here as three lossless PNG crops",
        paper='"Multi-Spectral Vehicle Re-Identification: A Challenge", Hongchao Li, Chenglong Li, Xianpeng Zhu, '
        "Aihua Zheng and Bin Luo, AAAI 2020",
        bibtex="""@inproceedings{li2020multi,
  title     = {Multi-Spectral Vehicle Re-Identification: A Challenge},
  author    = {Li, Hongchao and Li, Chenglong and Zhu, Xianpeng and Zheng, Aihua and Luo, Bin},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {34},
  year      = {2020}
}""",
    ),
    synthetic=SyntheticNaming(
        train_cams=tuple(range(1, 9)),
        test_cams=tuple(range(1, 9)),
        with_scenes=False,
        default_size=(32, 64),
        file_name=lambda pid, cam, scene, k, flag: f"{pid:04d}_c{cam:03d}_{k:03d}.jpg",
    ),
)

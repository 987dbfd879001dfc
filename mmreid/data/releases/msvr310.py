"""MSVR310: multi-spectral vehicle re-identification with scene ids, Zheng et al., arXiv 2022."""

from __future__ import annotations

import re

from ..release import ParsedName, Release, Source, SyntheticNaming, bad_name

_NAME = re.compile(r"^(\d{4})_s(\d{3})_v(\d)_")


def parse_name(name: str) -> ParsedName:
    """``VVVV_sSSS_vC_NNN.jpg``: pid = name[0:4], scene = name[6:9], camera = name[11] (0..7)."""
    m = _NAME.match(name)
    if not m:
        raise bad_name(name, "'VVVV_sSSS_vC_NNN.jpg', e.g. '0317_s000_v2_001.jpg'")
    return ParsedName(pid=int(m.group(1)), camid=int(m.group(3)), sceneid=int(m.group(2)))


RELEASE = Release(
    name="MSVR310",
    kind="vehicle",
    folders=("MSVR310",),
    split_dirs={"train": "bounding_box_train", "query": "query3", "gallery": "bounding_box_test"},
    modality_dirs=("vis", "ni", "th"),
    nested=True,  # <split>/<vehicle id>/{vis,ni,th}/
    parse_name=parse_name,
    protocol="scene",  # every record has a scene: same vehicle in the same scene is junk
    preset="msvr310",
    source=Source(
        summary="a multi-spectral vehicle re-identification benchmark (RGB, NIR and TIR images) with scene ids",
        paper='"Multi-spectral Vehicle Re-identification with Cross-directional Consistency Network and a '
        'High-quality Benchmark", Aihua Zheng, Xianpeng Zhu, Zhiqi Ma, Chenglong Li, Jin Tang and Jixin Ma, '
        "arXiv preprint 2208.00632, 2022",
        bibtex="""@article{zheng2022multi,
  title   = {Multi-spectral Vehicle Re-identification with Cross-directional Consistency Network and a High-quality Benchmark},
  author  = {Zheng, Aihua and Zhu, Xianpeng and Ma, Zhiqi and Li, Chenglong and Tang, Jin and Ma, Jixin},
  journal = {arXiv preprint arXiv:2208.00632},
  year    = {2022}
}""",
    ),
    synthetic=SyntheticNaming(
        train_cams=tuple(range(8)),
        test_cams=tuple(range(8)),
        with_scenes=True,
        default_size=(32, 64),
        file_name=lambda pid, cam, scene, k, flag: f"{pid:04d}_s{scene:03d}_v{cam}_{k:03d}.jpg",
    ),
)

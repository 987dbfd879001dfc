"""RGBNT201: multi-modality person re-identification (RGB / NIR / TIR), Zheng et al., AAAI 2021."""

from __future__ import annotations

import re

from ..release import ParsedName, Release, Source, SyntheticNaming, bad_name

_NAME = re.compile(r"^(\d+)_cam(\d+)_")


def parse_name(name: str) -> ParsedName:
    """``PPPPPP_camC_X_NN.jpg``: pid = leading digits, camera = C - 1 (cam1..cam4 -> 0..3)."""
    m = _NAME.match(name)
    if not m or int(m.group(2)) < 1:
        raise bad_name(name, "'PPPPPP_camC_X_NN.jpg' with C >= 1, e.g. '000009_cam3_1_00.jpg'")
    return ParsedName(pid=int(m.group(1)), camid=int(m.group(2)) - 1)


RELEASE = Release(
    name="RGBNT201",
    kind="person",
    folders=("RGBNT201",),
    split_dirs={"train": "train_171", "query": "test", "gallery": "test"},  # query = gallery = the test folder
    modality_dirs=("RGB", "NI", "TI"),
    nested=False,
    parse_name=parse_name,
    protocol="camera",
    preset="rgbnt201",
    source=Source(
        summary="a multi-modality person re-identification benchmark: aligned RGB, near-infrared (NIR) and "
        "thermal-infrared (TIR) images of each person",
        paper='"Robust Multi-Modality Person Re-identification", Aihua Zheng, Zi Wang, Zihan Chen, Chenglong Li and '
        "Jin Tang, AAAI 2021",
        bibtex="""@inproceedings{zheng2021robust,
  title     = {Robust Multi-Modality Person Re-identification},
  author    = {Zheng, Aihua and Wang, Zi and Chen, Zihan and Li, Chenglong and Tang, Jin},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {35},
  pages     = {3529--3537},
  year      = {2021}
}""",
    ),
    synthetic=SyntheticNaming(
        train_cams=(1, 2, 3, 4),
        test_cams=(1, 2),
        with_scenes=False,
        default_size=(64, 32),
        file_name=lambda pid, cam, scene, k, flag: f"{pid:06d}_cam{cam}_{flag % 2}_{k:02d}.jpg",
    ),
)

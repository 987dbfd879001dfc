"""WMVEID863 (also distributed as MSVWild863): multi-spectral vehicle re-identification captured in the wild."""

from __future__ import annotations

import re

import numpy as np

from ..release import ParsedName, Release, Source, SyntheticNaming, bad_name

_PID = re.compile(r"^(\d+)_")
_VIEW = re.compile(r"_v(\d+)(?=_|\.)")
_SCENE = re.compile(r"_s(\d+)(?=_|\.)")
NO_SCENE = 999  # the scene token of the records without a scene (s999)
WITH_SCENE_FLAG = 9  # the capture flag (n9) of the records with MSVR310-style scenes


def parse_name(name: str) -> ParsedName:
    """``PPPP_vC_nF_sSSS_NNN.jpg``: pid = digits before the first '_', camera = C (v0..v7), scene = SSS, with
    ``s999`` (the records without a scene) and names without an ``_s`` token stored as -1. ``nF`` is a capture flag
    (n0/n1 for the wild captures, n9 for the records with MSVR310-style scenes) and is not stored. Tokens are
    searched, not sliced, so the odd names in the release (e.g. ``0865_0865_vis_v1_n0_03.jpg``) still parse."""
    pid_m, view_m = _PID.match(name), _VIEW.search(name)
    if not pid_m or not view_m:
        raise bad_name(name, "'PPPP_vC_nF_sSSS_NNN.jpg', e.g. '0258_v2_n9_s000_022.jpg'")
    scene_m = _SCENE.search(name)
    scene = int(scene_m.group(1)) if scene_m else -1
    return ParsedName(pid=int(pid_m.group(1)), camid=int(view_m.group(1)),
                      sceneid=-1 if scene == NO_SCENE else scene)


def _captures(pid: int, rng: np.random.Generator, scenes: tuple, flag: int) -> tuple[tuple, int]:
    """Half the synthetic identities are wild captures without a scene (s999, flag n0/n1), the others carry
    MSVR310-style scenes (n9), as in the release."""
    flag = WITH_SCENE_FLAG if pid % 4 < 2 else int(rng.integers(0, 2))
    return (scenes if flag == WITH_SCENE_FLAG else (NO_SCENE, NO_SCENE)), flag


RELEASE = Release(
    name="WMVEID863",
    aliases=("MSVWild863",),
    kind="vehicle",
    folders=("WMVEID863", "MSVWild863"),
    split_dirs={"train": "train", "query": "query", "gallery": "test"},
    modality_dirs=("vis", "ni", "th"),
    nested=False,
    parse_name=parse_name,
    # Camera: the released test records are s999 wild captures without a scene (1,220 of the 1,232 names in the
    # NEXT test caption files), so not every row has a scene id and evaluation ranks by camera.
    protocol="camera",
    preset="wmveid863",
    source=Source(
        summary="a multi-spectral vehicle re-identification benchmark captured in the wild (RGB, NIR and TIR "
        "images; also distributed as MSVWild863)",
        paper='"Magic Tokens: Select Diverse Tokens for Multi-modal Object Re-Identification", Pingping Zhang, '
        "Yuhao Wang, Yang Liu, Zhengzheng Tu and Huchuan Lu, CVPR 2024",
        bibtex="""@inproceedings{zhang2024magic,
  title     = {Magic Tokens: Select Diverse Tokens for Multi-modal Object Re-Identification},
  author    = {Zhang, Pingping and Wang, Yuhao and Liu, Yang and Tu, Zhengzheng and Lu, Huchuan},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {17117--17126},
  year      = {2024}
}""",
    ),
    synthetic=SyntheticNaming(
        train_cams=tuple(range(8)),
        test_cams=tuple(range(8)),
        with_scenes=True,
        default_size=(32, 64),
        file_name=lambda pid, cam, scene, k, flag: f"{pid:04d}_v{cam}_n{flag}_s{scene:03d}_{k:03d}.jpg",
        captures=_captures,
    ),
)

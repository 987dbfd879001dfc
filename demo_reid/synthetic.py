"""Small synthetic multi-modal ReID datasets, written on disk in the public releases' layouts.

Why: the converter, training and evaluation must run offline end to end, and writing real
JPEGs with the real folder and naming schemes makes the synthetic data take exactly the code
path real data takes (``build_dataset`` cannot tell the difference).

What makes it learnable but not trivial:

* identity = a coarse appearance that survives 64x32 resizing, spread over the modalities:
  RGB shows three coloured body bands (from a 10-colour palette, so single bands collide
  between identities) and a coloured accessory patch; NIR shows the same silhouette with
  per-identity grey levels unrelated to the RGB colours; TIR shows a soft warm silhouette
  with two per-identity heat spots;
* nuisance: position/size jitter, brightness, a per-camera colour cast, per-camera/scene
  backgrounds with gradients, pixel noise and JPEG compression;
* degraded modalities: about 20% of the triples have a dark RGB image (night) and,
  independently, about 20% a very noisy TIR image, so fusing modalities pays off.

Everything is a function of ``seed`` (and the identity/sample index), so two runs with the
same arguments write byte-identical files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

SYNTHETIC_LAYOUTS = ("RGBNT201", "RGBNT100", "MSVR310", "WMVEID863")
DARK_RGB_PROB = 0.2
NOISY_TIR_PROB = 0.2
MIN_IMAGES_PER_ID = 4  # two query images + two gallery images with other cameras/scenes
JPEG_QUALITY = 92

# The 10 colours of bands, accessories and background distractors, with the names captions use
# for them (names first, so a colour is named the same everywhere).
_PALETTE_ENTRIES = (
    ("red", (0.85, 0.15, 0.15)), ("green", (0.15, 0.65, 0.20)), ("blue", (0.15, 0.25, 0.85)),
    ("yellow", (0.92, 0.85, 0.20)), ("white", (0.92, 0.92, 0.92)), ("black", (0.08, 0.08, 0.08)),
    ("orange", (0.95, 0.50, 0.10)), ("purple", (0.55, 0.20, 0.70)), ("gray", (0.50, 0.50, 0.50)),
    ("cyan", (0.15, 0.80, 0.85)),
)
COLOR_NAMES = tuple(name for name, _ in _PALETTE_ENTRIES)
_PALETTE = np.array([rgb for _, rgb in _PALETTE_ENTRIES])


@dataclass(frozen=True)
class _Spec:
    """How one release names and nests its files (only what the generator needs)."""

    folder: str  # relative to out_dir; its first component is what gets created
    split_dirs: tuple[str, str, str]  # train, query, gallery (query == gallery: one folder)
    modality_dirs: Optional[tuple[str, str, str]]  # None: RGB|NIR|TIR side by side in one file
    nested: bool  # one folder per identity above the modality folders
    train_cams: tuple[int, ...]  # camera numbers as written in file names
    test_cams: tuple[int, ...]
    with_scenes: bool
    default_size: tuple[int, int]  # (H, W) of one modality image
    file_name: Callable[[int, int, int, int, int], str]  # (pid, cam, scene, k, flag) -> name


_SPECS = {
    "RGBNT201": _Spec(
        "RGBNT201", ("train_171", "test", "test"), ("RGB", "NI", "TI"), False,
        (1, 2, 3, 4), (1, 2), False, (64, 32),
        lambda pid, cam, scene, k, flag: f"{pid:06d}_cam{cam}_{flag % 2}_{k:02d}.jpg",
    ),
    "RGBNT100": _Spec(
        "RGBNT100/rgbir", ("bounding_box_train", "query", "bounding_box_test"), None, False,
        tuple(range(1, 9)), tuple(range(1, 9)), False, (32, 64),
        lambda pid, cam, scene, k, flag: f"{pid:04d}_c{cam:03d}_{k:03d}.jpg",
    ),
    "MSVR310": _Spec(
        "MSVR310", ("bounding_box_train", "query3", "bounding_box_test"), ("vis", "ni", "th"), True,
        tuple(range(8)), tuple(range(8)), True, (32, 64),
        lambda pid, cam, scene, k, flag: f"{pid:04d}_s{scene:03d}_v{cam}_{k:03d}.jpg",
    ),
    "WMVEID863": _Spec(
        "WMVEID863", ("train", "query", "test"), ("vis", "ni", "th"), False,
        tuple(range(8)), tuple(range(8)), True, (32, 64),
        lambda pid, cam, scene, k, flag: f"{pid:04d}_v{cam}_n{flag}_s{scene:03d}_{k:03d}.jpg",
    ),
}


# --------------------------------------------------------------------------------------------
# Appearance
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Look:
    """Everything that identifies one identity, in image-size-independent units."""

    colors: np.ndarray  # (3, 3) RGB of the three bands
    cuts: tuple[float, float]  # band boundaries, relative to the body height
    width: float  # body width / image width
    top: float
    height: float
    acc_side: float  # -1 left, +1 right edge of the body
    acc_y: float
    acc_color: np.ndarray  # (3,)
    acc_nir: float
    nir_levels: np.ndarray  # (3,) band grey levels in NIR
    spots: np.ndarray  # (2, 4): y, x (relative to the body), amplitude, sigma
    color_ids: tuple[int, int, int] = (0, 0, 0)  # palette entries of the bands (captions name them)
    acc_color_id: int = 0


def _identity_look(seed: int, pid: int) -> _Look:
    """Draw one identity's look.  The draws keep their historical order (colours before cuts,
    ...), because the images of a seed must stay byte-identical: the palette indices are kept
    only so captions can name the colours."""
    rng = np.random.default_rng([seed, 1, pid])
    jitter = rng.uniform(-0.06, 0.06, (3, 3))
    color_ids = rng.integers(0, len(_PALETTE), 3)
    cuts = (float(rng.uniform(0.25, 0.4)), float(rng.uniform(0.55, 0.75)))
    width, top, height = float(rng.uniform(0.45, 0.75)), float(rng.uniform(0.05, 0.15)), float(rng.uniform(0.75, 0.85))
    acc_side, acc_y = float(rng.choice([-1.0, 1.0])), float(rng.uniform(0.2, 0.8))
    acc_color_id = int(rng.integers(0, len(_PALETTE)))
    return _Look(
        colors=np.clip(_PALETTE[color_ids] + jitter, 0, 1),
        cuts=cuts,
        width=width,
        top=top,
        height=height,
        acc_side=acc_side,
        acc_y=acc_y,
        acc_color=_PALETTE[acc_color_id],
        acc_nir=float(rng.uniform(0.3, 1.0)),
        nir_levels=rng.choice([0.2, 0.45, 0.7, 0.95], 3),  # few levels: NIR alone is ambiguous
        spots=np.column_stack([rng.uniform(0.1, 0.9, 2), rng.uniform(0.15, 0.85, 2),
                               rng.uniform(0.35, 0.7, 2), rng.uniform(0.06, 0.12, 2)]),
        color_ids=tuple(int(i) for i in color_ids),
        acc_color_id=acc_color_id,
    )


def _to_uint8(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0) * 255.0 + 0.5
    x = x.astype(np.uint8)
    return np.repeat(x[..., None], 3, axis=2) if x.ndim == 2 else x


def render_triple(look: _Look, rng: np.random.Generator, size: tuple[int, int], camera_cast: np.ndarray,
                  background: np.ndarray, dark_rgb: bool, noisy_tir: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one (RGB, NIR, TIR) sample of an identity; returns three uint8 (H, W, 3) arrays."""
    h, w = size
    yy = ((np.arange(h) + 0.5) / h)[:, None]
    xx = ((np.arange(w) + 0.5) / w)[None, :]
    cx = 0.5 + rng.uniform(-0.12, 0.12)
    top = look.top + rng.uniform(-0.04, 0.04)
    bottom = min(0.99, top + look.height * rng.uniform(0.92, 1.05))
    half = look.width / 2 * rng.uniform(0.92, 1.08)
    inside = (np.abs(xx - cx) <= half) & (yy >= top) & (yy <= bottom)
    rel = np.clip((yy - top) / (bottom - top), 0, 1)
    band = np.broadcast_to((rel >= look.cuts[0]).astype(int) + (rel >= look.cuts[1]), (h, w))
    acc_x, acc_y = cx + look.acc_side * half, top + look.acc_y * (bottom - top)
    acc = (np.abs(xx - acc_x) <= 0.09) & (np.abs(yy - acc_y) <= 0.06)
    grad = rng.uniform(-0.15, 0.15) * (xx - 0.5) + rng.uniform(-0.1, 0.1) * (yy - 0.5)

    bg = background[:3] + rng.uniform(-0.08, 0.08, 3) + grad[..., None]
    clutter = np.zeros((h, w), dtype=bool)
    for _ in range(2):  # background distractors (other objects), drawn behind the body
        cy_, cx_, sy_, sx_ = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2), rng.uniform(0.1, 0.3)
        box_ = (np.abs(yy - cy_) <= sy_) & (np.abs(xx - cx_) <= sx_)
        bg = np.where(box_[..., None], _PALETTE[rng.integers(0, len(_PALETTE))], bg)
        clutter |= box_
    rgb = np.where(inside[..., None], look.colors[band], bg)
    rgb = np.where(acc[..., None], look.acc_color, rgb)
    rgb = rgb * camera_cast * rng.uniform(0.65, 1.3) + rng.normal(0, 0.04, (h, w, 3))
    if dark_rgb:
        rgb = rgb * rng.uniform(0.08, 0.2) + rng.normal(0, 0.02, (h, w, 3))

    nir_bg = np.where(clutter, background[3] + 0.3, background[3]) + 0.5 * grad
    nir = np.where(inside, look.nir_levels[band], nir_bg)
    nir = np.where(acc, look.acc_nir, nir) * rng.uniform(0.75, 1.25) + rng.normal(0, 0.04, (h, w))

    box = np.maximum(np.abs(xx - cx) / half, np.abs(yy - (top + bottom) / 2) / ((bottom - top) / 2))
    tir = 0.1 + rng.uniform(0, 0.08) + 0.3 / (1 + np.exp(-8 * (1 - box)))
    for sy, sx, amp, sigma in look.spots:
        py, px = top + sy * (bottom - top), cx + (sx - 0.5) * 2 * half
        tir = tir + amp * np.exp(-((yy - py) ** 2 + ((xx - px) * w / h) ** 2) / (2 * sigma**2))
    tir = tir * rng.uniform(0.9, 1.1) + rng.normal(0, 0.02, (h, w))
    if noisy_tir:
        tir = tir + rng.normal(0, 0.25, (h, w))
    return _to_uint8(rgb), _to_uint8(nir), _to_uint8(tir)


# --------------------------------------------------------------------------------------------
# Writing a layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    split_dir: str
    pid: int
    cam: int
    scene: int
    k: int
    flag: int


def _identity_samples(spec: _Spec, seed: int, pid: int, train: bool, n: int) -> list[_Sample]:
    """Cameras cycle and scenes alternate, so every query (images 0 and 1) has gallery
    matches under another camera and in another scene."""
    rng = np.random.default_rng([seed, 2, pid])
    cams = spec.train_cams if train else spec.test_cams
    offset = int(rng.integers(len(cams)))
    scenes, flag = (-1, -1), int(rng.integers(0, 2))
    if spec.with_scenes:
        scenes = tuple(int(s) for s in rng.choice(30, 2, replace=False))
        if spec.folder == "WMVEID863":  # half the identities are wild captures without a scene
            flag = 9 if pid % 4 < 2 else int(rng.integers(0, 2))
            scenes = scenes if flag == 9 else (999, 999)
    samples = []
    for k in range(n):
        split = spec.split_dirs[0] if train else spec.split_dirs[1 if k < 2 else 2]
        samples.append(_Sample(split, pid, cams[(offset + k) % len(cams)], scenes[k % 2], k, flag))
    return samples


def _save_sample(base: Path, spec: _Spec, sample: _Sample, images: tuple[np.ndarray, ...]) -> None:
    name = spec.file_name(sample.pid, sample.cam, sample.scene, sample.k, sample.flag)
    split = base / sample.split_dir
    if spec.modality_dirs is None:
        split.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(images, axis=1)).save(split / name, quality=JPEG_QUALITY)
        return
    group = split / f"{sample.pid:04d}" if spec.nested else split
    for mod_dir, img in zip(spec.modality_dirs, images):
        (group / mod_dir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(group / mod_dir / name, quality=JPEG_QUALITY)


def _check_args(layout: str, num_train_ids: int, num_test_ids: int, images_per_id: int,
                image_size: Optional[tuple[int, int]]) -> tuple[_Spec, tuple[int, int]]:
    if layout not in _SPECS:
        raise ValueError(f"--layout {layout!r}: expected one of {', '.join(SYNTHETIC_LAYOUTS)}")
    size = tuple(int(v) for v in image_size) if image_size is not None else _SPECS[layout].default_size
    if num_train_ids < 1 or num_test_ids < 1:
        raise ValueError(f"need at least one train and one test identity, got {num_train_ids} and {num_test_ids}")
    if images_per_id < MIN_IMAGES_PER_ID:
        raise ValueError(f"--images-per-id {images_per_id}: expected at least {MIN_IMAGES_PER_ID}")
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"--image-size {image_size}: expected (H, W) with both at least 8 pixels")
    return _SPECS[layout], size


def make_synthetic(
    layout: str,
    out_dir: str | Path,
    seed: int = 0,
    num_train_ids: int = 20,
    num_test_ids: int = 10,
    images_per_id: int = 10,
    image_size: Optional[tuple[int, int]] = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset under ``out_dir`` in ``layout``'s on-disk layout.

    ``image_size`` is (H, W) of one modality image; default 64x32 for RGBNT201 (persons) and
    32x64 for the vehicle layouts.  Train pids are odd, test pids even (disjoint, and not
    contiguous, so relabeling is exercised).  Returns the dataset folder (e.g.
    ``out_dir/RGBNT201``), which ``build_dataset`` accepts as ``root``.  The folder is written
    under a temporary name and renamed at the end, so a failure leaves nothing behind.
    """
    layout = layout.upper()
    spec, size = _check_args(layout, num_train_ids, num_test_ids, images_per_id, image_size)
    out_dir = Path(out_dir).expanduser().absolute()
    top = spec.folder.split("/")[0]
    target = out_dir / top
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass --overwrite to replace it)")
    out_dir.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{top}.tmp-", dir=out_dir))
    try:
        base = tmp / spec.folder
        ids = [(2 * i + 1, True) for i in range(num_train_ids)] + [(2 * i + 2, False) for i in range(num_test_ids)]
        for pid, train in ids:
            look = _identity_look(seed, pid)
            for s in _identity_samples(spec, seed, pid, train, images_per_id):
                rng = np.random.default_rng([seed, 3, pid, s.k])
                cast = np.random.default_rng([seed, 4, s.cam]).uniform(0.85, 1.15, 3)
                background = np.random.default_rng([seed, 5, s.cam, max(s.scene, 0)]).uniform(
                    [0.2, 0.2, 0.2, 0.2], [0.8, 0.8, 0.8, 0.6])
                dark, noisy = rng.random() < DARK_RGB_PROB, rng.random() < NOISY_TIR_PROB
                _save_sample(base, spec, s, render_triple(look, rng, size, cast, background, dark, noisy))
        for d in dict.fromkeys(spec.split_dirs):  # split folders exist even when empty
            (base / d).mkdir(parents=True, exist_ok=True)
        meta = dict(layout=layout, seed=seed, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                    images_per_id=images_per_id, image_size=list(size), synthetic=True)
        (tmp / top / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():
            target.rename(tmp / ".old")
        (tmp / top).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

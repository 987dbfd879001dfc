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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ..publish import atomic_output
from ..captioning.render import noun_phrase, render_caption
from ..captioning.schema import COLOR_SOURCES, get_schema
from ..captioning.store import write_split
from .columns import MODALITY_COLUMNS as MODALITIES
from .release import Release
from .releases import RELEASES, get_release

SYNTHETIC_LAYOUTS = tuple(RELEASES)  # every registered release: its record says how to name files like it
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
# Captions
# --------------------------------------------------------------------------------------------

CAPTIONS_DIR = "captions"  # the caption folder, inside the dataset folder make_synthetic returns
UNKNOWN_PROB = 0.1  # each identity attribute of each caption is "unknown" this often ...
DARK_COLOR_UNKNOWN_PROB = 0.5  # ... and a colour in a dark RGB image this often
MISSING_CAPTION_PROB = 0.05  # each (image, modality) caption is left out of its file this often

# The caption attribute naming the colour of body band 0, 1, 2 (None: drawn but not written; the
# released vehicle template names one colour).  ``footwear_color`` and ``carrying_color`` are no
# template slots: they are written into the footwear / carried-item phrase (see _phrase_colors).
BAND_ATTRIBUTES = {"person": ("upper_clothing_color", "lower_clothing_color", "footwear_color"),
                   "vehicle": (None, "color", None)}
# phrase colour -> (the attribute whose phrase it colours, the noun when that attribute is unknown;
# None: an unknown carried item is its own sentence, "It is unknown whether she is carrying anything.")
_PHRASE_COLORS = {"footwear_color": ("footwear", "footwear"), "carrying_color": ("carrying", None)}
_COLOR_ATTRIBUTES = frozenset(a for bands in BAND_ATTRIBUTES.values() for a in bands if a) | {"carrying_color"}
_SCENE_ATTRIBUTES = ("time", "lighting", "clarity")  # follow the image's dark-RGB / noisy-TIR flags
_BRANDS = ("Volkswagen", "Toyota", "Honda", "Nissan", "Buick", "Chevrolet", "Skoda", "Volvo")  # open vocabulary
_PATCH_MEANING = {  # the accessory patch, high (upper half of the body) or low, as caption values
    "person": ({"carrying": "shoulder bag"}, {"carrying": "handbag"}),
    "vehicle": ({"roof_rack": "present", "spoiler": "not present"}, {"roof_rack": "not present", "spoiler": "present"}),
}


@dataclass(frozen=True)
class _Drawn:
    """One written image triple, with what its caption needs to know about how it was drawn."""

    name: str  # the file name: the released captions' ``item``
    caption_split: str  # "train" or "test" (query and gallery share the test files)
    pid: int
    k: int
    look: _Look
    dark_rgb: bool
    noisy_tir: bool


def _identity_attributes(kind: str, look: _Look) -> dict[str, str]:
    """What an identity's images draw, as caption values: band colours by palette name and
    the accessory patch as a bag (persons) or a roof rack / spoiler (vehicles).

    Why these and only these: they are the only identity information in the captions, so the
    text tells identities apart exactly as far as the drawn appearance does.  NIR grey levels
    and TIR heat spots have no slot in the released templates and are not written.
    """
    values = {attr: COLOR_NAMES[i] for attr, i in zip(BAND_ATTRIBUTES[kind], look.color_ids) if attr}
    values.update(_PATCH_MEANING[kind][0 if look.acc_y < 0.5 else 1])
    if kind == "person":
        values["carrying_color"] = COLOR_NAMES[look.acc_color_id]
    return values


def _image_attributes(kind: str, drawn: dict[str, str], rng: np.random.Generator, dark_rgb: bool) -> dict[str, str]:
    """Per image, the attributes the generator does not draw (age, gender, view, garment types,
    brand, ...): guesses drawn per image and shared by its three captions (one object), like a
    captioner guessing at a small crop.  Being independent of identity, they carry none.  Time
    and lighting follow the image's dark-RGB flag (one scene for RGB and NIR)."""
    values = {}
    for attr in get_schema(kind).attributes:
        if attr.name not in drawn and attr.name not in _SCENE_ATTRIBUTES:
            choices = attr.values if attr.values is not None else _BRANDS
            values[attr.name] = choices[int(rng.integers(len(choices)))]
    values["time"] = "nighttime" if dark_rgb else "daytime"
    values["lighting"] = "dim" if dark_rgb else ("bright", "normal")[int(rng.integers(2))]
    return values


def _clarity(modality: str, dark_rgb: bool, noisy_tir: bool) -> str:
    """A dark RGB image and a noisy TIR image read as blurry, everything else as clear."""
    blurry = (modality == "rgb" and dark_rgb) or (modality == "tir" and noisy_tir)
    return "blurry" if blurry else "clear"


def _hide_unknown(values: dict[str, str], drawn: dict[str, str], rng: np.random.Generator,
                  dark_rgb_caption: bool) -> dict[str, Optional[str]]:
    """Make each identity attribute unknown (None) with UNKNOWN_PROB, a colour of a dark RGB
    image with DARK_COLOR_UNKNOWN_PROB: the quirk of real captions that gaps fall on what is
    hard to see.  One draw per attribute in a fixed order, whatever the outcome."""
    names = sorted(drawn)
    draws = rng.random(len(names))
    out: dict[str, Optional[str]] = dict(values)
    for name, u in zip(names, draws):
        p = DARK_COLOR_UNKNOWN_PROB if dark_rgb_caption and name in _COLOR_ATTRIBUTES else UNKNOWN_PROB
        if u < p:
            out[name] = None
    return out


def _phrase_colors(values: dict[str, Optional[str]], modality: str) -> dict[str, Optional[str]]:
    """Write the footwear and bag colours into their phrases ("red casual sneakers", "a handbag
    of unknown color"), in colour modalities only: the templates have no colour slot there,
    and the renderer prints those phrases as given."""
    out = dict(values)
    for color_attr, (phrase_attr, generic) in _PHRASE_COLORS.items():
        if color_attr not in out:
            continue
        color, head = out.pop(color_attr), out.get(phrase_attr)
        if head is None and generic is None:
            continue
        mods = [("color", color)] if modality in COLOR_SOURCES else []
        out[phrase_attr] = noun_phrase(mods, head, generic or phrase_attr, "type")
    return out


def _triple_captions(kind: str, seed: int, d: _Drawn) -> dict[str, Optional[str]]:
    """The RGB / NIR / TIR captions of one triple (None: left out of its file).

    All caption randomness comes from its own generator, ``[seed, 7, pid, k]``, so the image
    streams (and so the image bytes) do not depend on whether captions are written.
    """
    rng = np.random.default_rng([seed, 7, d.pid, d.k])
    drawn = _identity_attributes(kind, d.look)
    values = {**_image_attributes(kind, drawn, rng, d.dark_rgb), **drawn}
    out: dict[str, Optional[str]] = {}
    for modality in MODALITIES:
        missing = rng.random() < MISSING_CAPTION_PROB
        shown = _hide_unknown(values, drawn, rng, d.dark_rgb and modality == "rgb")
        shown["clarity"] = _clarity(modality, d.dark_rgb, d.noisy_tir)
        out[modality] = None if missing else render_caption(kind, modality, _phrase_colors(shown, modality))
    return out


def _write_captions(folder: Path, layout: str, seed: int, drawn: list[_Drawn]) -> None:
    """Write ``{train,test}_{RGB,NI,TI}.json`` in the released format into ``folder``."""
    kind = RELEASES[layout].kind
    captions = {split: {m: {} for m in MODALITIES} for split in ("train", "test")}
    for d in drawn:
        for modality, text in _triple_captions(kind, seed, d).items():
            if text is not None:
                captions[d.caption_split][modality][d.name] = text
    for split, per_modality in captions.items():
        write_split(folder, split, per_modality)


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


def _identity_samples(release: Release, seed: int, pid: int, train: bool, n: int) -> list[_Sample]:
    """Cameras cycle and scenes alternate, so every query (images 0 and 1) has gallery
    matches under another camera and in another scene."""
    naming, split_dirs = release.synthetic, tuple(release.split_dirs.values())
    rng = np.random.default_rng([seed, 2, pid])
    cams = naming.train_cams if train else naming.test_cams
    offset = int(rng.integers(len(cams)))
    scenes, flag = (-1, -1), int(rng.integers(0, 2))
    if naming.with_scenes:
        scenes = tuple(int(s) for s in rng.choice(30, 2, replace=False))
        if naming.captures is not None:  # the release's own capture conditions (WMVEID863: wild, without scene)
            scenes, flag = naming.captures(pid, rng, scenes, flag)
    samples = []
    for k in range(n):
        split = split_dirs[0] if train else split_dirs[1 if k < 2 else 2]
        samples.append(_Sample(split, pid, cams[(offset + k) % len(cams)], scenes[k % 2], k, flag))
    return samples


def _sample_name(release: Release, sample: _Sample) -> str:
    """The file name of a sample, which is also its ``item`` in the caption files."""
    return release.synthetic.file_name(sample.pid, sample.cam, sample.scene, sample.k, sample.flag)


def _save_sample(base: Path, release: Release, sample: _Sample, images: tuple[np.ndarray, ...]) -> None:
    name = _sample_name(release, sample)
    split = base / sample.split_dir
    if release.modality_dirs is None:
        split.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(images, axis=1)).save(split / name, quality=JPEG_QUALITY)
        return
    group = split / f"{sample.pid:04d}" if release.nested else split
    for mod_dir, img in zip(release.modality_dirs, images):
        (group / mod_dir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(group / mod_dir / name, quality=JPEG_QUALITY)


def _check_args(layout: str, num_train_ids: int, num_test_ids: int, images_per_id: int,
                image_size: Optional[tuple[int, int]]) -> tuple[Release, tuple[int, int]]:
    try:
        release = get_release(layout)
    except ValueError:
        raise ValueError(f"--layout {layout!r}: expected one of {', '.join(SYNTHETIC_LAYOUTS)}") from None
    size = tuple(int(v) for v in image_size) if image_size is not None else release.synthetic.default_size
    if num_train_ids < 1 or num_test_ids < 1:
        raise ValueError(f"need at least one train and one test identity, got {num_train_ids} and {num_test_ids}")
    if images_per_id < MIN_IMAGES_PER_ID:
        raise ValueError(f"--images-per-id {images_per_id}: expected at least {MIN_IMAGES_PER_ID}")
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"--image-size {image_size}: expected (H, W) with both at least 8 pixels")
    return release, size


def make_synthetic(
    layout: str,
    out_dir: str | Path,
    seed: int = 0,
    num_train_ids: int = 20,
    num_test_ids: int = 10,
    images_per_id: int = 10,
    image_size: Optional[tuple[int, int]] = None,
    overwrite: bool = False,
    captions: bool = True,
) -> Path:
    """Write a synthetic dataset under ``out_dir`` in ``layout``'s on-disk layout.

    ``image_size`` is (H, W) of one modality image; default 64x32 for RGBNT201 (persons) and
    32x64 for the vehicle layouts.  Train pids are odd, test pids even (disjoint, and not
    contiguous, so relabeling is exercised).  Returns the dataset folder (e.g.
    ``out_dir/RGBNT201``), which ``build_dataset`` accepts as ``root``.  The folder is written
    under a temporary name and renamed at the end, so a failure leaves nothing behind.

    With ``captions`` (default), the folder also holds ``captions/{train,test}_{RGB,NI,TI}.json``
    in the NEXT release's format, for ``build_dataset(..., captions_dir=<folder>/captions)``:
    one caption per image and modality naming what the images draw of the identity (colours in
    RGB only), with unknown attributes and missing captions as in the released files.  Caption
    randomness has its own generator, so the images are the same bytes with or without captions.
    """
    release, size = _check_args(layout, num_train_ids, num_test_ids, images_per_id, image_size)
    layout = release.name
    out_dir = Path(out_dir).expanduser().absolute()
    top = release.folders[0].split("/")[0]
    target = out_dir / top
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass --overwrite to replace it)")
    out_dir.mkdir(parents=True, exist_ok=True)

    with atomic_output(target, overwrite=overwrite) as work:
        base = work.joinpath(*Path(release.folders[0]).parts[1:])  # the release's folders below its top one
        ids = [(2 * i + 1, True) for i in range(num_train_ids)] + [(2 * i + 2, False) for i in range(num_test_ids)]
        drawn: list[_Drawn] = []
        for pid, train in ids:
            look = _identity_look(seed, pid)
            for s in _identity_samples(release, seed, pid, train, images_per_id):
                rng = np.random.default_rng([seed, 3, pid, s.k])
                cast = np.random.default_rng([seed, 4, s.cam]).uniform(0.85, 1.15, 3)
                background = np.random.default_rng([seed, 5, s.cam, max(s.scene, 0)]).uniform(
                    [0.2, 0.2, 0.2, 0.2], [0.8, 0.8, 0.8, 0.6])
                dark, noisy = rng.random() < DARK_RGB_PROB, rng.random() < NOISY_TIR_PROB
                _save_sample(base, release, s, render_triple(look, rng, size, cast, background, dark, noisy))
                drawn.append(_Drawn(_sample_name(release, s), "train" if train else "test", pid, s.k, look,
                                    bool(dark), bool(noisy)))
        for d in dict.fromkeys(release.split_dirs.values()):  # split folders exist even when empty
            (base / d).mkdir(parents=True, exist_ok=True)
        meta = dict(layout=layout, seed=seed, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                    images_per_id=images_per_id, image_size=list(size), synthetic=True,
                    captions=CAPTIONS_DIR if captions else None)
        if captions:
            _write_captions(work / CAPTIONS_DIR, layout, seed, drawn)
        (work / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return target


# The synthetic set `python train.py` trains on when no --dataset is given.
DEFAULT_SET = dict(layout="RGBNT201", seed=0, num_train_ids=40, num_test_ids=20, images_per_id=12)


def describe_default_set() -> str:
    """One phrase naming the default set, for model cards."""
    s = DEFAULT_SET
    return (f"the synthetic {s['layout']}-layout set ({s['num_train_ids']} train / {s['num_test_ids']} test "
            f"identities, seed {s['seed']})")


def prepare_default_set(path: str | Path) -> Path:
    """The default synthetic set as an Arrow DatasetDict (with its captions) at ``path``: built once, then reused."""
    from .builder import build_dataset, save_dataset

    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        spec = dict(DEFAULT_SET)
        layout = spec.pop("layout")
        with tempfile.TemporaryDirectory() as raw, tempfile.TemporaryDirectory() as cache:
            root = make_synthetic(layout, raw, **spec)
            save_dataset(build_dataset(layout, root, captions_dir=root / CAPTIONS_DIR, cache_dir=cache), path,
                         overwrite=True)
    return path

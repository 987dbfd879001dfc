"""The synthetic generator writes the real layouts, deterministically, with learnable identities,
and captions in the released format that name what the images draw."""

import hashlib
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageColor

from mmreid.captioning.schema import COLORS
from mmreid.data.builder import DatasetBuildWarning, build_dataset, read_caption_file
from mmreid.data.synthetic import _PALETTE, COLOR_NAMES, SYNTHETIC_LAYOUTS, _identity_look, make_synthetic

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_train_ids=3, num_test_ids=2, images_per_id=4, image_size=(16, 8))
CAPTION_TAGS = ("RGB", "NI", "TI")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = make_synthetic("MSVR310", tmp_path / "a", seed=3, **SMALL)
    b = make_synthetic("MSVR310", tmp_path / "b", seed=3, **SMALL)
    c = make_synthetic("MSVR310", tmp_path / "c", seed=4, **SMALL)
    ta, tb, tc = _tree(a), _tree(b), _tree(c)
    assert ta == tb
    assert "captions/train_RGB.json" in ta and ta["captions/train_RGB.json"] != tc["captions/train_RGB.json"]
    jpgs = lambda t: {k: v for k, v in t.items() if k.endswith(".jpg")}  # noqa: E731
    assert jpgs(ta).values() != jpgs(tc).values()
    assert sum(ta[k] != tc.get(k) for k in jpgs(ta)) > len(jpgs(ta)) // 2


def test_rgbnt201_layout_names_cameras_and_counts(tmp_path):
    root = make_synthetic("RGBNT201", tmp_path, num_train_ids=5, num_test_ids=3, images_per_id=6, image_size=(20, 10))
    assert root == tmp_path / "RGBNT201"
    for split, ids in (("train_171", 5), ("test", 3)):
        names = [sorted(p.name for p in (root / split / m).iterdir()) for m in ("RGB", "NI", "TI")]
        assert names[0] == names[1] == names[2] and len(names[0]) == ids * 6
        for n in names[0]:
            assert len(n.split("_")[0]) == 6 and n.split("_")[1].startswith("cam") and n.endswith(".jpg")
            with Image.open(root / split / "RGB" / n) as im:
                assert im.format == "JPEG" and im.size == (10, 20)
    cams = lambda split: {int(p.name.split("_")[1][3:]) for p in (root / split / "RGB").iterdir()}  # noqa: E731
    assert cams("train_171") == {1, 2, 3, 4} and cams("test") == {1, 2}
    pids = lambda split: {p.name[:6] for p in (root / split / "RGB").iterdir()}  # noqa: E731
    assert not pids("train_171") & pids("test")


def test_rgbnt100_writes_side_by_side_files(tmp_path):
    root = make_synthetic("RGBNT100", tmp_path, **SMALL)
    files = sorted((root / "rgbir" / "bounding_box_train").iterdir())
    assert len(files) == 3 * 4
    with Image.open(files[0]) as im:
        assert im.size == (3 * 8, 16)
        thirds = [np.asarray(im.crop((i * 8, 0, (i + 1) * 8, 16)), dtype=float) for i in range(3)]
    # NIR and TIR are grey (channels equal up to JPEG chroma error), RGB need not be.
    for grey in thirds[1:]:
        assert np.abs(grey[..., 0] - grey[..., 2]).mean() < 8


@pytest.mark.parametrize("layout", ["MSVR310", "WMVEID863", "RGBNT100"])
def test_every_query_has_a_cross_camera_gallery_match(tmp_path, layout):
    root = make_synthetic(layout, tmp_path, num_train_ids=2, num_test_ids=4, images_per_id=6, image_size=(8, 16))
    query_dir, gallery_dir = {"MSVR310": ("query3", "bounding_box_test"), "WMVEID863": ("query", "test"),
                              "RGBNT100": ("rgbir/query", "rgbir/bounding_box_test")}[layout]
    names = lambda d: sorted({p.name for p in (root / d).rglob("*.jpg")})  # noqa: E731
    queries, gallery = names(query_dir), names(gallery_dir)
    assert queries and gallery and not set(queries) & set(gallery)

    def ids(n):  # pid, camera, scene as the public naming schemes define them
        if layout == "MSVR310":
            return n[0:4], n[11], n[6:9]
        if layout == "WMVEID863":
            parts = n.split("_")
            return parts[0], parts[1], parts[3]
        return n.split("_")[0], n.split("_")[1], None

    for q in queries:
        qp, qc, qs = ids(q)
        ok = [g for g in gallery if ids(g)[0] == qp and ids(g)[1] != qc and (qs in (None, "s999") or ids(g)[2] != qs)]
        assert ok, f"query {q} has no gallery match under another camera/scene"


def test_msvr310_identities_span_several_scenes(tmp_path):
    root = make_synthetic("MSVR310", tmp_path, **SMALL)
    for vid_dir in (root / "bounding_box_train").iterdir():
        names = [p.name for p in (vid_dir / "vis").iterdir()]
        assert all(n[:4] == vid_dir.name for n in names)
        assert len({n[6:9] for n in names}) >= 2


def _features(folder: Path, modality: str, names) -> np.ndarray:
    def one(n):
        with Image.open(folder / modality / n) as im:
            return np.asarray(im.convert("RGB").resize((8, 16), Image.BILINEAR), dtype=np.float32).ravel() / 255
    return np.stack([one(n) for n in names])


def _cross_camera_rank1(x, pid, cam):
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    d[(pid[:, None] == pid[None]) & (cam[:, None] == cam[None])] = np.inf  # the ReID protocol
    return pid[d.argmin(1)] == pid


@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    """The default RGBNT201 set (seed 0): the data of the default training run."""
    return make_synthetic("RGBNT201", tmp_path_factory.mktemp("default"), seed=0)


def _tir_is_noisy(folder: Path, names) -> np.ndarray:
    """Very noisy TIR images: large pixel-to-pixel differences (twice the median or more)."""
    tir = np.stack([np.asarray(Image.open(folder / "TI" / n).convert("L"), dtype=np.float32) for n in names])
    roughness = np.abs(np.diff(tir, axis=2)).mean((1, 2))
    return roughness > 2 * np.median(roughness)


def test_default_set_is_learnable_and_has_degraded_modalities(default_set):
    root = default_set
    test = root / "test"
    names = sorted(p.name for p in (test / "RGB").iterdir())
    pid = np.array([int(n[:6]) for n in names])
    cam = np.array([int(n.split("_")[1][3:]) for n in names])
    feats = {m: _features(test, m, names) for m in ("RGB", "NI", "TI")}
    chance = 1 / len(set(pid))

    # Identity survives a 16x8 thumbnail: raw-pixel nearest neighbour across cameras works far above chance.
    fused = _cross_camera_rank1(np.concatenate(list(feats.values()), 1), pid, cam)
    assert fused.mean() > 4 * chance

    # A share of RGB images is dark, and on those RGB alone identifies worse than on the others.
    dark = feats["RGB"].mean(1) < 0.15
    assert 0.05 < dark.mean() < 0.45
    rgb_only = _cross_camera_rank1(feats["RGB"], pid, cam)
    assert rgb_only[dark].mean() < rgb_only[~dark].mean()

    # A share of TIR images is very noisy (large pixel-to-pixel differences).
    noisy = _tir_is_noisy(test, names)
    assert 0.05 < noisy.mean() < 0.45


def test_bad_arguments_and_existing_target(tmp_path):
    with pytest.raises(ValueError, match="images-per-id"):
        make_synthetic("RGBNT201", tmp_path, images_per_id=2)
    with pytest.raises(ValueError, match="layout"):
        make_synthetic("Market1501", tmp_path)
    with pytest.raises(ValueError, match="image-size"):
        make_synthetic("RGBNT201", tmp_path, image_size=(4, 4))
    root = make_synthetic("RGBNT201", tmp_path, **SMALL)
    before = _tree(root)
    with pytest.raises(FileExistsError, match="RGBNT201"):
        make_synthetic("RGBNT201", tmp_path, seed=9, **SMALL)
    assert _tree(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RGBNT201"]  # no temp folders left


def test_command_line_writes_the_same_tree_as_the_function(tmp_path):
    make_synthetic("WMVEID863", tmp_path / "fn", seed=5, **SMALL)
    cmd = [sys.executable, str(REPO / "data_scripts" / "make_synthetic.py"), "--layout", "WMVEID863",
           "--out", str(tmp_path / "cli"), "--seed", "5", "--num-train-ids", "3", "--num-test-ids", "2",
           "--images-per-id", "4", "--image-size", "16", "8"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert _tree(tmp_path / "cli" / "WMVEID863") == _tree(tmp_path / "fn" / "WMVEID863")
    assert (tmp_path / "cli" / "WMVEID863" / "captions" / "test_TI.json").is_file()


def test_command_line_without_captions(tmp_path):
    if str(REPO / "data_scripts") not in sys.path:
        sys.path.insert(0, str(REPO / "data_scripts"))
    import make_synthetic as cli

    assert cli.main(["--layout", "MSVR310", "--out", str(tmp_path), "--num-train-ids", "2", "--num-test-ids", "1",
                     "--images-per-id", "4", "--image-size", "8", "16", "--no-captions"]) == 0
    root = tmp_path / "MSVR310"
    assert not (root / "captions").exists() and any(root.rglob("*.jpg"))


# ----------------------------------------------------------------------------- captions

# sha256 over (relative path, bytes) of every JPEG, computed from the generator as it was before
# captions existed (commit f991d2a): captions must not move one image byte.  The default set is the
# data of the default training run, whose headline mAP depends on these images.  (Pillow's JPEG
# encoder is part of the bytes: a Pillow upgrade that changes its output changes these too.)
REFERENCE_JPEG_SHA256 = {
    "RGBNT201": "e6c210212438b3ccda6f182634977d98abe8eb10898471830fe593c0502eae3c",
    "RGBNT100": "682f6f9aef87908d5551499fc4f37f3d8f8136985300fe3834892f659bfdd2d2",
    "MSVR310": "249c959fc90f73aa20488aea15eb4a9e594aa6a08f6c7ac4c0522801b179b954",
    "WMVEID863": "501ac15aec3df8484bbc7acf247d59a7de1f5dfa561aea6695f2d27042f6ad6e",
}
REFERENCE_DEFAULT_RGBNT201_SHA256 = "ab790f62db756137a8e83d1c25436cd30ff41b194438862f7aecd912a7cbbe4e"
# Hue words: the generator's palette names and the caption schema's colours ("light" is a word of
# the vehicle template, "in dim nighttime light", not a colour there).
HUE_WORDS = (set(COLOR_NAMES) | set(COLORS)) - {"light"}
_CLOTHES_RE = re.compile(r"is wearing (?:an? )?(.+?) with (?:an? )?(.+?), paired with (.+?)\.")
_BAG_RE = re.compile(r"is carrying (?:an? )?(.+?)\.")


def _jpeg_sha256(root: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(root.rglob("*.jpg")):
        digest.update(str(p.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(p.read_bytes())
    return digest.hexdigest()


def _without_captions(tree: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in tree.items() if not k.startswith("captions/") and k != "synthetic.json"}


def _captions(root: Path, split: str, tag: str) -> dict[str, str]:
    return read_caption_file(root / "captions" / f"{split}_{tag}.json")


def _phrase_color(phrase: str):
    """The colour a caption phrase names: a palette name, "unknown", or None when it names none."""
    if "of unknown color" in phrase:
        return "unknown"
    first = phrase.split()[0]
    return first if first in COLOR_NAMES else None


def _slot_colors(kind: str, caption: str) -> tuple:
    """The colours an RGB caption gives to body bands 0, 1, 2 (persons: upper garment, lower
    garment, footwear; vehicles: the body colour is band 1), read from the text alone."""
    if kind == "person":
        return tuple(_phrase_color(p) for p in _CLOTHES_RE.search(caption).groups())
    subject = caption.split(" viewed from ")[0]
    return None, _phrase_color(subject.split(" ", 1)[1]), None


def _bag_color(caption: str):
    found = _BAG_RE.search(caption)
    return _phrase_color(found.group(1)) if found else None


@pytest.mark.parametrize("layout", SYNTHETIC_LAYOUTS)
def test_images_are_the_same_bytes_with_and_without_captions(tmp_path, layout):
    with_captions = make_synthetic(layout, tmp_path / "with", seed=11, **SMALL)
    without = make_synthetic(layout, tmp_path / "without", seed=11, captions=False, **SMALL)
    assert _jpeg_sha256(with_captions) == _jpeg_sha256(without) == REFERENCE_JPEG_SHA256[layout]
    assert (with_captions / "captions").is_dir() and not (without / "captions").exists()
    assert json.loads((without / "synthetic.json").read_text())["captions"] is None
    assert _without_captions(_tree(with_captions)) == _without_captions(_tree(without))


def test_default_set_images_are_unchanged(default_set):
    assert _jpeg_sha256(default_set) == REFERENCE_DEFAULT_RGBNT201_SHA256


@pytest.mark.parametrize("layout", SYNTHETIC_LAYOUTS)
def test_caption_files_parse_and_attach_to_every_layout(tmp_path, layout):
    root = make_synthetic(layout, tmp_path / "raw", seed=2, **SMALL)
    files = {(split, tag): _captions(root, split, tag) for split in ("train", "test") for tag in CAPTION_TAGS}
    assert all(files.values())  # every file parses and holds captions
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetBuildWarning)  # an unmatched item would warn
        dsd = build_dataset(layout, root, captions_dir=root / "captions", cache_dir=tmp_path / "cache")
    attached = set()
    for split, caption_split in (("train", "train"), ("query", "test"), ("gallery", "test")):
        for row in dsd[split].remove_columns(["rgb", "nir", "tir"]):
            for tag, column in zip(CAPTION_TAGS, ("caption_rgb", "caption_nir", "caption_tir")):
                assert row[column] == files[caption_split, tag].get(row["name"], "")
                if row[column]:
                    attached.add((caption_split, tag, row["name"]))
    assert len(attached) == sum(len(v) for v in files.values())  # each caption landed on its image


@pytest.mark.parametrize("layout, kwargs", [
    ("RGBNT201", dict(num_train_ids=12, num_test_ids=8, images_per_id=6)),
    ("MSVR310", dict(num_train_ids=12, num_test_ids=8, images_per_id=6)),
])
def test_rgb_captions_name_the_drawn_band_colours(tmp_path, layout, kwargs):
    """Band colours read from the pixels (nearest palette colour at the band centre of non-dark
    RGB images) agree with the colours the caption text gives that band, and not by chance:
    another identity's caption agrees far less often."""
    seed = 4
    root = make_synthetic(layout, tmp_path, seed=seed, **kwargs)
    kind = "person" if layout == "RGBNT201" else "vehicle"
    rgb_dir = (lambda name: root / "train_171" / "RGB" / name) if layout == "RGBNT201" else \
        (lambda name: root / "bounding_box_train" / name[:4] / "vis" / name)
    captions = _captions(root, "train", "RGB")
    pids = sorted({int(n.split("_")[0]) for n in captions})
    match, other, known = 0, 0, 0
    for name, caption in captions.items():
        pid = int(name.split("_")[0])
        x = np.asarray(Image.open(rgb_dir(name)), dtype=np.float32) / 255
        if x.mean() < 0.15:  # a dark image: colours are not readable from its pixels
            continue
        look = _identity_look(seed, pid)  # geometry only: where the bands lie
        c0, c1 = look.cuts
        other_pid = pids[(pids.index(pid) + 1) % len(pids)]
        other_caption = next(c for n, c in captions.items() if int(n.split("_")[0]) == other_pid)
        for band, rel in enumerate((c0 / 2, (c0 + c1) / 2, (c1 + 1) / 2)):
            said = _slot_colors(kind, caption)[band]
            if said in (None, "unknown"):
                continue
            pixel = x[int((look.top + rel * look.height) * x.shape[0]), x.shape[1] // 2]
            seen = COLOR_NAMES[int(((_PALETTE - pixel) ** 2).sum(1).argmin())]
            known += 1
            match += seen == said
            other += seen == _slot_colors(kind, other_caption)[band]
    assert known > 40
    assert match / known > 0.8 and other / known < 0.4


def test_palette_names_are_the_colours_drawn():
    """Each palette colour is nearest to the CSS colour of its own name (PIL's colour table)."""
    css = np.array([ImageColor.getrgb(n) for n in COLOR_NAMES], dtype=np.float64) / 255
    assert (((_PALETTE[:, None] - css[None]) ** 2).sum(-1).argmin(1) == np.arange(len(COLOR_NAMES))).all()


@pytest.mark.parametrize("layout", ["RGBNT201", "WMVEID863"])
def test_nir_and_tir_captions_name_no_colour(tmp_path, layout):
    root = make_synthetic(layout, tmp_path, seed=1, num_train_ids=6, num_test_ids=4, images_per_id=4,
                          image_size=(16, 8))
    rgb_words = set()
    for split in ("train", "test"):
        rgb_words |= {w for c in _captions(root, split, "RGB").values() for w in re.findall(r"[a-z]+", c.lower())}
        for tag in ("NI", "TI"):
            for caption in _captions(root, split, tag).values():
                words = set(re.findall(r"[a-z]+", caption.lower()))
                assert not words & (HUE_WORDS | {"color", "colored"}), caption
    assert len(rgb_words & HUE_WORDS) >= 4  # the RGB captions do name colours


def test_unknown_and_missing_shares(default_set):
    """About 5% of captions are missing from each file, about 10% of identity attributes are
    unknown (half of the colours of a dark RGB image), and the lighting and clarity sentences
    follow each image's own darkness and noise, read from its pixels."""
    test = default_set / "test"
    names = sorted(p.name for p in (test / "RGB").iterdir())
    dark = {n: np.asarray(Image.open(test / "RGB" / n), dtype=np.float32).mean() / 255 < 0.15 for n in names}
    noisy = dict(zip(names, _tir_is_noisy(test, names)))
    all_names = names + sorted(p.name for p in (default_set / "train_171" / "RGB").iterdir())
    for split in ("train", "test"):
        for tag in CAPTION_TAGS:
            assert set(_captions(default_set, split, tag)) <= set(all_names)
    missing = [1 - sum(len(_captions(default_set, s, tag)) for s in ("train", "test")) / len(all_names)
               for tag in CAPTION_TAGS]
    assert all(0.02 <= m <= 0.09 for m in missing), missing

    rgb, nir, tir = (_captions(default_set, "test", tag) | _captions(default_set, "train", tag) for tag in CAPTION_TAGS)
    upper = {n: _slot_colors("person", c)[0] for n, c in rgb.items()}
    bright_rgb = [upper[n] == "unknown" for n in upper if n in dark and not dark[n]]
    dark_rgb = [upper[n] == "unknown" for n in upper if n in dark and dark[n]]
    assert 0.04 <= np.mean(bright_rgb) <= 0.17 and 0.25 <= np.mean(dark_rgb) <= 0.75
    bag_unknown = [c.startswith("It is unknown whether") or " It is unknown whether" in c for c in nir.values()]
    assert 0.05 <= np.mean(bag_unknown) <= 0.16

    for n in names:
        if n in rgb:
            assert ("during nighttime in dim lighting" in rgb[n]) == dark[n], rgb[n]
            assert rgb[n].endswith("The image appears blurry.") == dark[n]
    agree = [tir[n].endswith("The image appears blurry.") == noisy[n] for n in names if n in tir]
    assert np.mean(agree) >= 0.9


def test_text_alone_tells_identities_apart(default_set):
    """Nearest-neighbour retrieval on RGB caption words finds the same identity far above chance,
    and better than on NIR captions (which name no colours): the text carries identity."""
    def rank1(tag):
        caps = _captions(default_set, "test", tag)
        names = sorted(caps)
        pid = np.array([int(n[:6]) for n in names])
        words = [set(re.findall(r"[a-z-]+", caps[n].lower())) for n in names]
        sim = np.array([[len(a & b) / len(a | b) for b in words] for a in words])
        np.fill_diagonal(sim, -1)
        return (pid[sim.argmax(1)] == pid).mean(), 1 / len(set(pid))

    (rgb, chance), (nir, _) = rank1("RGB"), rank1("NI")
    assert rgb > 3 * chance and rgb > nir + 0.1
    assert nir < 3 * chance  # NIR captions name only the kind of bag; the rest are per-image guesses

    # Two different identities' colour signatures (the colours their captions give most often to
    # upper garment, lower garment, footwear and bag) differ in most pairs.
    caps = _captions(default_set, "test", "RGB")
    signature = {}
    for pid in sorted({int(n[:6]) for n in caps}):
        rows = [(*_slot_colors("person", c), _bag_color(c)) for n, c in caps.items() if int(n[:6]) == pid]
        signature[pid] = tuple(max(set(col) - {None, "unknown"} or {None}, key=col.count) for col in zip(*rows))
    pairs = [(a, b) for a in signature for b in signature if a < b]
    assert sum(signature[a] != signature[b] for a, b in pairs) >= 0.9 * len(pairs)


def test_captions_are_deterministic_from_the_seed(tmp_path):
    a = make_synthetic("RGBNT100", tmp_path / "a", seed=6, **SMALL)
    b = make_synthetic("RGBNT100", tmp_path / "b", seed=6, **SMALL)
    c = make_synthetic("RGBNT100", tmp_path / "c", seed=7, **SMALL)
    for split in ("train", "test"):
        for tag in CAPTION_TAGS:
            assert (a / "captions" / f"{split}_{tag}.json").read_bytes() == \
                   (b / "captions" / f"{split}_{tag}.json").read_bytes()
    assert _captions(a, "train", "RGB") != _captions(c, "train", "RGB")

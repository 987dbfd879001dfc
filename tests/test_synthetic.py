"""The synthetic generator writes the real layouts, deterministically, with learnable identities."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo_reid.synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_train_ids=3, num_test_ids=2, images_per_id=4, image_size=(16, 8))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = make_synthetic("MSVR310", tmp_path / "a", seed=3, **SMALL)
    b = make_synthetic("MSVR310", tmp_path / "b", seed=3, **SMALL)
    c = make_synthetic("MSVR310", tmp_path / "c", seed=4, **SMALL)
    ta, tb, tc = _tree(a), _tree(b), _tree(c)
    assert ta == tb
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


def test_default_set_is_learnable_and_has_degraded_modalities(tmp_path):
    root = make_synthetic("RGBNT201", tmp_path, seed=0)
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
    tir = np.stack([np.asarray(Image.open(test / "TI" / n).convert("L"), dtype=np.float32) for n in names])
    roughness = np.abs(np.diff(tir, axis=2)).mean((1, 2))
    noisy = roughness > 2 * np.median(roughness)
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

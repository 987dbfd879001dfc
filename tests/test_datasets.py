"""Converting the public layouts (synthetic trees, real file names) into DatasetDicts, and bad input."""

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datasets
from mmreid.data.builder import (
    DatasetBuildWarning,
    DatasetLayoutError,
    build_dataset,
    get_layout,
    resolve_root,
    save_dataset,
)
from mmreid.data.synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]
REAL_CAPTIONS = REPO.parent / "shared" / "data" / "next_captions"
SMALL = dict(num_train_ids=4, num_test_ids=3, images_per_id=4, image_size=(16, 8))
IMAGE_COLS = ("rgb", "nir", "tir")


# ----------------------------------------------------------------------------- helpers


def _build(name, root, tmp_path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    return build_dataset(name, root, **kw)


def _raw(ds, column):
    """Stored bytes of an Image column, without decoding."""
    return [cell["bytes"] for cell in ds.cast_column(column, datasets.Image(decode=False))[column]]


def _write_jpg(path: Path, size=(8, 16), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 255 - value)).save(path, quality=90)


def _check_relabel(train):
    pids, labels = np.array(train["pid"]), np.array(train["label"])
    unique = sorted(set(pids.tolist()))
    assert sorted(set(labels.tolist())) == list(range(len(unique)))  # contiguous 0..P-1
    for pid, label in zip(pids, labels):
        assert unique.index(pid) == label  # order follows the original ids
    assert unique != list(range(len(unique)))  # synthetic pids are not already 0..P-1


# ----------------------------------------------------------------------------- per layout


@pytest.fixture(scope="module")
def rgbnt201(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rgbnt201")
    root = make_synthetic("RGBNT201", tmp / "raw", **SMALL)
    return root, _build("RGBNT201", tmp / "raw", tmp)


def test_rgbnt201_counts_ids_cameras_and_bytes(rgbnt201):
    root, dsd = rgbnt201
    assert list(dsd) == ["train", "query", "gallery"]
    for split, folder in (("train", "train_171"), ("query", "test"), ("gallery", "test")):
        ds = dsd[split]
        files = sorted(p.name for p in (root / folder / "RGB").iterdir())
        assert ds["name"] == files
        assert ds["pid"] == [int(n[:6]) for n in files]
        assert ds["camid"] == [int(re.search(r"_cam(\d)_", n).group(1)) - 1 for n in files]
        assert set(ds["sceneid"]) == {-1}
        assert ("label" in ds.column_names) == (split == "train")
        for col, mod in zip(IMAGE_COLS, ("RGB", "NI", "TI")):
            assert _raw(ds, col) == [(root / folder / mod / n).read_bytes() for n in files]
    _check_relabel(dsd["train"])
    assert set(dsd["train"]["camid"]) == {0, 1, 2, 3} and set(dsd["gallery"]["camid"]) == {0, 1}
    assert not set(dsd["train"]["pid"]) & set(dsd["gallery"]["pid"])
    row = dsd["query"][0]
    assert isinstance(row["rgb"], Image.Image) and row["rgb"].size == (8, 16)


def test_rgbnt100_crops_thirds_losslessly(tmp_path):
    root = make_synthetic("RGBNT100", tmp_path / "raw", **SMALL)
    dsd = _build("RGBNT100", tmp_path / "raw", tmp_path)
    base = root / "rgbir"
    for split, folder in (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")):
        ds = dsd[split]
        files = sorted(p.name for p in (base / folder).iterdir())
        assert ds["name"] == files
        parsed = [re.search(r"([-\d]+)_c([-\d]+)", n).groups() for n in files]
        assert ds["pid"] == [int(p) for p, _ in parsed]
        assert ds["camid"] == [int(c) - 1 for _, c in parsed]
    assert set(dsd["train"]["camid"]) <= set(range(8))
    _check_relabel(dsd["train"])
    row = dsd["gallery"][1]
    with Image.open(base / "bounding_box_test" / row["name"]) as whole:
        whole = np.asarray(whole.convert("RGB"))
    w = whole.shape[1] // 3
    for i, col in enumerate(IMAGE_COLS):
        assert np.array_equal(np.asarray(row[col].convert("RGB")), whole[:, i * w:(i + 1) * w])
        assert row[col].format == "PNG"


def test_msvr310_nested_folders_scenes_and_cameras(tmp_path):
    root = make_synthetic("MSVR310", tmp_path / "raw", **SMALL)
    dsd = _build("MSVR310", root, tmp_path)  # root = the dataset folder itself
    for split, folder in (("train", "bounding_box_train"), ("query", "query3"), ("gallery", "bounding_box_test")):
        ds = dsd[split]
        files = sorted(p.name for p in (root / folder).glob("*/vis/*.jpg"))
        assert ds["name"] == files
        assert ds["pid"] == [int(n[0:4]) for n in files]
        assert ds["sceneid"] == [int(n[6:9]) for n in files]
        assert ds["camid"] == [int(n[11]) for n in files]
        paths = {p.name: p for p in (root / folder).glob("*/th/*.jpg")}
        assert _raw(ds, "tir") == [paths[n].read_bytes() for n in files]
    _check_relabel(dsd["train"])
    assert len(set(dsd["train"]["sceneid"])) > 2


def test_wmveid863_reading_of_view_and_scene(tmp_path):
    root = make_synthetic("WMVEID863", tmp_path / "raw", num_train_ids=6, num_test_ids=4, images_per_id=4,
                          image_size=(8, 16))
    dsd = _build("WMVEID863", tmp_path / "raw", tmp_path)
    for split, folder in (("train", "train"), ("query", "query"), ("gallery", "test")):
        ds = dsd[split]
        files = sorted(p.name for p in (root / folder / "ni").iterdir())
        assert ds["name"] == files
        fields = [n[:-4].split("_") for n in files]  # PPPP vC nF sSSS NNN
        assert ds["pid"] == [int(f[0]) for f in fields]
        assert ds["camid"] == [int(f[1][1:]) for f in fields]
        assert ds["sceneid"] == [-1 if f[3] == "s999" else int(f[3][1:]) for f in fields]
    scenes = set(dsd["train"]["sceneid"])
    assert -1 in scenes and len(scenes) > 1  # both wild (s999) and scene-tagged records
    _check_relabel(dsd["train"])


@pytest.mark.parametrize("name,sub", [("RGBNT201", ""), ("RGBNT201", "RGBNT201"), ("RGBNT100", ""),
                                      ("RGBNT100", "RGBNT100"), ("RGBNT100", "RGBNT100/rgbir"),
                                      ("WMVEID863", ""), ("WMVEID863", "WMVEID863")])
def test_root_is_the_dataset_folder_or_its_parent(tmp_path, name, sub):
    make_synthetic(name, tmp_path, **SMALL)
    expected = tmp_path / ("RGBNT100/rgbir" if name == "RGBNT100" else name)
    assert resolve_root(get_layout(name), tmp_path / sub) == expected


def test_msvwild863_alias_and_folder_name(tmp_path):
    make_synthetic("WMVEID863", tmp_path, **SMALL)
    (tmp_path / "WMVEID863").rename(tmp_path / "MSVWild863")
    assert resolve_root(get_layout("MSVWild863"), tmp_path) == tmp_path / "MSVWild863"


def test_parallel_decoding_gives_the_same_rows(tmp_path):
    make_synthetic("RGBNT201", tmp_path / "raw", **SMALL)
    a = _build("RGBNT201", tmp_path / "raw", tmp_path)
    b = _build("RGBNT201", tmp_path / "raw", tmp_path, num_proc=2)
    for split in a:
        assert a[split]["name"] == b[split]["name"] and _raw(a[split], "nir") == _raw(b[split], "nir")


# ----------------------------------------------------------------------------- captions


def _write_captions(folder: Path, per_file: dict):
    folder.mkdir(parents=True, exist_ok=True)
    for fname, entries in per_file.items():
        (folder / fname).write_text(json.dumps(entries))


def test_captions_attached_missing_empty_unmatched_warned(tmp_path):
    root = make_synthetic("RGBNT201", tmp_path / "raw", **SMALL)
    train = sorted(p.name for p in (root / "train_171" / "RGB").iterdir())
    test = sorted(p.name for p in (root / "test" / "RGB").iterdir())
    files = {}
    for split, names in (("train", train), ("test", test)):
        for tag in ("RGB", "NI", "TI"):
            kept = names[1:] if tag == "NI" else names  # NIR lacks a caption for the first image
            entries = [{"item": n, "description": f"{tag} caption of {n}"} for n in kept]
            if tag == "TI":
                entries.append({"item": "999999_cam1_0_00.jpg", "description": "no such image"})
            files[f"{split}_{tag}.json"] = entries
    _write_captions(tmp_path / "cap", files)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dsd = _build("RGBNT201", tmp_path / "raw", tmp_path, captions_dir=tmp_path / "cap")
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, DatasetBuildWarning))
    assert len(messages) == 2
    assert re.search(rf"test_TI\.json: 1 of {len(test) + 1} caption item\(s\) match no image", messages[0])
    assert re.search(rf"train_TI\.json: 1 of {len(train) + 1} caption item\(s\) match no image", messages[1])
    for split, names in (("train", train), ("query", test), ("gallery", test)):
        ds = dsd[split]
        assert ds["caption_rgb"] == [f"RGB caption of {n}" for n in names]
        assert ds["caption_tir"] == [f"TI caption of {n}" for n in names]
        assert ds["caption_nir"] == [""] + [f"NI caption of {n}" for n in names[1:]]


real = pytest.mark.skipif(not REAL_CAPTIONS.is_dir(), reason=f"{REAL_CAPTIONS} not present")


def _real_items(code, split, tag):
    return json.loads((REAL_CAPTIONS / code / f"{split}_{tag}.json").read_text())


@real
@pytest.mark.parametrize("name,code", [("RGBNT201", "201"), ("MSVR310", "310"), ("WMVEID863", "863")])
def test_every_real_file_name_parses(name, code):
    layout = get_layout(name)
    cams = {"RGBNT201": set(range(4)), "MSVR310": set(range(8)), "WMVEID863": set(range(8))}[name]
    for split in ("train", "test"):
        for tag in ("RGB", "NI", "TI"):
            for entry in _real_items(code, split, tag):
                n = entry["item"]
                p = layout.parse_name(n)
                assert p.camid in cams, n
                if name == "RGBNT201":
                    assert (p.pid, p.camid, p.sceneid) == (int(n[:6]), int(n[10]) - 1, -1)
                elif name == "MSVR310":
                    assert (p.pid, p.sceneid, p.camid) == (int(n[0:4]), int(n[6:9]), int(n[11]))
                else:
                    assert p.pid == int(n.split("_")[0])


def _tree_from_real_names(root: Path, name: str, code: str, per_split: int):
    """Tiny images on disk, named (and placed) like the real release, for the first caption items."""
    chosen = {}
    for split in ("train", "test"):
        items = sorted({e["item"] for e in _real_items(code, split, "TI")})[:per_split]
        chosen[split] = items
        for i, item in enumerate(items):
            layout = get_layout(name)
            folder = layout.split_dirs["train"] if split == "train" else \
                layout.split_dirs["query" if i % 2 else "gallery"]
            base = root / layout.folders[0] / folder
            if layout.nested:
                base = base / item[:4]
            for mod in layout.modality_dirs:
                _write_jpg(base / mod / item)
    return chosen


@real
@pytest.mark.parametrize("name,code", [("RGBNT201", "201"), ("MSVR310", "310"), ("WMVEID863", "863")])
def test_real_caption_files_attach(tmp_path, name, code):
    chosen = _tree_from_real_names(tmp_path / "raw", name, code, per_split=6)
    if name == "WMVEID863":  # an image whose RGB caption is missing from the real files
        _write_jpg(tmp_path / "raw" / "WMVEID863" / "train" / "vis" / "0865_v1_n0_s999_002.jpg")
        for mod in ("ni", "th"):
            _write_jpg(tmp_path / "raw" / "WMVEID863" / "train" / mod / "0865_v1_n0_s999_002.jpg")
        chosen["train"].append("0865_v1_n0_s999_002.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dsd = _build(name, tmp_path / "raw", tmp_path, captions_dir=REAL_CAPTIONS / code)
    messages = [str(w.message) for w in caught if issubclass(w.category, DatasetBuildWarning)]
    for split in ("train", "test"):
        for tag, col in (("RGB", "caption_rgb"), ("NI", "caption_nir"), ("TI", "caption_tir")):
            truth = {e["item"]: e["description"] for e in _real_items(code, split, tag)}
            splits = ["train"] if split == "train" else ["query", "gallery"]
            for s in splits:
                for n, cap in zip(dsd[s]["name"], dsd[s][col]):
                    assert cap == truth.get(n, "")
            unmatched = len(set(truth) - set(chosen[split]))
            assert any(f"{split}_{tag}.json: {unmatched} of {len(truth)}" in m for m in messages)
    if name == "WMVEID863":
        row = dsd["train"].filter(lambda r: r == "0865_v1_n0_s999_002.jpg", input_columns="name")[0]
        assert row["caption_rgb"] == "" and row["caption_tir"] != ""


# ----------------------------------------------------------------------------- bad input


def test_missing_root_and_missing_dataset(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"--root .*nowhere.*does not exist"):
        _build("RGBNT201", tmp_path / "nowhere", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"no RGBNT201 data found.*train_171"):
        _build("RGBNT201", tmp_path / "empty", tmp_path)
    with pytest.raises(DatasetLayoutError, match="unknown dataset name 'Market1501'"):
        _build("Market1501", tmp_path, tmp_path)


def test_missing_split_and_modality_folders(tmp_path):
    root = make_synthetic("MSVR310", tmp_path / "raw", **SMALL)
    shutil.rmtree(root / "query3")
    with pytest.raises(DatasetLayoutError, match=r"split folder\(s\) missing: .*MSVR310/query3"):
        _build("MSVR310", tmp_path / "raw", tmp_path)
    root = make_synthetic("RGBNT201", tmp_path / "raw2", **SMALL)
    shutil.rmtree(root / "test" / "TI")
    with pytest.raises(DatasetLayoutError, match=r"test/TI: modality folder does not exist"):
        _build("RGBNT201", tmp_path / "raw2", tmp_path)


def test_incomplete_triple_fails_or_is_skipped_and_counted(tmp_path):
    root = make_synthetic("WMVEID863", tmp_path / "raw", **SMALL)
    victims = sorted((root / "train" / "th").iterdir())[:2]
    for v in victims:
        v.unlink()
    with pytest.raises(DatasetLayoutError, match=re.escape(str(victims[0])) + r" missing .*--skip-incomplete"):
        _build("WMVEID863", tmp_path / "raw", tmp_path)
    with pytest.warns(DatasetBuildWarning, match="skipped 2 incomplete"):
        dsd = _build("WMVEID863", tmp_path / "raw", tmp_path, skip_incomplete=True)
    expected = sorted(p.name for p in (root / "train" / "th").iterdir())
    assert dsd["train"]["name"] == expected and len(expected) == 4 * 4 - 2


def test_truncated_or_garbage_jpeg_names_the_file(tmp_path):
    root = make_synthetic("RGBNT201", tmp_path / "raw", **SMALL)
    bad = sorted((root / "test" / "NI").iterdir())[3]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    cache = tmp_path / "cache"
    for num_proc in (None, 2):
        with pytest.raises(DatasetLayoutError, match=re.escape(str(bad)) + ": unreadable or truncated"):
            build_dataset("RGBNT201", tmp_path / "raw", num_proc=num_proc, cache_dir=cache)
    assert list(cache.iterdir()) == []  # no half-written Arrow files left behind
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetLayoutError, match=re.escape(str(bad))):
        _build("RGBNT201", tmp_path / "raw", tmp_path)


def test_unparseable_file_name(tmp_path):
    root = make_synthetic("MSVR310", tmp_path / "raw", **SMALL)
    vid = sorted((root / "bounding_box_train").iterdir())[0]
    for mod in ("vis", "ni", "th"):
        _write_jpg(vid / mod / "car_001.jpg")
    with pytest.raises(DatasetLayoutError, match=r"car_001\.jpg.*cannot parse file name .*VVVV_sSSS_vC_NNN"):
        _build("MSVR310", tmp_path / "raw", tmp_path)


def test_modality_size_mismatch(tmp_path):
    root = make_synthetic("RGBNT201", tmp_path / "raw", **SMALL)
    victim = sorted((root / "train_171" / "TI").iterdir())[0]
    _write_jpg(victim, size=(10, 20))
    with pytest.raises(DatasetLayoutError, match=re.escape(str(victim)) + r" is 10x20.*--allow-size-mismatch"):
        _build("RGBNT201", tmp_path / "raw", tmp_path)
    dsd = _build("RGBNT201", tmp_path / "raw", tmp_path, allow_size_mismatch=True)
    row = dsd["train"][dsd["train"]["name"].index(victim.name)]
    assert row["tir"].size == (10, 20) and row["rgb"].size == (8, 16)


def test_side_by_side_width_not_divisible_by_three(tmp_path):
    root = make_synthetic("RGBNT100", tmp_path / "raw", **SMALL)
    victim = sorted((root / "rgbir" / "query").iterdir())[0]
    _write_jpg(victim, size=(25, 16))
    with pytest.raises(DatasetLayoutError, match=re.escape(str(victim)) + r": width 25 is not divisible by 3"):
        _build("RGBNT100", tmp_path / "raw", tmp_path)


@pytest.mark.parametrize("content,message", [
    ('{"item": "x.jpg", "description": "y"}', r"expected a JSON list .* got a JSON dict"),
    ('[{"item": "x.jpg"}]', r"entry 0 .*'item' \(image file name\) and 'description'"),
    ('[{"item": "x.jpg", "description": "ok"}, "just text"]', r"entry 1 "),
    ("[{'item': 'x.jpg'", r"not readable JSON"),
])
def test_bad_caption_file(tmp_path, content, message):
    make_synthetic("RGBNT201", tmp_path / "raw", **SMALL)
    good = [{"item": "a.jpg", "description": "b"}]
    _write_captions(tmp_path / "cap", {f"{s}_{t}.json": good for s in ("train", "test") for t in ("RGB", "NI", "TI")})
    (tmp_path / "cap" / "test_NI.json").write_text(content)
    with pytest.raises(DatasetLayoutError, match=r"caption file .*test_NI\.json: " + message):
        _build("RGBNT201", tmp_path / "raw", tmp_path, captions_dir=tmp_path / "cap")


def test_missing_caption_file_or_folder(tmp_path):
    make_synthetic("RGBNT201", tmp_path / "raw", **SMALL)
    _write_captions(tmp_path / "cap", {"train_RGB.json": []})
    with pytest.raises(DatasetLayoutError, match=r"missing caption file\(s\) train_NI\.json, train_TI\.json, test_RGB"):
        _build("RGBNT201", tmp_path / "raw", tmp_path, captions_dir=tmp_path / "cap")
    with pytest.raises(DatasetLayoutError, match=r"--captions .*nope: folder does not exist"):
        _build("RGBNT201", tmp_path / "raw", tmp_path, captions_dir=tmp_path / "nope")


# ----------------------------------------------------------------------------- saving and the command


def test_save_load_round_trip_and_atomic_overwrite(rgbnt201, tmp_path):
    _, dsd = rgbnt201
    out = save_dataset(dsd, tmp_path / "out" / "ds")
    loaded = datasets.load_from_disk(str(out))
    assert list(loaded) == ["train", "query", "gallery"]
    for split in dsd:
        assert loaded[split].features == dsd[split].features
        for col in dsd[split].column_names:
            if col in IMAGE_COLS:
                assert _raw(loaded[split], col) == _raw(dsd[split], col)
            else:
                assert loaded[split][col] == dsd[split][col]
    with pytest.raises(FileExistsError, match="already exists"):
        save_dataset(dsd, out)
    save_dataset(datasets.DatasetDict({"train": dsd["train"].select(range(2))}), out, overwrite=True)
    assert len(datasets.load_from_disk(str(out))["train"]) == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["ds"]  # no temp folders left


def _cli(*args, cwd):
    cmd = [sys.executable, str(REPO / "data_scripts" / "build_dataset.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)


def test_command_line_success_and_failure_leave_nothing_partial(tmp_path):
    root = make_synthetic("MSVR310", tmp_path / "raw", **SMALL)
    out = tmp_path / "out" / "msvr310"
    res = _cli("--name", "MSVR310", "--root", tmp_path / "raw", "--output", out, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    dsd = datasets.load_from_disk(str(out))
    assert dsd["query"]["name"] == sorted(p.name for p in (root / "query3").glob("*/vis/*.jpg"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["msvr310"]

    res = _cli("--name", "MSVR310", "--root", tmp_path / "raw", "--output", out, cwd=tmp_path)
    assert res.returncode == 2 and "already exists" in res.stderr

    bad = sorted((root / "bounding_box_test").glob("*/ni/*.jpg"))[-1]
    bad.write_bytes(bad.read_bytes()[:100])
    out2 = tmp_path / "out" / "broken"
    res = _cli("--name", "MSVR310", "--root", tmp_path / "raw", "--output", out2, cwd=tmp_path)
    assert res.returncode == 2
    assert str(bad) in res.stderr and "truncated" in res.stderr
    assert sorted(p.name for p in out2.parent.iterdir()) == ["msvr310"]  # no output, no temp folders


def test_junk_pid_minus_one_is_dropped_and_counted(tmp_path):
    root = make_synthetic("RGBNT100", tmp_path / "raw", **SMALL)
    junk = root / "rgbir" / "bounding_box_test" / "-1_c002_000.jpg"
    _write_jpg(junk, size=(24, 16))
    with pytest.warns(DatasetBuildWarning, match=r"bounding_box_test: dropped 1 junk image\(s\) with pid -1"):
        dsd = _build("RGBNT100", tmp_path / "raw", tmp_path)
    assert junk.name not in dsd["gallery"]["name"] and -1 not in dsd["gallery"]["pid"]
    assert len(dsd["gallery"]) == len(list(junk.parent.iterdir())) - 1

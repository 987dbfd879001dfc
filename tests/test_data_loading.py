"""Rows -> batches in the docs/interfaces.md format, through with_transform and a DataLoader with workers."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import datasets
from mmreid.data.collate import ReIDCollator, ReIDTransform
from mmreid.data.loading import load_reid_dataset
from mmreid.data.builder import build_dataset, save_dataset
from mmreid.data.synthetic import make_synthetic


def _solid(value):
    return Image.new("RGB", (8, 16), value)


def _rows(images, **cols):
    data = {"rgb": images[0], "nir": images[1], "tir": images[2], **cols}
    feats = {"rgb": datasets.Image(), "nir": datasets.Image(), "tir": datasets.Image()}
    feats.update({k: datasets.Value("int64") for k in cols if k != "name"})
    if "name" in cols:
        feats["name"] = datasets.Value("string")
    return datasets.Dataset.from_dict(data, features=datasets.Features(feats))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loading")
    make_synthetic("RGBNT201", tmp / "raw", num_train_ids=3, num_test_ids=2, images_per_id=4, image_size=(24, 12))
    dsd = build_dataset("RGBNT201", tmp / "raw", cache_dir=tmp / "cache")
    return save_dataset(dsd, tmp / "saved"), dsd


def test_modality_order_and_normalization():
    ds = _rows([[_solid((0, 0, 0))], [_solid((255, 255, 255))], [_solid((0, 128, 255))]],
               pid=[7], camid=[1], sceneid=[-1])
    out = ds.with_transform(ReIDTransform(image_size=(16, 8)))[0:1]
    x = out["pixel_values"]
    assert x.shape == (1, 3, 3, 16, 8) and x.dtype == torch.float32
    assert torch.all(x[0, 0] == -1.0)  # RGB black
    assert torch.all(x[0, 1] == 1.0)  # NIR white
    expected = torch.tensor([0 / 127.5 - 1, 128 / 127.5 - 1, 255 / 127.5 - 1]).view(3, 1, 1)
    assert torch.allclose(x[0, 2], expected.expand(3, 16, 8), atol=1e-6)  # TIR, channels in RGB order
    assert out["pids"].tolist() == [7] and out["camera_ids"].tolist() == [1] and out["sceneids"].tolist() == [-1]
    assert "labels" not in out


def test_resize_is_bicubic_for_training_and_bilinear_for_eval():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    ds = _rows([[img], [img], [img]], pid=[1], label=[0], camid=[0], sceneid=[-1])
    for train, method in ((True, Image.BICUBIC), (False, Image.BILINEAR)):
        ref = np.asarray(img.resize((10, 24), method), dtype=np.float32)
        ref = torch.from_numpy(ref).permute(2, 0, 1) / 127.5 - 1
        x = ds.with_transform(ReIDTransform(image_size=(24, 10), train=train))[0]["pixel_values"]
        assert x.shape == (3, 3, 24, 10)
        assert torch.allclose(x[1], ref, atol=1e-5)
    bicubic = ds.with_transform(ReIDTransform((24, 10), train=True))[0]["pixel_values"]
    bilinear = ds.with_transform(ReIDTransform((24, 10), train=False))[0]["pixel_values"]
    assert not torch.allclose(bicubic, bilinear)


def test_train_batch_keys_and_types(built):
    _, dsd = built
    out = dsd["train"].with_transform(ReIDTransform((32, 16), train=True))[2:7]
    assert set(out) == {"pixel_values", "labels", "camera_ids", "pids", "sceneids"}
    assert out["pixel_values"].shape == (5, 3, 3, 32, 16)
    for key in ("labels", "camera_ids", "pids", "sceneids"):
        assert out[key].dtype == torch.long and out[key].shape == (5,)
    assert out["labels"].tolist() == dsd["train"]["label"][2:7]
    assert out["pids"].tolist() == dsd["train"]["pid"][2:7]
    assert -1.0 <= out["pixel_values"].min() and out["pixel_values"].max() <= 1.0


def test_dataloader_with_workers_matches_in_process(built):
    _, dsd = built
    collate = ReIDCollator(image_size=(32, 16), train=False)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(dsd["gallery"], batch_size=3, shuffle=False, num_workers=workers, collate_fn=collate)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == -(-len(dsd["gallery"]) // 3)
    for a, b in zip(batches[0], batches[2]):
        assert set(a) == {"pixel_values", "camera_ids", "pids", "camids", "sceneids"}  # model inputs + metric ids
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["pids"], b["pids"])
    stacked = torch.cat([b["camera_ids"] for b in batches[2]])
    assert stacked.tolist() == dsd["gallery"]["camid"]


def test_undecoded_cells_give_the_same_pixels(built):
    _, dsd = built
    t = ReIDTransform((24, 12))
    decoded = dsd["query"].with_transform(t)[0:4]["pixel_values"]
    raw = dsd["query"].cast_column("rgb", datasets.Image(decode=False))
    raw = raw.cast_column("nir", datasets.Image(decode=False)).cast_column("tir", datasets.Image(decode=False))
    assert torch.equal(ReIDCollator(t)([raw[i] for i in range(4)])["pixel_values"], decoded)


def test_transform_rejects_rows_without_the_columns():
    with pytest.raises(KeyError, match=r"lack column\(s\) \['tir'"):
        ReIDTransform((8, 4))({"rgb": [_solid(0)], "nir": [_solid(0)], "pid": [1], "camid": [0], "sceneid": [0]})
    with pytest.raises(ValueError, match="interpolation"):
        ReIDTransform((8, 4), interpolation="cubic-ish")


def test_load_reid_dataset_checks_splits_and_columns(built, tmp_path):
    path, dsd = built
    loaded = load_reid_dataset(path)
    assert loaded["train"]["name"] == dsd["train"]["name"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reid_dataset(tmp_path / "missing")
    save_dataset(datasets.DatasetDict({"train": dsd["train"], "query": dsd["query"]}), tmp_path / "no_gallery")
    with pytest.raises(ValueError, match=r"missing split\(s\) \['gallery'\]"):
        load_reid_dataset(tmp_path / "no_gallery")
    broken = datasets.DatasetDict({s: dsd[s] for s in dsd})
    broken["query"] = broken["query"].remove_columns("camid")
    save_dataset(broken, tmp_path / "no_camid")
    with pytest.raises(ValueError, match=r"split 'query' lacks column\(s\) \['camid'\]"):
        load_reid_dataset(tmp_path / "no_camid")
    dsd["train"].save_to_disk(str(tmp_path / "single"))
    with pytest.raises(ValueError, match="single Dataset"):
        load_reid_dataset(tmp_path / "single")

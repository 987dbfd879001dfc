"""After training: data_scripts/embed.py (Arrow, image folders, 1 vs 2 processes, kills), the FAISS gallery index
(exact = eval.py's ranking and mAP; ivf / ivfpq), data_scripts/search.py, and their one-line errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, build_tiny_dataset, free_port, load_data_script, tiny_train_args
from conftest import one_line_error as _one_line_error

faiss = pytest.importorskip("faiss")

import datasets  # noqa: E402

from mmreid.evaluation.metrics import compute_distance_matrix, reid_metrics  # noqa: E402
from mmreid.evaluation.reranking import re_ranking  # noqa: E402
from mmreid.retrieval.index import GalleryIndex, IndexSpec  # noqa: E402
from mmreid.retrieval.search import Rerank, search_gallery  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
import eval as eval_script  # noqa: E402
import train  # noqa: E402


embed_script, search_script = load_data_script("embed"), load_data_script("search")
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(gallery_data):
    return gallery_data


@pytest.fixture(scope="module")
def checkpoint(gallery_checkpoint):
    """A tiny DeMo trained a few steps with train.py (trained features, not random init), shared with
    test_gallery_stores.py."""
    return gallery_checkpoint


def embed(checkpoint, dataset, output, *extra):
    assert embed_script.main(["--model", str(checkpoint), "--dataset", str(dataset), "--output", str(output),
                              "--no-progress", *map(str, extra)]) == 0
    return datasets.load_from_disk(str(output))


@pytest.fixture(scope="module")
def galleries(checkpoint, data_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("retrieval-embeddings")
    return {split: embed(checkpoint, data_dir, base / split, "--split", split, "--index", "exact")
            for split in ("query", "gallery")} | {"base": base}


def test_exact_index_gives_eval_ranking_and_map(checkpoint, data_dir, galleries, tmp_path):
    """Every query ranked by the exact index over the whole gallery: eval.py's order, and mAP from that top-k equal
    to the mAP eval.py prints."""
    assert eval_script.main(["--model", str(checkpoint), "--dataset", str(data_dir), "--output", str(tmp_path),
                             "--no-progress", "--no-complexity"]) == 0
    report = json.loads((tmp_path / "eval_results.json").read_text())
    headline = report["results"][report["headline_features"]]
    query, gallery = galleries["query"], galleries["gallery"]
    index = GalleryIndex.load(galleries["base"] / "gallery")
    qf = np.asarray(query["embedding"], dtype=np.float32)
    distances, rows = index.nearest(qf, len(gallery))
    assert rows.shape == (len(query), len(gallery)) and (np.sort(rows, axis=1) == np.arange(len(gallery))).all()

    # eval.py's order: stable sort of its squared euclidean distances on the normalised features
    reference = compute_distance_matrix(qf, np.asarray(gallery["embedding"]))
    assert (rows == np.argsort(reference, axis=1, kind="stable")).all()
    np.testing.assert_allclose(distances, np.take_along_axis(reference, rows, axis=1), atol=1e-5)

    distmat = np.empty((len(query), len(gallery)), dtype=np.float32)
    np.put_along_axis(distmat, rows, distances, axis=1)
    ids = dict(q_pids=query["pid"], g_pids=gallery["pid"], q_camids=query["camid"], g_camids=gallery["camid"])
    from_index = reid_metrics(distmat, **ids)
    assert 100 * from_index["mAP"] == pytest.approx(headline["mAP"], abs=1e-9)
    assert 100 * from_index["cmc"][0] == pytest.approx(headline["Rank-1"], abs=1e-9)
    assert headline["mAP"] > 30  # trained features: a ranking with signal, not ties of a random model
    print(f"\nexact index vs eval.py on {len(query)} x {len(gallery)}: mAP {100 * from_index['mAP']:.4f} vs "
          f"{headline['mAP']:.4f}, identical ranking of every query")


def test_embeddings_columns_and_manifest(galleries, data_dir):
    gallery = galleries["gallery"]
    source = datasets.load_from_disk(str(data_dir))["gallery"]
    assert gallery.column_names == ["pid", "camid", "sceneid", "name", "time", "source", "embedding"]
    assert gallery["name"] == source["name"] and gallery["pid"] == source["pid"] and gallery["camid"] == source["camid"]
    emb = gallery.with_format("numpy")[:]["embedding"]
    assert gallery.features["embedding"].feature.dtype == "float32"
    assert emb.dtype == np.float32 and emb.shape[0] == len(source)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    manifest = json.loads((galleries["base"] / "gallery" / "retrieval.json").read_text())
    assert manifest["split"] == "gallery" and manifest["dim"] == emb.shape[1] and manifest["index"] == "exact"


def test_one_and_two_processes_agree(checkpoint, data_dir, galleries, tmp_path):
    """torchrun, 2 CPU processes (gloo, one thread each), batches of 5 (the last round padded): rank 0 writes the
    same rows in the same order as one process, embeddings within 1e-5."""
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    out = tmp_path / "two"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO_ROOT / "data_scripts" / "embed.py"), "--model", str(checkpoint), "--dataset", str(data_dir),
           "--output", str(out), "--batch-size", "5", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = datasets.load_from_disk(str(out)), galleries["gallery"]
    assert json.loads((out / "retrieval.json").read_text())["num_processes"] == 2
    assert two["name"] == one["name"]
    difference = np.abs(np.asarray(two["embedding"]) - np.asarray(one["embedding"])).max()
    print(f"\n1 vs 2 processes: max |difference| {difference:.2e} over {len(one)} x {len(one[0]['embedding'])}")
    assert difference <= 1e-5


@pytest.fixture(scope="module")
def large_dataset(data_dir, tmp_path_factory):
    """The gallery split 8 times over (288 rows, each copy's names prefixed: names are a gallery's keys), so that
    embedding one row at a time takes seconds."""
    gallery = datasets.load_from_disk(str(data_dir))["gallery"]
    path = tmp_path_factory.mktemp("retrieval-large") / "ds"
    copies = [gallery.map(lambda row, c=c: {"name": f"copy{c}_{row['name']}"}) for c in range(8)]
    datasets.DatasetDict({"gallery": datasets.concatenate_datasets(copies)}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kill_at", ["embedding gallery", "Saving the dataset"])
def test_a_kill_leaves_nothing_that_looks_finished(checkpoint, large_dataset, tmp_path, kill_at):
    """SIGKILL while embedding, or while the dataset is being written: no --output folder; the next run completes."""
    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO_ROOT / "data_scripts" / "embed.py"), "--model", str(checkpoint), "--dataset",
           str(large_dataset), "--output", str(out), "--batch-size", "1", "--index", "exact"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=ONE_THREAD, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    seen = b""
    deadline = time.monotonic() + 240
    while kill_at.encode() not in seen and proc.poll() is None and time.monotonic() < deadline:
        seen += os.read(proc.stderr.fileno(), 4096)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, seen.decode(errors="replace")[-2000:]
    assert not out.exists()
    embed(checkpoint, large_dataset, out, "--index", "exact")
    assert len(datasets.load_from_disk(str(out))) == 288 and (out / "index.faiss").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["killed"]  # the hidden work folder is gone


def test_image_folder_embeds_like_the_arrow_dataset(checkpoint, data_dir, galleries, tmp_path):
    """A release folder read in place gives the Arrow dataset's rows and embeddings; names that do not parse get
    ids -1 and embed without camera ids."""
    root = data_dir.parent / "raw"
    folder = embed(checkpoint, root, tmp_path / "folder", "--split", "gallery")
    arrow = galleries["gallery"]
    assert folder["name"] == arrow["name"] and folder["camid"] == arrow["camid"]
    np.testing.assert_allclose(np.asarray(folder["embedding"]), np.asarray(arrow["embedding"]), atol=1e-6)

    plain = tmp_path / "plain"
    for tag in ("RGB", "NI", "TI"):
        (plain / tag).mkdir(parents=True)
        for i, src in enumerate(sorted((root / "RGBNT201" / "test" / tag).iterdir())[:4]):
            shutil.copy(src, plain / tag / f"photo{i}.jpg")
    unlabeled = embed(checkpoint, plain, tmp_path / "plain-emb")
    assert unlabeled["name"] == [f"photo{i}.jpg" for i in range(4)] and set(unlabeled["pid"]) == {-1}
    assert set(unlabeled["camid"]) == {-1}


def _triple(data_dir, name):
    test = data_dir.parent / "raw" / "RGBNT201" / "test"
    return [test / tag / name for tag in ("RGB", "NI", "TI")]


def test_search_cli_by_triple_and_by_embedding(checkpoint, data_dir, galleries, capsys):
    index_dir = galleries["base"] / "gallery"
    query = galleries["query"]
    row = 7
    rgb, nir, tir = _triple(data_dir, query[row]["name"])
    triple = ["--rgb", str(rgb), "--nir", str(nir), "--tir", str(tir)]
    camera = ["--camera", str(query[row]["camid"])]
    assert search_script.main(["--index", str(index_dir), *triple, "--k", "5", *camera]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # RGBNT201's query split is its gallery: the top result is the query itself, at distance 0 (processor = eval.py)
    assert len(lines) == 5 and lines[0].split()[:2] == ["1", query[row]["name"]]
    assert f"pid {query[row]['pid']}" in lines[0] and float(lines[0].split()[-1]) == 0.0
    distances = [float(line.split()[-1]) for line in lines]
    assert distances == sorted(distances)

    np.save(tmp_path_npy := index_dir.parent / "q.npy", np.asarray(query[row]["embedding"], dtype=np.float32))
    assert search_script.main(["--index", str(index_dir), "--embedding", str(tmp_path_npy), "--k", "5",
                               "--json"]) == 0
    by_embedding = json.loads(capsys.readouterr().out)["results"]
    assert [h["name"] for h in by_embedding] == [line.split()[1] for line in lines]

    assert search_script.main(["--index", str(index_dir), *triple, "--k", "5", "--json"]) == 0  # camera unknown
    assert json.loads(capsys.readouterr().out)["results"][0]["name"] == query[row]["name"]

    assert search_script.main(["--index", str(index_dir), "--tir", str(tir), "--k", "3", "--camera",
                               str(query[row]["camid"]), "--drop-same-camera", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3 and all(h["camid"] != query[row]["camid"] for h in hits)


def test_search_filters_and_reranks(galleries):
    index = GalleryIndex.load(galleries["base"] / "gallery")
    query, gallery = galleries["query"], galleries["gallery"]
    q = np.asarray(query[0]["embedding"], dtype=np.float32)
    everything = search_gallery(index, q, k=len(gallery))
    junk = [h for h in everything if h.camid == query[0]["camid"] and h.pid == query[0]["pid"]]
    filtered = search_gallery(index, q, k=len(gallery), camera_id=query[0]["camid"], pid=query[0]["pid"],
                              drop_same_camera=True)
    assert junk and [h.row for h in filtered] == [h.row for h in everything if h not in junk]
    assert [h.rank for h in filtered] == list(range(1, len(filtered) + 1))

    # re-ranking all gallery rows as candidates = eval.py's re_ranking of this query against the whole gallery
    params = Rerank(top=len(gallery), k1=10, k2=4, lambda_value=0.3)
    reranked = search_gallery(index, q, k=10, rerank=params)
    reference = re_ranking(q[None], np.asarray(gallery["embedding"]), k1=10, k2=4, lambda_value=0.3)[0]
    assert [h.row for h in reranked] == np.argsort(reference, kind="stable")[:10].tolist()
    np.testing.assert_allclose([h.distance for h in reranked], np.sort(reference)[:10], atol=1e-6)


def clustered(num, dim, seed, centres=50, latent=16):
    """Normalised rows near 50 centres, varying in a ``latent``-dim subspace (as trained features concentrate in
    few directions), with a little isotropic noise."""
    fixed = np.random.default_rng(0)
    c, basis = fixed.standard_normal((centres, latent)), fixed.standard_normal((latent, dim))
    rng = np.random.default_rng(seed)
    z = c[rng.integers(0, centres, num)] + 0.5 * rng.standard_normal((num, latent))
    x = (z @ basis + 0.05 * rng.standard_normal((num, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _vectors_dataset(x):
    features = datasets.Features({"pid": datasets.Value("int64"), "camid": datasets.Value("int64"),
                                  "sceneid": datasets.Value("int64"), "name": datasets.Value("string"),
                                  "embedding": datasets.List(datasets.Value("float32"), length=x.shape[1])})
    n = len(x)
    return datasets.Dataset.from_dict({"pid": [0] * n, "camid": [0] * n, "sceneid": [-1] * n,
                                       "name": [str(i) for i in range(n)], "embedding": list(x)}, features=features)


def test_ivf_and_ivfpq_indexes(tmp_path):
    """IVF with every cell probed is exact; fewer cells lose some neighbours; IVF-PQ (PCA + PQ + re-scoring) keeps
    recall@10 high; nprobe is saved and can be changed after loading."""
    gallery, queries = clustered(4000, 96, seed=1), clustered(50, 96, seed=2)
    exact = np.argsort(compute_distance_matrix(queries, gallery, normalize=False), axis=1, kind="stable")[:, :10]

    def recall(index):
        rows = index.nearest(queries, 10)[1]
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)])

    ivf = GalleryIndex.build(_vectors_dataset(gallery), IndexSpec(kind="ivf", nlist=64, nprobe=64))
    assert ivf.spec.nlist == 64 and recall(ivf) == 1.0
    ivf.set_search(nprobe=1)
    assert recall(ivf) < 1.0

    dataset = _vectors_dataset(gallery)
    dataset.save_to_disk(str(tmp_path / "pq"))
    pq = GalleryIndex.build(dataset, IndexSpec(kind="ivfpq", nlist=32, pca_dim=48, pq_m=12, nprobe=8))
    assert pq.spec.describe(96) == "PCA48,IVF32,PQ12x6,Refine(SQ4)"  # 6 bits: 4000 rows train 64 centroids
    pq.save(tmp_path / "pq")
    loaded = GalleryIndex.load(tmp_path / "pq")
    assert loaded.spec.nprobe == 8 and faiss.extract_index_ivf(loaded.faiss_index).nprobe == 8
    assert faiss.downcast_index(loaded.faiss_index).k_factor == loaded.spec.refine == 20
    assert recall(loaded) >= 0.9
    loaded.set_search(nprobe=32)
    assert faiss.extract_index_ivf(loaded.faiss_index).nprobe == 32


@pytest.mark.parametrize("rows, nlist, nprobe", [(100_000, 1264, 506), (1_000_000, 2564, 1026)])
def test_default_ivfpq_sizes_are_the_benchmarked_ones(rows, nlist, nprobe):
    """The defaults at the retrieval benchmark's gallery sizes are the chains docs/benchmarks.md measured."""
    spec = IndexSpec(kind="ivfpq").resolved(rows, 5120)
    assert spec.describe(5120) == f"PCA256,IVF{nlist},PQ64x8,Refine(SQ4)" and spec.nprobe == nprobe
    assert spec.refine == 20 and IndexSpec().resolved(rows, 5120).nprobe is None  # exact: no cells


def test_embed_bad_input_is_one_line_and_writes_nothing(checkpoint, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (["--dataset", str(tmp_path / "nope")], "--dataset"),
        (["--dataset", str(data_dir), "--split", "train2"], "train2"),
        (["--dataset", str(tmp_path)], "--dataset"),  # an empty folder: neither dataset nor images
        (["--dataset", str(data_dir), "--model", str(tmp_path)], "--model"),
        (["--dataset", str(data_dir), "--batch-size", "0"], "--batch-size"),
    ]
    for extra, needle in cases:
        args = ["--model", str(checkpoint), "--output", str(out), "--no-progress", *extra]
        assert embed_script.main(args) == 2
        assert needle in _one_line_error(capsys, "embed.py")
        assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()
    assert embed_script.main(["--model", str(checkpoint), "--dataset", str(data_dir), "--output", str(out)]) == 2
    assert "already exists" in _one_line_error(capsys, "embed.py")


def test_search_bad_input_is_one_line(galleries, tmp_path, capsys):
    index_dir = str(galleries["base"] / "gallery")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    np.save(tmp_path / "short.npy", np.zeros(3, dtype=np.float32))
    cases = [
        (["--index", index_dir], "at least one of --rgb"),
        (["--index", index_dir, "--rgb", str(text)], "--rgb"),
        (["--index", index_dir, "--nir", str(tmp_path / "missing.jpg")], "no such file"),
        (["--index", str(tmp_path), "--rgb", str(text)], "--index"),
        (["--index", index_dir, "--embedding", str(tmp_path / "short.npy")], "3 values"),
        (["--index", index_dir, "--embedding", str(text)], "--embedding"),
        (["--index", index_dir, "--rgb", str(text), "--drop-same-camera"], "--camera"),
    ]
    for args, needle in cases:
        assert search_script.main(args) == 2
        assert needle in _one_line_error(capsys, "search.py")


def test_next_checkpoint_searches_with_captions(tmp_path, capsys):
    """A NEXT checkpoint embeds a captioned gallery; a gallery row searched with its own images, captions and camera
    is found at distance 0 (the processor's text path = the collator's), and its captions change the embedding."""
    data = Path(build_tiny_dataset(tmp_path, seed=4, num_train_ids=4, num_test_ids=3, images_per_id=4,
                                   captions=True))
    model = tmp_path / "next"
    train.main([*tiny_train_args("next"), "--dataset", str(data), "--output-dir", str(model), "--num-identities",
                "2", "--num-instances", "2", "--max-steps", "4", "--save-strategy", "no"])
    gallery = embed(model, data, tmp_path / "gallery", "--index", "exact")
    capsys.readouterr()  # train.py's and embed.py's output
    row = datasets.load_from_disk(str(data))["gallery"][4]
    assert row["caption_rgb"]
    triple = [str(p) for p in _triple(data, row["name"])]
    base = ["--index", str(tmp_path / "gallery"), "--rgb", triple[0], "--nir", triple[1], "--tir", triple[2],
            "--camera", str(row["camid"]), "--k", "3", "--json"]
    captions = ["--caption-rgb", row["caption_rgb"], "--caption-nir", row["caption_nir"], "--caption-tir",
                row["caption_tir"]]
    assert search_script.main([*base, *captions]) == 0
    with_text = json.loads(capsys.readouterr().out)["results"]
    assert with_text[0]["name"] == row["name"] and with_text[0]["distance"] < 1e-6
    assert search_script.main(base) == 0
    without_text = json.loads(capsys.readouterr().out)["results"]
    assert without_text[0]["distance"] > 1e-4  # no captions: another embedding than the gallery row's
    assert len(gallery[0]["embedding"]) == len(np.asarray(gallery[1]["embedding"]))

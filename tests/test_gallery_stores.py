"""Gallery stores side by side: a Milvus (Lite) collection beside the FAISS folder. Same answers as exact FAISS and
eval.py, appends (in parts = at once, no duplicates, a killed append), deletes and retention, filters applied
before ranking, and one-line errors for bad input (an unreachable server, another model or dimension, a Lite file
held by a second process, an unknown filter field)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, free_port, load_data_script, one_line_error, train_gallery_model as _train

pytest.importorskip("faiss")
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

import datasets  # noqa: E402

from mmreid.evaluation.metrics import compute_distance_matrix, reid_metrics  # noqa: E402
from mmreid.retrieval.filters import RowFilter  # noqa: E402
from mmreid.retrieval.index import IndexSpec  # noqa: E402
from mmreid.retrieval.store import GalleryRows, Hit, new_info, open_gallery  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
import eval as eval_script  # noqa: E402

embed_script, search_script = load_data_script("embed"), load_data_script("search")
gallery_script = load_data_script("gallery")
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(gallery_data):
    return gallery_data


@pytest.fixture(scope="module")
def checkpoint(gallery_checkpoint):
    """The tiny trained DeMo of test_retrieval.py (trained once for both files)."""
    return gallery_checkpoint


def embed(*args):
    assert embed_script.main([*map(str, args), "--no-progress"]) == 0


def search_json(capsys, *args):
    capsys.readouterr()
    assert search_script.main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["results"]


@pytest.fixture(scope="module")
def splits(checkpoint, data_dir, tmp_path_factory):
    """The query split (FAISS folder), the gallery split in a FAISS exact folder and a Milvus FLAT collection."""
    base = tmp_path_factory.mktemp("stores")
    embed("--model", checkpoint, "--dataset", data_dir, "--split", "query", "--output", base / "query")
    embed("--model", checkpoint, "--dataset", data_dir, "--output", base / "faiss", "--index", "exact")
    embed("--model", checkpoint, "--dataset", data_dir, "--output", base / "gallery.db", "--index", "exact")
    return base


def test_milvus_flat_ranks_like_exact_faiss_and_eval(checkpoint, data_dir, splits, tmp_path):
    """Every query of the test split, ranked over the whole gallery by the Milvus FLAT collection: the exact FAISS
    index's order, and eval.py's mAP from that ranking."""
    assert eval_script.main(["--model", str(checkpoint), "--dataset", str(data_dir), "--output", str(tmp_path),
                             "--no-progress", "--no-complexity"]) == 0
    report = json.loads((tmp_path / "eval_results.json").read_text())
    headline = report["results"][report["headline_features"]]
    query = datasets.load_from_disk(str(splits / "query"))
    qf = np.asarray(query["embedding"], dtype=np.float32)
    with open_gallery(splits / "faiss") as faiss_store, open_gallery(str(splits / "gallery.db")) as milvus:
        n = len(faiss_store)
        assert len(milvus) == n and milvus.info["index_type"] == "FLAT"
        from_faiss = faiss_store.search(qf, n)
        from_milvus = milvus.search(qf, n)
        names = list(faiss_store.columns["name"])
    for a, b in zip(from_faiss, from_milvus):
        assert [h.name for h in a] == [h.name for h in b]
        np.testing.assert_allclose([h.distance for h in a], [h.distance for h in b], atol=1e-5)
    # mAP from Milvus's ranking = eval.py's
    row_of = {name: i for i, name in enumerate(names)}
    distmat = np.empty((len(query), n), dtype=np.float32)
    for q, hits in enumerate(from_milvus):
        distmat[q, [row_of[h.name] for h in hits]] = [h.distance for h in hits]
    gallery = datasets.load_from_disk(str(splits / "faiss"))
    metrics = reid_metrics(distmat, q_pids=query["pid"], g_pids=gallery["pid"], q_camids=query["camid"],
                           g_camids=gallery["camid"])
    assert 100 * metrics["mAP"] == pytest.approx(headline["mAP"], abs=1e-9)
    assert headline["mAP"] > 30  # trained features: a ranking with signal


def _parts(data_dir, tmp_path):
    """The gallery split cut into three saved datasets (rows 0-9, 10-24, 25-end)."""
    gallery = datasets.load_from_disk(str(data_dir))["gallery"]
    bounds = [0, 10, 25, len(gallery)]
    paths = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        path = tmp_path / f"part{i}"
        datasets.DatasetDict({"gallery": gallery.select(range(a, b))}).save_to_disk(str(path))
        paths.append(path)
    return paths


@pytest.mark.parametrize("output", ["faiss", "gallery.db"])
def test_appending_in_three_parts_equals_building_at_once(checkpoint, data_dir, splits, tmp_path, capsys, output):
    """A gallery appended in three parts answers every query as the one built at once; appending a part again adds
    nothing (names are keys)."""
    parts = _parts(data_dir, tmp_path)
    target = tmp_path / output
    embed("--model", checkpoint, "--dataset", parts[0], "--output", target, "--index", "exact")
    for part in (parts[1], parts[2], parts[1]):
        embed("--model", checkpoint, "--dataset", part, "--output", target, "--append")
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("added 0 embeddings")
    query = np.asarray(datasets.load_from_disk(str(splits / "query"))["embedding"], dtype=np.float32)
    with open_gallery(splits / output if output == "faiss" else str(splits / output)) as at_once, \
            open_gallery(str(target)) as appended:
        assert len(appended) == len(at_once) == 36
        assert [s["num_rows"] for s in appended.info["sources"]] == [10, 15, 11]
        for a, b in zip(at_once.search(query, 36), appended.search(query, 36)):
            assert [h.name for h in a] == [h.name for h in b]
            np.testing.assert_allclose([h.distance for h in a], [h.distance for h in b], atol=1e-6)


def test_faiss_ivf_takes_appends_without_retraining(checkpoint, data_dir, tmp_path):
    """ivf: appended rows join the trained cells (nlist kept); --retrain sizes and trains the index again."""
    parts = _parts(data_dir, tmp_path)
    target = tmp_path / "ivf"
    embed("--model", checkpoint, "--dataset", parts[0], "--output", target, "--index", "ivf")
    trained = json.loads((target / "index.json").read_text())
    embed("--model", checkpoint, "--dataset", parts[2], "--output", target, "--append")
    kept = json.loads((target / "index.json").read_text())
    with open_gallery(target) as store:
        assert len(store) == 21 and store.index.faiss_index.ntotal == 21 and kept["nlist"] == trained["nlist"] == 1
    embed("--model", checkpoint, "--dataset", parts[1], "--output", target, "--append", "--retrain")
    with open_gallery(target) as store:
        assert len(store) == 36 and store.index.faiss_index.ntotal == 36 and store.index.spec.kind == "ivf"


@pytest.mark.parametrize("output", ["faiss", "gallery.db"])
def test_a_killed_append_leaves_the_gallery_and_a_rerun_completes_it(checkpoint, data_dir, tmp_path, output):
    """SIGKILL during an append's embedding: the gallery holds what it held (whole rows); the rerun adds the rest
    once."""
    gallery = datasets.load_from_disk(str(data_dir))["gallery"]
    big = tmp_path / "big"
    copies = [gallery.map(lambda row, c=c: {"name": f"copy{c}_{row['name']}"}) for c in range(6)]
    datasets.DatasetDict({"gallery": datasets.concatenate_datasets(copies)}).save_to_disk(str(big))
    first = tmp_path / "first"
    datasets.DatasetDict({"gallery": copies[0]}).save_to_disk(str(first))
    target = tmp_path / output
    script = str(REPO_ROOT / "data_scripts" / "embed.py")
    embed("--model", checkpoint, "--dataset", first, "--output", target, "--index", "exact")
    proc = subprocess.Popen([sys.executable, script, "--model", str(checkpoint), "--dataset", str(big), "--output",
                             str(target), "--append", "--batch-size", "1"], cwd=REPO_ROOT, env=ONE_THREAD,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    seen, deadline = b"", time.monotonic() + 240
    while b"embedding gallery" not in seen and proc.poll() is None and time.monotonic() < deadline:
        seen += os.read(proc.stderr.fileno(), 4096)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, seen.decode(errors="replace")[-2000:]
    with open_gallery(str(target)) as store:
        assert len(store) == 36
    embed("--model", checkpoint, "--dataset", big, "--output", target, "--append")
    with open_gallery(str(target)) as store:
        assert len(store) == 216 and len(store.existing_names([f"copy5_{n}" for n in gallery["name"]])) == 36
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["big", "first", output])  # no hidden leftovers


# ------------------------------------------------------------------------------------------ synthetic galleries
def synthetic_rows(n=600, dim=32, seed=0):
    """Clustered L2-normalised vectors with ids: 20 identities, 6 cameras, 3 scenes, times 1000..1000+n."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    pids = rng.integers(0, 20, n)
    x = (centres[pids] + 0.6 * rng.standard_normal((n, dim))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return GalleryRows([f"row{i:04d}" for i in range(n)], pids.astype(np.int64), rng.integers(0, 6, n),
                       rng.integers(0, 3, n), 1000 + np.arange(n, dtype=np.int64), [""] * n, x)


def synthetic_store(kind, tmp_path, rows, spec=IndexSpec(kind="exact")):
    info = new_info("synthetic", "synthetic-1", rows.embeddings.shape[1], None)
    if kind == "faiss":
        store = open_gallery(tmp_path / "faiss", create_info=info, index_spec=spec)
    else:
        store = open_gallery(str(tmp_path / "g.db"), create_info=info, index_kind="exact")
    store.append(rows)
    return store


FILTERS = [
    RowFilter(include={"camid": (1, 2)}),
    RowFilter(exclude={"camid": (0, 3, 4)}),
    RowFilter(include={"sceneid": (2,)}, since=1100, until=1400),
    RowFilter(same_camera=(2, None)),
    RowFilter(same_camera=(2, 7), include={"pid": (7, 8, 9)}),
    RowFilter(include={"name": ("row0003", "row0100", "row0599")}),
]


@pytest.mark.parametrize("kind", ["faiss", "milvus"])
def test_filtered_top_k_is_the_exact_top_k_of_the_allowed_rows(kind, tmp_path):
    rows = synthetic_rows()
    queries = synthetic_rows(8, seed=1).embeddings
    columns = {"name": np.asarray(rows.names, dtype=object), "pid": rows.pids, "camid": rows.camids,
               "sceneid": rows.sceneids, "time": rows.times}
    with synthetic_store(kind, tmp_path, rows) as store:
        for where in FILTERS:
            allowed = np.flatnonzero(where.mask(columns))
            reference = compute_distance_matrix(queries, rows.embeddings[allowed], normalize=False)
            for q, hits in enumerate(store.search(queries, 10, where)):
                order = allowed[np.argsort(reference[q], kind="stable")[:10]]
                assert [h.name for h in hits] == [rows.names[i] for i in order], where
                assert all(where.mask({k: v[[int(h.name[3:]) for h in hits]] for k, v in columns.items()}))


def test_an_ivf_filter_still_returns_k_rows(tmp_path):
    """ivf / ivfpq probing a few cells: a filter that leaves few rows in them still gives the k allowed rows (the
    search visits every cell when the probed ones run short)."""
    rows = synthetic_rows(2000)
    queries = synthetic_rows(5, seed=1).embeddings
    for spec in (IndexSpec(kind="ivf", nlist=32, nprobe=1), IndexSpec(kind="ivfpq", nlist=16, nprobe=1, pca_dim=16,
                                                                        pq_m=4)):
        with synthetic_store("faiss", tmp_path / spec.kind, rows, spec) as store:
            where = RowFilter(include={"name": tuple(rows.names[::97])})  # 21 rows spread over the cells
            for hits in store.search(queries, 10, where):
                assert len(hits) == 10 and {h.name for h in hits} <= set(rows.names[::97])


@pytest.mark.parametrize("kind", ["faiss", "milvus"])
def test_drop_same_camera_returns_k_rows_from_other_cameras(kind, tmp_path, capsys):
    """The gallery holds 10 rows from other cameras than the query's (and 50 nearer ones from its camera):
    --k 10 --camera C --drop-same-camera returns exactly those 10."""
    rows = synthetic_rows(60)
    rows.camids[:] = 3
    others = np.arange(50, 60)
    rows.camids[others] = [0, 1, 2, 4, 5, 0, 1, 2, 4, 5]
    query = rows.embeddings[0]
    with synthetic_store(kind, tmp_path, rows) as store:
        location = store.location
    np.save(tmp_path / "q.npy", query)
    hits = search_json(capsys, "--index", location, "--embedding", tmp_path / "q.npy", "--k", 10, "--camera", 3,
                       "--drop-same-camera")
    assert sorted(h["name"] for h in hits) == [rows.names[i] for i in others]
    assert [h["rank"] for h in hits] == list(range(1, 11)) and all(h["camid"] != 3 for h in hits)
    by_time = search_json(capsys, "--index", location, "--embedding", tmp_path / "q.npy", "--k", 5, "--since",
                          "1010", "--until", "1020", "--where", "camid!=0")
    assert len(by_time) == 5 and all(1010 <= h["time"] < 1020 and h["camid"] == 3 for h in by_time)


@pytest.mark.parametrize("kind", ["faiss", "milvus"])
def test_deletes_by_name_identity_and_age(kind, tmp_path, capsys):
    """gallery.py delete: by name, by identity, older than a time; a search never returns a deleted row, and the
    rows left are searched exactly as before."""
    rows = synthetic_rows(300)
    with synthetic_store(kind, tmp_path, rows) as store:
        location = store.location
    query = rows.embeddings[5]
    np.save(tmp_path / "q.npy", query)
    assert gallery_script.main(["delete", "--index", location, "--name", "row0005", "row0006"]) == 0
    assert capsys.readouterr().out.startswith("deleted 2 rows")
    assert gallery_script.main(["delete", "--index", location, "--pid", str(rows.pids[7])]) == 0
    assert gallery_script.main(["delete", "--index", location, "--older-than", "1970-01-01T00:20:00"]) == 0  # 1200
    gone = {"row0005", "row0006"} | {n for n, p in zip(rows.names, rows.pids) if p == rows.pids[7]}
    gone |= {n for n, t in zip(rows.names, rows.times) if t < 1200}
    left = [i for i, n in enumerate(rows.names) if n not in gone]
    hits = search_json(capsys, "--index", location, "--embedding", tmp_path / "q.npy", "--k", 300)
    assert len(hits) == len(left) and not {h["name"] for h in hits} & gone
    order = np.argsort(compute_distance_matrix(query[None], rows.embeddings[left], normalize=False)[0], kind="stable")
    assert [h["name"] for h in hits] == [rows.names[left[i]] for i in order]
    assert gallery_script.main(["info", "--index", location]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == len(left)


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line_and_changes_nothing(checkpoint, data_dir, splits, tmp_path, capsys):
    db, folder = str(splits / "gallery.db"), str(splits / "faiss")
    np.save(tmp_path / "short.npy", np.ones(3, dtype=np.float32))
    with open_gallery(db) as store:
        rows_before, dim = len(store), store.dim
    np.save(tmp_path / "q.npy", np.ones(dim, dtype=np.float32))
    cases = [
        (search_script, ["--index", "http://127.0.0.1:9", "--embedding", tmp_path / "q.npy"], "cannot connect"),
        (search_script, ["--index", db, "--embedding", tmp_path / "short.npy"], "3 values"),
        (search_script, ["--index", db, "--embedding", tmp_path / "q.npy", "--where", "colour=red"],
         "unknown field 'colour'"),
        (search_script, ["--index", db, "--collection", "nope", "--embedding", tmp_path / "q.npy"], "'nope'"),
        (search_script, ["--index", folder, "--collection", "x", "--embedding", tmp_path / "q.npy"], "--collection"),
        (search_script, ["--index", str(tmp_path / "missing.db"), "--embedding", tmp_path / "q.npy"],
         "no such Milvus Lite file"),
        (embed_script, ["--model", checkpoint, "--dataset", data_dir, "--output", db], "already exists"),
        (embed_script, ["--model", checkpoint, "--dataset", data_dir, "--output", db, "--index", "none"],
         "--index none"),
        (embed_script, ["--model", checkpoint, "--dataset", data_dir, "--output", folder, "--store", "milvus",
                        "--append"], "--store milvus"),
        (embed_script, ["--model", checkpoint, "--dataset", data_dir, "--output", db, "--append", "--retrain"],
         "--retrain"),
        (gallery_script, ["delete", "--index", db], "one rule"),
        # index settings for an index that has no use for them, or on an append, are refused
        (embed_script, ["--model", checkpoint, "--dataset", data_dir, "--output", tmp_path / "f", "--index", "exact",
                        "--nlist", "4"], "--nlist is for a FAISS ivf / ivfpq index, not --index exact"),
        (embed_script, ["--model", checkpoint, "--dataset", data_dir, "--output", tmp_path / "f", "--refine", "4"],
         "--refine is for a FAISS ivfpq index, not --index none"),
        (embed_script, ["--model", checkpoint, "--dataset", data_dir, "--output", tmp_path / "f", "--index", "scann"],
         "--index scann is a Milvus index"),
        (embed_script, ["--model", checkpoint, "--dataset", data_dir, "--output", tmp_path / "n.db", "--index",
                        "ivfpq", "--pca-dim", "8"], "--pca-dim is for a FAISS folder's ivfpq index"),
        (embed_script, ["--model", checkpoint, "--dataset", data_dir, "--output", tmp_path / "n.db", "--index",
                        "hnsw", "--refine", "3"], "--refine is for a Milvus scann index, not --index hnsw"),
        (embed_script, ["--model", checkpoint, "--dataset", data_dir, "--output", tmp_path / "n.db", "--index",
                        "scann"], "Milvus Lite"),
        (embed_script, ["--model", checkpoint, "--dataset", data_dir, "--output", db, "--append", "--nprobe", "2"],
         "an append keeps the gallery's index"),
        (search_script, ["--index", folder, "--embedding", tmp_path / "q.npy", "--nprobe", "2"],
         "--nprobe is for a FAISS ivf / ivfpq index"),
        (search_script, ["--index", db, "--embedding", tmp_path / "q.npy", "--refine", "2"],
         "--refine is for a Milvus scann index"),
    ]
    for script, args, needle in cases:
        capsys.readouterr()
        assert script.main([*map(str, args)]) == 2, args
        assert needle in one_line_error(capsys, Path(script.__file__).name), args
    with open_gallery(db) as store:
        assert len(store) == rows_before
    assert not (tmp_path / "f").exists() and not (tmp_path / "n.db").exists()


def test_milvus_index_settings_reach_the_engine(checkpoint, data_dir, splits, tmp_path, capsys):
    """--nlist builds the IVF index with that many cells, --nprobe is saved with the gallery as its search default,
    and --nprobe at search time overrides it: with every cell visited the answers are the FLAT collection's."""
    db = tmp_path / "ivf.db"
    embed("--model", checkpoint, "--dataset", data_dir, "--output", db, "--index", "ivf", "--nlist", "3",
          "--nprobe", "1")
    with open_gallery(str(db)) as store:
        assert store.info["index_type"] == "IVF_FLAT" and store.info["index_params"] == {"nlist": 3}
        assert store.info["search_defaults"] == {"nprobe": 1} and store._search_params(1)["nprobe"] == 1
    query = splits / "query"
    np.save(tmp_path / "q.npy", datasets.load_from_disk(str(query))["embedding"][0])
    flat = search_json(capsys, "--index", splits / "gallery.db", "--embedding", tmp_path / "q.npy", "--k", "10")
    every_cell = search_json(capsys, "--index", db, "--embedding", tmp_path / "q.npy", "--k", "10", "--nprobe", "3")
    assert [h["name"] for h in every_cell] == [h["name"] for h in flat]
    # Milvus Lite 3.2 returns at most nprobe rows from an IVF index; the store asks for k cells at least
    assert len(search_json(capsys, "--index", db, "--embedding", tmp_path / "q.npy", "--k", "10")) == 10


def test_another_model_is_refused_on_append_and_query(checkpoint, data_dir, splits, tmp_path, capsys):
    """A gallery embedded by one checkpoint refuses rows or queries from another (same size, other weights)."""
    other = _train(data_dir, tmp_path / "other", seed=1, steps=2)  # another seed: other weights, same shapes
    capsys.readouterr()
    triple = [data_dir.parent / "raw" / "RGBNT201" / "test" / tag for tag in ("RGB", "NI", "TI")]
    name = sorted(p.name for p in triple[0].iterdir())[0]
    for output in (splits / "faiss", splits / "gallery.db"):
        assert embed_script.main(["--model", str(other), "--dataset", str(data_dir), "--output", str(output),
                                  "--append", "--no-progress"]) == 2
        assert "another model" in one_line_error(capsys, "embed.py")
        assert search_script.main(["--index", str(output), "--model", str(other), "--rgb",
                                   str(triple[0] / name)]) == 2
        assert "another model" in one_line_error(capsys, "search.py")


def test_an_overwrite_replaces_a_milvus_collection_in_one_step(tmp_path):
    """--overwrite of a Milvus collection: until the new rows are all in, readers see the old gallery whole; then
    the new one whole (an alias swap); a killed overwrite's hidden collection is dropped by the next one."""
    from pymilvus import MilvusClient

    db = str(tmp_path / "g.db")
    rows = synthetic_rows(300)
    generations = [rows.select(np.arange(i * 100, i * 100 + 100)) for i in range(3)]
    info = new_info("synthetic", "synthetic-1", rows.embeddings.shape[1], None)
    with open_gallery(db, create_info=info) as store:
        store.append(generations[0])
    with open_gallery(db, create_info=info, overwrite=True):
        pass  # killed before its rows were in: the gallery is untouched
    for old, new in zip(generations, generations[1:]):
        with open_gallery(db, create_info=info, overwrite=True) as writer, open_gallery(db) as reader:
            assert len(reader) == 100 and reader.existing_names(old.names) == set(old.names)
            writer.append(new)
            assert len(reader) == 100 and reader.existing_names(new.names) == set(new.names)
            assert reader.search(new.embeddings[:1], 1)[0][0].name == new.names[0]
    client = MilvusClient(db)
    assert len(client.list_collections()) == 1  # the replaced and the abandoned collections are gone
    client.close()


def test_two_processes_embed_into_milvus_like_one(checkpoint, data_dir, splits, tmp_path):
    """torchrun, 2 CPU processes: rank 0 alone opens the Milvus Lite file and writes every row, as one process
    does (embeddings within 1e-5)."""
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    out = tmp_path / "two.db"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO_ROOT / "data_scripts" / "embed.py"), "--model", str(checkpoint), "--dataset", str(data_dir),
           "--output", str(out), "--index", "exact", "--batch-size", "5", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open_gallery(str(out)) as two, open_gallery(str(splits / "gallery.db")) as one:
        assert len(two) == len(one) and two.info["num_processes"] == 2
        names = sorted(datasets.load_from_disk(str(data_dir))["gallery"]["name"])
        hits = [Hit(1, -1, n, 0, 0, 0, 0, 0.0) for n in names]
        assert np.abs(two.embeddings_of(hits) - one.embeddings_of(hits)).max() <= 1e-5


def test_a_lite_file_held_by_another_process_is_one_line(splits, tmp_path, capsys):
    """A second process holds the Milvus Lite file open: search.py says so in one line (and works once it is
    gone)."""
    db = str(splits / "gallery.db")
    with open_gallery(splits / "faiss") as store:
        dim = store.dim
    np.save(tmp_path / "q.npy", np.ones(dim, dtype=np.float32))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pymilvus import MilvusClient; "
                               f"c = MilvusClient({db!r}); print('open', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, env=ONE_THREAD)
    try:
        assert holder.stdout.readline().strip() == b"open"
        capsys.readouterr()
        assert search_script.main(["--index", db, "--embedding", str(tmp_path / "q.npy")]) == 2
        assert "open in another process" in one_line_error(capsys, "search.py")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert search_script.main(["--index", db, "--embedding", str(tmp_path / "q.npy")]) == 0


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    """A Milvus server: ``$MILVUS_URI``, else one started for this module from the virtualenv ``$MILVUS_SERVER_VENV``
    (``pip install milvus``: the standalone server, docs/retrieval.md), else the test is skipped."""
    if os.environ.get("MILVUS_URI"):
        yield os.environ["MILVUS_URI"]
        return
    venv = os.environ.get("MILVUS_SERVER_VENV")
    if not venv:
        pytest.skip("neither MILVUS_URI nor MILVUS_SERVER_VENV is set: no Milvus server to test")
    from pymilvus import MilvusClient

    with socket.socket() as probe:  # the standalone server's embedded etcd takes this fixed port
        if probe.connect_ex(("127.0.0.1", 2380)) == 0:
            pytest.skip("port 2380 is taken (another standalone Milvus server runs here): set MILVUS_URI to it")
    port = free_port()
    log = open(tmp_path_factory.mktemp("milvus-server") / "server.log", "w")
    server = subprocess.Popen([str(Path(venv) / "bin" / "milvus-server"), "--data",
                               str(tmp_path_factory.mktemp("milvus-data")), "--proxy-port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    try:
        while True:
            try:
                MilvusClient(uri=uri, timeout=5).close()
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the Milvus server of {venv} did not start (log: {log.name})")
                time.sleep(2)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the launcher and the milvus process it started
        server.wait(timeout=60)
        log.close()


def wait_until_indexed(store, timeout=300) -> None:
    """Seal the collection's segments, wait until Milvus has indexed every row, and reload it so that searches use
    the index (a search before that scans unindexed rows whole)."""
    store.client.flush(store.collection)
    deadline = time.monotonic() + timeout
    while True:
        state = store.client.describe_index(store.collection, "embedding")
        if int(state["indexed_rows"]) >= int(state["total_rows"]) > 0 and not int(state["pending_index_rows"]):
            break
        assert time.monotonic() < deadline, state
        time.sleep(1)
    store.client.release_collection(store.collection)
    store.client.load_collection(store.collection)


def test_a_milvus_server_takes_the_same_calls(milvus_uri, tmp_path):
    """Against a real server: create, append, filter, delete, overwrite, drop; and what an append or a delete changed
    is seen by a search from another process as soon as it returns (searches read at Session consistency, writes
    wait until the server has applied them)."""
    from pymilvus import MilvusClient

    from mmreid.retrieval.milvus_store import drop_gallery

    collection = f"reid_test_{os.getpid()}"
    rows = synthetic_rows(200)
    info = new_info("synthetic", "synthetic-1", rows.embeddings.shape[1], None)
    np.save(tmp_path / "q.npy", rows.embeddings[0])

    def search_elsewhere():
        out = subprocess.run([sys.executable, str(REPO_ROOT / "data_scripts" / "search.py"), "--index", milvus_uri,
                              "--collection", collection, "--embedding", str(tmp_path / "q.npy"), "--k", "5",
                              "--json"], capture_output=True, text=True, env=ONE_THREAD, timeout=300)
        assert out.returncode == 0, out.stderr
        return [hit["name"] for hit in json.loads(out.stdout)["results"]]

    try:
        with open_gallery(milvus_uri, collection, create_info=info, index_kind="exact") as store:
            assert store.append(rows) == 200 and store.append(rows) == 0
            assert search_elsewhere()[0] == "row0000"
            hits = store.search(rows.embeddings[:1], 10, RowFilter(same_camera=(int(rows.camids[0]), None)))[0]
            assert len(hits) == 10 and all(h.camid != rows.camids[0] for h in hits)
            assert store.delete(RowFilter(include={"name": ("row0000",)})) == 1
            assert "row0000" not in {h.name for h in store.search(rows.embeddings[:1], 10)[0]}
            assert "row0000" not in search_elsewhere()
        with open_gallery(milvus_uri, collection, create_info=info, overwrite=True) as writer:
            writer.append(rows.select(np.arange(1, 50)))  # an alias swap on the server too
            with open_gallery(milvus_uri, collection) as reader:
                assert len(reader) == 49
        # SCANN (a server's): with every cell probed, the re-scoring on the stored embeddings gives the exact top-10
        # and exact distances (4-bit codes alone would not). Milvus indexes segments of 1024 rows or more only.
        many = synthetic_rows(3000)
        d2 = ((many.embeddings[:5, None] - many.embeddings[None]) ** 2).sum(-1)
        with open_gallery(milvus_uri, f"{collection}_scann", create_info=info, index_kind="scann",
                          expected_rows=len(many)) as store:
            store.append(many)
            wait_until_indexed(store)
            nlist = int(store.info["index_params"]["nlist"])
            assert store.client.describe_index(store.collection, "embedding")["nlist"] == str(nlist)
            # the defaults measured in docs/benchmarks.md: a quarter of the cells, 10 x k re-scored
            assert store._search_params(10) == {"nprobe": -(-nlist // 4), "reorder_k": 100}
            store.set_search(nprobe=nlist, refine=50)
            for i, hits in enumerate(store.search(many.embeddings[:5], 10)):
                want = np.argsort(d2[i])[:10]
                assert [h.name for h in hits] == [many.names[j] for j in want]
                np.testing.assert_allclose([h.distance for h in hits], d2[i, want], atol=1e-5)
    finally:
        client = MilvusClient(uri=milvus_uri, token=os.environ.get("MILVUS_TOKEN", ""))
        drop_gallery(client, collection)
        drop_gallery(client, f"{collection}_scann")
        client.close()


def test_the_demo_service_searches_a_milvus_gallery(data_dir, splits):
    """The search page's back end on a Milvus Lite gallery: a gallery row's own triple is found first, and the result
    pictures are that row's images (found by name in the dataset the gallery was embedded from)."""
    from mmreid.retrieval.service import RetrievalService, side_by_side

    service = RetrievalService(None, str(splits / "gallery.db"))
    assert service.problem is None, service.problem
    try:
        row = datasets.load_from_disk(str(data_dir))["gallery"][9]
        test = data_dir.parent / "raw" / "RGBNT201" / "test"
        paths = [str(test / tag / row["name"]) for tag in ("RGB", "NI", "TI")]
        result = service.search(paths, k=5, camera=row["camid"])
        assert len(result.gallery) == 5 and result.gallery[0][1].startswith(f"#1 · id {row['pid']} ")
        expected = np.asarray(side_by_side([row["rgb"], row["nir"], row["tir"]]), dtype=np.float32)
        assert np.abs(np.asarray(result.gallery[0][0], dtype=np.float32) - expected).max() == 0
    finally:
        service.gallery.close()


def test_row_times_are_capture_times_where_the_source_has_them():
    """``time``: the source's ``captured_at`` column (unix seconds) where it has one, else the time of the append."""
    from mmreid.retrieval.embed import gallery_rows

    split = datasets.Dataset.from_dict({"pid": [1, 2], "camid": [0, 1], "sceneid": [-1, -1], "name": ["a", "b"],
                                        "captured_at": [1_700_000_000, 1_700_000_060]})
    vectors = np.eye(2, dtype=np.float32)
    assert gallery_rows(split, vectors, now=5).times.tolist() == [1_700_000_000, 1_700_000_060]
    assert gallery_rows(split.remove_columns("captured_at"), vectors, now=5).times.tolist() == [5, 5]

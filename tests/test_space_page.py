"""space/app.py as a person uses it, in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): the
first start builds the synthetic test gallery, a query triple uploaded and searched shows k result triples with
the query's identity first; no image, a file that is not an image and an unreadable checkpoint are messages in
the page, never a traceback."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, build_tiny_dataset, free_port, tiny_train_args

pytest.importorskip("faiss")
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

import datasets  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
import train  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
APP = REPO_ROOT / "space" / "app.py"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except sync_api.Error as exc:
            pytest.skip(f"Chromium at {CHROMIUM} does not start here: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def first_start(tmp_path_factory):
    """A working folder as after `python train.py` (a checkpoint saved by train.py at outputs/demo-synthetic, no
    gallery index yet) and `python space/app.py` started in it on a free port. The checkpoint is tiny and trained a
    few steps on a smaller set of the same layout (the default run takes a minute); the app embeds the gallery of
    the default synthetic set on its first start."""
    work = tmp_path_factory.mktemp("demo-first-start")
    from mmreid.data.synthetic import prepare_default_set

    prepare_default_set(work / "outputs" / "synthetic-rgbnt201")
    small = build_tiny_dataset(work / "small", seed=5, num_train_ids=6, num_test_ids=2, images_per_id=4)
    train.main([*tiny_train_args(), "--dataset", small, "--output-dir", str(work / "outputs" / "demo-synthetic"),
                "--num-identities", "3", "--num-instances", "2", "--max-steps", "20", "--save-strategy", "no"])
    app = start_app(work)
    yield work, app
    stop(app)


def start_app(cwd: Path, *args: str):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(APP), "--port", str(port), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        log.append(line)
        if "Running on local URL" in line:
            proc.log = log
            proc.url = f"http://127.0.0.1:{port}/"
            return proc
    stop(proc)
    raise AssertionError("the app did not start:\n" + "".join(log)[-3000:])


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def query_files(work: Path, row: int, folder: Path):
    """The images of query row ``row`` of the synthetic test split as JPEG files, with its identity."""
    query = datasets.load_from_disk(str(work / "outputs" / "synthetic-rgbnt201"))["query"][row]
    paths = []
    for column in ("rgb", "nir", "tir"):
        paths.append(folder / f"{column}.jpg")
        query[column].save(paths[-1], quality=95)
    return paths, query["pid"]


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#search-button")
    return page


def upload(page, paths):
    for key, path in zip(("rgb", "nir", "tir"), paths):
        if path is not None:
            page.locator(f"#query-{key} input[type=file]").set_input_files(str(path))
    for key, path in zip(("rgb", "nir", "tir"), paths):  # wait until each upload is listed
        if path is not None:
            page.locator(f'#query-{key} td.filename[aria-label="{Path(path).name}"]').wait_for(timeout=30_000)


def status_after_search(page, expected: str) -> str:
    page.click("#search-button")
    page.locator("#status").get_by_text(expected, exact=False).wait_for(timeout=60_000)
    return page.locator("#status").inner_text()


def test_search_in_a_real_browser(browser, first_start, tmp_path):
    work, app = first_start
    started = time.monotonic()
    assert (work / "outputs" / "gallery-synthetic" / "index.faiss").is_file()  # built on first start
    manifest = json.loads((work / "outputs" / "gallery-synthetic" / "retrieval.json").read_text())
    assert manifest["split"] == "gallery" and manifest["num_rows"] == 240

    paths, pid = query_files(work, 37, tmp_path)
    page = open_page(browser, app.url)
    upload(page, paths)
    status_after_search(page, "Top 10 of 240 gallery triples")
    items = page.locator("#results .thumbnail-item")
    items.nth(9).wait_for(timeout=30_000)
    captions = page.locator("#results .caption-label").all_inner_texts()
    assert items.count() == 10 and len(captions) == 10, captions
    assert captions[0].startswith(f"#1 · id {pid} ·"), captions
    assert page.locator("#experts img").count() == 1 and page.locator("#query img").count() == 1
    shot = Path(os.environ.get("DEMO_SCREENSHOT", tmp_path / "demo_page.png"))
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nbrowser test: upload + search + checks in {time.monotonic() - started:.1f} s; screenshot {shot}")

    # one modality only (NIR missing too): still k results, the message says what was missing
    page.reload()
    page.wait_for_selector("#search-button")
    upload(page, [None, None, paths[2]])
    assert "(RGB, NIR missing)" in status_after_search(page, "Top 10 of 240")
    page.close()


def test_bad_input_is_a_message_in_the_page(browser, first_start, tmp_path):
    work, app = first_start
    page = open_page(browser, app.url)
    assert "at least one image" in status_after_search(page, "at least one image")
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is not a picture")
    upload(page, [fake, None, None])
    message = status_after_search(page, "not a readable image")
    assert "RGB" in message and "Traceback" not in page.content()
    page.close()


def test_unreadable_checkpoint_is_a_message_in_the_page(browser, first_start, tmp_path):
    work, _ = first_start
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    app = start_app(work, "--model", str(broken), "--index", str(work / "outputs" / "gallery-synthetic"))
    try:
        page = open_page(browser, app.url)
        assert "config.json is not valid JSON" in page.locator("#status").inner_text()
        paths, _ = query_files(work, 0, tmp_path)
        upload(page, paths)
        assert "not valid JSON" in status_after_search(page, "not valid JSON")
        assert "Traceback" not in page.content() and "Traceback" not in "".join(app.log)
        page.close()
    finally:
        stop(app)

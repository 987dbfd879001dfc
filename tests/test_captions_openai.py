"""The openai backend and the whole command against a real HTTP server on 127.0.0.1.

The server answers in the chat-completions format with recorded-style attribute answers that
depend on the model, the modality (read from the prompt) and the image bytes, and can be told
to time out, fail with a status code, or fail for one image.  Runs use a synthetic RGBNT201
dataset of real JPEGs; the captions must attach in the dataset builder like the released ones.
"""

import base64
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mmreid.captioning.backend_openai import OpenAIBackend
from mmreid.captioning.backends import BackendError, Request
from mmreid.captioning.store import read_attributes
from mmreid.data.builder import DatasetBuildWarning, build_dataset
from mmreid.data.synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data_scripts" / "generate_captions.py"
KEY_ENV, KEY = "CAPTION_TEST_API_KEY", "sk-test-secret-4711"
SMALL = dict(num_train_ids=2, num_test_ids=2, images_per_id=4, image_size=(32, 16))
MODALITY_OF_PROMPT = {"visible-light": "rgb", "near-infrared": "nir", "thermal-infrared": "tir"}


# ----------------------------------------------------------------------------- the server


def _is_even(image: bytes) -> bool:
    return hashlib.sha1(image).digest()[0] % 2 == 0


def recorded_answer(model: str, modality: str, image: bytes) -> str:
    """What the two fake vision models say; the RGB age depends on the image, so a caption
    attached to the wrong item shows."""
    if model == "vlm-a" and modality == "rgb":
        age = "child" if _is_even(image) else "adult"
        return (f"1. Age: {age}, confidence: 0.8\n2. Gender: male, confidence: 0.55\n3. Viewpoint: front, "
                "confidence: 0.9\n4. Time of day: daytime, confidence: 0.9\n5. Lighting: bright, confidence: 0.9\n"
                "6. Upper clothing: t-shirt, confidence: 0.8\n7. Upper clothing color: red, confidence: 0.9\n"
                "8. Lower clothing: skirt, confidence: 0.7\n9. Lower clothing color: black, confidence: 0.7\n"
                "10. Footwear: sneakers, confidence: 0.6\n11. Hair length: long, confidence: 0.8\n"
                "12. Hair style: straight, confidence: 0.6\n13. Wearing glasses: no, confidence: 0.8\n"
                "14. Carried item: handbag, confidence: 0.9\n15. Image clarity: clear, confidence: 0.9")
    if model == "vlm-a" and modality == "nir":
        return ("- **Gender**: female (confidence 90%)\n- Upper clothing color: white, confidence: 0.99\n"
                "- Lighting: dim, confidence: 0.7\n- Image clarity: blurred, confidence: 0.8")
    if model == "vlm-a" and modality == "tir":
        return ("1. adult, confidence: 0.4\n2. female\n3. side, confidence: 0.95\n"
                "Upper clothing color: blue, confidence: 1.0")
    if model == "vlm-b" and modality == "rgb":
        return "Carried item: backpack, confidence: 0.95\nHair style: curly, confidence: 0.4"
    return ""


def expected_captions(rgb_image: bytes) -> dict:
    """Merged by hand from the answers above: gender from NIR (0.9 > 0.55), view from TIR
    (0.95 > 0.9), carried item from vlm-b (0.95 > 0.9), curly hair below the threshold, TIR's
    colour ignored, and TIR has no clarity of its own."""
    subject = "A child female" if _is_even(rgb_image) else "An adult female"
    return {
        "RGB": f"{subject} seen from the side during daytime in bright lighting. She is wearing a red t-shirt with "
               "a black skirt, paired with casual sneakers. Long straight hair and she is not wearing glasses. "
               "She is carrying a backpack. The image appears clear.",
        "NI": f"{subject} seen from the side during daytime in dim lighting. She is wearing a t-shirt with a skirt, "
              "paired with casual sneakers. Long straight hair and she is not wearing glasses. She is carrying "
              "a backpack. The image appears blurry.",
        "TI": f"{subject} seen from the side. She is wearing a t-shirt with a skirt, paired with casual sneakers. "
              "Long straight hair and she is not wearing glasses. She is carrying a backpack. The image clarity "
              "is unknown.",
    }


class ChatServer:
    """A chat-completions server on 127.0.0.1 (a thread per request)."""

    def __init__(self, delay=0.0, script=(), fail_image=None, answer=recorded_answer, rewrite=None):
        self.delay, self.script, self.fail_image = delay, list(script), fail_image
        self.answer, self.rewrite = answer, rewrite
        self.requests, self.inflight, self.max_inflight = [], 0, 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                server._handle(self)

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # the default 5 drops connections when many requests start at once

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # clients that timed out close their end
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handle(self, h):
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        image, prompt = None, content
        if isinstance(content, list):
            prompt = next(p["text"] for p in content if p["type"] == "text")
            url = next(p["image_url"]["url"] for p in content if p["type"] == "image_url")
            image = base64.b64decode(url.split(",", 1)[1])
        modality = next((m for k, m in MODALITY_OF_PROMPT.items() if k in prompt), None) if image else None
        with self.lock:
            index = len(self.requests)
            self.requests.append(dict(model=body["model"], image=image, prompt=prompt, modality=modality,
                                      auth=h.headers.get("Authorization"), url=url if image else None))
            action = self.script[index] if index < len(self.script) else None
            if action != "timeout":  # a timed-out request is not answered: it does not count as in flight
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
        if action == "timeout":
            time.sleep(1.0)
            return
        # The request stops counting as in flight just before its answer is written: once the client has the
        # answer it may send the next request, possibly before this thread runs again.
        if isinstance(action, int) or (self.fail_image is not None and image == self.fail_image):
            status, payload = (action if isinstance(action, int) else 500), {"error": {"message": "boom"}}
        else:
            time.sleep(self.delay)
            if image is None:
                text = self.rewrite(body["model"], prompt) if self.rewrite else ""
            else:
                text = self.answer(body["model"], modality, image)
            status, payload = 200, {"id": f"c{index}", "object": "chat.completion", "model": body["model"],
                                    "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": text}}]}
        with self.lock:
            self.inflight -= 1
        self._send(h, status, payload)

    @staticmethod
    def _send(h, status, payload):
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


@pytest.fixture
def server():
    servers = []

    def start(**kw):
        servers.append(ChatServer(**kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic("RGBNT201", tmp_path_factory.mktemp("captions") / "raw", **SMALL)


def _files(root: Path, split_dir: str, modality_dir: str) -> dict:
    return {p.name: p.read_bytes() for p in sorted((root / split_dir / modality_dir).iterdir())}


def _read(out: Path, name: str) -> dict:
    return {e["item"]: e["description"] for e in json.loads((out / name).read_text())}


def _main(*args):
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    import generate_captions

    return generate_captions.main([str(a) for a in args])


def _cli_args(dataset, url, out, *extra, models=("vlm-a", "vlm-b")):
    args = ["--dataset", dataset, "--backend", "openai", "--endpoint", url, "--output", out,
            "--api-key-env", KEY_ENV, "--timeout", "0.3", "--retries", "2", "--backoff", "0.01"]
    for m in models:
        args += ["--model", m]
    return args + list(extra)


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_two_models_retries_concurrency_key_and_builder(dataset, server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    srv = server(delay=0.05, script=["timeout", 500])
    out = tmp_path / "captions"
    assert _main(*_cli_args(dataset, srv.url, out, "--concurrency", "3", "--save-every", "8")) == 0
    printed = capsys.readouterr()

    train, test = _files(dataset, "train_171", "RGB"), _files(dataset, "test", "RGB")
    for split, rgb in (("train", train), ("test", test)):
        for tag in ("RGB", "NI", "TI"):
            got = _read(out, f"{split}_{tag}.json")
            assert got == {name: expected_captions(image)[tag] for name, image in rgb.items()}

    images = 3 * (len(train) + len(test))
    assert len(srv.requests) == 2 * images + 2  # both models, every image, plus the timeout and the 500 retried
    assert srv.max_inflight == 3
    assert all(r["auth"] == f"Bearer {KEY}" for r in srv.requests)
    sent = {r["image"] for r in srv.requests}
    on_disk = {b for d in ("RGB", "NI", "TI") for sd in ("train_171", "test") for b in _files(dataset, sd, d).values()}
    assert sent == on_disk  # the original file bytes, inline
    assert all(r["url"].startswith("data:image/jpeg;base64,") for r in srv.requests)

    # the summary, and the key nowhere
    assert f"this run: {len(train) + len(test)} new item(s) (train {len(train)}, test {len(test)})" in printed.out
    assert "0 failed" in printed.out and "modality TI" in printed.out
    ti_row = next(line for line in printed.out.splitlines() if line.startswith("modality TI"))
    assert ti_row.split()[-1] == "100.00"  # TIR clarity was never answered
    assert next(line for line in printed.out.splitlines() if line.startswith("modality RGB")).split()[-1] == "0.00"
    assert KEY not in printed.out + printed.err
    for p in out.rglob("*"):
        if p.is_file():
            assert KEY not in p.read_text()
    attributes = read_attributes(out, "train")
    record = attributes[sorted(train)[0]]
    assert record["attributes"]["objects"]["gender"] == {"value": "female", "confidence": 0.9, "modality": "nir",
                                                         "model": "vlm-a"}
    assert record["answers"]["tir"]["vlm-b"] == ""

    # the dataset builder attaches them like the released files: every row captioned, no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dsd = build_dataset("RGBNT201", dataset.parent, captions_dir=out, cache_dir=tmp_path / "cache")
    assert not [w for w in caught if issubclass(w.category, DatasetBuildWarning)]
    for split, rgb in (("train", train), ("query", test), ("gallery", test)):
        ds = dsd[split]
        assert ds["name"] == sorted(rgb)
        assert ds["caption_rgb"] == [expected_captions(rgb[n])["RGB"] for n in ds["name"]]
        assert ds["caption_tir"] == [expected_captions(rgb[n])["TI"] for n in ds["name"]]


def test_rerun_skips_done_items_and_other_settings_are_refused(dataset, server, tmp_path, capsys):
    srv = server()
    out = tmp_path / "captions"
    assert _main(*_cli_args(dataset, srv.url, out, "--limit", "3", models=("vlm-a",))) == 0
    assert len(srv.requests) == 3 * 6
    first = _read(out, "train_NI.json")
    assert len(first) == 3
    capsys.readouterr()
    assert _main(*_cli_args(dataset, srv.url, out, models=("vlm-a",))) == 0
    assert len(srv.requests) == 3 * 6 + 3 * 10  # 8 + 8 items, 6 of them done before
    assert "6 already captioned" in capsys.readouterr().out
    assert {k: v for k, v in _read(out, "train_NI.json").items() if k in first} == first
    assert sorted(p.name for p in (out / "attributes").iterdir()) == [  # one file per saved chunk
        "test_00000.json", "test_00001.json", "train_00000.json", "train_00001.json"]
    assert set(read_attributes(out, "train")) == set(_read(out, "train_NI.json"))

    before = {p.name: p.read_bytes() for p in out.glob("*.json")}
    assert _main(*_cli_args(dataset, srv.url, out, models=("vlm-a", "vlm-b"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--output {out} was generated with other settings (models:" in err[0]
    assert {p.name: p.read_bytes() for p in out.glob("*.json")} == before


def test_an_item_that_keeps_failing_is_left_for_the_next_run(dataset, server, tmp_path, capsys):
    test_rgb = _files(dataset, "test", "RGB")
    victim = sorted(test_rgb)[1]
    srv = server(fail_image=test_rgb[victim])
    out = tmp_path / "captions"
    assert _main(*_cli_args(dataset, srv.url, out, "--retries", "1", models=("vlm-a",))) == 1
    err = capsys.readouterr().err
    assert "1 item(s) got no answer after 1 retries; rerun the same command" in err
    for tag in ("RGB", "NI", "TI"):
        assert set(_read(out, f"test_{tag}.json")) == set(test_rgb) - {victim}
    assert len([r for r in srv.requests if r["image"] == test_rgb[victim]]) == 2  # tried, retried once

    srv.fail_image = None
    n = len(srv.requests)
    assert _main(*_cli_args(dataset, srv.url, out, models=("vlm-a",))) == 0
    assert len(srv.requests) - n == 3  # only the missing item, all three modalities
    assert _read(out, "test_RGB.json")[victim] == expected_captions(test_rgb[victim])["RGB"].replace(
        "backpack", "handbag")  # vlm-b was not asked this time


def test_rewrite_kept_when_faithful_and_replaced_by_the_template_otherwise(dataset, server, tmp_path, capsys):
    def rewrite(model, prompt):
        template = prompt.split("Template: ", 1)[1].strip()
        if "near-infrared" in prompt:
            return template.replace("a t-shirt", "a green t-shirt")  # invents a colour
        if "thermal-infrared" in prompt:
            return ""
        sentences = template.split(". ")
        return "Description: " + ". ".join(sentences[::-1]).rstrip(".") + "."

    srv = server(rewrite=rewrite)
    out = tmp_path / "captions"
    args = _cli_args(dataset, srv.url, out, "--rewrite-model", "llm", "--splits", "test", models=("vlm-a",))
    assert _main(*args) == 0
    assert "rewrites: 8 kept, 16 replaced by the template" in capsys.readouterr().out
    test_rgb = _files(dataset, "test", "RGB")
    rgb, nir = _read(out, "test_RGB.json"), _read(out, "test_NI.json")
    for name, image in test_rgb.items():
        template = expected_captions(image)["RGB"].replace("backpack", "handbag")
        reversed_prose = ". ".join(template.split(". ")[::-1]).rstrip(".") + "."
        assert rgb[name] == reversed_prose
        assert nir[name] == expected_captions(image)["NI"].replace("backpack", "handbag")
    text_requests = [r for r in srv.requests if r["image"] is None]
    assert len(text_requests) == 24 and {r["model"] for r in text_requests} == {"llm"}
    record = read_attributes(out, "test")[sorted(test_rgb)[0]]
    assert record["rewrite"]["nir"]["reason"] == "invents 'green'"
    assert record["rewrite"]["tir"]["reason"] == "empty answer"
    assert not (out / "train_RGB.json").exists()


# ----------------------------------------------------------------------------- the backend alone


def test_backend_timeout_and_500_are_retried_then_give_up(server):
    srv = server(script=["timeout", 500, 503, 502])
    backend = OpenAIBackend(srv.url, timeout=0.3, retries=4, backoff=0.01, concurrency=1)
    try:
        assert backend.generate("vlm-a", [Request("plain text")]) == [""]
        assert len(srv.requests) == 5
        srv.script = [500] * 20
        start = len(srv.requests)
        assert backend.generate("vlm-a", [Request("plain text")]) == [None]
        assert len(srv.requests) - start == 5 and backend.last_error == "HTTP 500 Internal Server Error"
    finally:
        backend.close()


def test_backend_does_not_retry_a_refused_key_and_never_shows_it(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    srv = server(script=[401])
    backend = OpenAIBackend(srv.url, api_key_env=KEY_ENV, retries=3, backoff=0.01)
    try:
        with pytest.raises(BackendError) as info:
            backend.generate("vlm-a", [Request("hello")])
    finally:
        backend.close()
    assert len(srv.requests) == 1
    assert "HTTP 401" in str(info.value) and "API key" in str(info.value) and KEY not in str(info.value)


def test_unreachable_endpoint_stops_the_run_and_writes_nothing(dataset, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "captions"
    code = _main(*_cli_args(dataset, f"http://127.0.0.1:{port}/v1", out, "--retries", "0", models=("vlm-a",)))
    assert code == 2
    err = capsys.readouterr().err
    assert "error: no request of the last 24 got an answer; last error: URLError" in err
    last = err.strip().splitlines()[-1]  # one line, saying what is kept
    assert last.startswith("generate_captions.py: error: no request") and last.endswith("rerun the same command to "
                                                                                          "continue"), last
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--backend", "openai", "--model", "m"], "--endpoint URL is required with --backend openai"),
    (["--backend", "openai", "--model", "m", "--endpoint", "localhost:8000"], "expected an http:// or https:// URL"),
    (["--backend", "transformers", "--model", "./no/such/dir"], "--model ./no/such/dir: no such model folder"),
    (["--backend", "openai", "--model", "m", "--endpoint", "http://x", "--min-confidence", "2"],
     "--min-confidence 2.0: expected a number from 0 to 1"),
    (["--backend", "openai", "--model", "m", "--model", "m", "--endpoint", "http://x"],
     "the same model is named twice"),
])
def test_bad_arguments_exit_2_with_one_line(dataset, tmp_path, capsys, args, message):
    out = tmp_path / "captions"
    assert _main("--dataset", dataset, "--output", out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("generate_captions.py: error: ") and message in err[0]
    assert not out.exists()


def test_bad_dataset_and_foreign_output_folder(dataset, tmp_path, capsys):
    base = ["--backend", "openai", "--model", "m", "--endpoint", "http://127.0.0.1:9/v1"]
    assert _main("--dataset", tmp_path / "nowhere", "--output", tmp_path / "o", *base) == 2
    assert "--dataset" in capsys.readouterr().err and not (tmp_path / "o").exists()
    foreign = tmp_path / "released"
    foreign.mkdir()
    (foreign / "train_RGB.json").write_text("[]")
    assert _main("--dataset", dataset, "--output", foreign, *base) == 2
    assert "holds caption files but no generation.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- kill and resume


def test_resume_after_a_kill(dataset, server, tmp_path):
    srv = server(delay=0.1)
    out = tmp_path / "captions"
    cmd = [sys.executable, str(SCRIPT), *map(str, _cli_args(dataset, srv.url, out, "--concurrency", "1",
                                                             "--save-every", "2", models=("vlm-a",)))]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "train_TI.json").exists():
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    per_file = {f"{s}_{t}.json": _read(out, f"{s}_{t}.json") if (out / f"{s}_{t}.json").exists() else {}
                for s in ("train", "test") for t in ("RGB", "NI", "TI")}  # each one whole JSON
    done = {s: set.intersection(*(set(per_file[f"{s}_{t}.json"]) for t in ("RGB", "NI", "TI")))
            for s in ("train", "test")}
    total = 16
    n_done = len(done["train"]) + len(done["test"])
    assert 2 <= n_done < total
    before_rerun = len(srv.requests)

    srv.delay = 0.0
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert len(srv.requests) - before_rerun == 3 * (total - n_done)
    assert f"{n_done} already captioned" in res.stdout
    for s, split_dir in (("train", "train_171"), ("test", "test")):
        rgb = _files(dataset, split_dir, "RGB")
        for t in ("RGB", "NI", "TI"):
            expected = {n: expected_captions(b)[t].replace("backpack", "handbag") for n, b in rgb.items()}
            assert _read(out, f"{s}_{t}.json") == expected
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]


# ----------------------------------------------------------------------------- RGBNT100 (no released captions)


def vehicle_answer(model, modality, image):
    if modality == "rgb":
        return ("Body color: white, confidence: 0.9\nBrand: Toyota, confidence: 0.8\n"
                "Vehicle type: SUV, confidence: 0.85\nViewpoint: front, confidence: 0.9\nLighting: dim\nTime of day: nighttime\nImage clarity: clear")
    return "Vehicle type: sedan, confidence: 0.6\nBody color: black, confidence: 0.99\nImage clarity: blurry"


def test_rgbnt100_side_by_side_images_are_cut_and_captioned_as_vehicles(server, tmp_path):
    from PIL import Image

    raw = make_synthetic("RGBNT100", tmp_path / "raw", num_train_ids=2, num_test_ids=1, images_per_id=4,
                         image_size=(16, 24))
    srv = server(answer=vehicle_answer)
    out = tmp_path / "captions"
    assert _main(*_cli_args(raw.parent, srv.url, out, models=("vlm-a",))) == 0
    assert json.loads((out / "generation.json").read_text())["kind"] == "vehicle"
    train = sorted(p.name for p in (raw / "rgbir" / "bounding_box_train").iterdir())
    test = sorted(p.name for p in (raw / "rgbir" / "query").iterdir()) + \
        sorted(p.name for p in (raw / "rgbir" / "bounding_box_test").iterdir())
    assert sorted(_read(out, "train_RGB.json")) == train and sorted(_read(out, "test_TI.json")) == sorted(test)
    rgb = next(iter(_read(out, "train_RGB.json").values()))
    assert rgb.startswith("A white Toyota SUV viewed from the front in dim nighttime light (image appears clear). ")
    nir = next(iter(_read(out, "train_NI.json").values()))
    # time of day belongs to the scene (from RGB), lighting to each image (NIR gave none)
    assert nir.startswith("A Toyota SUV viewed from the front in nighttime light of unknown brightness "
                          "(image appears blurry). ")
    assert len(srv.requests) == 3 * (len(train) + len(test))
    assert all(r["url"].startswith("data:image/png;base64,") for r in srv.requests)  # lossless crops
    sizes = {Image.open(io.BytesIO(r["image"])).size for r in srv.requests}
    assert sizes == {(24, 16)}  # one third of the 72x16 side-by-side file each

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dsd = build_dataset("RGBNT100", raw.parent, captions_dir=out, cache_dir=tmp_path / "cache")
    assert not [w for w in caught if issubclass(w.category, DatasetBuildWarning)]
    assert all(c.startswith("A white Toyota SUV") for c in dsd["train"]["caption_rgb"])

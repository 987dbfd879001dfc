#!/usr/bin/env python
"""Measure the caption pipeline's own cost per item (load, request, parse, merge, render, save).

Why: with a real model the model is the bottleneck; this shows how much the rest adds.  A
local chat-completions server on 127.0.0.1 answers every request at once with a fixed attribute
list, and the command captions a synthetic RGBNT201 set of real JPEGs end to end.

    python benchmarks/bench_captions.py                     # 300 items, 2 models, concurrency 8
    python benchmarks/bench_captions.py --train-ids 40 --models 1 --concurrency 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from mmreid.data.synthetic import make_synthetic

ANSWER = "\n".join([
    "1. Age: adult, confidence: 0.8", "2. Gender: female, confidence: 0.7", "3. Viewpoint: side, confidence: 0.9",
    "4. Time of day: daytime, confidence: 0.9", "5. Lighting: bright, confidence: 0.8",
    "6. Upper clothing: jacket, confidence: 0.8", "7. Upper clothing color: red, confidence: 0.9",
    "8. Lower clothing: jeans, confidence: 0.7", "9. Lower clothing color: blue, confidence: 0.7",
    "10. Footwear: sneakers, confidence: 0.6", "11. Hair length: long, confidence: 0.8",
    "12. Hair style: straight, confidence: 0.6", "13. Wearing glasses: no, confidence: 0.8",
    "14. Carried item: backpack, confidence: 0.9", "15. Image clarity: clear, confidence: 0.9",
])


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-ids", type=int, default=20)
    p.add_argument("--test-ids", type=int, default=10)
    p.add_argument("--images-per-id", type=int, default=10)
    p.add_argument("--models", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()

    server = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        raw = make_synthetic("RGBNT201", Path(tmp) / "raw", num_train_ids=args.train_ids,
                             num_test_ids=args.test_ids, images_per_id=args.images_per_id)
        items = (args.train_ids + args.test_ids) * args.images_per_id
        cmd = [sys.executable, str(REPO / "data_scripts" / "generate_captions.py"), "--dataset", str(raw),
               "--backend", "openai", "--endpoint", f"http://127.0.0.1:{server.server_address[1]}/v1",
               "--concurrency", str(args.concurrency), "--output", str(Path(tmp) / "out")]
        for i in range(args.models):
            cmd += ["--model", f"model-{i}"]
        start = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
    server.shutdown()
    if res.returncode:
        sys.exit(res.stderr)
    print(f"{items} items, {3 * items * args.models} requests ({args.models} model(s), concurrency "
          f"{args.concurrency}): {wall:.1f} s wall including start-up, {1000 * wall / items:.1f} ms/item")


if __name__ == "__main__":
    main()

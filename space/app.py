#!/usr/bin/env python
"""The search page: pick or upload an RGB, NIR and TIR image (any may be missing; captions for NEXT), press Search,
see the nearest gallery triples with their identities and distances, and the query's expert weights.

    python space/app.py                                   # outputs/demo-synthetic + the synthetic test gallery
    python space/app.py --model CKPT --index DIR --port 7861
    python space/app.py --index gallery.db            # a Milvus Lite gallery (or --index http://host:19530)

With no --index it serves outputs/gallery-synthetic, built on first start from the synthetic test split
(the set `python train.py` trains on) with the checkpoint. Runs offline on 127.0.0.1. Whatever goes wrong (no
image, a file that is not an image, a checkpoint that does not load) is a message in the page.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage reporting, no version check
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_MODEL = "outputs/demo-synthetic"
DEFAULT_DATASET = "outputs/synthetic-rgbnt201"  # train.py's default --synthetic-dir
DEFAULT_INDEX = "outputs/gallery-synthetic"
NUM_EXAMPLES = 4
UNKNOWN_CAMERA = "unknown"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None,
                   help=f"checkpoint that embeds the queries (default: the index's own, or {DEFAULT_MODEL})")
    p.add_argument("--index", default=None, help=f"the gallery from data_scripts/embed.py: a FAISS folder, a Milvus "
                                                f"Lite .db file or a Milvus server URI (default: {DEFAULT_INDEX}, "
                                                "built on first start)")
    p.add_argument("--collection", default=None, help="Milvus: the collection (default: gallery)")
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1")
    return p.parse_args(argv)


def default_index(model: str) -> str:
    """The synthetic test gallery, embedded by ``model`` on first start; left as is when that cannot be done (the
    page then says why)."""
    from mmreid.data.synthetic import prepare_default_set
    from mmreid.errors import UsageError, first_line
    from mmreid.retrieval.service import ensure_index

    if not (Path(DEFAULT_INDEX) / "index.faiss").is_file() and Path(model, "config.json").is_file():
        print(f"first start: embedding the synthetic test gallery into {DEFAULT_INDEX} ...", flush=True)
        try:
            ensure_index(model, str(prepare_default_set(DEFAULT_DATASET)), Path(DEFAULT_INDEX))
        except UsageError as exc:
            print(f"could not build {DEFAULT_INDEX}: {first_line(exc)}", flush=True)
    return DEFAULT_INDEX


def example_triples(service, folder: Path) -> list[list[str]]:
    """A few query triples of the gallery's dataset (its query split where it has one) as JPEG files."""
    from mmreid.errors import UsageError
    from mmreid.retrieval.sources import open_collection

    if service.problem:
        return []
    sources = service.images.sources
    if not sources:
        return []
    first = sources[0]
    try:
        rows = open_collection(first["dataset"], "query", first.get("layout"), first.get("dataset_revision"))
    except UsageError:  # no query split: take the gallery's own rows
        rows = service.images.first()
    chosen, seen = [], set()
    pids = rows["pid"][:]
    for i, pid in enumerate(pids):
        if pid not in seen:
            seen.add(pid)
            chosen.append(i)
        if len(chosen) == NUM_EXAMPLES:
            break
    examples = []
    for i in chosen:
        row = rows[i]
        paths = []
        for column in ("rgb", "nir", "tir"):
            path = folder / f"id{pids[i]}_{row['name'].rsplit('.', 1)[0]}_{column}.jpg"
            row[column].convert("RGB").save(path, quality=95)
            paths.append(str(path))
        examples.append(paths)
    return examples


def build_page(service, examples):
    import gradio as gr

    uses_text = service.uses_text
    with gr.Blocks(title="Multi-modal ReID search") as page:
        gr.Markdown("# Multi-modal object re-identification: search a gallery\n"
                    "Give an **RGB**, **NIR** and **TIR** image of one person or vehicle (any of them may be "
                    "missing), press **Search**, and see the nearest gallery triples, best first, with their "
                    "identity and distance." + (" Captions help this NEXT model; leave them empty if you have "
                                                "none." if uses_text else ""))
        if not service.problem:
            gr.Markdown(f"Model `{service.encoder.checkpoint}` · gallery of {len(service.gallery)} triples "
                        f"({service.gallery.kind}, {service.gallery.info.get('index')} index)")
        with gr.Row():
            files = [gr.File(label=f"{name} image", file_types=["image"], type="filepath", elem_id=f"query-{key}",
                             height=120)
                     for name, key in (("RGB", "rgb"), ("NIR", "nir"), ("TIR", "tir"))]
        captions = [gr.Textbox(label=f"{name} caption", visible=uses_text, elem_id=f"caption-{name.lower()}")
                    for name in ("RGB", "NIR", "TIR")]
        with gr.Row():
            k = gr.Slider(1, 30, value=10, step=1, label="results (k)", elem_id="k")
            cameras = getattr(service.encoder.model.config, "num_cameras", 0) if service.encoder else 0
            camera = gr.Dropdown([UNKNOWN_CAMERA, *map(str, range(cameras))], value=UNKNOWN_CAMERA,
                                 label="query camera id", elem_id="camera")
            drop = gr.Checkbox(label="drop results from the query's camera", elem_id="drop-camera")
            button = gr.Button("Search", variant="primary", elem_id="search-button")
        status = gr.Markdown(service.problem or "Pick an example below or upload images, then press Search.",
                             elem_id="status")
        with gr.Row():
            query = gr.Image(label="your query (RGB | NIR | TIR)", interactive=False, height=180, elem_id="query")
            experts = gr.Image(label="expert weights", interactive=False, height=180, elem_id="experts")
        results = gr.Gallery(label="nearest gallery triples (RGB | NIR | TIR), best first", columns=5, height="auto",
                             object_fit="contain", elem_id="results")
        if examples:
            gr.Examples(examples, inputs=files, label="query triples of the synthetic test split")

        def run(rgb, nir, tir, cap_rgb, cap_nir, cap_tir, top_k, cam, drop_camera):
            result = service.search([rgb, nir, tir], [cap_rgb, cap_nir, cap_tir], int(top_k),
                                    None if cam in (None, UNKNOWN_CAMERA) else int(cam), bool(drop_camera))
            return result.message, result.query, result.experts, result.gallery

        button.click(run, [*files, *captions, k, camera, drop], [status, query, experts, results])
    return page


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmreid.retrieval.service import RetrievalService

    index = args.index or default_index(args.model or DEFAULT_MODEL)
    service = RetrievalService(args.model or (None if args.index else DEFAULT_MODEL), index, args.collection)
    if service.problem:
        print(f"app.py: {service.problem} (shown in the page)", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="reid-demo-examples-"))
    page = build_page(service, example_triples(service, folder))
    page.launch(server_name="127.0.0.1", server_port=args.port, allowed_paths=[str(folder)], footer_links=[])
    return 0


if __name__ == "__main__":
    sys.exit(main())

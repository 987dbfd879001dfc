"""What the search page does behind its buttons, without any UI: load a checkpoint and a gallery (a FAISS folder or a
Milvus collection), embed a query triple, search, and draw the results (gallery triples side by side, the expert
weights as a bar chart).

Every failure a person can cause (no image, a file that is not an image, a checkpoint or index that does not load)
becomes a one-line message for the page (:class:`DemoResult.message`), never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import UsageError, first_line
from .index import INDEX_FILE, IndexSpec
from .query import QueryEncoder, open_image
from .search import search_gallery
from .store import GalleryStore, open_gallery

__all__ = ["DemoResult", "GalleryImages", "RetrievalService", "ensure_index", "side_by_side"]

MODALITY_NAMES = ("RGB", "NIR", "TIR")


class GalleryImages:
    """A gallery row's images by its ``name``, from the datasets its rows were embedded from (the manifest's
    sources), opened on first use."""

    def __init__(self, info: dict):
        self.sources = [s for s in info.get("sources", []) if s.get("dataset")]
        self._opened: list = []  # (collection, {name: row})

    def _collections(self):
        from .sources import open_collection

        if not self._opened:
            for s in self.sources:
                rows = open_collection(s["dataset"], s["split"], s.get("layout"), s.get("dataset_revision"))
                self._opened.append((rows, {n: i for i, n in enumerate(rows["name"])}))
        return self._opened

    def first(self):
        """The first source's rows (images and ids), or None."""
        return self._collections()[0][0] if self.sources else None

    def __call__(self, name: str) -> list:
        for rows, by_name in self._collections():
            if name in by_name:
                row = rows[by_name[name]]
                return [row["rgb"], row["nir"], row["tir"]]
        return [None, None, None]


def side_by_side(images: Sequence, height: int = 160):
    """One picture of a triple: the three images next to each other at ``height`` (grey where one is missing)."""
    from PIL import Image

    present = [i for i in images if i is not None]
    aspect = present[0].width / present[0].height if present else 0.5
    width = max(1, round(height * aspect))
    canvas = Image.new("RGB", (3 * width + 8, height), (235, 235, 235))
    for k, image in enumerate(images):
        if image is not None:
            canvas.paste(image.convert("RGB").resize((width, height)), (k * (width + 4), 0))
    return canvas


def expert_chart(weights: np.ndarray, names: Sequence[str]):
    """A small bar chart (PIL image) of the expert weights, averaged over the ATMoE heads."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    mean = np.asarray(weights, dtype=np.float64).reshape(-1, weights.shape[-1]).mean(axis=0)
    names = list(names) if len(names) == len(mean) else [f"E{i + 1}" for i in range(len(mean))]
    fig, ax = plt.subplots(figsize=(4.2, 2.4), dpi=100)
    ax.bar(names, mean, color="#4C72B0")
    ax.set_ylabel("weight")
    ax.set_title("expert weights of the query (mean over heads)", fontsize=9)
    ax.set_ylim(0, max(0.05, float(mean.max()) * 1.15))
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@dataclass
class DemoResult:
    message: str  # what the page says (an error, or what was searched)
    query: Optional[object] = None  # the query triple as one picture
    gallery: list = field(default_factory=list)  # [(picture, caption)] best first
    experts: Optional[object] = None  # bar chart picture, or None for a model without expert weights


def ensure_index(model: str, dataset: str, output: Path, split: str = "gallery") -> Path:
    """``output`` if it already holds an index, else the exact index of ``split`` of ``dataset`` built there."""
    from .embed import embed_into_gallery

    output = Path(output)
    if (output / INDEX_FILE).is_file():
        return output
    embed_into_gallery(model, dataset, output, split=split, index_spec=IndexSpec(kind="exact"), progress=False)
    return output


class RetrievalService:
    """A checkpoint and a gallery loaded once; :meth:`search` answers the page's Search button."""

    def __init__(self, model: Optional[str], index: Optional[str], collection: Optional[str] = None):
        self.problem = None  # why searching cannot work (shown in the page), or None
        self.encoder = self.gallery = self.images = None
        try:
            if not index:
                raise UsageError("--index: no gallery given; write one with data_scripts/embed.py")
            self.gallery: GalleryStore = open_gallery(index, collection)
            self.encoder = QueryEncoder(model or self.gallery.info["model"])
            self.gallery.check_model(self.encoder.fingerprint, None, f"--model {self.encoder.checkpoint}")
            self.images = GalleryImages(self.gallery.info)
        except UsageError as exc:
            self.problem = first_line(exc, 400)

    @property
    def uses_text(self) -> bool:
        return bool(self.encoder and self.encoder.uses_text)

    def search(self, paths: Sequence[Optional[str]], captions: Sequence[Optional[str]] = (None, None, None),
               k: int = 10, camera: Optional[int] = None, drop_same_camera: bool = False) -> DemoResult:
        if self.problem:
            return DemoResult(self.problem)
        try:
            images = [None if not p else open_image(p, f"the {name} file") for name, p in zip(MODALITY_NAMES, paths)]
            if all(i is None for i in images):
                return DemoResult("Give at least one image of the query (RGB, NIR or TIR), then press Search.")
            if drop_same_camera and camera is None:
                return DemoResult("Dropping same-camera results needs the query's camera id.")
            query = self.encoder.embed(images, captions if self.uses_text else None, camera_id=camera)
            self.gallery.check_model(None, len(query.embedding), f"--model {self.encoder.checkpoint}")
            hits = search_gallery(self.gallery, query.embedding, int(k), camera_id=camera,
                                  drop_same_camera=drop_same_camera)
        except UsageError as exc:
            return DemoResult(first_line(exc, 400))
        gallery = []
        for hit in hits:
            picture = side_by_side(self.images(hit.name))
            gallery.append((picture, f"#{hit.rank} · id {hit.pid} · cam {hit.camid} · distance {hit.distance:.3f}"))
        missing = [n for n, i in zip(MODALITY_NAMES, images) if i is None]
        note = f" ({', '.join(missing)} missing)" if missing else ""
        experts = None if query.expert_weights is None else expert_chart(query.expert_weights, query.expert_names)
        return DemoResult(f"Top {len(hits)} of {len(self.gallery)} gallery triples for your query{note}; distance = "
                          "squared euclidean on normalised embeddings (0 = identical, smaller = more alike).",
                          side_by_side(images), gallery, experts)

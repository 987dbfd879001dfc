"""Embed a collection with a checkpoint into a gallery store: every process embeds its shard (``accelerate``), the
rows are gathered in dataset order, and rank 0 writes them (a FAISS folder, replaced as a whole, or a Milvus
collection, whole rows per insert).

An append embeds only the rows whose ``name`` the gallery does not hold yet, so a rerun after a killed append
completes it without duplicates. The embedding is ``outputs.embeddings`` L2-normalised, the feature ``eval.py``
ranks (squared euclidean distance on normalised features), computed by the same loop as eval.py's
(:func:`mmreid.inference.run_over_split`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import UsageError
from ..inference import run_over_split
from .store import EMBEDDING_COLUMN, GalleryRows, GalleryStore, model_fingerprint, new_info, open_gallery, store_kind

__all__ = ["EMBEDDING_COLUMN", "CAPTURE_TIME_COLUMN", "cameras_usable", "embed_split", "embed_into_gallery",
           "gallery_rows"]

CAPTURE_TIME_COLUMN = "captured_at"  # optional source column: unix seconds the triple was taken


def cameras_usable(split, num_cameras: int) -> bool:
    """Camera ids go to the model only when every row has one it was trained with (else none do: unseen cameras)."""
    if num_cameras <= 0:
        return False
    camids = np.asarray(split["camid"])
    return bool(len(camids)) and bool(((camids >= 0) & (camids < num_cameras)).all())


def embed_split(model, split, batch_size: int = 64, accelerator=None, tokenizer=None, progress: bool = True,
                desc: str = "embedding") -> np.ndarray:
    """(N, D) float32 L2-normalised retrieval features of ``split``, in its row order, on every process."""
    config = (accelerator.unwrap_model(model) if accelerator is not None else model).config
    out = run_over_split(model, split, lambda o: {"embedding": o.embeddings.float()}, batch_size, accelerator,
                         tokenizer=tokenizer, with_camera_ids=cameras_usable(split, getattr(config, "num_cameras", 0)),
                         progress=progress, desc=desc)
    return torch.nn.functional.normalize(out["embedding"], dim=1).numpy().astype(np.float32)


def _image_sources(split) -> list[str]:
    """Each row's image files as a JSON list (RGB, NIR, TIR), "" when the images are stored in the dataset."""
    import datasets

    columns = [c for c in ("rgb", "nir", "tir") if c in split.column_names]
    if len(columns) != 3:
        return [""] * len(split)
    raw = split.select_columns(columns).cast(datasets.Features({c: datasets.Image(decode=False) for c in columns}))
    out = []
    for row in raw:
        paths = [(row[c] or {}).get("path") for c in columns]
        files = all(p and Path(p).is_absolute() and row[c].get("bytes") is None for p, c in zip(paths, columns))
        out.append(json.dumps(paths) if files else "")
    return out


def gallery_rows(split, embeddings: np.ndarray, now: Optional[int] = None) -> GalleryRows:
    """The rows of ``split`` with their embeddings; ``time`` is the split's ``captured_at`` where it has one, else
    ``now`` (the time of the append)."""
    if len(embeddings) != len(split):
        raise ValueError(f"{len(embeddings)} embeddings for {len(split)} rows")
    ids = split.select_columns(["pid", "camid", "sceneid"]).with_format("numpy")[:]
    if CAPTURE_TIME_COLUMN in split.column_names:
        times = np.asarray(split[CAPTURE_TIME_COLUMN], dtype=np.int64)
    else:
        times = np.full(len(split), int(time.time()) if now is None else now, dtype=np.int64)
    return GalleryRows(list(split["name"]), np.asarray(ids["pid"], dtype=np.int64),
                       np.asarray(ids["camid"], dtype=np.int64), np.asarray(ids["sceneid"], dtype=np.int64), times,
                       _image_sources(split), np.asarray(embeddings, dtype=np.float32))


def _rows_to_embed(split, store: Optional[GalleryStore]) -> np.ndarray:
    """Row positions of ``split`` to embed: each name once, and not the names ``store`` already holds."""
    names = split["name"]
    first = {}
    for i, name in enumerate(names):
        first.setdefault(name, i)
    present = store.existing_names(first) if store is not None else set()
    return np.asarray(sorted(i for name, i in first.items() if name not in present), dtype=np.int64)


def _share(positions: Optional[np.ndarray], length: int, accelerator) -> np.ndarray:
    """Rank 0's choice of rows, on every process (a 0/1 mask broadcast as a tensor)."""
    if accelerator.num_processes == 1:
        return positions
    from accelerate.utils import broadcast

    mask = torch.zeros(length, dtype=torch.int64, device=accelerator.device)
    if positions is not None:
        mask[torch.as_tensor(positions, device=accelerator.device)] = 1
    return np.flatnonzero(broadcast(mask, from_process=0).cpu().numpy())


def embed_into_gallery(model_path: str, source: str, output, split: str = "gallery", layout: Optional[str] = None,
                       revision: Optional[str] = None, index_spec=None, index_kind: Optional[str] = None,
                       index_options: Optional[dict] = None, collection: Optional[str] = None, append: bool = False,
                       retrain: bool = False,
                       overwrite: bool = False, batch_size: int = 64, progress: bool = True):
    """Embed ``split`` of ``source`` with the checkpoint at ``model_path`` on this launch's processes into the
    gallery at ``output`` (a FAISS folder, a Milvus Lite ``.db`` file or a server URI). A new gallery is written
    (``overwrite`` replaces one), or, with ``append``, the rows it lacks are added. Rank 0 gets
    ``(store, rows added)``, the other ranks None. ``index_spec``: the FAISS index (None: embeddings only);
    ``index_kind``: the Milvus index kind (default exact), ``index_options`` its settings
    (:func:`~mmreid.retrieval.milvus_store.check_index_options`)."""
    from ..hub.loading import load_checkpoint, load_checkpoint_tokenizer
    from ..training.distributed import inference_accelerator
    from .sources import open_collection

    kind = store_kind(output)
    accelerator = inference_accelerator()
    rows = open_collection(source, split, layout, revision)
    model = load_checkpoint(model_path)
    tokenizer = load_checkpoint_tokenizer(model_path, model)
    store, positions, info = None, None, None
    if accelerator.is_main_process:
        fingerprint = model_fingerprint(model)
        local = Path(source).expanduser()
        origin = {"dataset": str(local.absolute()) if local.exists() else str(source), "split": split,
                  "layout": layout, "dataset_revision": revision, "num_processes": accelerator.num_processes}
        if append:
            store = open_gallery(output, collection, what="--output")
            try:
                store.check_model(fingerprint, store.dim, f"--model {model_path}")
            except BaseException:
                store.close()
                raise
        else:
            check_new_gallery(output, collection, overwrite, index_spec, index_kind, index_options)
            checkpoint = Path(model_path).expanduser()
            info = new_info(str(checkpoint.absolute()) if checkpoint.exists() else str(model_path), fingerprint, 0,
                            None) | origin
        positions = _rows_to_embed(rows, store)
    positions = _share(positions, len(rows), accelerator)
    todo = rows.select(positions)
    model.to(accelerator.device)
    embeddings = (embed_split(model, todo, batch_size, accelerator, tokenizer, progress=progress,
                              desc=f"embedding {split}") if len(todo) else None)
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    try:
        if embeddings is None:
            if store is None:
                raise UsageError(f"--dataset {source}: the {split} split has no rows to embed")
            return store, 0
        dim = int(embeddings.shape[1])
        if store is None:
            store = open_gallery(output, collection, create_info=dict(info, dim=dim), what="--output",
                                 index_spec=index_spec, index_kind=index_kind or "exact", expected_rows=len(todo),
                                 overwrite=overwrite, index_options=index_options)
        try:
            store.check_model(None, dim, f"--model {model_path}")
            return store, store.append(gallery_rows(todo, embeddings), source=origin, retrain=retrain)
        except BaseException:
            store.close()
            raise
    finally:
        accelerator.wait_for_everyone()


def check_new_gallery(output, collection: Optional[str], overwrite: bool, index_spec, index_kind,
                      index_options: Optional[dict] = None) -> None:
    """Before any embedding: a new gallery may be written at ``output`` with these index settings."""
    if store_kind(output) == "faiss":
        if index_kind is not None:
            raise UsageError(f"--index {index_kind}: a FAISS folder takes exact, ivf or ivfpq")
        if collection is not None:
            raise UsageError(f"--collection {collection}: a FAISS folder holds one gallery; --collection is for "
                             "Milvus (a .db file or a server URI)")
        if Path(output).expanduser().exists() and not overwrite:
            raise UsageError(f"--output {output} already exists (pass --overwrite to replace it, --append to add to it)")
        if index_spec is not None:
            from .index import import_faiss

            import_faiss()  # fail before embedding, not after
        return
    from .milvus_store import check_new_collection

    check_new_collection(str(output), collection, overwrite, index_kind or "exact", index_options)

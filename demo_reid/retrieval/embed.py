"""Embed a collection with a checkpoint: every process embeds its shard (``accelerate``), the rows are gathered in
dataset order, and rank 0 writes the embeddings Dataset (and its index) into a hidden folder renamed into place.

Why the rename: a run killed at any moment leaves no folder at ``--output`` (only ``.<name>.partial``, which the
next run replaces), so whatever sits at ``--output`` is complete. The embedding is ``outputs.embeddings``
L2-normalised, the feature ``eval.py`` ranks (squared euclidean distance on normalised features).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.collate import CAPTION_COLUMNS, METADATA_KEYS, collator_for
from .sources import METADATA_COLUMNS

__all__ = ["EMBEDDING_COLUMN", "MANIFEST", "cameras_usable", "embed_split", "embeddings_dataset",
           "embed_to_folder", "partial_path", "read_manifest", "write_atomically", "write_manifest"]

EMBEDDING_COLUMN = "embedding"
MANIFEST = "retrieval.json"  # what made the embeddings: checkpoint, source dataset and split, dimension


def cameras_usable(split, num_cameras: int) -> bool:
    """Camera ids go to the model only when every row has one it was trained with (else none do: unseen cameras)."""
    if num_cameras <= 0:
        return False
    camids = np.asarray(split["camid"])
    return bool(len(camids)) and bool(((camids >= 0) & (camids < num_cameras)).all())


@torch.no_grad()
def embed_split(model, split, batch_size: int = 64, accelerator=None, tokenizer=None, progress: bool = True,
                desc: str = "embedding") -> np.ndarray:
    """(N, D) float32 L2-normalised retrieval features of ``split``, in its row order, on every process."""
    config = (accelerator.unwrap_model(model) if accelerator is not None else model).config
    with_captions = all(c in split.column_names for c in CAPTION_COLUMNS)
    collator = collator_for(config, train=False, tokenizer=tokenizer, with_captions=with_captions)
    collator.with_camera_ids = cameras_usable(split, getattr(config, "num_cameras", 0))
    columns = [c for c in collator.columns if c in split.column_names]
    loader = DataLoader(split.select_columns(columns), batch_size=batch_size, shuffle=False, collate_fn=collator)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    main = accelerator is None or accelerator.is_local_main_process
    model.eval()
    parts = []
    for batch in tqdm(loader, desc=desc, disable=not (progress and main), unit="batch"):
        for key in METADATA_KEYS:
            batch.pop(key, None)
        out = model(**{key: value.to(device) for key, value in batch.items()})
        rows = torch.nn.functional.normalize(out.embeddings.float(), dim=1)
        if accelerator is not None:
            rows = accelerator.gather_for_metrics(rows)  # drops the rows padded onto the last round
        parts.append(rows.cpu())
    return torch.cat(parts).numpy().astype(np.float32)


def embeddings_dataset(split, embeddings: np.ndarray) -> datasets.Dataset:
    """The split's metadata columns plus ``embedding`` (float32, one fixed-length list per row)."""
    if len(embeddings) != len(split):
        raise ValueError(f"{len(embeddings)} embeddings for {len(split)} rows")
    metadata = split.select_columns(list(METADATA_COLUMNS)).to_dict()
    features = datasets.Features({"pid": datasets.Value("int64"), "camid": datasets.Value("int64"),
                                  "sceneid": datasets.Value("int64"), "name": datasets.Value("string"),
                                  EMBEDDING_COLUMN: datasets.List(datasets.Value("float32"),
                                                                  length=embeddings.shape[1])})
    return datasets.Dataset.from_dict({**metadata, EMBEDDING_COLUMN: list(embeddings)}, features=features)


def partial_path(output: Path) -> Path:
    return output.parent / f".{output.name}.partial"


def write_atomically(output: Path, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """``fill(folder)`` writes everything into a hidden sibling folder, which is then renamed to ``output``."""
    output = Path(output).expanduser().absolute()
    work = partial_path(output)
    if work.exists():  # left by a killed run
        shutil.rmtree(work)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        fill(work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if output.exists():
        if not overwrite:
            shutil.rmtree(work, ignore_errors=True)
            raise FileExistsError(f"{output} appeared while embedding; nothing was replaced")
        old = output.parent / f".{output.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(output, old)
        os.replace(work, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, output)
    return output


# Local paths in the manifest are kept relative to the embeddings folder (``LOCAL_PATH_KEYS``), so that a folder
# moved or copied together with its checkpoint and dataset (e.g. into a Space) still finds them.
LOCAL_PATH_KEYS = ("model", "dataset")


def write_manifest(folder: Path, manifest: dict, final: Optional[Path] = None) -> None:
    """``retrieval.json`` in ``folder``; local paths are written relative to ``final`` (where the folder will be)."""
    final = Path(final or folder).absolute()
    out = dict(manifest)
    for key in LOCAL_PATH_KEYS:
        path = Path(str(out[key])).expanduser()
        if path.exists():
            out[key] = os.path.relpath(path.absolute(), final)
    (Path(folder) / MANIFEST).write_text(json.dumps(out, indent=2) + "\n")


def read_manifest(folder: Path) -> Optional[dict]:
    """The manifest with its relative local paths resolved against ``folder`` (None when there is none)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    for key in LOCAL_PATH_KEYS:
        candidate = folder / manifest[key]
        if not Path(manifest[key]).is_absolute() and candidate.exists():
            manifest[key] = str(candidate.resolve())
    return manifest


def embed_to_folder(model_path: str, source: str, output: Path, split: str = "gallery", layout: Optional[str] = None,
                    revision: Optional[str] = None, index_spec=None, batch_size: int = 64, overwrite: bool = False,
                    progress: bool = True):
    """Embed ``split`` of ``source`` with the checkpoint at ``model_path`` on this launch's processes; rank 0 writes
    ``output`` (embeddings, ``retrieval.json``, and the index of ``index_spec`` when given) and gets
    ``(output, dataset, manifest)``, the other ranks None."""
    from ..hub.loading import load_checkpoint, load_checkpoint_tokenizer
    from ..training.distributed import inference_accelerator
    from .index import GalleryIndex, import_faiss
    from .sources import open_collection

    if index_spec is not None:
        import_faiss()  # fail before embedding, not after
    accelerator = inference_accelerator()
    collection = open_collection(source, split, layout, revision)
    model = load_checkpoint(model_path)
    tokenizer = load_checkpoint_tokenizer(model_path, model)
    model.to(accelerator.device)
    embeddings = embed_split(model, collection, batch_size, accelerator, tokenizer, progress=progress,
                             desc=f"embedding {split}")
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    dataset = embeddings_dataset(collection, embeddings)
    local = Path(source).expanduser()
    manifest = {
        "model": str(Path(model_path).expanduser().absolute()),
        "dataset": str(local.absolute()) if local.exists() else str(source),
        "dataset_revision": revision,
        "split": split,
        "layout": layout,
        "num_rows": len(dataset),
        "dim": int(embeddings.shape[1]),
        "distance": "squared euclidean on L2-normalised embeddings (eval.py's ranking)",
        "num_processes": accelerator.num_processes,
        "index": None if index_spec is None else index_spec.kind,
    }

    def fill(folder: Path) -> None:
        dataset.save_to_disk(str(folder))
        if index_spec is not None:
            index = GalleryIndex.build(dataset, index_spec)
            index.save(folder)
            manifest["index_chain"] = index.spec.describe(index.dim)
            dataset.drop_index(EMBEDDING_COLUMN)
        write_manifest(folder, manifest, final=output)

    output = Path(output).expanduser().absolute()
    write_atomically(output, fill, overwrite=overwrite)
    accelerator.wait_for_everyone()
    return output, dataset, manifest

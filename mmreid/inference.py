"""The one inference loop: run a model over a dataset split in row order, on one process or on every process of an
``accelerate`` launch, and return what the caller keeps of each output, gathered (every process gets every row).

Why one loop: evaluation (``evaluation.protocol.extract_features``) and gallery embedding
(``retrieval.embed.embed_split``) must feed the model the same batches, so that a gallery row embeds exactly as
``eval.py`` ranks it; a second copy of the collator / loader / gather code would drift.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data.collate import CAPTION_COLUMNS, METADATA_KEYS, collator_for

__all__ = ["NoImageLeftError", "run_over_split"]


class NoImageLeftError(ValueError):
    """A modality setting (``eval.py --missing``) removed the only images some rows have."""


@torch.no_grad()
def run_over_split(
    model,
    split,
    keep: Callable[[object], dict[str, torch.Tensor]],
    batch_size: int = 64,
    accelerator=None,
    collator=None,
    tokenizer=None,
    modality_mask: Optional[torch.Tensor] = None,
    with_camera_ids: Optional[bool] = None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "features",
) -> dict[str, torch.Tensor]:
    """``{name: (N, ...) tensor}`` in ``split``'s row order: what ``keep(outputs)`` returns for each batch, plus the
    metric's ids (``pids``, ``camids``, ``sceneids``) taken out of the batch before the model call.

    ``collator`` defaults to the model's evaluation collator (captions when the split has them, ``tokenizer`` for a
    text-conditioned model); ``with_camera_ids`` overrides whether it passes camera ids. ``modality_mask`` (a (3,)
    bool tensor) marks modalities missing for every row. With an accelerator each process runs its shard and
    ``gather_for_metrics`` drops the rows padded onto the last round. The model is left in the mode it was in.
    """
    base = accelerator.unwrap_model(model) if accelerator is not None else getattr(model, "module", model)
    if collator is None:
        with_captions = all(c in split.column_names for c in CAPTION_COLUMNS)
        collator = collator_for(base.config, train=False, tokenizer=tokenizer, with_captions=with_captions)
    if with_camera_ids is not None:
        collator.with_camera_ids = with_camera_ids
    columns = [c for c in collator.columns if c in split.column_names]
    loader = DataLoader(split.select_columns(columns), batch_size=batch_size, shuffle=False, collate_fn=collator,
                        num_workers=num_workers)
    device = accelerator.device if accelerator is not None else next(base.parameters()).device
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    main = accelerator is None or accelerator.is_local_main_process
    was_training = model.training
    model.eval()
    parts: dict[str, list] = {}
    try:
        for batch in tqdm(loader, desc=desc, disable=not (progress and main), unit="batch"):
            ids = {key: batch.pop(key).to(device) for key in METADATA_KEYS if key in batch}
            inputs = {key: value.to(device) for key, value in batch.items()}
            if modality_mask is not None:  # the setting's modalities are missing on top of the images rows lack
                setting = modality_mask.to(device).expand(inputs["pixel_values"].shape[0], 3)
                inputs["modality_mask"] = setting & inputs["modality_mask"] if "modality_mask" in inputs else setting
                if not bool(inputs["modality_mask"].any(dim=1).all()):
                    raise NoImageLeftError(f"{desc}: some rows have no image left under the modality setting")
            item = dict(keep(model(**inputs))) | ids
            if accelerator is not None:
                item = accelerator.gather_for_metrics(item)
            for key, value in item.items():
                parts.setdefault(key, []).append(value.cpu())
    finally:
        model.train(was_training)
    return {key: torch.cat(values) for key, values in parts.items()}

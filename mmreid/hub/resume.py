"""Continue a run from the Hub on a machine that has none of its files: ``train.py ... --hub-model-id user/x
--resume`` with an output directory that holds no complete checkpoint downloads the repo's ``last-checkpoint/``
(``--hub-strategy checkpoint``; else its highest ``checkpoint-N/``, ``all_checkpoints``) into
``<output_dir>/checkpoint-N``, where ``--resume`` then finds it.

The download is complete or invisible, like a checkpoint save: it lands under ``<output_dir>/.incomplete/`` and is
renamed to ``checkpoint-N`` (N read from its ``trainer_state.json``) only once every file is there and it is a
complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from ..errors import UsageError, first_line
from ..publish import atomic_output
from ..training.checkpoints import CHECKPOINT_PATTERN, STAGING_DIR, find_resume_checkpoint, is_complete_checkpoint
from .push import LAST_CHECKPOINT

__all__ = ["fetch_hub_checkpoint", "hub_checkpoint_folder"]

logger = logging.getLogger(__name__)
DOWNLOAD_DIR = "hub-download"  # under STAGING_DIR


def hub_checkpoint_folder(files: list[str]) -> str | None:
    """The checkpoint folder of a repo listing to resume from: ``last-checkpoint``, else the highest
    ``checkpoint-N``, else None."""
    folders = {path.split("/", 1)[0] for path in files if "/" in path}
    if LAST_CHECKPOINT in folders:
        return LAST_CHECKPOINT
    numbered = [name for name in folders if CHECKPOINT_PATTERN.match(name)]
    return max(numbered, key=lambda name: int(CHECKPOINT_PATTERN.match(name).group(1))) if numbered else None


def fetch_hub_checkpoint(output_dir: str | Path, repo_id: str, revision: str | None = None,
                         token: str | None = None) -> Path | None:
    """Download the Hub checkpoint of ``repo_id`` into ``output_dir`` when the folder holds no complete checkpoint
    of its own (a local one is newer or equal: it is what was pushed). Returns the new ``checkpoint-N`` folder, or
    None (a local checkpoint exists, or the repo holds none: the run then starts from scratch, as ``--resume``
    does). A Hub that cannot be reached, or a repo whose checkpoint is incomplete, is a :class:`UsageError`."""
    output_dir = Path(output_dir)
    if find_resume_checkpoint(output_dir) is not None:
        return None
    where = f"--hub-model-id {repo_id}" + (f" (revision {revision})" if revision else "")
    try:
        files = HfApi(token=token).list_repo_files(repo_id, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        logger.warning("--resume: %s does not exist on the Hub; starting from scratch", where)
        return None
    except Exception as exc:  # offline and HTTP errors (OSErrors), and the HTTP client's connection errors (not)
        raise UsageError(f"--resume: cannot read {where} from the Hub ({type(exc).__name__}: "
                         f"{first_line(exc, 200)})") from None
    folder = hub_checkpoint_folder(files)
    if folder is None:
        logger.warning("--resume: %s holds no %s/ or checkpoint-N/ folder; starting from scratch", where,
                       LAST_CHECKPOINT)
        return None
    download = output_dir / STAGING_DIR / DOWNLOAD_DIR
    shutil.rmtree(download, ignore_errors=True)  # left by an interrupted download
    try:
        snapshot_download(repo_id, revision=revision, token=token, allow_patterns=[f"{folder}/*"],
                          local_dir=str(download))
    except Exception as exc:  # as above
        raise UsageError(f"--resume: downloading {folder}/ of {where} failed ({type(exc).__name__}: "
                         f"{first_line(exc, 200)})") from None
    fetched = download / folder
    if not is_complete_checkpoint(fetched):
        raise UsageError(f"--resume: {folder}/ of {where} is not a complete checkpoint (expected trainer_state.json "
                         "and model.safetensors in it)")
    step = json.loads((fetched / "trainer_state.json").read_text())["global_step"]
    target = output_dir / f"checkpoint-{step}"
    # published whole; an incomplete local checkpoint-N (a copy cut short: find_resume_checkpoint skipped it) is
    # replaced
    with atomic_output(target, overwrite=True) as staged:
        os.replace(fetched, staged)
    shutil.rmtree(download, ignore_errors=True)
    staging = output_dir / STAGING_DIR
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()
    logger.warning("--resume: downloaded %s/ (step %d) of %s into %s", folder, step, where, target)
    return target

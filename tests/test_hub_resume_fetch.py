"""--resume from the Hub (mmreid.hub.resume.fetch_hub_checkpoint) against the in-memory Hub: the downloaded
checkpoint is published whole as checkpoint-N, replacing an incomplete local checkpoint-N (a copy cut short), and
nothing of the download is left beside it."""

import json
import os
import subprocess
import sys

from fake_hub import FakeHub, Repo

REPO_ID = "tester/run"
FETCH = """
import sys
from mmreid.hub.resume import fetch_hub_checkpoint
print(fetch_hub_checkpoint(sys.argv[1], sys.argv[2]))
"""


def test_download_replaces_an_incomplete_local_checkpoint_and_leaves_nothing_else(tmp_path):
    state = json.dumps({"global_step": 3}).encode()
    files = {"last-checkpoint/trainer_state.json": state, "last-checkpoint/model.safetensors": b"weights",
             "last-checkpoint/config.json": b"{}", "README.md": b"card"}
    output_dir = tmp_path / "run"
    (output_dir / "checkpoint-3").mkdir(parents=True)  # cut short: no trainer_state.json, no weights
    (output_dir / "checkpoint-3" / "config.json").write_text("{}")
    with FakeHub() as hub:
        hub.repos[("model", REPO_ID)] = repo = Repo()
        repo.commit(files, "main", "checkpoint at step 3")
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_TOKEN="hf_dummy",
                   HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
        proc = subprocess.run([sys.executable, "-c", FETCH, str(output_dir), REPO_ID], env=env, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(output_dir / "checkpoint-3")
    got = output_dir / "checkpoint-3"
    assert sorted(p.name for p in got.iterdir()) == ["config.json", "model.safetensors", "trainer_state.json"]
    assert (got / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-3"]  # no download or partial folder left

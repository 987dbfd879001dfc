"""The profiler callback writes a readable trace of the chosen steps of a real Trainer run; deterministic attention."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainingArguments

from mmreid.training.profiling import ProfilerCallback, make_deterministic, profile_dir


class _ToyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 3)

    def forward(self, x, labels):
        logits = self.layer(x)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


class _ToyData(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"x": torch.full((8,), float(i % 5)), "labels": torch.tensor(i % 3)}


def _train(tmp_path, steps, callback):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4, use_cpu=True,
                             report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True)
    Trainer(model=_ToyModel(), args=args, train_dataset=_ToyData(), callbacks=[callback]).train()


def test_trace_of_the_active_steps_is_written_and_parses(tmp_path):
    callback = ProfilerCallback(skip=1, warmup=1, active=2)
    _train(tmp_path, 6, callback)
    trace = profile_dir(tmp_path) / "trace_rank0.json"
    events = json.loads(trace.read_text())["traceEvents"]
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    names = {e["name"] for e in ops}
    assert "aten::addmm" in names or "aten::linear" in names  # the toy model's forward
    assert any(name.startswith("Optimizer.step") for name in {e["name"] for e in events})
    # Exactly the two active steps were recorded (the profiler marks each as ProfilerStep#N).
    steps = sorted({e["name"] for e in events if e["name"].startswith("ProfilerStep#")})
    assert steps == ["ProfilerStep#2", "ProfilerStep#3"]
    summary = (profile_dir(tmp_path) / "ops_rank0.txt").read_text()
    assert "optimizer steps 3-4" in summary and "aten::" in summary
    assert callback.profiler is None  # stopped after the window, the rest of the run is not traced


def test_run_shorter_than_the_window_stops_cleanly(tmp_path):
    callback = ProfilerCallback(skip=5, warmup=1, active=3)
    _train(tmp_path, 2, callback)
    assert callback.profiler is None
    assert not (profile_dir(tmp_path) / "trace_rank0.json").exists()


def test_bad_window_is_refused():
    with pytest.raises(ValueError, match="active >= 1"):
        ProfilerCallback(active=0)


@pytest.fixture
def restore_sdpa_flags():
    cuda = torch.backends.cuda
    saved = (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled(),
             cuda.cudnn_sdp_enabled())
    yield
    cuda.enable_flash_sdp(saved[0]), cuda.enable_mem_efficient_sdp(saved[1]), cuda.enable_math_sdp(saved[2])
    cuda.enable_cudnn_sdp(saved[3])


def test_deterministic_leaves_only_the_math_attention_kernel(restore_sdpa_flags):
    cuda = torch.backends.cuda
    cuda.enable_flash_sdp(True), cuda.enable_mem_efficient_sdp(True), cuda.enable_math_sdp(False)
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2",
                                                   vision_config=SimpleNamespace(_attn_implementation="flash_attention_2")))
    make_deterministic(model)
    assert not cuda.flash_sdp_enabled() and not cuda.mem_efficient_sdp_enabled() and not cuda.cudnn_sdp_enabled()
    assert cuda.math_sdp_enabled()
    assert model.config._attn_implementation == model.config.vision_config._attn_implementation == "sdpa"
    # Attention still runs (on the math kernel).
    q = torch.randn(1, 2, 4, 8)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    torch.testing.assert_close(out, torch.softmax(q @ q.transpose(-1, -2) / 8**0.5, -1) @ q)

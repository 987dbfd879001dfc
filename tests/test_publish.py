"""mmreid.publish.atomic_output: the one "write hidden, then rename" helper every writer uses."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mmreid.publish import atomic_output, partial_path


def test_folder_appears_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with atomic_output(out) as work:
        work.mkdir()
        (work / "a.txt").write_text("a")
        assert not out.exists()  # a reader sees nothing yet
    assert (out / "a.txt").read_text() == "a"
    assert not partial_path(out).exists()


def test_error_leaves_the_old_output_and_no_leftover(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(out, overwrite=True) as work:
            work.mkdir()
            (work / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "graph.onnx"
    out.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="graph.onnx"):
        with atomic_output(out):
            pass
    with atomic_output(out, overwrite=True) as work:
        work.write_bytes(b"new")
    assert out.read_bytes() == b"new"


def test_replaced_folder_is_whole_and_permissions_follow_umask(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("x")
    with atomic_output(out, overwrite=True) as work:
        work.mkdir(mode=0o700)
        (work / "fresh.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["fresh.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


def test_nothing_written_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_output(tmp_path / "out"):
            pass
    assert not (tmp_path / "out").exists()


def test_a_killed_writer_leaves_only_a_hidden_leftover_that_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from mmreid.publish import atomic_output
        with atomic_output({str(out)!r}) as work:
            work.mkdir()
            (work / "half.txt").write_text("half")
            print("ready", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists() and partial_path(out).exists()
    with atomic_output(out) as work:
        work.mkdir()
        (work / "whole.txt").write_text("whole")
    assert sorted(p.name for p in out.iterdir()) == ["whole.txt"]
    assert not partial_path(out).exists()

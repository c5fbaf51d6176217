"""A run killed with SIGKILL mid-way and rerun gives byte-identical outputs to an uninterrupted run;
a directory holding another configuration is refused."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from falconlm.data.cli import sample_path
from falconlm.data.refine import run_refine
from falconlm.data.config import RefineConfig
from falconlm.data.executor import ExecConfig
from falconlm.errors import FalconError

N_SHARDS = 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shards")
    for i in range(N_SHARDS):
        shutil.copy(sample_path(), d / f"part-{i}.warc.gz")
    return d


def refine_cmd(inp: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "falconlm", "refine", str(inp), "--out", str(out),
            "--extractor", "resiliparse", "--no-progress", "--no-dedup"]


def snapshot(out: Path) -> dict[str, bytes]:
    files = sorted(p for p in (out / "data").iterdir())
    snap = {p.name: p.read_bytes() for p in files}
    snap["stats.json"] = (out / "stats.json").read_bytes()
    return snap


@pytest.mark.slow
def test_kill_minus_9_then_resume_is_byte_identical(shards, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    clean = tmp_path / "clean"
    subprocess.run(refine_cmd(shards, clean), check=True, env=env, capture_output=True, timeout=120)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(refine_cmd(shards, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = killed / "markers" / "filter"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if markers.is_dir() and len(list(markers.glob("*.json"))) >= 1:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # the next task has started (or is starting): kill it mid-way
    proc.wait()
    done = len(list(markers.glob("*.json")))
    assert 1 <= done < N_SHARDS, f"the kill came too late ({done} tasks finished)"
    assert not (killed / "stats.json").exists()
    # no half-written file carries a final name: a final shard has a marker, except possibly the
    # one renamed in the instant before its marker was written
    finals = sorted(p.name for p in (killed / "data").glob("*.jsonl.zst"))
    assert done <= len(finals) <= done + 1

    subprocess.run(refine_cmd(shards, killed), check=True, env=env, capture_output=True, timeout=120)
    assert snapshot(killed) == snapshot(clean)
    assert not list(killed.rglob("*.tmp-*"))


def test_other_configuration_is_refused(tmp_path):
    inp = tmp_path / "in.warc.gz"
    shutil.copy(sample_path(), inp)
    cfg = RefineConfig()
    from dataclasses import replace
    from falconlm.data.extract import ExtractConfig

    fast = replace(cfg, extract=ExtractConfig(extractor="resiliparse"))
    run_refine([inp], tmp_path / "o", recipe="refinedweb-filter", config=fast, exec_config=ExecConfig(progress=False))
    with pytest.raises(FalconError, match="made with another configuration"):
        run_refine([inp], tmp_path / "o", recipe="refinedweb-filter", config=cfg, exec_config=ExecConfig(progress=False))

"""`--ray-address` joins a running Ray cluster: refine + dedup of the bundled sample on a head and a
second node (both on 127.0.0.1), the second node's raylet killed while it runs a task, and the run
still finishes with the bytes of a local run (the lost task re-runs on the head; markers and atomic
outputs leave nothing duplicated or missing). Only the processes the test started are stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from ray_cluster import LoopbackRayCluster  # noqa: E402  (tests/data helper)

FLAGS = ["--sample", "--extractor", "resiliparse", "--slices-per-file", "4", "--no-progress"]


def outputs(out: Path) -> dict[str, bytes]:
    snap = {p.name: p.read_bytes() for p in sorted((out / "data").iterdir())}
    snap["stats.json"] = (out / "stats.json").read_bytes()
    return snap


def markers(out: Path) -> dict[str, int]:
    root = out / "markers"
    return {d.name: len(list(d.glob("*.json"))) for d in sorted(root.iterdir())} if root.is_dir() else {}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(420)
def test_refine_on_a_cluster_survives_a_dead_node(tmp_path):
    from falconlm.cli import main

    assert main(["refine", *FLAGS, "--out", str(tmp_path / "local")]) == 0
    with LoopbackRayCluster(head_cpus=1, worker_cpus=2, log_dir=tmp_path) as cluster:
        out = tmp_path / "cluster"
        log = open(tmp_path / "driver.log", "w")
        driver = subprocess.Popen([sys.executable, "-m", "falconlm.cli", "refine", *FLAGS, "--out", str(out), "--ray-address", cluster.address],
                                  stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **cluster.env})
        try:
            killed_at = None
            deadline = time.monotonic() + 300
            while driver.poll() is None and time.monotonic() < deadline:
                if killed_at is None and cluster.running_tasks("worker"):
                    killed_at = markers(out)  # the stages finished so far; a task of the next one is on the worker node
                    cluster.kill_raylet("worker")
                time.sleep(0.05)
            rc = driver.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if driver.poll() is None:
                driver.kill()
            log.close()
        assert rc == 0, (tmp_path / "driver.log").read_text()[-3000:]
        assert killed_at is not None, "no task ever ran on the second node"
        assert cluster.nodes["worker"].poll() is not None  # the node did die: its `ray start` saw the raylet go
        assert not cluster.running_tasks("worker")
    assert outputs(out) == outputs(tmp_path / "local")
    assert markers(out) == markers(tmp_path / "local")
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no half-written file left by the killed task

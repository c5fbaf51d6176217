"""The Ray executor runs the same tasks on a local Ray instance and gives the local executor's bytes;
the multi-process local executor does too."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from falconlm.data.cli import sample_path
from falconlm.data.executor import ExecConfig
from falconlm.data.extract import ExtractConfig
from falconlm.data.config import RefineConfig
from falconlm.data.refine import run_refine


def outputs(out):
    snap = {p.name: p.read_bytes() for p in sorted((out / "data").iterdir())}
    snap["stats.json"] = (out / "stats.json").read_bytes()
    return snap


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("rayin")
    for i in range(3):
        shutil.copy(sample_path(), d / f"part-{i}.warc.gz")
    return d


CFG = replace(RefineConfig(), extract=ExtractConfig(extractor="resiliparse"))


@pytest.fixture(scope="module")
def local_run(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_refine([inputs], out, recipe="refinedweb-filter", config=CFG, exec_config=ExecConfig(progress=False))
    return outputs(out)


@pytest.mark.slow
@pytest.mark.distributed
def test_ray_executor_matches_local(inputs, local_run, tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "ray"
    try:
        run_refine([inputs], out, recipe="refinedweb-filter", config=CFG,
                   exec_config=ExecConfig(workers=2, executor="ray", progress=False))
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert outputs(out) == local_run
    assert len(list((out / "markers" / "filter").glob("*.json"))) == 3


@pytest.mark.slow
def test_process_pool_matches_in_process(inputs, local_run, tmp_path):
    out = tmp_path / "pool"
    run_refine([inputs], out, recipe="refinedweb-filter", config=CFG, exec_config=ExecConfig(workers=2, progress=False))
    assert outputs(out) == local_run


@pytest.mark.slow
@pytest.mark.distributed
def test_refine_command_starts_ray_once(tmp_path, monkeypatch, capsys):
    """The full recipe (filter + the dedup stages' ten sub-stages) shares one Ray session, shut down at the end."""
    ray = pytest.importorskip("ray")
    from falconlm.cli import main

    calls = {"init": 0, "shutdown": 0}
    real_init, real_shutdown = ray.init, ray.shutdown

    def init(*args, **kwargs):
        calls["init"] += 1
        return real_init(*args, **kwargs)

    def shutdown(*args, **kwargs):
        calls["shutdown"] += 1
        return real_shutdown(*args, **kwargs)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", shutdown)
    out = tmp_path / "out"
    try:
        rc = main(["refine", "--sample", "--out", str(out), "--executor", "ray", "--workers", "2",
                   "--extractor", "resiliparse", "--no-progress"])
    finally:
        if ray.is_initialized():
            real_shutdown()
    assert rc == 0, capsys.readouterr().err[-2000:]
    stages = {p.name for p in (out / "markers").iterdir()}
    assert {"filter", "minhash-signatures", "exact-cut", "url-filter"} <= stages and len(stages) == 11
    assert calls == {"init": 1, "shutdown": 1}
    assert not ray.is_initialized()


def test_ray_address_means_the_ray_executor(capsys):
    """`--ray-address` (refine and dedup) joins a cluster: it selects the Ray executor by itself."""
    import argparse

    from falconlm.cli import main
    from falconlm.configure import config_from_args
    from falconlm.data.cli import add_exec_arguments

    parser = argparse.ArgumentParser()
    add_exec_arguments(parser)
    joined = config_from_args(ExecConfig, parser.parse_args(["--ray-address", "10.0.0.5:6379"]), section="exec")
    assert (joined.executor, joined.ray_address) == ("ray", "10.0.0.5:6379")
    assert config_from_args(ExecConfig, parser.parse_args([]), section="exec").executor == "local"
    assert ExecConfig(ray_address="auto").executor == "ray" and ExecConfig().max_task_retries > 0
    for command in ("refine", "dedup"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--ray-address" in capsys.readouterr().out

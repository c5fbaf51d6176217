"""2-process gloo DDP and FSDP2 on CPU under torchrun: same losses as one process with the same global batch; bit-exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from falconlm.testing import run_torchrun
from falconlm.train.loop import pretrain

WORKER = Path(__file__).resolve().parent / "dist_worker.py"

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def dist_runs(sample_shards, tmp_path_factory) -> Path:
    """One torchrun launch (2 ranks) runs every distributed scenario, to pay the start-up once."""
    out = tmp_path_factory.mktemp("dist")
    rc, output = run_torchrun(WORKER, [sample_shards, out, "ddp,fsdp,ddp-resume,fsdp-resume"], timeout=150)
    assert rc == 0, output[-4000:]
    return out


@pytest.fixture(scope="module")
def single(sample_shards, tmp_path_factory, tiny_cfg):
    """The same run in one process: global batch 8 = 4 accumulated micro-batches of 2."""
    return pretrain(tiny_cfg(sample_shards, tmp_path_factory.mktemp("single") / "run"))


def losses(run: Path) -> dict[int, float]:
    return {int(k): v for k, v in json.loads((run / "result.json").read_text())["losses"].items()}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(dist_runs, single, strategy):
    got = losses(dist_runs / strategy)
    assert sorted(got) == list(range(1, 7))
    for step, loss in single.losses.items():
        assert got[step] == pytest.approx(loss, rel=1e-5, abs=1e-5)
    assert got[6] < got[1] - 0.5  # it trained
    final = load_file(str(dist_runs / strategy / "checkpoints" / "step-00000006" / "model.safetensors"))
    ref = load_file(str(single.checkpoint / "model.safetensors"))
    for k in ref:
        torch.testing.assert_close(final[k], ref[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_resume_is_bit_exact_under_torchrun(dist_runs, strategy):
    straight, resumed = losses(dist_runs / strategy), losses(dist_runs / f"{strategy}-resume")
    assert sorted(resumed) == [4, 5, 6]  # resumed from the step-3 checkpoint after a kill in step 5
    assert all(resumed[s] == straight[s] for s in resumed)
    a = load_file(str(dist_runs / strategy / "checkpoints" / "step-00000006" / "model.safetensors"))
    b = load_file(str(dist_runs / f"{strategy}-resume" / "checkpoints" / "step-00000006" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

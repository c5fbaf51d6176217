"""Helpers for tests and benchmarks that compare falconlm with transformers."""

from __future__ import annotations

import os
from typing import Any

import torch

from falconlm.model.config import FalconConfig
from falconlm.model.falcon import FalconForCausalLM
from falconlm.model.hf_interop import to_transformers


def make_pair(config: FalconConfig, seed: int = 0) -> tuple[FalconForCausalLM, Any]:
    """A randomly initialised falconlm model and its transformers twin with identical weights."""
    torch.manual_seed(seed)
    ours = FalconForCausalLM(config).eval()
    return ours, to_transformers(ours)


def run_torchrun(script: str | os.PathLike, args: list[str], nproc: int = 2, timeout: float = 150.0) -> tuple[int, str]:
    """Launch `torchrun --standalone --nproc-per-node N script args...` (CPU: one thread per rank); (exit code, output).

    The launch gets its own process session, so one that hangs is killed with all its ranks and
    TimeoutError carries the end of its output.
    """
    import signal
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc-per-node", str(nproc), str(script), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise TimeoutError(f"torchrun did not finish in {timeout:.0f} s:\n" + output[-3000:]) from None
    return proc.returncode, output

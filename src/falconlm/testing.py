"""Helpers for tests and benchmarks that compare falconlm with transformers."""

from __future__ import annotations

import os
import random
from pathlib import Path
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


FIXTURE_WORDS = "the falcon flies over the desert at dawn while models learn to predict the next token of web text".split()


def _fixture_texts(n: int = 400) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(FIXTURE_WORDS) for _ in range(rng.randint(5, 20))) + rng.choice([".", "!", "?", ", 123"]) for _ in range(n)]


def build_checkpoint(out: Path, preset: str = "tiny-7b", seed: int = 0, **overrides) -> Path:
    """A random-weight checkpoint of `preset` with a 300-token trained tokenizer, written to `out`."""
    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import build_model
    from falconlm.tokenizer.falcon import train_tokenizer

    tok = train_tokenizer(_fixture_texts(), vocab_size=300, show_progress=False)
    tok_dir = out.parent / f"{out.name}-tok"
    tok.save(tok_dir)
    # A wide init makes greedy output vary token to token (the default 0.02 repeats one token),
    # so equality tests compare real sequences; eos is the tokenizer's <|endoftext|>.
    defaults = {"tiny-7b": dict(initializer_range=1.0), "tiny-40b": dict(initializer_range=1.0), "tiny-rw": dict(initializer_range=0.2)}.get(preset, {})
    config = FalconConfig.from_preset(preset, vocab_size=tok.vocab_size, **{**defaults, "eos_token_id": tok.eot_id, "bos_token_id": tok.eot_id, **overrides})
    model = build_model(config, seed=seed)
    model.save_pretrained(out, tokenizer_dir=tok_dir)
    return out

"""Serve fixtures: a tiny trained tokenizer and tiny random-weight checkpoints, built at test time (deterministic)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

WORDS = "the falcon flies over the desert at dawn while models learn to predict the next token of web text".split()


def _texts(n: int = 400) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + rng.choice([".", "!", "?", ", 123"]) for _ in range(n)]


def build_checkpoint(out: Path, preset: str = "tiny-7b", seed: int = 0, **overrides) -> Path:
    """A random-weight checkpoint of `preset` with a 300-token trained tokenizer, written to `out`."""
    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import build_model
    from falconlm.tokenizer.falcon import train_tokenizer

    tok = train_tokenizer(_texts(), vocab_size=300, show_progress=False)
    tok_dir = out.parent / f"{out.name}-tok"
    tok.save(tok_dir)
    config = FalconConfig.from_preset(preset, vocab_size=tok.vocab_size, **overrides)
    model = build_model(config, seed=seed)
    model.save_pretrained(out, tokenizer_dir=tok_dir)
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """tiny-7b (multi-query, RoPE) checkpoint directory."""
    return build_checkpoint(tmp_path_factory.mktemp("serve") / "tiny7b")


@pytest.fixture(scope="session")
def tiny_rw_ckpt(tmp_path_factory) -> Path:
    """tiny-rw (multi-head, ALiBi) checkpoint directory."""
    return build_checkpoint(tmp_path_factory.mktemp("serve") / "tinyrw", preset="tiny-rw", seed=1)


@pytest.fixture(scope="session")
def loaded(tiny_ckpt):
    """(model, tokenizer) of the tiny-7b checkpoint."""
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.tokenizer.falcon import FalconTokenizer

    return FalconForCausalLM.from_pretrained(tiny_ckpt).eval(), FalconTokenizer.load(tiny_ckpt)


def run(coro):
    """Run a coroutine to completion on a fresh event loop."""
    return asyncio.run(coro)

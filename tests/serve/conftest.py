"""Serve fixtures: a tiny trained tokenizer and tiny random-weight checkpoints, built at test time (deterministic)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_helpers, under --import-mode=importlib

from serve_helpers import build_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """tiny-7b (multi-query, RoPE) checkpoint directory."""
    return build_checkpoint(tmp_path_factory.mktemp("serve") / "tiny7b")


@pytest.fixture(scope="session")
def tiny_rw_ckpt(tmp_path_factory) -> Path:
    """tiny-rw (multi-head, ALiBi) checkpoint directory."""
    return build_checkpoint(tmp_path_factory.mktemp("serve") / "tinyrw", preset="tiny-rw", seed=1)


@pytest.fixture(scope="session")
def tiny_40b_ckpt(tmp_path_factory) -> Path:
    """tiny-40b (new decoder architecture, grouped KV heads) checkpoint directory."""
    return build_checkpoint(tmp_path_factory.mktemp("serve") / "tiny40b", preset="tiny-40b", seed=2)


@pytest.fixture(scope="session")
def loaded(tiny_ckpt):
    """(model, tokenizer) of the tiny-7b checkpoint."""
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.tokenizer.falcon import FalconTokenizer

    return FalconForCausalLM.from_pretrained(tiny_ckpt).eval(), FalconTokenizer.load(tiny_ckpt)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models decode fastest on one intra-op thread (thread hand-offs cost more than the matmuls on a busy box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_app(loaded):
    """make_app(**engine_kwargs) -> (app, engine) over the tiny-7b model; engines are closed after the test."""
    from falconlm.tokenizer.chat_template import ChatTemplate
    from falconlm.serve.app import create_app
    from falconlm.decoding.engine import Engine

    engines = []

    def factory(api_key=None, template=None, **kw):
        model, tok = loaded
        engine = Engine(model, tok, **{"max_batch_size": 8, **kw})
        engines.append(engine)
        return create_app(engine, tok, "tiny", template or ChatTemplate(), api_key=api_key), engine

    yield factory
    for e in engines:
        e.close()

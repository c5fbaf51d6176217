"""Serve fixtures: the app factory over the tiny-7b checkpoint (the checkpoints themselves are in tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_helpers, under --import-mode=importlib



@pytest.fixture
def make_app(loaded):
    """make_app(**engine_kwargs) -> (app, engine) over the tiny-7b model; engines are closed after the test."""
    from falconlm.decoding.engine import Engine
    from falconlm.serve.app import create_app
    from falconlm.tokenizer.chat_template import ChatTemplate

    engines = []

    def factory(api_key=None, template=None, **kw):
        model, tok = loaded
        engine = Engine(model, tok, **{"max_batch_size": 8, **kw})
        engines.append(engine)
        return create_app(engine, tok, "tiny", template or ChatTemplate(), api_key=api_key), engine

    yield factory
    for e in engines:
        assert_pool_returned(e)
        e.close()


def assert_pool_returned(engine, timeout: float = 30.0) -> None:
    """After a test every KV block is back in the pool (a cancelled request is retired at the engine's next step)."""
    import time

    deadline = time.monotonic() + timeout
    while (engine.active or engine.waiting) and time.monotonic() < deadline:
        time.sleep(0.02)
    load = engine.load()
    assert load["active"] == 0 and load["waiting"] == 0, load
    assert load["kv_blocks_free"] == load["kv_blocks_total"] and not any(engine.pool.refs), load

"""A live server on 127.0.0.1: the official `openai` client, and clients that hang up mid-request."""

from __future__ import annotations

import time

import httpx
import pytest
import torch

from falconlm.generate.chat_template import ChatTemplate
from falconlm.generate.generate import generate
from serve_helpers import LiveServer

openai = pytest.importorskip("openai")


def _greedy_text(model, tok, text, n):
    ids = tok.encode(text)
    out = generate(model, torch.tensor([ids]), max_new_tokens=n)[0, len(ids) :].tolist()
    return tok.decode([t for t in out if t != tok.eot_id], skip_special_tokens=True)


def test_openai_client_completion_chat_and_stream(make_app, loaded):
    model, tok = loaded
    app, _ = make_app(api_key="k")
    with LiveServer(app) as live:
        oc = openai.OpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0, timeout=60)
        assert [m.id for m in oc.models.list()] == ["tiny"]
        r = oc.completions.create(model="tiny", prompt="the falcon flies", max_tokens=12, temperature=0)
        assert r.choices[0].text == _greedy_text(model, tok, "the falcon flies", 12)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12
        msgs = [{"role": "user", "content": "models learn"}]
        chat = oc.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
        expected = _greedy_text(model, tok, ChatTemplate().render(msgs), 10).split("\nUser:")[0]
        assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content == expected
        stream = oc.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
        text = "".join(c.choices[0].text for c in oc.completions.create(model="tiny", prompt="the falcon flies", max_tokens=12, temperature=0, stream=True))
        assert text == r.choices[0].text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0).completions.create(model="tiny", prompt="hi", max_tokens=1)
        with pytest.raises(openai.BadRequestError):
            oc.completions.create(model="tiny", prompt="hi", max_tokens=-2)


def _slow(monkeypatch, model, seconds):
    real = model.hidden_states

    def slow(*a, **kw):
        time.sleep(seconds)
        return real(*a, **kw)

    monkeypatch.setattr(model, "hidden_states", slow)


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_client_disconnect_frees_the_row(make_app, loaded, monkeypatch):
    model, _ = loaded
    _slow(monkeypatch, model, 0.01)  # ~100 tokens/s, so a 400-token request is still running when the client leaves
    app, engine = make_app(max_batch_size=1)
    with LiveServer(app) as live:
        body = {"prompt": "the falcon", "max_tokens": 400, "temperature": 0}
        # A streaming client reads a few events, then hangs up.
        with httpx.Client(base_url=live.url, timeout=30) as c:
            with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: ")
                _wait(lambda: len(engine.active) == 1)
        _wait(lambda: not engine.active and engine.stats["cancelled"] == 1)
        # A non-streaming client that times out is noticed too.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(live.url + "/v1/completions", json=body, timeout=0.5)
        _wait(lambda: not engine.active and engine.stats["cancelled"] == 2)
        # The single row is free again: the next request is served in full.
        r = httpx.post(live.url + "/v1/completions", json={**body, "max_tokens": 5}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    assert engine.stats["finished"] == 1

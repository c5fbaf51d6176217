"""The HTTP API in process (httpx ASGI transport): every endpoint, SSE framing, finish reasons, usage, logprobs."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import torch
from serve_helpers import client, sse_events

from falconlm.decoding.generate import generate
from falconlm.tokenizer.chat_template import ChatTemplate

PROMPTS = ["the falcon flies over", "models learn to predict", "dawn", "web text of the desert, 123", "the next token", "while the falcon", "at dawn models", "learn the next"]


def _greedy(model, tok, text_or_ids, n):
    ids = tok.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    out = generate(model, torch.tensor([ids]), max_new_tokens=n)[0, len(ids) :].tolist()
    if out and out[-1] == tok.eot_id:
        return out, tok.decode(out[:-1], skip_special_tokens=True), "stop"
    return out, tok.decode(out, skip_special_tokens=True), "length"


def test_models_health_and_unknown_model(make_app):
    app, engine = make_app()

    async def go():
        async with client(app) as c:
            models = (await c.get("/v1/models")).json()
            assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
            assert (await c.get("/v1/models/tiny")).json()["id"] == "tiny"
            health = await c.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["max_batch_size"] == 8
            r = await c.post("/v1/completions", json={"model": "gpt-4", "prompt": "hi"})
            assert r.status_code == 404 and "gpt-4" in r.json()["error"]["message"]
            assert (await c.get("/v1/nothing")).status_code == 404

    asyncio.run(go())


def test_completions_greedy_equal_generate_with_usage(make_app, loaded):
    model, tok = loaded
    app, engine = make_app()

    async def go():
        async with client(app) as c:
            r = await c.post("/v1/completions", json={"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 20, "temperature": 0})
            body = r.json()
            _, text, reason = _greedy(model, tok, PROMPTS[0], 20)
            assert r.status_code == 200 and body["object"] == "text_completion"
            assert body["choices"][0]["text"] == text and body["choices"][0]["finish_reason"] == reason
            n_prompt = len(tok.encode(PROMPTS[0]))
            assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 20, "total_tokens": n_prompt + 20}
            # A list of prompts (strings and token ids), n=2: choices indexed prompt-major, usage summed.
            ids = tok.encode(PROMPTS[1])
            r = await c.post("/v1/completions", json={"prompt": [PROMPTS[2], PROMPTS[3]], "max_tokens": 7, "temperature": 0, "n": 2})
            body = r.json()
            assert [ch["index"] for ch in body["choices"]] == [0, 1, 2, 3]
            assert [ch["text"] for ch in body["choices"]] == [_greedy(model, tok, PROMPTS[2], 7)[1]] * 2 + [_greedy(model, tok, PROMPTS[3], 7)[1]] * 2
            assert body["usage"]["prompt_tokens"] == len(tok.encode(PROMPTS[2])) + len(tok.encode(PROMPTS[3]))
            assert body["usage"]["completion_tokens"] == 28
            r = await c.post("/v1/completions", json={"prompt": ids, "max_tokens": 9, "temperature": 0})
            assert r.json()["choices"][0]["text"] == _greedy(model, tok, ids, 9)[1]
            r = await c.post("/v1/completions", json={"prompt": [ids, ids[:2]], "max_tokens": 3, "temperature": 0})
            assert len(r.json()["choices"]) == 2
            # Seeded sampling is reproducible; n > 1 choices get different seeds.
            req = {"prompt": PROMPTS[0], "max_tokens": 12, "temperature": 1.0, "seed": 5, "n": 2}
            a, b = (await c.post("/v1/completions", json=req)).json(), (await c.post("/v1/completions", json=req)).json()
            assert [ch["text"] for ch in a["choices"]] == [ch["text"] for ch in b["choices"]]
            assert a["choices"][0]["text"] != a["choices"][1]["text"]

    asyncio.run(go())


def test_finish_reasons_stop_string_and_eos(make_app, loaded):
    model, tok = loaded
    app, engine = make_app()
    out, text, _ = _greedy(model, tok, PROMPTS[0], 20)
    stop = text[8:11]

    async def go():
        async with client(app) as c:
            r = (await c.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 20, "temperature": 0, "stop": [stop, "zzz"]})).json()
            assert r["choices"][0]["finish_reason"] == "stop" and r["choices"][0]["text"] == text[: text.find(stop)]
            assert r["usage"]["completion_tokens"] < 20
            r = (await c.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 5, "temperature": 0})).json()
            assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 5
            # eos: a prompt whose greedy continuation hits <|endoftext|> ends with finish_reason stop.
            engine.eos_ids = [out[4]]
            k = out.index(out[4])
            r = (await c.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 20, "temperature": 0})).json()
            assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == k + 1
            assert r["choices"][0]["text"] == tok.decode(out[:k], skip_special_tokens=True)
            r = (await c.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 20, "temperature": 0, "ignore_eos": True})).json()
            assert r["choices"][0]["finish_reason"] == "length"

    asyncio.run(go())


def test_completion_stream_sse(make_app, loaded):
    model, tok = loaded
    app, _ = make_app()
    _, text, reason = _greedy(model, tok, PROMPTS[1], 16)

    async def go():
        async with client(app) as c:
            r = await c.post("/v1/completions", json={"prompt": PROMPTS[1], "max_tokens": 16, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r.text)
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert all(ch["object"] == "text_completion" and ch["id"] == chunks[0]["id"] for ch in chunks)
            usage = chunks[-1]
            assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 16
            body = chunks[:-1]
            assert len(body) > 2  # streamed piece by piece
            assert "".join(ch["choices"][0]["text"] for ch in body) == text
            assert [ch["choices"][0]["finish_reason"] for ch in body] == [None] * (len(body) - 1) + [reason]
            # Without include_usage there is no usage chunk.
            r = await c.post("/v1/completions", json={"prompt": PROMPTS[1], "max_tokens": 4, "temperature": 0, "stream": True})
            assert all("usage" not in json.loads(e) for e in sse_events(r.text)[:-1])

    asyncio.run(go())


def test_chat_completions_template_and_stream(make_app, loaded):
    model, tok = loaded
    app, _ = make_app()
    messages = [{"role": "system", "content": "You are a falcon."}, {"role": "user", "content": "the falcon flies"}, {"role": "assistant", "content": "over"}, {"role": "user", "content": [{"type": "text", "text": "dawn"}]}]
    prompt = ChatTemplate().render(messages)
    assert prompt == "You are a falcon.\nUser: the falcon flies\nAssistant: over\nUser: dawn\nAssistant:"
    out, text, reason = _greedy(model, tok, prompt, 24)
    if "\nUser:" in text:
        text, reason = text[: text.find("\nUser:")], "stop"

    async def go():
        async with client(app) as c:
            r = (await c.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 24, "temperature": 0})).json()
            assert r["object"] == "chat.completion"
            assert r["choices"][0]["message"] == {"role": "assistant", "content": text} and r["choices"][0]["finish_reason"] == reason
            assert r["usage"]["prompt_tokens"] == len(tok.encode(prompt))
            r = await c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 24, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
            events = sse_events(r.text)
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
            assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"]) == text
            assert chunks[-2]["choices"][0]["finish_reason"] == reason and chunks[-1]["usage"]["prompt_tokens"] == len(tok.encode(prompt))
            # logprobs on chat: one entry per generated token, top alternatives sorted
            r = (await c.post("/v1/chat/completions", json={"messages": messages[1:2], "max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": 2})).json()
            content = r["choices"][0]["logprobs"]["content"]
            assert len(content) == 3 and all(len(t["top_logprobs"]) == 2 and t["logprob"] == pytest.approx(t["top_logprobs"][0]["logprob"]) for t in content)

    asyncio.run(go())


def test_echo_logprobs_equal_log_softmax(make_app, loaded):
    """lm-eval's local-completions scoring request: echo + logprobs over token ids, max_tokens 1."""
    model, tok = loaded
    app, _ = make_app()
    ids = tok.encode("the falcon flies over the desert at dawn")
    with torch.inference_mode():
        logp = model(torch.tensor([ids]))[0].log_softmax(-1)
    expected = [logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]

    async def go():
        async with client(app) as c:
            r = await c.post("/v1/completions", json={"model": "tiny", "prompt": [ids], "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": True, "seed": 1234})
            ch = r.json()["choices"][0]
            lp = ch["logprobs"]
            assert ch["text"].startswith(tok.decode(ids))
            assert len(lp["token_logprobs"]) == len(ids) + 1 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
            assert lp["token_logprobs"][1 : len(ids)] == pytest.approx(expected, abs=1e-4)
            for i in range(1, len(ids)):
                assert max(lp["top_logprobs"][i].values()) == pytest.approx(logp[i - 1].max().item(), abs=1e-4)
            # the greedy generated token is the top-1 and its logprob is the max
            assert lp["token_logprobs"][-1] == pytest.approx(max(lp["top_logprobs"][-1].values()), abs=1e-6)
            assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
            # max_tokens 0 with echo: the prompt alone, scored
            r = (await c.post("/v1/completions", json={"prompt": ids, "max_tokens": 0, "logprobs": 0, "echo": True})).json()
            assert r["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
            assert r["usage"]["completion_tokens"] == 0 and r["choices"][0]["finish_reason"] == "length"
            # logprobs without echo: one per generated token
            r = (await c.post("/v1/completions", json={"prompt": ids, "max_tokens": 4, "logprobs": 3, "temperature": 0})).json()
            lp = r["choices"][0]["logprobs"]
            assert len(lp["token_logprobs"]) == 4 and len(lp["top_logprobs"]) == 4
            # keys are token texts (distinct ids may decode alike, e.g. partial UTF-8), so up to 3 + the chosen one
            for chosen, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
                assert 1 <= len(top) <= 4 and max(top.values()) == pytest.approx(chosen, abs=1e-6)

    asyncio.run(go())


def test_tgi_generate_and_stream(make_app, loaded):
    model, tok = loaded
    app, _ = make_app()
    out, text, _ = _greedy(model, tok, PROMPTS[3], 10)

    async def go():
        async with client(app) as c:
            r = (await c.post("/generate", json={"inputs": PROMPTS[3], "parameters": {"max_new_tokens": 10, "details": True}})).json()
            assert r["generated_text"] == text and [t["id"] for t in r["details"]["tokens"]] == out
            assert r["details"]["finish_reason"] == "length" and r["details"]["generated_tokens"] == 10
            r = (await c.post("/generate", json={"inputs": PROMPTS[3], "parameters": {"max_new_tokens": 10, "return_full_text": True}})).json()
            assert r == {"generated_text": PROMPTS[3] + text}
            r = await c.post("/generate_stream", json={"inputs": PROMPTS[3], "parameters": {"max_new_tokens": 10}})
            events = [json.loads(e) for e in sse_events(r.text)]
            assert [e["token"]["id"] for e in events] == out
            assert all(e["generated_text"] is None for e in events[:-1]) and events[-1]["generated_text"] == text
            assert events[-1]["details"]["finish_reason"] == "length"

    asyncio.run(go())


BAD = [
    ("/v1/completions", b"{not json", "not valid JSON"),
    ("/v1/completions", b"[1, 2]", "JSON object"),
    ("/v1/completions", b"", "JSON body"),
    ("/v1/completions", {"prompt": 5}, "prompt must be"),
    ("/v1/completions", {"max_tokens": 3}, "missing field 'prompt'"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10_000}, "context"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "5"}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2.5}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, "n"),
    ("/v1/completions", {"prompt": "hi", "stop": 7}, "stop"),
    ("/v1/completions", {"prompt": "hi", "max_token": 3}, "unknown field 'max_token'"),
    ("/v1/completions", {"prompt": "the falcon " * 400, "max_tokens": 1}, "context"),
    ("/v1/completions", {"prompt": ""}, "empty"),
    ("/v1/completions", {"prompt": []}, "empty"),
    ("/v1/completions", {"prompt": [1, 2, 99999]}, "vocabulary"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 50}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "stream": "yes"}, "stream"),
    ("/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/completions", {"prompt": "hi", "frequency_penalty": 0.5}, "not supported"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "content"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text"),
    ("/generate", {"inputs": ""}, "inputs"),
    ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": -3}}, "max_new_tokens"),
    ("/generate", {"inputs": "hi", "parameters": {"temperature": 0}}, "temperature"),
]


def test_bad_inputs_are_4xx_and_the_server_keeps_serving(make_app, caplog):
    app, engine = make_app()

    async def go():
        async with client(app) as c:
            for path, body, needle in BAD:
                if isinstance(body, bytes):
                    r = await c.post(path, content=body, headers={"content-type": "application/json"})
                else:
                    r = await c.post(path, json=body)
                assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
                err = r.json()["error"]
                assert needle.lower() in err["message"].lower(), (body, err)
                assert err["type"] == "invalid_request_error"
            r = await c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "temperature": 0})
            assert r.status_code == 200

    with caplog.at_level(logging.INFO, logger="falconlm.serve"):
        asyncio.run(go())
    assert engine.thread.is_alive()
    lines = [r.getMessage() for r in caplog.records if r.name == "falconlm.serve"]
    # One log line per request: method, path, status, latency; token counts once generated.
    assert len([ln for ln in lines if ln.startswith("POST ")]) == len(BAD) + 1
    assert lines[-1].startswith("POST /v1/completions 200 ") and "completion_tokens=2" in lines[-1]


def test_api_key(make_app):
    app, _ = make_app(api_key="sekret")

    async def go():
        async with client(app) as c:
            req = {"prompt": "hi", "max_tokens": 1}
            r = await c.post("/v1/completions", json=req)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
            assert (await c.post("/v1/completions", json=req, headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await c.get("/v1/models")).status_code == 401
            assert (await c.post("/v1/completions", json=req, headers={"Authorization": "Bearer sekret"})).status_code == 200
            assert (await c.get("/health")).status_code == 200  # probes need no key

    asyncio.run(go())


def test_full_queue_is_503_with_retry_after(make_app):
    app, engine = make_app(max_batch_size=1, max_queue=2, start=False)  # no engine thread: nothing leaves the queue

    async def go():
        async with client(app) as c:
            waiting = [asyncio.create_task(c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})) for _ in range(2)]
            while len(engine.waiting) < 2:
                await asyncio.sleep(0.01)
            r = await c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]["message"]
            r = await c.post("/v1/completions", json={"prompt": "hi", "n": 3, "max_tokens": 2})
            assert r.status_code == 503
            for t in waiting:
                t.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

    asyncio.run(go())


def test_64_concurrent_clients_all_answered_exactly(make_app, loaded):
    model, tok = loaded
    app, engine = make_app(max_batch_size=8, max_queue=64)
    expected = {p: _greedy(model, tok, p, 12)[1] for p in PROMPTS}

    async def go():
        async with client(app) as c:
            async def one(i):
                p = PROMPTS[i % len(PROMPTS)]
                if i % 4 == 3:
                    r = await c.post("/v1/completions", json={"prompt": p, "max_tokens": 12, "temperature": 0, "stream": True})
                    return p, r.status_code, "".join(json.loads(e)["choices"][0]["text"] for e in sse_events(r.text)[:-1])
                r = await c.post("/v1/completions", json={"prompt": p, "max_tokens": 12, "temperature": 0})
                return p, r.status_code, r.json()["choices"][0]["text"]

            return await asyncio.gather(*(one(i) for i in range(64)))

    results = asyncio.run(go())
    assert [s for _, s, _ in results] == [200] * 64
    assert all(text == expected[p] for p, _, text in results)
    assert engine.stats["max_active"] == 8 and engine.stats["finished"] == 64


def test_lm_eval_local_completions_scores_through_the_server(make_app, loaded):
    """lm-eval's own payload and parser (LocalCompletionsAPI) give the model's log-likelihood and greediness."""
    oc = pytest.importorskip("lm_eval.models.openai_completions")
    model, tok = loaded
    app, _ = make_app()
    ctx, cont = tok.encode("the falcon flies over"), tok.encode(" the desert at dawn")
    greedy_cont = _greedy(model, tok, ctx, 3)[0]
    with torch.inference_mode():
        logp = model(torch.tensor([ctx + cont]))[0].log_softmax(-1)
    expected = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
    payload = oc.LocalCompletionsAPI._create_payload(type("M", (), {"model": "tiny"})(), [ctx + cont, ctx + greedy_cont], generate=False)

    async def go():
        async with client(app) as c:
            return (await c.post("/v1/completions", json=payload)).json()

    out = asyncio.run(go())
    (ll, is_greedy), (_, greedy_is_greedy) = oc.LocalCompletionsAPI.parse_logprobs(out, ctxlens=[len(ctx), len(ctx)])
    assert ll == pytest.approx(expected, abs=1e-3)
    assert greedy_is_greedy and not is_greedy

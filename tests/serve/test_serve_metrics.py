"""/metrics (Prometheus text) and /health report the engine: latencies, tokens, KV blocks, prefix hits; chat turns reuse the conversation's blocks."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import client

from falconlm.tokenizer.chat_template import ChatTemplate


def _scrape(text: str) -> dict[str, float]:
    """sample name -> value (histograms by their _count / _sum samples)."""
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples if not s.labels or "le" not in s.labels}


def test_metrics_count_requests_tokens_and_blocks(make_app):
    app, engine = make_app(block_size=4)

    async def go():
        async with client(app) as c:
            before = _scrape((await c.get("/metrics")).text)
            assert before["falconlm_kv_blocks_free"] == before["falconlm_kv_blocks_total"] > 0 and before["falconlm_requests_running"] == 0
            bodies = await asyncio.gather(*(c.post("/v1/completions", json={"prompt": p, "max_tokens": 9, "temperature": 0, "ignore_eos": True}) for p in ("the falcon flies over the desert", "dawn", "models learn")))
            assert all(b.status_code == 200 for b in bodies)
            r = await c.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            m = _scrape(r.text)
            generated = sum(b.json()["usage"]["completion_tokens"] for b in bodies)
            prompts = sum(b.json()["usage"]["prompt_tokens"] for b in bodies)
            assert m["falconlm_generation_tokens_total"] == generated == 27
            assert m["falconlm_prompt_tokens_total"] == prompts
            assert m["falconlm_time_to_first_token_seconds_count"] == 3
            assert m["falconlm_inter_token_latency_seconds_count"] == generated - 3
            assert m["falconlm_inter_token_latency_seconds_sum"] > 0 and m["falconlm_generation_tokens_per_second"] > 0
            assert m["falconlm_kv_blocks_used"] == 0 and m["falconlm_requests_waiting"] == 0
            # The same prompt again: its full blocks are hits.
            await c.post("/v1/completions", json={"prompt": "the falcon flies over the desert", "max_tokens": 2, "temperature": 0})
            m = _scrape((await c.get("/metrics")).text)
            assert m["falconlm_prefix_cache_hit_tokens_total"] > 0 and 0 < m["falconlm_prefix_cache_hit_rate"] < 1
            health = (await c.get("/health")).json()
            assert health["kv_blocks_free"] == health["kv_blocks_total"] and health["block_size"] == 4

    asyncio.run(go())


def test_metrics_need_no_api_key(make_app):
    app, _ = make_app(api_key="secret")

    async def go():
        async with client(app) as c:
            assert (await c.get("/metrics")).status_code == 200
            assert (await c.post("/v1/completions", json={"prompt": "x"})).status_code == 401

    asyncio.run(go())


def test_the_next_chat_turn_reuses_the_conversation_so_far(make_app, loaded):
    _, tok = loaded
    app, engine = make_app(block_size=4, template=ChatTemplate())

    async def go():
        async with client(app) as c:
            messages = [{"role": "system", "content": "you are a falcon over the desert at dawn"}, {"role": "user", "content": "what do models learn"}]
            first = (await c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 12, "temperature": 0})).json()
            reply = first["choices"][0]["message"]["content"]
            hits = engine.stats["cached_tokens"]
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "and then"}]
            second = (await c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4, "temperature": 0})).json()
            reused = engine.stats["cached_tokens"] - hits
            # Every full block of the first turn's prompt is read back, not recomputed.
            assert reused >= first["usage"]["prompt_tokens"] // 4 * 4 - 4 and reused > 0
            assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]

    asyncio.run(go())


def test_best_of_returns_the_candidates_with_the_best_logprob_per_token(make_app):
    app, engine = make_app(block_size=4)
    body = {"prompt": "the falcon flies over the desert", "max_tokens": 8, "temperature": 1.0, "seed": 3, "ignore_eos": True}

    async def go():
        async with client(app) as c:
            every = (await c.post("/v1/completions", json={**body, "n": 4, "logprobs": 0})).json()["choices"]
            forks = engine.stats["forks"]
            best = (await c.post("/v1/completions", json={**body, "n": 2, "best_of": 4})).json()
            assert engine.stats["forks"] - forks == 3  # four candidates, one prefill
            ranked = sorted(every, key=lambda ch: -sum(ch["logprobs"]["token_logprobs"]) / len(ch["logprobs"]["token_logprobs"]))
            assert [ch["text"] for ch in best["choices"]] == [ch["text"] for ch in ranked[:2]]
            assert [ch["index"] for ch in best["choices"]] == [0, 1] and best["choices"][0]["logprobs"] is None
            assert best["usage"]["completion_tokens"] == 32  # every candidate was generated
            for bad, word in (({"n": 3, "best_of": 2}, "at least n"), ({"best_of": 2, "stream": True}, "stream")):
                r = await c.post("/v1/completions", json={**body, **bad})
                assert r.status_code == 400 and word in r.json()["error"]["message"]

    asyncio.run(go())

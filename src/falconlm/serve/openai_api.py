"""OpenAI's /v1/completions and /v1/chat/completions: routes, streamed chunks and logprob objects."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from falconlm.decoding.engine import Sequence, TokenInfo
from falconlm.serve.requests import (
    ServerState,
    check_length,
    check_model,
    encode_prompt,
    request_config,
    submit,
)
from falconlm.serve.schemas import ChatCompletionRequest, CompletionRequest
from falconlm.serve.streaming import collect, frame, merged, record_usage, sse
from falconlm.tokenizer.chat_template import ReplyStream, reply_text


def add_routes(app: FastAPI, st: ServerState) -> None:
    """Register the OpenAI endpoints on `app`."""

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(st, body.model)
        encoded = [encode_prompt(st, p) for p in body.prompts]
        limit = st.engine.max_length
        default = None if body.max_tokens is not None else 16
        k = body.best_of or body.n  # candidates per prompt; they share the prompt's KV blocks
        ranked = k > body.n
        params = []
        for i, ids in enumerate(encoded):
            mt = body.max_tokens if body.max_tokens is not None else min(default, limit - len(ids))
            check_length(st, len(ids), mt, "max_tokens")
            logprobs = body.logprobs if body.logprobs is not None else (0 if ranked else None)  # ranking needs each token's log-probability
            params.append(request_config(body, mt, logprobs=logprobs, prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None))
        seqs, queue = submit(st, encoded, params, k)
        prompt_tokens = sum(map(len, encoded))
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return sse(request, st, seqs, completion_stream(st, body, seqs, queue, rid, created, prompt_tokens, request))
        results = await collect(request, st, seqs, queue)
        generated = sum(len(r.tokens) for r in results)
        choices = []
        for i in range(len(encoded)):
            candidates = list(zip(seqs[i * k : (i + 1) * k], results[i * k : (i + 1) * k]))
            if ranked:
                candidates = sorted(candidates, key=lambda c: -_mean_logprob(c[1].tokens))[: body.n]
            for j, (seq, res) in enumerate(candidates):
                choices.append(_completion_choice(st, body, seq, res, i * body.n + j))
        usage = record_usage(request, prompt_tokens, generated)
        return {"id": rid, "object": "text_completion", "created": created, "model": st.model_name, "choices": choices, "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(st, body.model)
        messages = [m.model_dump() for m in body.messages]
        text = st.chat_template.render(messages, add_generation_prompt=True)
        ids = encode_prompt(st, text)
        mt = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if mt is None:
            mt = st.engine.max_length - len(ids)
        check_length(st, len(ids), mt, "max_tokens")
        k = (body.top_logprobs or 0) if body.logprobs else None
        params = request_config(body, mt, logprobs=k, prompt_logprobs=None, extra_stop=st.chat_template.stop_strings)
        seqs, queue = submit(st, [ids], [params], body.n)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return sse(request, st, seqs, chat_stream(st, body, seqs, queue, rid, created, len(ids), request))
        results = await collect(request, st, seqs, queue)
        choices = []
        for seq, res in zip(seqs, results):
            choice = {"index": seq.index, "message": {"role": "assistant", "content": reply_text(res.text)}, "logprobs": None, "finish_reason": res.finish_reason}
            if body.logprobs:
                choice["logprobs"] = {"content": [chat_logprob(st, t) for t in res.tokens]}
            choices.append(choice)
        usage = record_usage(request, len(ids), sum(len(r.tokens) for r in results))
        return {"id": rid, "object": "chat.completion", "created": created, "model": st.model_name, "choices": choices, "usage": usage}


async def completion_stream(st: ServerState, body: CompletionRequest, seqs: list[Sequence], queue: asyncio.Queue, rid: str, created: int, prompt_tokens: int, request: Request) -> AsyncIterator[str]:
    completion = 0
    offsets = {s.index: 0 for s in seqs}
    async for index, ev in merged(request, st, seqs, queue):
        completion += len(ev.tokens)
        if not ev.text and ev.finish_reason is None and body.logprobs is None:
            continue
        choice: dict[str, Any] = {"index": index, "text": ev.text, "logprobs": None, "finish_reason": ev.finish_reason}
        if body.logprobs is not None:
            choice["logprobs"] = legacy_logprobs(st, [], ev.tokens, offsets[index])
            offsets[index] += sum(len(t.text) for t in ev.tokens)
        yield frame({"id": rid, "object": "text_completion", "created": created, "model": st.model_name, "choices": [choice]})
    usage = record_usage(request, prompt_tokens, completion)
    if body.stream_options and body.stream_options.include_usage:
        yield frame({"id": rid, "object": "text_completion", "created": created, "model": st.model_name, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


async def chat_stream(st: ServerState, body: ChatCompletionRequest, seqs: list[Sequence], queue: asyncio.Queue, rid: str, created: int, prompt_tokens: int, request: Request) -> AsyncIterator[str]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return frame({"id": rid, "object": "chat.completion.chunk", "created": created, "model": st.model_name, "choices": choices, **extra})

    for s in seqs:
        yield chunk([{"index": s.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    completion = 0
    replies = {s.index: ReplyStream() for s in seqs}  # the streamed content adds up to the non-streamed reply_text
    async for index, ev in merged(request, st, seqs, queue):
        completion += len(ev.tokens)
        text = replies[index].push(ev.text)
        if text or body.logprobs:
            lp = {"content": [chat_logprob(st, t) for t in ev.tokens]} if body.logprobs else None
            yield chunk([{"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": None}])
        if ev.finish_reason is not None:
            yield chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": ev.finish_reason}])
    usage = record_usage(request, prompt_tokens, completion)
    if body.stream_options and body.stream_options.include_usage:
        yield chunk([], usage=usage)
    yield "data: [DONE]\n\n"


def _completion_choice(st: ServerState, body: CompletionRequest, seq: Sequence, res: Any, index: int) -> dict[str, Any]:
    prompt_text = st.tokenizer.decode(seq.prompt_ids) if body.echo else ""
    choice = {"index": index, "text": prompt_text + res.text, "logprobs": None, "finish_reason": res.finish_reason}
    if body.logprobs is not None:
        choice["logprobs"] = legacy_logprobs(st, (res.prompt_logprobs or []) if body.echo else [], res.tokens)
    return choice


def _mean_logprob(tokens: list[TokenInfo]) -> float:
    """Log-probability per generated token, by which best_of ranks its candidates (OpenAI's definition)."""
    return sum(t.logprob for t in tokens) / len(tokens) if tokens else float("-inf")


def legacy_logprobs(st: ServerState, prompt: list[TokenInfo], generated: list[TokenInfo], start: int = 0) -> dict[str, Any]:
    """The completions API's logprobs object (tokens, token_logprobs, top_logprobs, text_offset)."""
    tokens, lps, tops, offsets = [], [], [], []
    pos = start
    for i, t in enumerate(prompt + generated):
        tokens.append(t.text)
        lps.append(t.logprob)
        is_first_prompt = prompt and i == 0
        top: dict[str, float] | None = None
        if not is_first_prompt:
            top = {}
            for tid, lp in t.top:
                top.setdefault(st.tokenizer.decode([tid]), lp)
            if t.logprob is not None:
                top.setdefault(t.text, t.logprob)
        tops.append(top)
        offsets.append(pos)
        pos += len(t.text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprob(st: ServerState, t: TokenInfo) -> dict[str, Any]:
    tops = [{"token": st.tokenizer.decode([i]), "logprob": lp, "bytes": list(st.tokenizer.decode([i]).encode())} for i, lp in t.top]
    return {"token": t.text, "logprob": t.logprob, "bytes": list(t.text.encode()), "top_logprobs": tops}

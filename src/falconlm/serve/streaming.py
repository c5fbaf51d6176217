"""The engine's events on the asyncio side: batched delivery, merged chunks, whole results, client-gone cancellation, SSE framing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from falconlm.decoding.engine import Event, Sequence, TokenInfo
from falconlm.serve.errors import APIError
from falconlm.serve.requests import ServerState

DISCONNECT_POLL_S = 0.5  # how often a waiting handler checks that its client is still there


@dataclass
class Result:
    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_logprobs: list[TokenInfo] | None = None


async def batches(request: Request, st: ServerState, seqs: list[Sequence], queue: asyncio.Queue) -> AsyncIterator[list[tuple[int, Event]]]:
    """Engine events of all sequences, in batches of whatever has arrived, until each has finished.

    Cancels the sequences if the consumer stops early or the client has gone away.
    """
    pending = len(seqs)
    checked = time.monotonic()
    try:
        while pending:
            first = None
            if not queue.empty():
                first = queue.get_nowait()
            else:
                try:
                    first = await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    pass
            if time.monotonic() - checked >= DISCONNECT_POLL_S:
                # Busy streams never time out above, so look for a vanished client on a clock as well.
                checked = time.monotonic()
                if await request.is_disconnected():
                    return
            if first is None:
                continue
            items = [first]
            while not queue.empty():
                items.append(queue.get_nowait())
            for _, ev in items:
                if ev.error is not None:
                    raise APIError(500, ev.error, "server_error")
                if ev.finish_reason is not None:
                    pending -= 1
            yield items
    finally:
        for s in seqs:
            st.engine.cancel(s)


async def each_event(request: Request, st: ServerState, seqs: list[Sequence], queue: asyncio.Queue) -> AsyncIterator[tuple[int, Event]]:
    """Engine events one by one (see batches)."""
    async for items in batches(request, st, seqs, queue):
        for item in items:
            yield item


async def merged(request: Request, st: ServerState, seqs: list[Sequence], queue: asyncio.Queue) -> AsyncIterator[tuple[int, Event]]:
    """Engine events with whatever has piled up for one choice merged into one (a lagging stream sends fewer, larger chunks)."""
    async for items in batches(request, st, seqs, queue):
        out: dict[int, Event] = {}
        for index, ev in items:
            cur = out.get(index)
            if cur is None:
                out[index] = Event(list(ev.tokens), ev.text, ev.finish_reason, None, ev.prompt_logprobs)
            else:
                cur.tokens += ev.tokens
                cur.text += ev.text
                cur.finish_reason = ev.finish_reason or cur.finish_reason
        for item in out.items():
            yield item


async def collect(request: Request, st: ServerState, seqs: list[Sequence], queue: asyncio.Queue) -> list[Result]:
    results = {s.index: Result() for s in seqs}
    async for index, ev in each_event(request, st, seqs, queue):
        r = results[index]
        r.text += ev.text
        r.tokens.extend(ev.tokens)
        if ev.prompt_logprobs is not None:
            r.prompt_logprobs = ev.prompt_logprobs
        if ev.finish_reason is not None:
            r.finish_reason = ev.finish_reason
    if any(r.finish_reason is None for r in results.values()):
        raise APIError(499, "the client closed the request", "client_closed")
    return [results[s.index] for s in seqs]


def record_usage(request: Request, prompt: int, completion: int) -> dict[str, int]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    request.state.usage = usage
    return usage


def sse(request: Request, st: ServerState, seqs: list[Sequence], chunks: AsyncIterator[str]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:  # the client went away (or we finished): free the rows either way
            for s in seqs:
                st.engine.cancel(s)

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def frame(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

"""TGI's /generate and /generate_stream: routes and token details."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from falconlm.decoding.engine import TokenInfo
from falconlm.serve.requests import ServerState, submit, tgi_request
from falconlm.serve.schemas import TGIRequest
from falconlm.serve.streaming import Result, collect, each_event, record_usage, sse


def add_routes(app: FastAPI, st: ServerState) -> None:
    """Register the TGI endpoints on `app`."""

    @app.post("/generate")
    async def tgi_generate(body: TGIRequest, request: Request) -> Any:
        ids, params = tgi_request(st, body)
        seqs, queue = submit(st, [ids], [params], 1)
        res = (await collect(request, st, seqs, queue))[0]
        record_usage(request, len(ids), len(res.tokens))
        text = (body.inputs if body.parameters.return_full_text else "") + res.text
        out: dict[str, Any] = {"generated_text": text}
        if body.parameters.details:
            out["details"] = {
                "finish_reason": tgi_reason(res, st),
                "generated_tokens": len(res.tokens),
                "seed": body.parameters.seed,
                "tokens": [tgi_token(st, t) for t in res.tokens],
            }
        return out

    @app.post("/generate_stream")
    async def tgi_stream(body: TGIRequest, request: Request) -> Any:
        ids, params = tgi_request(st, body, stream=True)
        seqs, queue = submit(st, [ids], [params], 1)

        async def events() -> AsyncIterator[str]:
            text, n = "", 0
            async for _, ev in each_event(request, st, seqs, queue):
                for i, tok in enumerate(ev.tokens):
                    n += 1
                    last = ev.finish_reason is not None and i == len(ev.tokens) - 1
                    if last:
                        text += ev.text
                    payload = {"index": n, "token": tgi_token(st, tok), "generated_text": None, "details": None}
                    if last:
                        payload["generated_text"] = (body.inputs if body.parameters.return_full_text else "") + text
                        payload["details"] = {"finish_reason": tgi_reason(Result(tokens=[tok], finish_reason=ev.finish_reason), st), "generated_tokens": n, "seed": body.parameters.seed}
                    yield f"data: {json.dumps(payload)}\n\n"
                if ev.finish_reason is None:
                    text += ev.text
            record_usage(request, len(ids), n)

        return sse(request, st, seqs, events())


def tgi_token(st: ServerState, t: TokenInfo) -> dict[str, Any]:
    eos = st.engine.eos_ids
    return {"id": t.id, "text": t.text, "logprob": t.logprob, "special": t.id in eos}


def tgi_reason(res: Result, st: ServerState) -> str:
    if res.finish_reason == "length":
        return "length"
    if res.tokens and res.tokens[-1].id in st.engine.eos_ids:
        return "eos_token"
    return "stop_sequence"

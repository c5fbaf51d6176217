"""The FastAPI app: OpenAI-compatible /v1 endpoints, TGI-style /generate, /health, SSE streaming.

Every handler validates, encodes the prompt, checks it against the context, and submits one
engine Sequence per choice; the engine thread batches all of them. Errors are JSON bodies in
OpenAI's shape ({"error": {"message", "type", "param", "code"}}) with a 4xx status; a full
queue is 503 with Retry-After; a client that goes away cancels its sequences (freeing rows).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from falconlm.errors import FalconError
from falconlm.tokenizer.chat_template import ChatTemplate
from falconlm.decoding.engine import Engine, Event, QueueFull, SamplingParams, Sequence, TokenInfo
from falconlm.serve.schemas import ChatCompletionRequest, CompletionRequest, TGIRequest

log = logging.getLogger("falconlm.serve")
RETRY_AFTER_S = 1
DISCONNECT_POLL_S = 0.5  # how often a waiting handler checks that its client is still there


class APIError(Exception):
    """An error answered as JSON with a status code."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class ServerState:
    """What the handlers share: the engine, tokenizer, names and the chat template."""

    engine: Engine
    tokenizer: Any
    model_name: str
    chat_template: ChatTemplate
    aliases: set[str] = field(default_factory=set)
    created: int = field(default_factory=lambda: int(time.time()))


class _AuthAndLog:
    """Pure ASGI middleware: bearer-token check, and one log line per request when its response ends."""

    def __init__(self, app: Any, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]
        path = scope.get("path", "")
        if self.api_key and path != "/health":
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode("latin-1", "replace")):
                response = _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "authentication_error", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                self._log(scope, 401, start)
                return

        async def send_and_log(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._log(scope, status[0], start)

        try:
            await self.app(scope, receive, send_and_log)
        except Exception:
            self._log(scope, 500, start)
            raise

    @staticmethod
    def _log(scope: dict, status: int, start: float) -> None:
        usage = (scope.get("state") or {}).get("usage") or {}
        extra = f" prompt_tokens={usage.get('prompt_tokens', 0)} completion_tokens={usage.get('completion_tokens', 0)}" if usage else ""
        log.info("%s %s %d %.3fs%s", scope.get("method", ""), scope.get("path", ""), status, time.perf_counter() - start, extra)


def create_app(engine: Engine, tokenizer: Any, model_name: str, chat_template: ChatTemplate | None = None, api_key: str | None = None, aliases: set[str] | None = None) -> FastAPI:
    """The ASGI app serving one engine; wrap it with uvicorn (see serve/cli.py)."""
    app = FastAPI(title="falconlm", version="1", docs_url=None, redoc_url=None)
    st = ServerState(engine, tokenizer, model_name, chat_template or ChatTemplate(), aliases={model_name, *(aliases or set())})
    app.state.server = st
    app.add_middleware(_AuthAndLog, api_key=api_key)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _describe(exc.errors()), param=_param(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else "invalid_request_error")

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.kind, exc.param, exc.headers)

    @app.exception_handler(FalconError)
    async def _falcon(request: Request, exc: FalconError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(503, str(exc), "server_overloaded", headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": st.model_name, **st.engine.load()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": st.model_name, "object": "model", "created": st.created, "owned_by": "falconlm", "max_model_len": st.engine.max_length}
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name:path}")
    async def model_card(name: str) -> dict[str, Any]:
        _check_model(st, name)
        return {"id": st.model_name, "object": "model", "created": st.created, "owned_by": "falconlm", "max_model_len": st.engine.max_length}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        _check_model(st, body.model)
        encoded = [_encode_prompt(st, p) for p in body.prompts]
        limit = st.engine.max_length
        default = None if body.max_tokens is not None else 16
        params = []
        for i, ids in enumerate(encoded):
            mt = body.max_tokens if body.max_tokens is not None else min(default, limit - len(ids))
            _check_length(st, len(ids), mt, "max_tokens")
            params.append(_params(body, mt, logprobs=body.logprobs, prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None))
        seqs, queue = _submit(st, encoded, params, body.n)
        prompt_tokens = sum(map(len, encoded))
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return _sse(request, st, seqs, _completion_stream(st, body, seqs, queue, rid, created, prompt_tokens, request))
        results = await _collect(request, st, seqs, queue)
        choices = []
        for seq, res in zip(seqs, results):
            prompt_text = st.tokenizer.decode(seq.prompt_ids) if body.echo else ""
            choice = {"index": seq.index, "text": prompt_text + res.text, "logprobs": None, "finish_reason": res.finish_reason}
            if body.logprobs is not None:
                choice["logprobs"] = _legacy_logprobs(st, (res.prompt_logprobs or []) if body.echo else [], res.tokens)
            choices.append(choice)
        usage = _usage(request, prompt_tokens, sum(len(r.tokens) for r in results))
        return {"id": rid, "object": "text_completion", "created": created, "model": st.model_name, "choices": choices, "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        _check_model(st, body.model)
        messages = [m.model_dump() for m in body.messages]
        text = st.chat_template.render(messages, add_generation_prompt=True)
        ids = _encode_prompt(st, text)
        mt = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if mt is None:
            mt = st.engine.max_length - len(ids)
        _check_length(st, len(ids), mt, "max_tokens")
        k = (body.top_logprobs or 0) if body.logprobs else None
        params = _params(body, mt, logprobs=k, prompt_logprobs=None, extra_stop=st.chat_template.stop_strings)
        seqs, queue = _submit(st, [ids], [params], body.n)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return _sse(request, st, seqs, _chat_stream(st, body, seqs, queue, rid, created, len(ids), request))
        results = await _collect(request, st, seqs, queue)
        choices = []
        for seq, res in zip(seqs, results):
            choice = {"index": seq.index, "message": {"role": "assistant", "content": res.text}, "logprobs": None, "finish_reason": res.finish_reason}
            if body.logprobs:
                choice["logprobs"] = {"content": [_chat_logprob(st, t) for t in res.tokens]}
            choices.append(choice)
        usage = _usage(request, len(ids), sum(len(r.tokens) for r in results))
        return {"id": rid, "object": "chat.completion", "created": created, "model": st.model_name, "choices": choices, "usage": usage}

    @app.post("/generate")
    async def tgi_generate(body: TGIRequest, request: Request) -> Any:
        ids, params = _tgi_params(st, body)
        seqs, queue = _submit(st, [ids], [params], 1)
        res = (await _collect(request, st, seqs, queue))[0]
        _usage(request, len(ids), len(res.tokens))
        text = (body.inputs if body.parameters.return_full_text else "") + res.text
        out: dict[str, Any] = {"generated_text": text}
        if body.parameters.details:
            out["details"] = {
                "finish_reason": _tgi_reason(res, st),
                "generated_tokens": len(res.tokens),
                "seed": body.parameters.seed,
                "tokens": [_tgi_token(st, t) for t in res.tokens],
            }
        return out

    @app.post("/generate_stream")
    async def tgi_stream(body: TGIRequest, request: Request) -> Any:
        ids, params = _tgi_params(st, body, stream=True)
        seqs, queue = _submit(st, [ids], [params], 1)

        async def events() -> AsyncIterator[str]:
            text, n = "", 0
            async for _, ev in _events(request, st, seqs, queue):
                for i, tok in enumerate(ev.tokens):
                    n += 1
                    last = ev.finish_reason is not None and i == len(ev.tokens) - 1
                    if last:
                        text += ev.text
                    payload = {"index": n, "token": _tgi_token(st, tok), "generated_text": None, "details": None}
                    if last:
                        payload["generated_text"] = (body.inputs if body.parameters.return_full_text else "") + text
                        payload["details"] = {"finish_reason": _tgi_reason(_Result(tokens=[tok], finish_reason=ev.finish_reason), st), "generated_tokens": n, "seed": body.parameters.seed}
                    yield f"data: {json.dumps(payload)}\n\n"
                if ev.finish_reason is None:
                    text += ev.text
            _usage(request, len(ids), n)

        return _sse(request, st, seqs, events())

    return app


# ----------------------------------------------------------------------------- helpers


def _describe(errors: Any) -> str:
    """One readable sentence from pydantic's error list (a union's alternatives collapse to one line)."""
    parts, seen = [], set()
    for e in list(errors):
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        kind, msg = e.get("type", ""), e.get("msg", "invalid")
        if kind == "json_invalid":
            parts.append(f"the request body is not valid JSON ({e.get('ctx', {}).get('error', msg)})")
            break
        field = loc[0] if loc else ""
        if field in seen:
            continue
        seen.add(field)
        name = ".".join(loc)
        if kind == "extra_forbidden":
            parts.append(f"unknown field '{name}'")
        elif kind == "missing":
            parts.append(f"missing field '{name}'" if name else "the request needs a JSON body")
        elif field == "prompt" and len(loc) > 1 and not loc[1].isdigit():
            parts.append("prompt must be a string, a list of strings, a list of token ids or a list of token-id lists")
        elif kind == "model_attributes_type" and not field:
            parts.append("the request body must be a JSON object")
        else:
            parts.append(f"{name}: {msg}" if name else msg)
        if len(parts) == 3:
            break
    return "; ".join(parts) or "invalid request"


def _param(errors: Any) -> str | None:
    for e in errors:
        if e.get("type") == "json_invalid":
            return None
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if loc:
            return loc[0]
    return None


def _check_model(st: ServerState, name: str | None) -> None:
    if name is not None and name not in st.aliases:
        raise APIError(404, f"model '{name}' is not served here; this server serves '{st.model_name}'", "not_found_error", "model")


def _encode_prompt(st: ServerState, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        ids = st.tokenizer.encode(prompt)
    else:
        vocab = st.engine.model.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise APIError(400, f"prompt holds a token id outside the vocabulary (0..{vocab - 1})", param="prompt")
        ids = list(prompt)
    if not ids:
        raise APIError(400, "the prompt is empty (it encodes to no tokens)", param="prompt")
    return ids


def _check_length(st: ServerState, prompt_len: int, max_tokens: int, name: str) -> None:
    limit = st.engine.max_length
    if prompt_len > limit:
        raise APIError(400, f"the prompt has {prompt_len} tokens, more than the model's context of {limit}", param="prompt")
    if prompt_len + max_tokens > limit:
        raise APIError(400, f"prompt ({prompt_len} tokens) + {name} ({max_tokens}) exceeds the model's context of {limit} tokens; lower {name}", param=name)


def _params(body: Any, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None, extra_stop: list[str] | None = None) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p if body.top_p < 1.0 else None,
        top_k=body.top_k if body.top_k > 0 else None,
        repetition_penalty=body.repetition_penalty,
        stop=body.stop_list + [s for s in (extra_stop or []) if s not in body.stop_list],
        seed=body.seed,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        ignore_eos=body.ignore_eos,
    )


def _tgi_params(st: ServerState, body: TGIRequest, stream: bool = False) -> tuple[list[int], SamplingParams]:
    p = body.parameters
    ids = _encode_prompt(st, body.inputs)
    _check_length(st, len(ids), p.max_new_tokens, "max_new_tokens")
    sample = p.do_sample or (p.temperature is not None and p.temperature != 1.0) or p.top_k is not None or p.top_p is not None
    params = SamplingParams(
        max_tokens=p.max_new_tokens,
        temperature=(p.temperature or 1.0) if sample else 0.0,
        top_p=p.top_p,
        top_k=p.top_k,
        repetition_penalty=p.repetition_penalty or 1.0,
        stop=list(p.stop),
        seed=p.seed,
        logprobs=0 if p.details or stream else None,
    )
    return ids, params


def _submit(st: ServerState, prompts: list[list[int]], params: list[SamplingParams], n: int) -> tuple[list[Sequence], asyncio.Queue]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    seqs = []
    for i, (ids, p) in enumerate(zip(prompts, params)):
        for j in range(n):
            pj = p if (j == 0 or p.seed is None) else SamplingParams(**{**p.__dict__, "seed": p.seed + j})
            seqs.append(Sequence(ids, pj, loop=loop, queue=queue, index=i * n + j))
    st.engine.submit(seqs)
    return seqs, queue


@dataclass
class _Result:
    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_logprobs: list[TokenInfo] | None = None


async def _batches(request: Request, st: ServerState, seqs: list[Sequence], queue: asyncio.Queue) -> AsyncIterator[list[tuple[int, Event]]]:
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


async def _events(request: Request, st: ServerState, seqs: list[Sequence], queue: asyncio.Queue) -> AsyncIterator[tuple[int, Event]]:
    """Engine events one by one (see _batches)."""
    async for items in _batches(request, st, seqs, queue):
        for item in items:
            yield item


async def _merged(request: Request, st: ServerState, seqs: list[Sequence], queue: asyncio.Queue) -> AsyncIterator[tuple[int, Event]]:
    """Engine events with whatever has piled up for one choice merged into one (a lagging stream sends fewer, larger chunks)."""
    async for items in _batches(request, st, seqs, queue):
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


async def _collect(request: Request, st: ServerState, seqs: list[Sequence], queue: asyncio.Queue) -> list[_Result]:
    results = {s.index: _Result() for s in seqs}
    async for index, ev in _events(request, st, seqs, queue):
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


def _usage(request: Request, prompt: int, completion: int) -> dict[str, int]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    request.state.usage = usage
    return usage


def _sse(request: Request, st: ServerState, seqs: list[Sequence], chunks: AsyncIterator[str]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:  # the client went away (or we finished): free the rows either way
            for s in seqs:
                st.engine.cancel(s)

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _frame(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _completion_stream(st: ServerState, body: CompletionRequest, seqs: list[Sequence], queue: asyncio.Queue, rid: str, created: int, prompt_tokens: int, request: Request) -> AsyncIterator[str]:
    completion = 0
    offsets = {s.index: 0 for s in seqs}
    async for index, ev in _merged(request, st, seqs, queue):
        completion += len(ev.tokens)
        if not ev.text and ev.finish_reason is None and body.logprobs is None:
            continue
        choice: dict[str, Any] = {"index": index, "text": ev.text, "logprobs": None, "finish_reason": ev.finish_reason}
        if body.logprobs is not None:
            choice["logprobs"] = _legacy_logprobs(st, [], ev.tokens, offsets[index])
            offsets[index] += sum(len(t.text) for t in ev.tokens)
        yield _frame({"id": rid, "object": "text_completion", "created": created, "model": st.model_name, "choices": [choice]})
    usage = _usage(request, prompt_tokens, completion)
    if body.stream_options and body.stream_options.include_usage:
        yield _frame({"id": rid, "object": "text_completion", "created": created, "model": st.model_name, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


async def _chat_stream(st: ServerState, body: ChatCompletionRequest, seqs: list[Sequence], queue: asyncio.Queue, rid: str, created: int, prompt_tokens: int, request: Request) -> AsyncIterator[str]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return _frame({"id": rid, "object": "chat.completion.chunk", "created": created, "model": st.model_name, "choices": choices, **extra})

    for s in seqs:
        yield chunk([{"index": s.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    completion = 0
    async for index, ev in _merged(request, st, seqs, queue):
        completion += len(ev.tokens)
        if ev.text or body.logprobs:
            lp = {"content": [_chat_logprob(st, t) for t in ev.tokens]} if body.logprobs else None
            yield chunk([{"index": index, "delta": {"content": ev.text}, "logprobs": lp, "finish_reason": None}])
        if ev.finish_reason is not None:
            yield chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": ev.finish_reason}])
    usage = _usage(request, prompt_tokens, completion)
    if body.stream_options and body.stream_options.include_usage:
        yield chunk([], usage=usage)
    yield "data: [DONE]\n\n"


def _legacy_logprobs(st: ServerState, prompt: list[TokenInfo], generated: list[TokenInfo], start: int = 0) -> dict[str, Any]:
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


def _chat_logprob(st: ServerState, t: TokenInfo) -> dict[str, Any]:
    tops = [{"token": st.tokenizer.decode([i]), "logprob": lp, "bytes": list(st.tokenizer.decode([i]).encode())} for i, lp in t.top]
    return {"token": t.text, "logprob": t.logprob, "bytes": list(t.text.encode()), "top_logprobs": tops}


def _tgi_token(st: ServerState, t: TokenInfo) -> dict[str, Any]:
    eos = st.engine.eos_ids
    return {"id": t.id, "text": t.text, "logprob": t.logprob, "special": t.id in eos}


def _tgi_reason(res: _Result, st: ServerState) -> str:
    if res.finish_reason == "length":
        return "length"
    if res.tokens and res.tokens[-1].id in st.engine.eos_ids:
        return "eos_token"
    return "stop_sequence"


def served_name(checkpoint: str | Path) -> str:
    """The model id a checkpoint is served under by default: its directory name."""
    return Path(checkpoint).resolve().name

"""The FastAPI app: OpenAI-compatible /v1 endpoints, TGI-style /generate, /health and /v1/models over one engine.

Every handler validates, encodes the prompt, checks it against the context, and submits one
engine Sequence per choice; the engine thread batches all of them. Each concern has its own
module: errors.py (JSON error bodies), auth.py (API key, request log), requests.py (body ->
GenerationConfig -> sequences), streaming.py (events, SSE), openai_api.py and tgi_api.py (the two
dialects), metrics.py (/metrics).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from falconlm.decoding.engine import Engine
from falconlm.serve import openai_api, tgi_api
from falconlm.serve.auth import AuthAndLog
from falconlm.serve.errors import install_error_handlers
from falconlm.serve.metrics import ServerMetrics
from falconlm.serve.requests import ServerState, check_model, served_name
from falconlm.tokenizer.chat_template import ChatTemplate

__all__ = ["create_app", "served_name"]


def create_app(engine: Engine, tokenizer: Any, model_name: str, chat_template: ChatTemplate | None = None, api_key: str | None = None, aliases: set[str] | None = None,
               metrics: ServerMetrics | None = None) -> FastAPI:
    """The ASGI app serving one engine; wrap it with uvicorn (see serve/cli.py). `metrics` must be the engine's observer (a new one is made otherwise)."""
    app = FastAPI(title="falconlm", version="1", docs_url=None, redoc_url=None)
    st = ServerState(engine, tokenizer, model_name, chat_template or ChatTemplate(), aliases={model_name, *(aliases or set())})
    app.state.server = st
    app.add_middleware(AuthAndLog, api_key=api_key)

    install_error_handlers(app)
    if metrics is None:
        metrics = ServerMetrics()
        engine.observer = metrics
    metrics.attach(engine)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": st.model_name, **st.engine.load()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": st.model_name, "object": "model", "created": st.created, "owned_by": "falconlm", "max_model_len": st.engine.max_length}
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name:path}")
    async def model_card(name: str) -> dict[str, Any]:
        check_model(st, name)
        return {"id": st.model_name, "object": "model", "created": st.created, "owned_by": "falconlm", "max_model_len": st.engine.max_length}

    openai_api.add_routes(app, st)
    tgi_api.add_routes(app, st)
    return app

"""Errors as OpenAI-shaped JSON bodies ({"error": {"message", "type", "param", "code"}}) with a 4xx/5xx status, and pydantic errors as one sentence."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from falconlm.decoding.engine import QueueFull
from falconlm.errors import FalconError

log = logging.getLogger("falconlm.serve")
RETRY_AFTER_S = 1


class APIError(Exception):
    """An error answered as JSON with a status code."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure as a JSON error body: validation 400, unknown route 404, overload 503, a bug 500."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, describe_validation(exc.errors()), param=error_param(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else "invalid_request_error")

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.kind, exc.param, exc.headers)

    @app.exception_handler(FalconError)
    async def _falcon(request: Request, exc: FalconError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull) -> JSONResponse:
        return error_response(503, str(exc), "server_overloaded", headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")


def describe_validation(errors: Any) -> str:
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


def error_param(errors: Any) -> str | None:
    for e in errors:
        if e.get("type") == "json_invalid":
            return None
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if loc:
            return loc[0]
    return None

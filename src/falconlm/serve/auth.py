"""Bearer-token check and one log line per request, as pure ASGI middleware (streaming responses pass through untouched)."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from falconlm.serve.errors import error_response

log = logging.getLogger("falconlm.serve")


class AuthAndLog:
    """Pure ASGI middleware: bearer-token check, and one log line per request when its response ends."""

    def __init__(self, app: Any, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]
        path = scope.get("path", "")
        if self.api_key and path not in ("/health", "/metrics"):  # probes and scrapers carry no key
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode("latin-1", "replace")):
                response = error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "authentication_error", headers={"WWW-Authenticate": "Bearer"})
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

"""A tiny ASGI front that answers the cheap requests itself and loads the admin app on demand.

The Functions host imports ``function_app`` on every cold start. This front imports nothing but
the standard library: it answers the health check and Microsoft Graph's subscription validation
handshake (which must be answered within 10 seconds, often on a cold instance) without loading
FastAPI, pydantic, the settings or any SDK; every other request builds the admin app once (by
calling ``app_factory``) and is handed to it. A build that fails (an import error in a broken
deployment) is answered as the app answers an unexpected error: a JSON 500 with a correlation id
under which the log holds the traceback; the next request tries the build again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/healthz", "/api/v1/healthz"})
VALIDATION_PATHS = frozenset({"/api/v1/graph/notifications", "/api/v1/graph/lifecycle"})
MAX_VALIDATION_TOKEN = 4096
MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body read (413 above); the admin app applies the same limit
(:data:`hubpilot.api.app.MAX_BODY_BYTES`), this front to the bodies it reads itself."""


class Front:
    """ASGI app: ``/healthz`` and the Graph handshake here, the rest to the lazily built app."""

    def __init__(self, app_factory: Callable[[], ASGIApp]) -> None:
        self._factory = app_factory
        self._app: ASGIApp | None = None

    @property
    def loaded(self) -> bool:
        return self._app is not None

    def app(self) -> ASGIApp:
        if self._app is None:
            self._app = self._factory()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] == "http":
            path = scope.get("path", "")
            method = scope.get("method", "GET")
            if path in HEALTH_PATHS and method in ("GET", "HEAD"):
                await _respond(send, 200, b'{"status":"ok"}', b"application/json", head=method == "HEAD")
                return
            if path in VALIDATION_PATHS and method == "POST":
                token = _validation_token(scope)
                if token is not None:
                    if not await _drain(scope, receive):
                        body = b'{"detail":"the request body is larger than %d bytes"}' % MAX_BODY_BYTES
                        await _respond(send, 413, body, b"application/json")
                        return
                    await _respond(send, 200, token.encode("utf-8"), b"text/plain")
                    return
            try:
                app = self.app()
            except Exception:
                await _build_failed(scope, send)
                return
            await app(scope, receive, send)
            return
        await self.app()(scope, receive, send)


def _validation_token(scope: Scope) -> str | None:
    raw = scope.get("query_string", b"")
    if b"validationToken" not in raw:
        return None
    values = parse_qs(raw.decode("latin-1"), keep_blank_values=True).get("validationToken")
    if not values or len(values[0]) > MAX_VALIDATION_TOKEN:
        return None
    token: str = values[0]
    return token


async def _drain(scope: Scope, receive: Receive) -> bool:
    """Read and drop the request body; False (and stop reading) above :data:`MAX_BODY_BYTES`."""
    declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return False
    seen = 0
    while True:
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > MAX_BODY_BYTES:
            return False
        if message["type"] != "http.request" or not message.get("more_body"):
            return True


SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
"""Headers on every answer of the app (an answer that sets one itself keeps its own): what the
caller's credentials opened (status, audit, runs) is kept by no cache, no answer is sniffed as
another type, and no other site frames the docs page, whose "Try it out" acts with the session."""


async def _respond(send: Send, status: int, body: bytes, content_type: bytes, *, head: bool = False) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *SECURITY_HEADERS,
        ],
    })
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _build_failed(scope: Scope, send: Send) -> None:
    """The admin app could not be built: the answer :class:`hubpilot.api.app._UnexpectedErrors`
    gives (a JSON 500 naming the request and a correlation id), the traceback in the log only."""
    import json
    import uuid

    method = scope.get("method", "?")
    shown = f"{method} {scope.get('path', '?')}".encode("unicode_escape").decode("ascii")[:300]
    correlation = uuid.uuid4().hex
    log.exception("the admin API could not be built for %s (correlation id %s)", shown, correlation)
    body = json.dumps({"detail": f"an unexpected error stopped {shown}; the log has its traceback under "
                                 f"correlation id {correlation}",
                       "correlation_id": correlation}).encode()
    await _respond(send, 500, body, b"application/json", head=method == "HEAD")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

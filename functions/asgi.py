"""How the Functions app hands an HTTP request to the admin API's ASGI app, as uvicorn would.

``func.AsgiFunctionApp`` builds the ASGI scope from the request's URL with ``urlparse`` and a
strict UTF-8 decode. Two requests then reach the app otherwise than under ``hubpilot serve``
(uvicorn), both fixed here before the library reads the URL:

- a ``;`` in the path starts ``urlparse``'s "parameters", which the library drops:
  ``/api/v1/plan/sync;v=1`` was served as ``/api/v1/plan/sync`` (uvicorn: the path as sent, 422);
- a percent-escape that is not UTF-8 (``/api/v1/plan/%FF``) raised UnicodeDecodeError in the
  library, and the host answered 500 (uvicorn: U+FFFD in its place, and the app's own answer).

And one request the host itself spoils: it drops a chunked body (it passes a body only with a
``Content-Length``; Azure/azure-functions-host#7930), so the app would see an empty body and
answer for the wrong reason. Such a request is answered 411, saying what to send instead.

Importing this module must stay cheap (see bench/coldstart.py): the standard library only.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlsplit, urlunsplit

import azure.functions as func

from hubpilot.api.front import SECURITY_HEADERS

CHUNKED_DETAIL = ("the Functions host does not pass a chunked request body (Transfer-Encoding: chunked) "
                  "to the app: send the body with a Content-Length")


def asgi_url(url: str) -> str:
    """``url`` with its path escaped so that the library's decoding yields uvicorn's path: the
    path percent-decoded once, bytes that are not UTF-8 replaced by U+FFFD, a ``;`` kept."""
    parts = urlsplit(url)
    path = unquote_to_bytes(parts.path).decode("utf-8", "replace")
    return urlunsplit(parts._replace(path=quote(path, safe="/")))


def _chunked_without_body(req: func.HttpRequest) -> bool:
    """A chunked request whose body the host dropped; Graph's validation handshake needs none."""
    te = (req.headers.get("transfer-encoding") or "").lower()
    return ("chunked" in te and not req.get_body() and not req.headers.get("content-length")
            and "validationToken" not in urlsplit(req.url).query)


class AdminApiMiddleware(func.AsgiMiddleware):
    """``func.AsgiMiddleware`` given the request's URL as uvicorn would read it (see above)."""

    async def handle_async(self, req: func.HttpRequest, context: Any = None) -> func.HttpResponse:
        if _chunked_without_body(req):
            return func.HttpResponse(json.dumps({"detail": CHUNKED_DETAIL}), status_code=411,
                                     mimetype="application/json",
                                     headers={k.decode(): v.decode() for k, v in SECURITY_HEADERS})
        fixed = func.HttpRequest(req.method, asgi_url(req.url), headers=dict(req.headers), params=dict(req.params),
                                 route_params=dict(req.route_params), body=req.get_body())
        response: func.HttpResponse = await super().handle_async(fixed, context)
        return response


class AdminApiApp(func.AsgiFunctionApp):
    """``func.AsgiFunctionApp`` (one anonymous catch-all HTTP function, its startup call) whose
    HTTP function goes through :class:`AdminApiMiddleware`."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        self._asgi_app = app
        super().__init__(app=app, **kwargs)

    def _add_http_app(self, http_middleware: Any, function_name: str = "http_app_func") -> None:
        self.middleware = AdminApiMiddleware(self._asgi_app)
        super()._add_http_app(self.middleware, function_name)

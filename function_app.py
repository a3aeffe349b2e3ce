"""The Azure Functions app (Python v2 model): one FunctionApp with every trigger.

- ``admin_api``: the admin HTTP API, one anonymous HTTP function on ``/{*route}`` (host.json sets
  ``routePrefix`` to ""); the app authenticates every request itself. ``functions/asgi.py`` hands
  each request to the ASGI app as ``hubpilot serve`` (uvicorn) would. A small front answers
  ``/healthz`` and Graph's validation handshake without loading FastAPI; the API is built on
  the first other request.
- ``sync_timer``, ``cull_timer``, ``scale_timer`` and ``run_queue`` from functions/timers.py.
- ``graph_hints`` and ``graph_subscriptions`` from functions/graph.py (Graph notifications).

Importing this module must stay cheap (see bench/coldstart.py).
"""

from __future__ import annotations

from typing import Any

import azure.functions as func

from functions import get_context
from functions.asgi import AdminApiApp
from functions.graph import bp as graph_bp
from functions.timers import bp as timers_bp
from hubpilot.api.front import Front


def _admin_app() -> Any:
    from hubpilot.api.app import create_app

    return create_app(get_context)


front = Front(_admin_app)
app = AdminApiApp(front, http_auth_level=func.AuthLevel.ANONYMOUS, function_name="admin_api")
app.register_functions(timers_bp)
app.register_functions(graph_bp)

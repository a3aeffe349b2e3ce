"""The real-hub test bed lives in the package (the demo starts the same hub): re-exported here."""

from typing import Any

import httpx

from hubpilot.localhub import (
    PASSWORD,
    PROJECT_ROOT,
    RealHub,
    ServiceSpec,
    drop_one_services,
    free_port,
    start_hub,
)

__all__ = ["PASSWORD", "PROJECT_ROOT", "RealHub", "ServiceSpec", "drop_one_services", "free_port", "read_all",
           "start_hub"]


async def read_all(client: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    """Every item of a hub list (``/users``, ``/groups``), page after page: one GET answers at most
    the hub's ``api_page_max_limit`` (200), and the session's shared hub holds more users than that
    by the time the later tests run."""
    items: list[dict[str, Any]] = []
    while True:
        r = await client.get(path, params={"offset": len(items), "limit": 200})
        r.raise_for_status()
        page = r.json()
        items += page
        if not page:
            return items

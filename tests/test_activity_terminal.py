"""A terminal running a long, silent command is a server in use, like a busy kernel: the
activity extension reports it, so the hub's last_activity moves and the culler keeps it."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from tornado.websocket import websocket_connect

from tests.fixtures.hub import unique_name
from tests.realhub import RealHub
from tests.test_cull_realhub import (  # noqa: F401 (fixtures)
    cull_hub,
    hub_client,
    hub_user,
    make_user,
    parse_time,
    wait_for,
    ws_request,
)

pytestmark = pytest.mark.hub


async def _hub_activity(hub: RealHub, name: str) -> datetime | None:
    la = (await hub_user(hub, name))["servers"][""]["last_activity"]
    return parse_time(la) if la else None


async def test_silent_command_in_a_terminal_counts_as_activity(
    cull_hub: RealHub, hub_client: object  # noqa: F811 (the imported fixtures)
) -> None:
    name = unique_name("term")
    await make_user(cull_hub, name)
    await cull_hub.spawn(name)
    headers = {"Authorization": f"token {cull_hub.admin_token}"}
    base = f"{cull_hub.url}/user/{name}"
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        r = await http.post(f"{base}/api/terminals")
        r.raise_for_status()
        term = r.json()["name"]
    ws = await websocket_connect(ws_request(
        base.replace("http://", "ws://") + f"/terminals/websocket/{term}", headers))
    ws.write_message(json.dumps(["stdin", "sleep 600\r"]))  # a long command with no output
    await asyncio.sleep(1)
    ws.close()  # the browser tab is closed; the command keeps running
    t0 = datetime.now(UTC)

    async def still_active() -> bool:
        la = await _hub_activity(cull_hub, name)
        return la is not None and la >= t0 + timedelta(seconds=3)

    # nobody talks to the server: only the extension can move its activity past t0
    await wait_for(still_active, timeout=15)

    # and a terminal at its prompt is idle: once the command ends, activity stops moving
    ws = await websocket_connect(ws_request(
        base.replace("http://", "ws://") + f"/terminals/websocket/{term}", headers))
    ws.write_message(json.dumps(["stdin", "\x03"]))  # Ctrl-C: back to the prompt
    await asyncio.sleep(1)
    ws.close()
    await asyncio.sleep(1.5)
    settled = await _hub_activity(cull_hub, name)
    await asyncio.sleep(3)
    assert await _hub_activity(cull_hub, name) == settled

"""A kernel blocked on ``input()`` stays ``busy`` until someone answers: a GPU server left
waiting on input (the tab closed) is not in use, and the activity extension must not keep it
alive for ever. Once answered, the cell computes again and counts as busy again."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tornado.websocket import websocket_connect

from tests.fixtures.hub import unique_name
from tests.realhub import RealHub
from tests.test_cull_realhub import (  # noqa: F401 (fixtures)
    KernelSession,
    cull_hub,
    hub_client,
    hub_user,
    iso,
    make_user,
    parse_time,
    wait_for,
    ws_request,
)

pytestmark = pytest.mark.hub

V1 = "v1.kernel.websocket.jupyter.org"


async def _hub_activity(hub: RealHub, name: str) -> datetime | None:
    la = (await hub_user(hub, name))["servers"][""]["last_activity"]
    return parse_time(la) if la else None


def _message(channel: str, msg_type: str, content: dict[str, Any],
             parent: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "header": {"msg_id": uuid.uuid4().hex, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": msg_type, "version": "5.3", "date": iso(datetime.now(UTC))},
        "parent_header": parent or {}, "metadata": {}, "channel": channel, "buffers": [],
        "content": content,
    }


def _encode(msg: dict[str, Any], protocol: str | None) -> str | bytes:
    """A frontend's message: JSON, or JupyterLab's binary v1 kernel websocket protocol."""
    if protocol != V1:
        return json.dumps(msg)
    from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

    parts = [json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")]
    return bytes(serialize_msg_to_ws_v1(parts, msg["channel"]))


def _decode(raw: str | bytes, protocol: str | None) -> tuple[str, dict[str, Any]]:
    """(channel, header) of a message from the server."""
    if protocol != V1:
        msg = json.loads(raw)
        return msg["channel"], msg["header"]
    from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1

    channel, parts = deserialize_msg_from_ws_v1(raw)
    return channel, json.loads(parts[0])


async def _connect(kernel: KernelSession, protocol: str | None) -> Any:
    ws_url = kernel.base.replace("http://", "ws://") + f"/kernels/{kernel.kernel_id}/channels"
    return await websocket_connect(ws_request(ws_url, kernel.headers),
                                   subprotocols=[protocol] if protocol else None)


async def _ask_input(kernel: KernelSession, protocol: str | None, code: str) -> dict[str, Any]:
    """Run ``code`` (which calls input()) from a websocket, wait for the kernel's input_request,
    then close the websocket as a closed tab does; returns the request's header."""
    ws = await _connect(kernel, protocol)
    ws.write_message(_encode(_message("shell", "execute_request", {
        "code": code, "silent": False, "store_history": False, "user_expressions": {},
        "allow_stdin": True, "stop_on_error": True,
    }), protocol), binary=protocol == V1)
    try:
        async with asyncio.timeout(60):
            while True:
                raw = await ws.read_message()
                assert raw is not None, "kernel websocket closed"
                channel, header = _decode(raw, protocol)
                if channel == "stdin" and header["msg_type"] == "input_request":
                    return header
    finally:
        ws.close()


async def _active_again(hub: RealHub, name: str) -> None:
    """Wait until the hub's activity of the server moves past now (plus 3 s): busy again."""
    t0 = datetime.now(UTC)

    async def moved() -> bool:
        la = await _hub_activity(hub, name)
        return la is not None and la >= t0 + timedelta(seconds=3)

    await wait_for(moved, timeout=15)


async def _settled(hub: RealHub, name: str) -> bool:
    """The hub's activity for the server stops moving (reports come every second, the
    extension checks every half second)."""
    await asyncio.sleep(1.5)
    before = await _hub_activity(hub, name)
    await asyncio.sleep(3)
    return await _hub_activity(hub, name) == before


@pytest.mark.parametrize("protocol", [None, V1], ids=["json", "v1"])
async def test_a_kernel_waiting_on_input_is_idle_and_busy_again_once_answered(
    cull_hub: RealHub, hub_client: object, protocol: str | None  # noqa: F811 (the imported fixtures)
) -> None:
    name = unique_name("input")
    await make_user(cull_hub, name)
    await cull_hub.spawn(name)
    kernel = KernelSession(cull_hub, name)
    await kernel.start()

    # a cell asks for input, then computes silently; the frontend shows the prompt, and the tab
    # is closed: nobody is there to answer
    request = await _ask_input(kernel, protocol, "answer = input('continue? ')\nimport time\ntime.sleep(600)")

    # the kernel stays busy, but a kernel only waiting for input is no activity
    assert await _settled(cull_hub, name)

    # answered, the cell computes silently: busy again, the activity moves again
    ws = await _connect(kernel, protocol)
    ws.write_message(_encode(_message("stdin", "input_reply", {"value": "yes", "status": "ok"},
                                      parent=request), protocol), binary=protocol == V1)
    await asyncio.sleep(1)
    ws.close()
    await _active_again(cull_hub, name)
    await kernel.interrupt()


async def test_a_new_cell_after_an_interrupted_input_counts_as_busy(
    cull_hub: RealHub, hub_client: object  # noqa: F811 (the imported fixtures)
) -> None:
    """The waiting ends with the execution that asked: interrupted (through the REST API, no
    websocket open), then a new silent cell, the kernel is busy again and the server kept."""
    name = unique_name("inputint")
    await make_user(cull_hub, name)
    await cull_hub.spawn(name)
    kernel = KernelSession(cull_hub, name)
    await kernel.start()
    await _ask_input(kernel, None, "input('continue? ')")
    assert await _settled(cull_hub, name)

    await kernel.interrupt()

    async def interrupted() -> bool:
        async with httpx.AsyncClient(headers=kernel.headers, timeout=30) as http:
            r = await http.get(f"{kernel.base}/kernels/{kernel.kernel_id}")
            return bool(r.json()["execution_state"] == "idle")

    await wait_for(interrupted)
    await asyncio.sleep(1)  # ipykernel aborts the requests queued right after an error
    await kernel.execute("import time\ntime.sleep(600)")  # returns once the kernel is busy with it
    await _active_again(cull_hub, name)
    await kernel.interrupt()

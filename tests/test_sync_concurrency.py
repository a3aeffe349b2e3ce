"""``sync.concurrency`` against the session's real hub: a proxy in front of it holds every group
addition, and counts how many of a plan's group additions (one request per group) reach the hub at
once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from hubpilot.loop import Outcome
from tests.faultproxy import FaultProxy
from tests.fixtures.syncworld import World
from tests.realhub import RealHub

pytestmark = pytest.mark.hub


def _adds(method: str, path: str) -> bool:
    return method == "POST" and path.split("?")[0].endswith("/users") and "/groups/" in path


@pytest.mark.parametrize("concurrency", [1, 2, 8])
async def test_sync_concurrency_bounds_the_hub_writes_in_flight(real_hub: RealHub, tmp_path: Path,
                                                               concurrency: int) -> None:
    """A first sync adds people to three hub groups, one request per group, all in one phase: with
    ``sync.concurrency`` 1 or 2 only that many are in flight (held at the proxy) until one is
    answered; with 8 all three go at once."""
    where = urlsplit(real_hub.api_url)
    proxy = FaultProxy(where.hostname or "127.0.0.1", where.port or 80)
    await proxy.start()
    world = World(real_hub, tmp_path, hub_api=f"http://127.0.0.1:{proxy.port}{where.path}",
                  concurrency=concurrency)
    try:
        world.set("analysts", "alice", "bob")
        world.set("gpu", "bob")
        world.set("admins", "carol")
        proxy.rule(_adds, "hold")
        run = asyncio.ensure_future(world.run())
        held: list[int] = []
        # the count of held additions, from the first one until it has not changed for a second
        deadline = asyncio.get_running_loop().time() + 60
        while not held or held[-1] == 0 or len(set(held[-10:])) > 1 or len(held) < 10:
            assert not run.done(), run.result().render()
            assert asyncio.get_running_loop().time() < deadline, held
            if held and held[-1] == 0:
                held.clear()
            held.append(sum(1 for s in proxy.seen if _adds(s.method, s.path)))
            await asyncio.sleep(0.1)
        assert held[-1] == min(concurrency, 3), held
        proxy.release()
        record = await asyncio.wait_for(run, 60)
        assert record.outcome is Outcome.APPLIED, record.render()
        assert record.plan is not None and record.plan.counts()["add_to_group"] == 4
        assert sum(1 for s in proxy.seen if _adds(s.method, s.path)) == 3  # one request per group
        state = await world.hub_state()
        assert state["groups"] == {f"{world.prefix}analysts": [world.user("alice"), world.user("bob")],
                                   f"{world.prefix}gpu": [world.user("bob")],
                                   f"{world.prefix}admins": [world.user("carol")]}
    finally:
        proxy.release()
        await world.close()
        await proxy.stop()

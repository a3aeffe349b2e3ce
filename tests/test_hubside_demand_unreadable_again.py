"""The demand part's "cannot read the spawner" error is logged once, then at debug level only
until a spawner is read again: an error of another day (a profile service down again, another
cause) is logged in full again, not hidden at debug level for the life of the hub."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.test_hubside_demand import _Spawner, demand_log  # noqa: F401 - the fixture


async def test_an_unreadable_spawner_is_logged_again_after_one_was_read(
        demand_log: pytest.LogCaptureFixture) -> None:  # noqa: F811
    from hubpilot_hub.scale_demand import ScaleDemand

    part = ScaleDemand("http://127.0.0.1:9/api/v1", "t", gpu_profiles=["gpu"], timeout=1)

    async def spawn(readable: bool) -> None:
        # a CPU spawn (no signal); or a GPU spawn whose spawner has no user: it cannot be read
        spawner = _Spawner("ana", {"profile": "cpu" if readable else "gpu"})
        if not readable:
            spawner.user = None
        part(spawner)
        await asyncio.gather(*part._tasks)

    for _ in range(2):
        await spawn(readable=False)
    assert len([r for r in demand_log.records if r.levelno >= logging.ERROR]) == 1
    await spawn(readable=True)
    assert any("read again (2 spawn(s) could not be read meanwhile)" in r.getMessage()
               for r in demand_log.records if r.levelno == logging.INFO)
    await spawn(readable=False)
    errors = [r for r in demand_log.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and errors[1].exc_info is not None
    assert part.sent == []

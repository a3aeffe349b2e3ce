"""A callable ``profile_list`` that raises, in a REAL hub with the GPU demand signal and the GPU
start timeout: the pre-spawn parts must neither block nor fail the spawn (KubeSpawner calls the
callable again in ``start()`` and fails such a spawn itself), and the hub's log must say what
went wrong."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.fixtures.hub import unique_name
from tests.realhub import RealHub
from tests.test_hubside_demand import RECORDING_KUBESPAWNER, _Hubpilot, _until, _users

_FAILING_PROFILE_LIST = RECORDING_KUBESPAWNER + """
{callable_def}

c.JupyterHub.spawner_class = KubeSpawner
c.KubeSpawner.profile_list = _profiles
from hubpilot_hub.scale_demand import configure_scale_demand
configure_scale_demand(c, url={url!r}, token="t", gpu_profiles=["gpu"], gpu_start_timeout=900)
"""

_ASYNC = """
async def _profiles(spawner):  # a profile service that fails
    raise LookupError("profile service is down")
"""
_SYNC = """
def _profiles(spawner):
    raise LookupError("profile service is down")
"""


@pytest.mark.hub
@pytest.mark.parametrize("callable_def", [_ASYNC, _SYNC], ids=["async", "sync"])
async def test_a_profile_list_that_raises_neither_blocks_nor_fails_the_spawn_and_is_logged(
    hub_factory: Callable[..., Awaitable[RealHub]], tmp_path: Path, callable_def: str,
) -> None:
    record = tmp_path / "start.json"
    async with _Hubpilot() as hubpilot:
        hub = await hub_factory(extra_config=_FAILING_PROFILE_LIST.format(
            record=str(record), callable_def=callable_def, url=hubpilot.url))
        user = unique_name("broken")
        await _users(hub, user)
        r = await hub.spawn(user, user_options={"profile": "gpu"}, wait=False)
        # the spawn went on to start() (whose failure the POST answers), not held in the hook
        assert r.status_code == 500, r.text
        await _until(record.exists, "the spawn reached start()", limit=60)
        # whether it is a GPU spawn is unknown: taken as one (a longer wait, never a GPU spawn missed)
        assert json.loads(record.read_text()) == {"start_timeout": 900}
        log = hub.tmp_path / "jupyterhub.log"
        await _until(lambda: "profile service is down" in log.read_text(), "the hub logs the profile_list error")
        text = log.read_text()
        assert "gpu-start-timeout: cannot tell whether" in text and "LookupError" in text
        assert "gpu-demand: cannot read the spawner of" in text  # with the traceback
        assert hubpilot.bodies == []  # the spawn fails in start(): no node is booted for it

"""The hub's pending GPU spawns, read from a REAL hub (``GET /users?state=active``), count as
demand: by ``user_options["profile"]``, and by the ``profile_options`` forms a pending server's
``user_options`` show (``<option>`` = a choice, ``<option>--unlisted-choice`` = a free-form value),
as ``scale.gpu_profiles`` names them. The pool is the ARM double, the cluster kmock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hubpilot.adapters.hub import HubClient
from hubpilot.loop import Outcome, Runner
from hubpilot.scale import Policy, ScaleCapability
from hubpilot.scale.capability import gpu_spawn
from hubpilot.settings import Settings
from tests.doubles.arm import ArmDouble
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub
from tests.test_scale_kube import world  # noqa: F401  (fixture)

# a spawner that stays pending (as one waits for a GPU node), answered 202 at once
PENDING_SPAWNER = """
import asyncio
from jupyterhub.spawner import SimpleLocalProcessSpawner

class StaysPending(SimpleLocalProcessSpawner):
    async def start(self):
        await asyncio.sleep(3600)

c.JupyterHub.spawner_class = StaysPending
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
"""


@pytest.mark.hub
async def test_pending_gpu_spawns_of_profiles_and_profile_options_are_demand(
    world: dict[str, Any], hub_factory: Callable[..., Awaitable[RealHub]],  # noqa: F811
) -> None:
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=0, machines=[])
    hub = await hub_factory(extra_config=PENDING_SPAWNER)
    spawns = {
        unique_name("gpu"): {"profile": "gpu"},
        unique_name("choice"): {"profile": "ml", "accelerator": "t4"},
        unique_name("other"): {"profile": "ml", "accelerator--unlisted-choice": "a100"},
        unique_name("mlcpu"): {"profile": "ml", "accelerator": "none"},
        unique_name("cpu"): {"profile": "cpu"},
        unique_name("dflt"): {},
    }
    async with hub.admin() as admin:
        for u in spawns:
            assert (await admin.post(f"/users/{u}")).status_code in (201, 409)
    for u, options in spawns.items():
        r = await hub.spawn(u, user_options=options, wait=False)
        assert r.status_code == 202, r.text
    gpu = list(spawns)[:3]
    clock = world["clock"]
    client = HubClient(hub.api_url, hub.hubpilot_token, retries=0, timeout=10)
    try:
        cap = ScaleCapability(world["pool"], world["cluster"], world["store"], Policy(max_nodes=6),
                              clock=lambda: clock["now"], hub=client,
                              gpu_profiles=["gpu", "ml:accelerator=t4", "ml:accelerator--unlisted-choice"])
        observed = await cap.observe()
        assert sorted(d.key for d in observed.demand) == sorted(f"{u}~" for u in gpu), observed.demand
        assert {d.source for d in observed.demand} == {"hub"}
        rec = await Runner(world["store"], clock=lambda: clock["now"]).run(cap, trigger="timer", actor="t")
    finally:
        await client.close()
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert [(r.action.kind, r.action.params["count"]) for r in rec.results] == [("set_count", 3)], rec.render()
    assert arm.pools["gpu"]["count"] == 3


def test_a_free_form_value_wins_over_the_choice_as_in_kubespawner() -> None:
    rules = [("ml", "accelerator", "t4"), ("", "accelerator", "t4")]
    assert gpu_spawn({"profile": "ml", "accelerator": "t4"}, rules)
    assert gpu_spawn({"profile": "ml", "accelerator": "t4", "accelerator--unlisted-choice": ""}, rules)
    assert not gpu_spawn({"profile": "ml", "accelerator": "t4", "accelerator--unlisted-choice": "cpu"}, rules)
    assert gpu_spawn({"accelerator": "t4"}, rules)  # no profile named: the default profile
    assert not gpu_spawn({"profile": "other", "accelerator": "t4"}, rules)


@pytest.mark.parametrize("bad", ["", " gpu", "ml:", "ml:=t4", "ml:accelerator=", "ml:a:b=c",
                                 "ml:accelerator--unlisted-choice=2", "gpu t4"])
def test_a_gpu_profile_entry_that_cannot_match_says_how_to_write_it(bad: str) -> None:
    with pytest.raises(ValueError, match=r"GPU profile|<profile>:<option>"):
        Settings(scale={"gpu_profiles": [bad]})

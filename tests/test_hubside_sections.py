"""configure() takes over a pre_spawn_hook configured on any spawner class section, whatever the
class is called (batchspawner's ``BatchSpawnerBase`` does not end in "Spawner"): a more specific
section left alone would override the composed hook and skip the access check at spawn."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from traitlets.config import Config

import hubpilot_hub
from hubpilot.adapters.hub import HubClient
from hubpilot_hub import hooks
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub

ACCESS = "hp-sections-access"


def test_a_hook_on_any_spawner_section_is_composed() -> None:
    saved = list(hooks._PARTS)
    try:
        c = Config()

        def site(spawner: object) -> None: ...

        c.BatchSpawnerBase.pre_spawn_hook = site
        hubpilot_hub.configure(c, access_groups=["a"])
        assert c.BatchSpawnerBase.pre_spawn_hook is hooks.pre_spawn_hook
        assert ("configured:BatchSpawnerBase", True) in hooks.registered_parts()
    finally:
        hooks._PARTS[:] = saved


@pytest.mark.hub
async def test_only_the_hook_traitlets_gives_the_spawner_runs_in_a_real_hub(
    hub_factory: Callable[..., Awaitable[RealHub]], tmp_path: Path,
) -> None:
    """traitlets gives a spawner the ``pre_spawn_hook`` of the most specific section of its class:
    with ``c.Spawner`` and ``c.SimpleLocalProcessSpawner`` both set, a SimpleLocalProcessSpawner
    runs the latter alone, and a hook on ``c.KubeSpawner`` never runs for it. configure() made
    every configured hook a part run at every spawn: the generic hook the deployment had
    overridden ran too, and so did the hook of a spawner class the hub does not use."""
    ran = tmp_path / "ran"
    hub = await hub_factory(extra_config=f"""
import pathlib
def _hook(label):
    def hook(spawner):
        with open({str(ran)!r}, "a") as f:
            f.write(label + "\\n")
    return hook
c.Spawner.pre_spawn_hook = _hook("generic")
c.SimpleLocalProcessSpawner.pre_spawn_hook = _hook("specific")
c.KubeSpawner.pre_spawn_hook = _hook("kube")
import hubpilot_hub
hubpilot_hub.configure(c, access_groups=[{ACCESS!r}])
""")
    member = unique_name("sect")
    async with HubClient(hub.api_url, hub.hubpilot_token) as hp:
        await hp.create_users([member])
        await hp.create_group(ACCESS)
        await hp.add_group_members(ACCESS, [member])
    r = await hub.spawn(member)
    assert r.status_code in (201, 202), r.text
    assert ran.read_text().split() == ["specific"]

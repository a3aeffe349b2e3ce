"""A ``pre_spawn_hook`` configured AFTER ``hubpilot_hub.configure`` (z2jh runs the
``hub.extraConfig`` snippets in the order of their keys: a key sorting after hubpilot's, or the
deployment's own snippet, may set one) must not replace the composed hook and its access check
at spawn, in a REAL hub. The late hook still runs, after the access check. The same for a
``post_auth_hook`` set later: the login gate still refuses, after it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from hubpilot.adapters.hub import HubClient
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub

ACCESS = "hp-late-access"

pytestmark = pytest.mark.hub


async def _outsider_and_member(hub: RealHub) -> tuple[str, str]:
    """Two new hub users; only the second is in the access group."""
    outsider, member = unique_name("out"), unique_name("mem")
    async with HubClient(hub.api_url, hub.hubpilot_token) as hp:
        await hp.create_users([outsider, member])
        await hp.create_group(ACCESS)
        await hp.add_group_members(ACCESS, [member])
    return outsider, member


async def _refused_then_served(hub: RealHub, outsider: str, member: str, marker: str) -> None:
    """The outsider's spawn is refused before the hook that leaves ``<name>.<marker>`` ran; the
    member's spawn starts and runs it."""
    r = await hub.spawn(outsider)
    assert r.status_code == 403, r.text
    assert not (hub.tmp_path / f"{outsider}.{marker}").exists()
    r = await hub.spawn(member)
    assert r.status_code in (201, 202), r.text
    assert (hub.tmp_path / f"{member}.{marker}").read_text() == "yes"


@pytest.mark.parametrize("section", ["Spawner", "SimpleLocalProcessSpawner"])
async def test_a_hook_set_after_configure_keeps_the_access_check(
    hub_factory: Callable[..., Awaitable[RealHub]], section: str,
) -> None:
    hub = await hub_factory(extra_config=f"""
import hubpilot_hub
hubpilot_hub.configure(c, access_groups=[{ACCESS!r}])

# another extraConfig snippet, run after hubpilot's
import pathlib
def _late_hook(spawner):
    pathlib.Path(spawner.user.name + ".late-hook-ran").write_text(
        ",".join(g.name for g in spawner.user.groups))
c.{section}.pre_spawn_hook = _late_hook
def _late_auth_hook(authenticator, handler, authentication):
    pathlib.Path(authentication["name"] + ".late-auth-hook-ran").write_text("yes")
    return authentication
c.Authenticator.post_auth_hook = _late_auth_hook
""")
    outsider, member = await _outsider_and_member(hub)

    # the login gate too: refused after the late post_auth_hook ran; a member logs in
    assert (await hub.login(outsider)).status_code == 403
    assert (hub.tmp_path / f"{outsider}.late-auth-hook-ran").exists()
    assert (await hub.login(member)).status_code == 302

    r = await hub.spawn(outsider)
    assert r.status_code == 403, r.text  # the access check still runs at spawn
    assert "not in any of the groups" in r.json()["message"]
    assert not (hub.tmp_path / f"{outsider}.late-hook-ran").exists()  # refused before the late hook

    r = await hub.spawn(member)
    assert r.status_code in (201, 202), r.text
    assert (hub.tmp_path / f"{member}.late-hook-ran").read_text() == ACCESS  # and the late hook ran
    # in the hub's log, with its format: the refusal a warning, the late hook said once (info)
    log = hub.log_tail(2000)
    assert log.count("was set after hubpilot_hub.configure") == 1
    assert "JupyterHub.hubpilot_hub gate:" in log and "spawn refused for " + repr(outsider) in log
    async with hub.admin() as admin:
        await admin.delete(f"/users/{member}/server")


async def test_a_late_hook_that_chains_the_one_it_found_runs_each_part_once(
    hub_factory: Callable[..., Awaitable[RealHub]],
) -> None:
    # a common pattern in a later snippet: keep the hook configured so far and call it first.
    # The composed hook then runs the late hook as a part, and the late hook the composed hook
    # again: every part (the access check, the demand signal, ...) would run twice a spawn
    hub = await hub_factory(extra_config=f"""
import pathlib
import hubpilot_hub
def _count(spawner):
    p = pathlib.Path(spawner.user.name + ".parts")
    p.write_text((p.read_text() if p.exists() else "") + "x")
hubpilot_hub.configure(c, access_groups=[{ACCESS!r}], pre_spawn_parts=[("count", _count)])

_previous = c.Spawner.pre_spawn_hook
async def _chained(spawner):
    await _previous(spawner)
    pathlib.Path(spawner.user.name + ".chained").write_text("yes")
c.Spawner.pre_spawn_hook = _chained
""")
    outsider, member = await _outsider_and_member(hub)

    await _refused_then_served(hub, outsider, member, "chained")  # the late hook ran
    assert (hub.tmp_path / f"{member}.parts").read_text() == "x"  # and every part once
    async with hub.admin() as admin:
        await admin.delete(f"/users/{member}/server")


async def test_a_hook_found_by_a_later_feature_runs_after_the_access_check(
    hub_factory: Callable[..., Awaitable[RealHub]],
) -> None:
    # a spawner-class hook set between configure() and configure_gpu_start_timeout(): the later
    # feature takes it over as a part, which must not run before the access check (a deployment
    # hook preparing a home directory or a volume would do so for a refused user)
    hub = await hub_factory(extra_config=f"""
import pathlib
import hubpilot_hub
hubpilot_hub.configure(c, access_groups=[{ACCESS!r}])

def _site_hook(spawner):
    pathlib.Path(spawner.user.name + ".site-hook-ran").write_text("yes")
c.SimpleLocalProcessSpawner.pre_spawn_hook = _site_hook

from hubpilot_hub.scale_demand import configure_gpu_start_timeout
configure_gpu_start_timeout(c, gpu_profiles=["gpu"], seconds=120)
""")
    outsider, member = await _outsider_and_member(hub)

    await _refused_then_served(hub, outsider, member, "site-hook-ran")
    async with hub.admin() as admin:
        await admin.delete(f"/users/{member}/server")


async def test_an_authenticator_class_set_after_configure_is_reported(
    hub_factory: Callable[..., Awaitable[RealHub]],
) -> None:
    # the gated authenticator class is what ends the sessions of people removed from the access
    # groups and keeps a later pre_spawn_hook / post_auth_hook behind the access check: a later
    # snippet naming the authenticator class again drops it, silently until now
    hub = await hub_factory(extra_config=f"""
import hubpilot_hub
hubpilot_hub.configure(c, access_groups=[{ACCESS!r}])
c.JupyterHub.authenticator_class = "dummy"  # a later snippet
""")
    _, member = await _outsider_and_member(hub)
    assert (await hub.login(member)).status_code == 302
    r = await hub.spawn(member)
    assert r.status_code in (201, 202), r.text
    log = hub.log_tail(2000)
    assert log.count("(DummyAuthenticator) was set after hubpilot_hub.configure") == 1, log[-3000:]
    async with hub.admin() as admin:
        await admin.delete(f"/users/{member}/server")

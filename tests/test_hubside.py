"""The hub-side module in a REAL hub: the access gate at login and spawn, group management left
to hubpilot, the composed pre-spawn hook. Plus configure()'s effect on a traitlets config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from traitlets.config import Config

import hubpilot_hub
from hubpilot.adapters.hub import HubClient
from hubpilot_hub import hooks
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub

ACCESS, ADMINS = "hp-access", "hp-admins"


def _extra(tmp: Path) -> str:
    marker = tmp / "configured-hook-ran"
    return f"""
import pathlib
def _site_hook(spawner):  # a pre_spawn_hook the deployment already had
    pathlib.Path({str(marker)!r}).write_text(spawner.user.name)
c.Spawner.pre_spawn_hook = _site_hook
import hubpilot_hub
def _broken_part(spawner):
    raise RuntimeError("a non-essential part failing")
hubpilot_hub.configure(c, access_groups=[{ACCESS!r}], admin_groups=[{ADMINS!r}],
                       pre_spawn_parts=[("broken", _broken_part)])
"""


@pytest.fixture(scope="module")
async def gated_hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RealHub]:
    from tests.realhub import start_hub

    tmp = tmp_path_factory.mktemp("gated-hub")
    async with start_hub(tmp, extra_config=_extra(tmp)) as hub:
        yield hub


@pytest.fixture
async def hp(gated_hub: RealHub) -> AsyncIterator[HubClient]:
    """The hubpilot service, doing what sync does."""
    async with HubClient(gated_hub.api_url, gated_hub.hubpilot_token) as c:
        yield c


async def _spawn_status(hub: RealHub, user: str) -> int:
    r = await hub.spawn(user)
    return r.status_code


async def _stop(hub: RealHub, user: str) -> None:
    async with hub.admin() as admin:
        await admin.delete(f"/users/{user}/server")
        for _ in range(100):
            s = (await admin.get(f"/users/{user}")).json()["servers"].get("")
            if not s:
                return
            await asyncio.sleep(0.05)


pytestmark = pytest.mark.hub


async def test_outsider_can_neither_log_in_nor_spawn(gated_hub: RealHub, hp: HubClient) -> None:
    name = unique_name("out")
    assert (await gated_hub.login(name)).status_code == 403
    await hp.create_users([name])  # known to the hub, but in no access group
    assert (await gated_hub.login(name)).status_code == 403
    r = await gated_hub.spawn(name)
    assert r.status_code == 403, r.text
    assert "not in any of the groups" in r.json()["message"]


async def test_a_login_under_a_name_sync_never_created_says_to_align_the_names(
        gated_hub: RealHub, hp: HubClient) -> None:
    """A person the authenticator names otherwise than sync (OAuthenticator's username_claim, a
    domain kept or dropped) logs in under a name the hub has no user of: the hub's log says that,
    and what to align, not only 'in none of the access groups' of a person who is in the directory
    group."""
    log = gated_hub.tmp_path / "jupyterhub.log"
    stranger = unique_name("stranger")
    assert (await gated_hub.login(stranger)).status_code == 403
    (line,) = [x for x in log.read_text().splitlines() if f"login refused for {stranger!r}" in x]
    assert f"the hub has no user {stranger!r}" in line and "sync.naming" in line and "username_claim" in line
    # a hub user in no access group is refused as such: no naming hint
    outsider = unique_name("outsider")
    await hp.create_users([outsider])
    assert (await gated_hub.login(outsider)).status_code == 403
    (line,) = [x for x in log.read_text().splitlines() if f"login refused for {outsider!r}" in x]
    assert "in none of the access groups" in line and "sync.naming" not in line


async def test_membership_grants_and_removal_revokes(gated_hub: RealHub, hp: HubClient) -> None:
    name = unique_name("mem")
    await hp.create_users([name])
    await hp.create_group(ACCESS)
    await hp.add_group_members(ACCESS, [name])  # as sync would
    login = await gated_hub.login(name)
    assert login.status_code == 302 and "/hub/" in login.headers["location"]
    assert await _spawn_status(gated_hub, name) in (201, 202)
    # the deployment's own pre_spawn_hook still ran, and the broken part did not block
    assert (gated_hub.tmp_path / "configured-hook-ran").read_text() == name
    assert "a non-essential part failing" in (gated_hub.tmp_path / "jupyterhub.log").read_text()
    await _stop(gated_hub, name)

    await hp.remove_group_members(ACCESS, [name])
    r = await gated_hub.spawn(name)
    assert r.status_code == 403, r.text
    assert (await gated_hub.login(name)).status_code == 403


async def test_login_keeps_groups(gated_hub: RealHub, hp: HubClient) -> None:
    name, other = unique_name("keep"), unique_name("grp")
    await hp.create_users([name])
    await hp.create_group(ACCESS)
    await hp.create_group(other)
    await hp.add_group_members(ACCESS, [name])
    await hp.add_group_members(other, [name])
    assert (await gated_hub.login(name)).status_code == 302
    user = await hp.get_user(name)
    assert user is not None and user.groups == {ACCESS, other}


async def test_admin_group_members_are_admins(gated_hub: RealHub, hp: HubClient) -> None:
    name = unique_name("boss")
    await hp.create_users([name])
    await hp.add_group_members(ADMINS, [name])  # the group exists: configure bound it to admin
    assert (await gated_hub.login(name)).status_code == 302
    async with gated_hub.admin() as admin:
        group = (await admin.get(f"/groups/{ADMINS}")).json()
        assert group["roles"] == ["admin"]
        r = await admin.post(f"/users/{name}/tokens", json={"note": "t"})
        token = r.json()["token"]
    async with gated_hub.client(token) as as_boss:  # admin scopes through the group's role
        assert (await as_boss.get("/users")).status_code == 200
    await hp.remove_group_members(ADMINS, [name])  # revoked at once, no login needed
    async with gated_hub.client(token) as as_boss:
        assert (await as_boss.get("/users")).status_code == 403
    # the admin flag is left alone: set at login it would outlive the membership (a non-admin
    # caller cannot clear it), so admin rights come from the group's role only
    assert (await hp.get_user(name)).admin is False  # type: ignore[union-attr]


# ---------------------------------------------------------------------- configure() on a Config


@pytest.fixture
def clean_hooks() -> AsyncIterator[None]:
    saved = list(hooks._PARTS)
    hooks._PARTS.clear()
    yield
    hooks._PARTS[:] = saved


def test_configure_sets_hub_config(clean_hooks: None) -> None:
    c = Config()
    c.JupyterHub.load_roles = [{"name": "admin", "services": ["x"]}]
    gate = hubpilot_hub.configure(c, access_groups=["a"], admin_groups=["adm"])
    assert c.Authenticator.manage_groups is False
    assert c.Authenticator.allow_all is True
    assert "admin_users" not in c.Authenticator
    assert c.JupyterHub.load_roles == [{"name": "admin", "services": ["x"], "groups": ["adm"]}]
    assert c.JupyterHub.load_groups == {"adm": {}}
    assert c.Spawner.pre_spawn_hook is hooks.pre_spawn_hook
    assert hooks.registered_parts() == [("access", True)]
    assert gate.allows(["adm"]) and gate.allows(["a", "z"]) and not gate.allows(["z"])
    # twice: nothing doubles
    hubpilot_hub.configure(c, access_groups=["a"], admin_groups=["adm"])
    assert hooks.registered_parts() == [("access", True)]
    assert c.JupyterHub.load_roles[0]["groups"] == ["adm"]


def test_configure_keeps_allow_all_and_existing_hooks(clean_hooks: None) -> None:
    c = Config()
    c.Authenticator.allow_all = False

    def site(spawner: object) -> None: ...

    c.KubeSpawner.pre_spawn_hook = site
    hooks.register_pre_spawn(lambda s: None, name="gpu-demand")
    hubpilot_hub.configure(c, access_groups=["a"])
    assert c.Authenticator.allow_all is False
    assert c.KubeSpawner.pre_spawn_hook is hooks.pre_spawn_hook
    # the documented order: the access check, the configured hooks, then the features' parts
    assert hooks.registered_parts() == [
        ("access", True), ("configured:KubeSpawner", True), ("gpu-demand", False),
    ]


def test_configure_refuses_admin_users_and_empty_groups(clean_hooks: None) -> None:
    c = Config()
    c.Authenticator.admin_users = {"root"}
    with pytest.raises(hubpilot_hub.ConfigurationError, match=r"remove Authenticator\.admin_users"):
        hubpilot_hub.configure(c, access_groups=["a"])
    with pytest.raises(ValueError, match="access_groups is empty"):
        hubpilot_hub.configure(Config(), access_groups=[])
    with pytest.raises(hubpilot_hub.ConfigurationError, match="lists of group names"):
        hubpilot_hub.configure(Config(), access_groups="analysts")


async def test_composed_hook_order_and_failures(clean_hooks: None) -> None:
    ran: list[str] = []

    async def async_part(spawner: object) -> None:
        ran.append("async")

    def broken(spawner: object) -> None:
        ran.append("broken")
        raise RuntimeError("x")

    hooks.register_pre_spawn(lambda s: ran.append("first"), name="first")
    hooks.register_pre_spawn(broken, name="broken")
    hooks.register_pre_spawn(async_part, name="async")
    await hooks.pre_spawn_hook(object())
    assert ran == ["first", "broken", "async"]

    def essential(spawner: object) -> None:
        raise PermissionError("no")

    hooks.register_pre_spawn(essential, name="essential", essential=True, first=True)
    with pytest.raises(PermissionError):
        await hooks.pre_spawn_hook(object())
    with pytest.raises(TypeError):
        hooks.register_pre_spawn("nope", name="bad")  # type: ignore[arg-type]





async def test_hub_refuses_to_start_with_admin_users(hub_factory: Callable[..., Awaitable[RealHub]]) -> None:
    """In a real hub, the conflicting config stops start-up with a message that says what to fix
    (and the test bed cleans up after a failed start)."""
    extra = """
c.Authenticator.admin_users = {"root"}
import hubpilot_hub
hubpilot_hub.configure(c, access_groups=["hp-access"])
"""
    with pytest.raises(RuntimeError, match=r"remove Authenticator\.admin_users"):
        await hub_factory(extra_config=extra)

"""Cull with the smaller role docs/hub-scopes.md offers a cull-and-scale deployment
(``list:users, read:servers, delete:servers``: ``FEATURE_SCOPES["cull"]``), on a real hub.

That role does not read users' groups: JupyterHub leaves the ``groups`` field out of the user
model (``read:users:groups``), it does not send an empty list. A policy matching hub groups
must then not quietly fall back to the default limits (a group exempt from culling would have
its servers stopped after the default timeout): the round fails before anything is stopped,
and says which scope to grant."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from hubpilot.adapters.hub import HubClient
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.config.cull import CullSettings
from hubpilot.cull import CullCapability
from hubpilot.loop import Outcome, Runner, Status
from hubpilot_hub.scopes import FEATURE_SCOPES
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub, ServiceSpec, drop_one_services
from tests.test_cull_realhub import hub_user, make_user, running

pytestmark = pytest.mark.hub

CULL_AND_SCALE_ROLE = FEATURE_SCOPES["cull"]


async def test_group_policies_without_read_groups_fail_the_round_and_stop_nothing(
    hub_factory: Callable[..., Awaitable[RealHub]], tmp_path: Path
) -> None:
    hub = await hub_factory(hubpilot_scopes=CULL_AND_SCALE_ROLE)
    name = unique_name("research")
    await make_user(hub, name, groups=("research-gpu",))
    await hub.spawn(name)
    settings = CullSettings(
        inactivity_timeout=3600,
        policies=[{"name": "research", "match_group": "research-*", "inactivity_timeout": 0}],
    )
    now = datetime.now(UTC) + timedelta(hours=2)
    async with HubClient(hub.api_url, hub.hubpilot_token, retries=0) as client:
        cap = CullCapability(client, settings)
        record = await Runner(SqliteStore(tmp_path / "state.db"), clock=lambda: now).run(
            cap, trigger="test", actor="test")
        assert record.outcome is Outcome.FAILED, record.render()
        assert record.results == []
        assert "read:users:groups" in record.render()
        assert "research" in record.render()
        assert running(await hub_user(hub, name)) == {""}  # the exempt group's server runs on

        # without a group policy the same role culls as before (each stop reads its user again)
        plain = CullCapability(client, CullSettings(inactivity_timeout=3600))
        done = await Runner(SqliteStore(tmp_path / "state.db"), clock=lambda: now).run(
            plain, trigger="test", actor="test")
        assert [(r.action.target, r.status) for r in done.results] == [(name, Status.DONE)], done.render()
        assert running(await hub_user(hub, name)) == set()


async def test_without_read_users_the_plan_says_users_creation_times_are_unread(
    hub_factory: Callable[..., Awaitable[RealHub]], tmp_path: Path
) -> None:
    """That role leaves ``created`` out of the user model too (``read:users``): a user who was
    never active then has no time to judge, and ``cull.max_age`` cannot apply to users. The plan
    reported nothing and said nothing; it now names the scope to grant and the users unjudged."""
    hub = await hub_factory(hubpilot_scopes=CULL_AND_SCALE_ROLE)
    name = unique_name("never")
    await make_user(hub, name)
    assert (await hub_user(hub, name))["last_activity"] is None  # never active: only `created` dates them
    now = datetime.now(UTC) + timedelta(days=3)
    settings = CullSettings(inactivity_timeout=3600, max_age=86400, cull_users=True)
    async with HubClient(hub.api_url, hub.hubpilot_token, retries=0) as client:
        record = await Runner(SqliteStore(tmp_path / "state.db"), clock=lambda: now).run(
            CullCapability(client, settings), trigger="test", actor="test", dry_run=True)
    assert record.outcome is Outcome.PLANNED and record.plan is not None, record.render()
    notes = [n for n in record.plan.notes if "read:users" in n and "created" in n]
    assert len(notes) == 1 and name in notes[0] and "max_age" in notes[0], record.plan.notes


async def test_each_scope_of_the_documented_cull_role_is_needed_by_a_cull_round(
    hub_factory: Callable[..., Awaitable[RealHub]], tmp_path: Path
) -> None:
    """docs/hub-scopes.md gives cull's scopes (FEATURE_SCOPES["cull"]) in the hub's finest terms:
    each is needed, a service holding the others cannot stop an idle server. The role named
    read:users:activity, which no request of a server cull needs (a server's last_activity comes
    with read:servers), so a cull-only deployment granted a scope it did not need."""
    cull_role = FEATURE_SCOPES["cull"]
    hub = await hub_factory(hubpilot_scopes=cull_role, services=drop_one_services(cull_role))
    name = unique_name("idle")
    await make_user(hub, name)
    await hub.spawn(name)
    now = datetime.now(UTC) + timedelta(hours=2)
    settings = CullSettings(inactivity_timeout=3600)
    for service in drop_one_services(cull_role):
        async with HubClient(hub.api_url, hub.tokens[service.name], retries=0) as reduced:
            record = await Runner(SqliteStore(tmp_path / f"{service.name}.db"), clock=lambda: now).run(
                CullCapability(reduced, settings), trigger="test", actor="test")
        assert record.outcome is Outcome.FAILED, (service.scopes, record.render())
        assert running(await hub_user(hub, name)) == {""}, service.scopes
    async with HubClient(hub.api_url, hub.hubpilot_token, retries=0) as client:
        record = await Runner(SqliteStore(tmp_path / "state.db"), clock=lambda: now).run(
            CullCapability(client, settings), trigger="test", actor="test")
    assert [(r.action.target, r.status) for r in record.results] == [(name, Status.DONE)], record.render()
    assert running(await hub_user(hub, name)) == set()


async def test_cull_deletes_users_with_the_documented_deletion_scope_and_cannot_create_users(
    hub_factory: Callable[..., Awaitable[RealHub]], tmp_path: Path
) -> None:
    """cull.delete_users on the smaller role: docs/hub-scopes.md adds read:users (the users'
    created time) and FEATURE_SCOPES["delete_users"]. That named admin:users, which also lets the
    service create, rename and modify users; DELETE /users/{name} needs delete:users alone."""
    role = sorted({*FEATURE_SCOPES["cull"], "read:users", *FEATURE_SCOPES["delete_users"]})
    hub = await hub_factory(hubpilot_scopes=role,
                            services=[ServiceSpec("without-deletion", [s for s in role if s != "delete:users"])])
    name = unique_name("gone")
    await make_user(hub, name)
    now = datetime.now(UTC) + timedelta(days=3)
    settings = CullSettings(inactivity_timeout=3600, cull_users=True, delete_users=True)
    store = SqliteStore(tmp_path / "state.db")
    async with HubClient(hub.api_url, hub.tokens["without-deletion"], retries=0) as reduced:
        refused = await Runner(store, clock=lambda: now).run(
            CullCapability(reduced, settings, store=store), trigger="test", actor="test")
    assert [r.status for r in refused.results] == [Status.FAILED], refused.render()
    async with HubClient(hub.api_url, hub.hubpilot_token, retries=0) as client:
        record = await Runner(store, clock=lambda: now).run(
            CullCapability(client, settings, store=store), trigger="test", actor="test")
        assert [(r.action.target, r.status) for r in record.results] == [(name, Status.DONE)], record.render()
        assert await client.get_user(name) is None
    # least privilege: the role deletes users, it does not create them (admin:users would)
    async with httpx.AsyncClient(headers={"Authorization": f"token {hub.hubpilot_token}"}) as http:
        created = await http.post(f"{hub.api_url}/users/{unique_name('new')}")
    assert created.status_code == 403, created.text

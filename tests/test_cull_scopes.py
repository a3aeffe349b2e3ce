"""Cull with the smaller role docs/hub-scopes.md offers a cull-and-scale deployment
(``list:users, read:users:activity, read:servers, delete:servers``), on a real hub.

That role does not read users' groups: JupyterHub leaves the ``groups`` field out of the user
model (``read:users:groups``), it does not send an empty list. A policy matching hub groups
must then not quietly fall back to the default limits (a group exempt from culling would have
its servers stopped after the default timeout): the round fails before anything is stopped,
and says which scope to grant."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hubpilot.adapters.hub import HubClient
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.config.cull import CullSettings
from hubpilot.cull import CullCapability
from hubpilot.loop import Outcome, Runner, Status
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub
from tests.test_cull_realhub import hub_user, make_user, running

pytestmark = pytest.mark.hub

CULL_AND_SCALE_ROLE = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


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

"""The cull capability at points a mutation review found unheld, on the real hub of
``tests/test_cull_realhub.py`` (real JupyterHub, real single-user servers)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.hub import HubClient
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.config.cull import CullSettings
from hubpilot.cull import CullCapability, CullObserved
from hubpilot.cull.capability import STOP_REPORTS
from hubpilot.loop import Plan, Status, no_progress
from hubpilot.ports.hub import HubError
from hubpilot.ports.store import StoreError
from hubpilot.sync.capability import MANAGED_KEY
from hubpilot.sync.plan import ManagedUser
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub
from tests.test_cull_realhub import (  # noqa: F401 (fixtures)
    cull_hub,
    hub_client,
    hub_user,
    make_user,
    running,
    wait_for,
)

pytestmark = pytest.mark.hub


async def _round_for(cap: CullCapability, *names: str) -> tuple[CullObserved, Plan, Plan]:
    """One observe and a plan three hours on (everyone's activity long past), and that plan
    narrowed to the actions on ``names`` (the module's hub holds other tests' users too)."""
    observed = await cap.observe()
    plan = cap.plan(observed, datetime.now(UTC) + timedelta(hours=3))
    return observed, plan, Plan.build("cull", [a for a in plan.actions if a.target in names], facts=plan.facts)


async def test_a_user_sync_has_deprovisioned_is_deleted_and_a_member_it_manages_is_kept(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path  # noqa: F811 (the imported fixtures)
) -> None:
    """docs/cull.md: cull keeps every user sync manages as an active member; a user sync has
    deprovisioned (they left the directory's groups) is deleted as before. Both long-inactive."""
    member, leaver = unique_name("member"), unique_name("leaver")
    for name in (member, leaver):
        await make_user(cull_hub, name)
    store = SqliteStore(tmp_path / "state.db")
    since = datetime(2026, 1, 5, tzinfo=UTC)
    await store.put(MANAGED_KEY, {"users": {
        member: ManagedUser(since).to_json(),
        leaver: ManagedUser(since, deprovisioned_at=since + timedelta(days=1)).to_json()}})
    try:
        cap = CullCapability(hub_client, CullSettings(cull_users=True, delete_users=True), store)
        observed, plan, mine = await _round_for(cap, member, leaver)
        assert [(a.kind, a.target) for a in mine.actions] == [("delete_user", leaver)], plan.render()
        assert any(n.startswith(f"kept long-inactive user {member}:") and "sync manages them" in n
                   for n in plan.notes), plan.notes
        (result,) = await cap.apply(mine, observed, no_progress)
        assert result.status is Status.DONE, result
        async with cull_hub.admin() as admin:
            assert (await admin.get(f"/users/{leaver}")).status_code == 404
            assert (await admin.get(f"/users/{member}")).status_code == 200
    finally:
        await store.close()


@pytest.mark.parametrize("store_state", ["damaged", "no store"])
async def test_when_syncs_users_cannot_be_known_no_user_is_deleted(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path, store_state: str  # noqa: F811 (the fixtures)
) -> None:
    """docs/cull.md: when sync's managed users cannot be read (a damaged document) no user is
    deleted that round, and a note says why; without a state store sync's users are unknown too.
    Unknown is not "sync manages nobody": the deletion is held also when the plan is applied."""
    name = unique_name("unknown")
    await make_user(cull_hub, name)
    store = SqliteStore(tmp_path / "state.db") if store_state == "damaged" else None
    if store is not None:
        await store.put(MANAGED_KEY, {"users": {name: "not a record"}})
    try:
        cap = CullCapability(hub_client, CullSettings(cull_users=True, delete_users=True), store)
        observed = await cap.observe()
        plan = cap.plan(observed, datetime.now(UTC) + timedelta(hours=3))
        assert not [a for a in plan.actions if a.target == name], plan.render()
        why = "damaged" if store is not None else "no state store"
        assert any(n.startswith("no user is deleted this round:") and why in n for n in plan.notes), plan.notes
        # a deletion planned from an earlier reading (an approved plan) is held at the deletion too
        earlier = replace(observed, sync_members=frozenset(), sync_unknown="")
        held = Plan.build("cull", [a for a in cap.plan(earlier, datetime.now(UTC) + timedelta(hours=3)).actions
                                   if a.target == name])
        assert [a.kind for a in held.actions] == ["delete_user"]
        (result,) = await cap.apply(held, observed, no_progress)
        assert result.status is Status.SKIPPED and why in result.detail, result
        async with cull_hub.admin() as admin:
            assert (await admin.get(f"/users/{name}")).status_code == 200
    finally:
        if store is not None:
            await store.close()


async def test_a_user_whose_spawn_is_pending_at_the_deletion_is_not_deleted(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path  # noqa: F811 (the imported fixtures)
) -> None:
    """A long-inactive user who starts a server after the round's reading, whose spawn is still
    pending when the deletion comes (an image pull, a node scale-up): the hub's DELETE /users would
    cancel the spawn and delete the user. The user read again has a started server: skipped."""
    name = unique_name("slowstart")  # the module's spawner keeps this spawn pending for 30 s
    await make_user(cull_hub, name)
    store = SqliteStore(tmp_path / "state.db")  # sync manages nobody
    try:
        cap = CullCapability(hub_client, CullSettings(cull_users=True, delete_users=True), store)
        observed, _, mine = await _round_for(cap, name)
        assert [(a.kind, a.target) for a in mine.actions] == [("delete_user", name)]
        r = await cull_hub.spawn(name, wait=False)
        assert r.status_code == 202, r.text

        async def pending() -> bool:
            return (await hub_user(cull_hub, name))["servers"].get("", {}).get("pending") == "spawn"

        await wait_for(pending)
        (result,) = await cap.apply(mine, observed, no_progress)
        assert result.status is Status.SKIPPED, result
        assert result.detail == f"started {name} since the round's reading", result.detail
        assert (await hub_user(cull_hub, name))["servers"][""]["pending"] == "spawn"
    finally:
        await store.close()


async def test_a_server_stopped_again_after_a_restart_is_reported_stopped_again(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path  # noqa: F811 (the imported fixtures)
) -> None:
    """The record that lets one of two runs at once report a stop (``cull/stops/``) is per start of
    the server: the same user's server, idle again after a restart, is reported stopped again
    (done), not as stopped by another run, within the records' two days."""
    name = unique_name("twice")
    await make_user(cull_hub, name)
    store = SqliteStore(tmp_path / "state.db")
    try:
        cap = CullCapability(hub_client, CullSettings(inactivity_timeout=3600), store)
        for _ in range(2):
            await cull_hub.spawn(name)
            observed, plan, mine = await _round_for(cap, name)
            assert [a.kind for a in mine.actions] == ["stop_server"], plan.render()
            (result,) = await cap.apply(mine, observed, no_progress)
            assert (result.status, result.detail) == (Status.DONE, "stopped"), result
            assert running(await hub_user(cull_hub, name)) == set()
    finally:
        await store.close()


async def test_a_user_whose_server_is_still_stopping_is_not_deleted_and_says_so(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path  # noqa: F811 (the imported fixtures)
) -> None:
    """A long-inactive user's idle server is stopped and the user deleted in one round; the stop
    takes longer than the hub's slow_stop_timeout (202: pending). The deletion waits for a later
    round, and says why: the server has not stopped (not that the user started one)."""
    name = unique_name("slow")  # the module's spawner takes longer to stop than slow_stop_timeout
    await make_user(cull_hub, name)
    await cull_hub.spawn(name)
    store = SqliteStore(tmp_path / "state.db")  # sync manages nobody
    try:
        cap = CullCapability(hub_client, CullSettings(cull_users=True, delete_users=True), store)
        observed, _, mine = await _round_for(cap, name)
        assert [a.kind for a in mine.actions] == ["stop_server", "delete_user"], mine.actions
        stop, deletion = await cap.apply(mine, observed, no_progress)
        assert stop.status is Status.PENDING, stop
        assert (deletion.status, deletion.detail) == (Status.SKIPPED, "a server of this user has not stopped")
        assert await hub_user(cull_hub, name)
    finally:
        await store.close()


async def test_a_hub_that_refuses_the_reading_is_no_outage(
    cull_hub: RealHub, tmp_path: Path  # noqa: F811 (the imported fixture)
) -> None:
    """Only a hub that does not answer, or answers 5xx, is an outage (``hub/outage``: the rounds
    after it judge no activity for a while). A hub that answers 403 (a token without the role, a
    scope missing) fails the round but is up: its servers' activity reports reach it, and the
    round after the fix judges activity at once."""
    store = SqliteStore(tmp_path / "state.db")
    hub = HubClient(cull_hub.api_url, "not-a-token", retries=0)
    try:
        cap = CullCapability(hub, CullSettings(), store)
        with pytest.raises(HubError) as err:
            await cap.observe()
        assert err.value.status == 403, err.value
        assert await store.get("hub/outage") is None
    finally:
        await hub.close()
        await store.close()


@pytest.mark.parametrize("delete_users", [False, True])
async def test_after_a_hub_outage_a_round_that_also_judges_users_stops_and_deletes_nothing_for_inactivity(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path, delete_users: bool  # noqa: F811 (the fixtures)
) -> None:
    """docs/cull.md: after a round found the hub unreachable (``hub/outage``), the rounds stop
    nothing and delete no user for inactivity until the activity reports have caught up; also
    with ``cull.cull_users`` (and ``cull.delete_users``) on, whose reading is a different one."""
    busy, away = unique_name("busy"), unique_name("away")
    for name in (busy, away):
        await make_user(cull_hub, name)
    await cull_hub.spawn(busy)
    now = datetime.now(UTC) + timedelta(minutes=90)  # the server idle past the hour by its last report
    store = SqliteStore(tmp_path / "state.db")  # sync manages nobody
    try:
        await store.put("hub/outage", {"last_failure": (now - timedelta(minutes=1)).isoformat()})
        settings = CullSettings(inactivity_timeout=3600, cull_users=True, delete_users=delete_users)
        cap = CullCapability(hub_client, settings, store, clock=lambda: now)
        observed = await cap.observe()
        assert observed.catch_up == (now, now + timedelta(seconds=settings.activity_lag))
        plan = cap.plan(observed, now)
        assert not [a for a in plan.actions if a.target in (busy, away)], plan.render()
        assert any(n.startswith(f"kept {busy}:") and "the hub was unreachable" in n for n in plan.notes), plan.notes
    finally:
        await store.close()


class StopReportsDown(SqliteStore):
    """The state store fails to write the stop records (a Storage outage), nothing else."""

    async def put(self, key: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> str:
        if key.startswith(STOP_REPORTS):
            raise StoreError("Azure Storage: cannot write document: HTTP 503 ServerBusy")
        return await super().put(key, doc, if_match=if_match)


async def test_a_stop_whose_record_cannot_be_written_is_still_reported_done(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path  # noqa: F811 (the imported fixtures)
) -> None:
    """The stop record only tells two runs at once apart; when the store cannot write it, the stop
    the hub made is reported done (not a no-op: the audit would name no stop)."""
    name = unique_name("storedown")
    await make_user(cull_hub, name)
    await cull_hub.spawn(name)
    store = StopReportsDown(tmp_path / "state.db")
    try:
        cap = CullCapability(hub_client, CullSettings(inactivity_timeout=3600), store)
        observed, _, mine = await _round_for(cap, name)
        (result,) = await cap.apply(mine, observed, no_progress)
        assert (result.status, result.detail) == (Status.DONE, "stopped"), result
        assert running(await hub_user(cull_hub, name)) == set()
    finally:
        await store.close()

"""Mutation review of the sync capability (observe → plan → guard → apply → record): behaviour the
other sync tests left unpinned, against the session's real JupyterHub."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import Outcome, Status
from hubpilot.sync import MANAGED_KEY
from hubpilot.sync.capability import audited_approval
from tests.fixtures.syncworld import World
from tests.realhub import RealHub
from tests.test_sync_real import FlakyFront

pytestmark = pytest.mark.hub


async def test_a_leaver_whose_removal_from_a_group_fails_is_not_recorded_deprovisioned(
        real_hub: RealHub, tmp_path: Path) -> None:
    """A leaver is recorded deprovisioned only once every step of their removal took place: the
    next run plans only for active records, so one recorded while still in a hub group would keep
    what the group grants for good. Not recorded, the next run takes them out and records them."""
    async with FlakyFront(real_hub.api_url) as front:
        world = World(real_hub, tmp_path, hub_api=front.api_url)
        try:
            world.set("analysts", "alice", "bob")
            assert (await world.run()).outcome is Outcome.APPLIED
            world.set("analysts", "alice")  # bob left
            front.fail_prefixes = [f"DELETE /groups/{world.prefix}analysts/users"]
            record = await world.run()
            assert record.outcome is Outcome.FAILED, record.render()
            by_kind = {r.action.kind: r for r in record.results}
            assert by_kind["remove_from_group"].status is Status.FAILED, record.render()
            assert by_kind["deprovision"].status is Status.FAILED, record.render()
            assert "not recorded" in by_kind["deprovision"].detail
            managed = (await world.store.get(MANAGED_KEY))["users"]
            assert managed[world.user("bob")]["deprovisioned_at"] is None
            front.fail_prefixes = []
            again = await world.run()
            assert again.outcome is Outcome.APPLIED, again.render()
            assert again.plan is not None and again.plan.counts() == {"remove_from_group": 1, "revoke_tokens": 1,
                                                                "deprovision": 1}
            assert (await world.hub_state())["groups"][f"{world.prefix}analysts"] == [world.user("alice")]
            managed = (await world.store.get(MANAGED_KEY))["users"]
            assert managed[world.user("bob")]["deprovisioned_at"] is not None
            assert (await world.run()).plan.counts() == {}
        finally:
            await world.close()


async def test_a_deletion_the_hub_made_already_is_recorded_and_not_planned_again(world: World) -> None:
    """sync.delete_users: a leaver whose hub user is gone already (deleted by hand, or by a run that
    failed before recording it) is recorded as deleted from the hub's 'no such user' (a noop), once;
    the next plan is empty, and their removal still counts in the window."""
    world.policy = world.policy.model_copy(update={"delete_users": True, "delete_grace_hours": 0})
    world.set("analysts", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    world.set("analysts", "alice")
    assert (await world.run()).outcome is Outcome.APPLIED  # bob deprovisioned
    async with world.hub.admin() as admin:
        assert (await admin.delete(f"/users/{world.user('bob')}")).status_code == 204
    record = await world.run()
    assert record.outcome is Outcome.APPLIED, record.render()
    assert [(r.action.kind, r.status) for r in record.results] == [("delete_user", Status.NOOP)], record.render()
    doc = await world.store.get(MANAGED_KEY)
    assert world.user("bob") not in doc["users"] and world.user("bob") in doc["deleted"]
    again = await world.run()
    assert again.plan is not None and again.plan.counts() == {}, again.render()
    assert again.plan.facts["recent_removals"] == 1


async def test_a_leaver_the_hub_cannot_take_out_of_a_group_is_not_recorded_deprovisioned(tmp_path: Path) -> None:
    """The hub's username_map gained bob → robert, sync.naming not (the hub admin changed only the
    authenticator): the hub looks bob up as robert and cannot take bob out of the group. The hub
    client names bob; the removal fails and bob's deprovisioning is not recorded (recorded, no later
    run would take bob out: he would keep the group for good)."""
    from tests.realhub import start_hub

    async with start_hub(tmp_path / "hub") as hub:
        world = World(hub, tmp_path, group_prefix="u-")
        try:
            world.people = {p: {"username": p, "name": p.title()} for p in ("bob", "carl")}
            world.groups["analysts"] = ["bob", "carl"]
            world.write()
            assert (await world.run()).outcome is Outcome.APPLIED
        finally:
            await world.close()
    async with start_hub(tmp_path / "hub", extra_config='c.Authenticator.username_map = {"bob": "robert"}') as hub:
        world = World(hub, tmp_path, group_prefix="u-")
        try:
            world.people = {p: {"username": p, "name": p.title()} for p in ("bob", "carl")}
            world.groups["analysts"] = ["carl"]  # bob left
            world.write()
            record = await world.run()
            assert record.outcome is Outcome.FAILED, record.render()
            by_kind = {r.action.kind: r for r in record.results}
            assert by_kind["remove_from_group"].status is Status.FAILED, record.render()
            assert "robert" in by_kind["remove_from_group"].detail, record.render()
            assert by_kind["deprovision"].status is Status.FAILED, record.render()
            assert (await world.store.get(MANAGED_KEY))["users"]["bob"]["deprovisioned_at"] is None
            async with hub.admin() as admin:
                assert sorted((await admin.get("/groups/u-analysts")).json()["users"]) == ["bob", "carl"]
        finally:
            await world.close()


async def test_a_leavers_admin_flag_that_fails_to_clear_for_another_reason_keeps_them_unrecorded(
        real_hub: RealHub, tmp_path: Path) -> None:
    """Flag mode: only the hub's refusal to let a non-admin clear an admin flag (403 "Only admins
    can ...") lets a leaver be recorded deprovisioned with the flag still on. Any other failure (the
    hub restarting) leaves the record active: the next run clears the flag and records them."""
    async with FlakyFront(real_hub.api_url) as front:
        world = World(real_hub, tmp_path, hub_api=front.api_url, admin_mode="flag")
        try:
            world.set("analysts", "alice", "bob")
            assert (await world.run()).outcome is Outcome.APPLIED
            bob = world.user("bob")
            async with real_hub.admin() as admin:  # set by hand
                assert (await admin.patch(f"/users/{bob}", json={"admin": True})).status_code == 200
            world.set("analysts", "alice")
            front.fail_prefixes = [f"PATCH /users/{bob}"]
            record = await world.run()
            by_kind = {r.action.kind: r for r in record.results}
            assert by_kind["revoke_admin"].status is Status.FAILED and "503" in by_kind["revoke_admin"].detail
            assert by_kind["deprovision"].status is Status.FAILED, record.render()
            assert "not recorded" in by_kind["deprovision"].detail, record.render()
            assert (await world.store.get(MANAGED_KEY))["users"][bob]["deprovisioned_at"] is None
        finally:
            await world.close()


@pytest.mark.parametrize("outcome", ["failed", "refused"])
async def test_an_approval_that_was_not_applied_accepts_no_removals(tmp_path: Path, outcome: str) -> None:
    """The audit's approval of a plan refused for its removals restarts the removal window's count
    only when that approved run applied: an approval whose run failed, or was refused (the plan had
    changed), accepted nothing, and the removals since still count."""
    from tests.test_upgrade_state import captured

    doc = captured("sync_approved_removals.json", tag="t-approval", age=timedelta(hours=1))
    store = SqliteStore(str(tmp_path / "state.sqlite3"))
    try:
        approval = next(e for e in doc["audit"] if e["trigger"] == "approval")
        await store.append_audit({**approval, "outcome": outcome})
        assert await audited_approval(store, datetime.now(UTC) - timedelta(hours=24)) is None
        await store.append_audit(approval)  # as applied: found
        assert await audited_approval(store, datetime.now(UTC) - timedelta(hours=24)) == \
            datetime.fromisoformat(approval["at"])
    finally:
        await store.close()

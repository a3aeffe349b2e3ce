"""The sync guard against the real hub: a directory that loses people over several runs stops at
the removal limits (counted over sync.removal_window_hours), and a group answer that loses most
of a mirror's members at once is refused; an approval lets the plan through and restarts the
count. Each refused run leaves the hub as it was."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hubpilot.loop import Outcome
from hubpilot.sync import MANAGED_KEY
from tests.fixtures.syncworld import World
from tests.realhub import RealHub

pytestmark = pytest.mark.hub


async def test_a_gradual_loss_over_several_runs_stops_at_the_limit(real_hub: RealHub, tmp_path: Path) -> None:
    """max_removals = 3: one, then two people leave (3 in the window), each run under the limit;
    the run that removes one more (4 in all) is refused and changes nothing, dry-run shows the same
    refusal, the audit records it. The admin approves it; afterwards a routine removal passes."""
    world = World(real_hub, tmp_path, max_removals=3)  # the window: its default of 24 h
    try:
        everyone = [f"p{i}" for i in range(8)]
        world.set("analysts", *everyone)
        assert (await world.run()).outcome is Outcome.APPLIED
        for left in (everyone[1:], everyone[3:]):
            world.set("analysts", *left)
            record = await world.run()
            assert record.outcome is Outcome.APPLIED, record.render()
        before = await world.hub_state()

        world.set("analysts", *everyone[4:])  # p3 leaves: the fourth removal in the window
        dry = await world.run(dry_run=True)
        assert dry.outcome is Outcome.REFUSED, dry.render()
        refused = await world.run()
        assert refused.outcome is Outcome.REFUSED, refused.render()
        assert refused.plan is not None and refused.plan.counts()["deprovision"] == 1
        assert refused.refusal == dry.refusal
        (reason,) = refused.refusal
        assert reason.startswith("the plan removes 1 users and sync removed 3 in the last 24 h "
                                 "(sync.removal_window_hours): 4 in all, more than sync.max_removals = 3"), reason
        assert f"approve the plan {refused.plan.id}" in reason
        assert refused.approval == (f"hubpilot approve {refused.plan.id}, "
                                    f"or POST /api/v1/plans/{refused.plan.id}/approve")
        assert await world.hub_state() == before  # p3 still a hub user in the group
        managed = (await world.store.get(MANAGED_KEY) or {})["users"]
        assert managed[world.user("p3")]["deprovisioned_at"] is None
        entries, _ = await world.store.read_audit(operation="sync", limit=20)
        audited = [e for e in entries if e.get("plan_id") == refused.plan.id and not e.get("dry_run")]
        assert [e["outcome"] for e in audited] == ["refused"] and audited[0]["refusal"] == [reason]

        approved = await world.runner().approve(world.capability(), refused.plan.id, actor="admin")
        assert approved.outcome is Outcome.APPLIED, approved.render()
        state = await world.hub_state()
        assert state["groups"][f"{world.prefix}analysts"] == sorted(world.user(s) for s in everyone[4:])
        assert (await world.store.get(MANAGED_KEY) or {}).get("removals_approved_at")

        world.set("analysts", *everyone[5:])  # a routine removal after the approval: counted afresh
        after = await world.run()
        assert after.outcome is Outcome.APPLIED, after.render()
        assert after.plan is not None and after.plan.facts["recent_removals"] == 0
    finally:
        await world.close()


async def test_a_partly_hidden_group_answer_is_refused_and_changes_nothing(
        real_hub: RealHub, tmp_path: Path) -> None:
    """8 of 10 analysts are in gpu; an answer that shows only 2 of them would take 6 people out of
    the mirror (75 %, over 20 % and over the floor of 5) while they stay hub users: refused."""
    world = World(real_hub, tmp_path, max_removal_percent=20.0)
    try:
        everyone = [f"p{i}" for i in range(10)]
        world.set("analysts", *everyone)
        world.set("gpu", *everyone[:8])
        assert (await world.run()).outcome is Outcome.APPLIED
        before = await world.hub_state()
        world.set("gpu", *everyone[6:8])
        refused = await world.run()
        assert refused.outcome is Outcome.REFUSED, refused.render()
        assert refused.plan is not None and refused.plan.counts() == {"remove_from_group": 6}
        (reason,) = refused.refusal
        assert reason.startswith(f"the plan takes 6 of the 8 members out of hub group {world.prefix}gpu "
                                 "(directory group 'gpu'; 75 %) who stay hub users"), reason
        assert await world.hub_state() == before
    finally:
        await world.close()


@pytest.mark.parametrize("stamp", [5, "after lunch", ["2026-11-25T12:00:00+00:00"]])
async def test_a_damaged_approval_time_fails_the_run_clearly_and_changes_nothing(
        world: World, stamp: object) -> None:
    world.set("analysts", "ann")
    doc = {"users": {}, "removals_approved_at": stamp}
    await world.store.put(MANAGED_KEY, doc)
    record = await world.run()
    assert record.outcome is Outcome.FAILED and record.error and "removals_approved_at" in record.error, \
        record.render()
    assert await world.store.get(MANAGED_KEY) == doc
    assert await world.hub_state() == {"users": {}, "groups": {}}


async def test_an_approval_accepts_removals_stamped_ahead_by_another_instances_clock(
        real_hub: RealHub, tmp_path: Path) -> None:
    """Two instances, one clock 10 minutes ahead: the removals it made carry deprovisioned_at in the
    future of the instance that applies an approval. The approval accepted them (its refusal counted
    them): the next routine removal passes, rather than being refused again for removals approved."""
    world = World(real_hub, tmp_path, max_removals=3)
    try:
        everyone = [f"p{i}" for i in range(10)]
        world.set("analysts", *everyone)
        assert (await world.run()).outcome is Outcome.APPLIED
        world.set("analysts", *everyone[3:])
        assert (await world.run()).outcome is Outcome.APPLIED  # 3 removals, by the instance ahead:
        doc = await world.store.get(MANAGED_KEY) or {}
        ahead = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
        for short in everyone[:3]:
            doc["users"][world.user(short)]["deprovisioned_at"] = ahead
        await world.store.put(MANAGED_KEY, doc)

        world.set("analysts", *everyone[4:])
        refused = await world.run()
        assert refused.outcome is Outcome.REFUSED and refused.plan is not None, refused.render()
        approved = await world.runner().approve(world.capability(), refused.plan.id, actor="admin")
        assert approved.outcome is Outcome.APPLIED, approved.render()

        world.set("analysts", *everyone[5:])  # a routine removal after the approval
        after = await world.run()
        assert after.outcome is Outcome.APPLIED, after.render()
        assert after.plan is not None and after.plan.facts["recent_removals"] == 0
        # the window goes on counting the removals after the approval, though the clock ahead's
        # stamps lie later than them: p4 and three more are 4, over max_removals = 3
        world.set("analysts", *everyone[8:])
        again = await world.run()
        assert again.outcome is Outcome.REFUSED, again.render()
        assert again.plan is not None and again.plan.facts["recent_removals"] == 1
    finally:
        await world.close()


async def test_people_deleted_after_a_short_grace_still_count_in_the_window(
        real_hub: RealHub, tmp_path: Path) -> None:
    """sync.delete_users with a grace (0 h) shorter than the window (24 h): three people leave and
    are deleted at the next run, their records with them. They were removed within the window all
    the same: the run that removes one more (4 in all, max_removals = 3) is refused."""
    world = World(real_hub, tmp_path, max_removals=3, delete_users=True, delete_grace_hours=0.0)
    try:
        everyone = [f"p{i}" for i in range(8)]
        world.set("analysts", *everyone)
        assert (await world.run()).outcome is Outcome.APPLIED
        world.set("analysts", *everyone[3:])
        assert (await world.run()).outcome is Outcome.APPLIED
        deleted = await world.run()
        assert deleted.outcome is Outcome.APPLIED and deleted.plan is not None, deleted.render()
        assert deleted.plan.counts() == {"delete_user": 3}, deleted.render()
        world.set("analysts", *everyone[4:])
        refused = await world.run()
        assert refused.outcome is Outcome.REFUSED, refused.render()
        assert refused.plan is not None and refused.plan.facts["recent_removals"] == 3
        # the approval accepts them: the next routine removal passes
        approved = await world.runner().approve(world.capability(), refused.plan.id, actor="admin")
        assert approved.outcome is Outcome.APPLIED, approved.render()
        assert (await world.run()).outcome is Outcome.APPLIED  # p3 deleted
        world.set("analysts", *everyone[5:])
        after = await world.run()
        assert after.outcome is Outcome.APPLIED, after.render()
        assert after.plan is not None and after.plan.facts["recent_removals"] == 0
    finally:
        await world.close()


async def test_a_group_that_loses_its_members_over_several_runs_stops_at_the_limit(
        real_hub: RealHub, tmp_path: Path) -> None:
    """12 of 12 analysts are in gpu; a group answer that degrades run by run takes 3 of them out
    each time (under the floor of 5, so no single plan is refused). Counted over the window, the
    second run's 6 of 12 (50 %) is over 20 % and over the floor: refused, the hub unchanged. An
    approval lets it through and restarts the count; a later routine removal passes."""
    world = World(real_hub, tmp_path, max_removal_percent=20.0)
    try:
        everyone = [f"p{i:02}" for i in range(12)]
        world.set("analysts", *everyone)
        world.set("gpu", *everyone)
        assert (await world.run()).outcome is Outcome.APPLIED
        world.set("gpu", *everyone[3:])
        first = await world.run()
        assert first.outcome is Outcome.APPLIED, first.render()
        stamped = (await world.store.get(MANAGED_KEY) or {})["group_removed"]
        assert {g: sorted(p) for g, p in stamped.items()} == {
            f"{world.prefix}gpu": sorted(world.user(s) for s in everyone[:3])}
        before = await world.hub_state()

        world.set("gpu", *everyone[6:])
        refused = await world.run()
        assert refused.outcome is Outcome.REFUSED, refused.render()
        assert refused.plan is not None and refused.plan.counts() == {"remove_from_group": 3}
        (reason,) = refused.refusal
        assert reason.startswith(f"the plan takes 3 of the 9 members out of hub group {world.prefix}gpu "
                                 "(directory group 'gpu') and sync took 3 out in the last 24 h "
                                 "(sync.removal_window_hours): 6 of the 12 members then (50 %) who stay hub "
                                 "users"), reason
        assert f"approve the plan {refused.plan.id}" in reason
        assert refused.approval is not None and f"hubpilot approve {refused.plan.id}" in refused.approval
        assert await world.hub_state() == before

        approved = await world.runner().approve(world.capability(), refused.plan.id, actor="admin")
        assert approved.outcome is Outcome.APPLIED, approved.render()
        assert "group_removed" not in (await world.store.get(MANAGED_KEY) or {})  # accepted: the count restarts
        world.set("gpu", *everyone[8:])  # two more after the approval: counted afresh, passes
        after = await world.run()
        assert after.outcome is Outcome.APPLIED, after.render()
        state = await world.hub_state()
        assert state["groups"][f"{world.prefix}gpu"] == sorted(world.user(s) for s in everyone[8:])
    finally:
        await world.close()


async def test_approving_a_group_loss_does_not_restart_the_removal_count(
        real_hub: RealHub, tmp_path: Path) -> None:
    """max_removals = 3: two people leave the hub (2 in the window). A partly hidden gpu answer is
    refused for its group loss alone, and approved: the approval accepted those memberships, not
    the removals its refusal never named. Two more leaving then make 4 removals in the window:
    refused, as without the approval (the audit-based approval time already said so)."""
    world = World(real_hub, tmp_path, max_removals=3, max_removal_percent=25.0)
    try:
        everyone = [f"p{i:02}" for i in range(12)]
        world.set("analysts", *everyone)
        world.set("gpu", *everyone)
        assert (await world.run()).outcome is Outcome.APPLIED
        world.set("analysts", *everyone[2:])
        world.set("gpu", *everyone[2:])
        left = await world.run()
        assert left.outcome is Outcome.APPLIED, left.render()
        assert left.plan is not None and left.plan.counts()["deprovision"] == 2

        world.set("gpu", *everyone[8:])  # 6 of the 10 members out of the mirror: group loss only
        refused = await world.run()
        assert refused.outcome is Outcome.REFUSED, refused.render()
        (reason,) = refused.refusal
        assert reason.startswith(f"the plan takes 6 of the 10 members out of hub group {world.prefix}gpu"), reason
        assert refused.plan is not None
        approved = await world.runner().approve(world.capability(), refused.plan.id, actor="admin")
        assert approved.outcome is Outcome.APPLIED, approved.render()
        assert "group_removed" not in (await world.store.get(MANAGED_KEY) or {})  # the group's count restarts

        world.set("analysts", *everyone[4:])  # two more leave: 4 removals in the window
        after = await world.run()
        assert after.outcome is Outcome.REFUSED, after.render()
        assert after.plan is not None and after.plan.facts["recent_removals"] == 2
        assert any(r.startswith("the plan removes 2 users and sync removed 2 in the last 24 h")
                   for r in after.refusal), after.refusal
    finally:
        await world.close()


async def test_a_paused_run_whose_plan_would_be_refused_says_it_is_not_recorded_for_approval(
        real_hub: RealHub, tmp_path: Path) -> None:
    """The removal refusal tells the admin to approve the plan as the run says; a paused run records
    no plan for approval, so its output says so (resume first) instead of leaving that unsaid."""
    from hubpilot.loop import UnknownPlan

    world = World(real_hub, tmp_path, max_removals=1)
    try:
        everyone = [f"p{i}" for i in range(6)]
        world.set("analysts", *everyone)
        assert (await world.run()).outcome is Outcome.APPLIED
        world.set("analysts", *everyone[1:])
        assert (await world.run()).outcome is Outcome.APPLIED  # one removal: at the limit
        await world.runner().set_paused("sync", True, "admin")
        world.set("analysts", *everyone[2:])  # the second in the window
        paused = await world.run()
        assert paused.outcome is Outcome.PAUSED, paused.render()
        assert paused.plan is not None and paused.approval is None
        assert any("(the run says how)" in r for r in paused.refusal), paused.refusal
        text = paused.render()
        assert "paused: the plan is not recorded for approval" in text, text
        with pytest.raises(UnknownPlan):
            await world.runner().approve(world.capability(), paused.plan.id, actor="admin")
    finally:
        await world.close()


async def test_people_who_left_the_hub_and_are_put_back_in_a_mirror_by_hand_are_no_group_loss(
        real_hub: RealHub, tmp_path: Path) -> None:
    """12 analysts, 8 of them in gpu; 7 of the gpu members leave (deprovisioned). An admin puts the
    7 back in the hub's gpu group by hand: the next run takes them out again (the mirror follows the
    directory), but they left the hub, they are no people who stay hub users losing what gpu grants
    (README: people who left count as removals, not as group losses): 7 of 8 is no group loss to
    refuse, and the run applies. The run after that plans nothing."""
    world = World(real_hub, tmp_path, max_removal_percent=60.0, removal_window_hours=0)
    try:
        everyone = [f"p{i:02}" for i in range(12)]
        world.set("analysts", *everyone)
        world.set("gpu", *everyone[:8])
        assert (await world.run()).outcome is Outcome.APPLIED
        world.set("analysts", *everyone[7:])
        world.set("gpu", everyone[7])
        left = await world.run()
        assert left.outcome is Outcome.APPLIED, left.render()
        assert left.plan is not None and left.plan.counts()["deprovision"] == 7

        gpu = f"{world.prefix}gpu"
        async with real_hub.admin() as admin:
            put = await admin.post(f"/groups/{gpu}/users", json={"users": [world.user(s) for s in everyone[:7]]})
            assert put.status_code == 200, put.text
        again = await world.run()
        assert again.outcome is Outcome.APPLIED, (again.refusal, again.render())
        assert again.plan is not None and again.plan.counts() == {"remove_from_group": 7}
        assert (await world.hub_state())["groups"][gpu] == [world.user(everyone[7])]
        quiet = await world.run()
        assert quiet.plan is not None and quiet.plan.counts() == {}, quiet.render()
    finally:
        await world.close()

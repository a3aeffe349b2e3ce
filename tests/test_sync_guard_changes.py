"""Review of the sync's safety rules against the real hub: configuration changes and directory
events that would touch many people at once are refused by the guard like a mass removal."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hubpilot.config.sync import SyncSettings
from hubpilot.loop import Outcome
from hubpilot.sync import MANAGED_KEY
from tests.fixtures.syncworld import World
from tests.realhub import RealHub

pytestmark = pytest.mark.hub


async def test_a_naming_change_that_renames_everyone_is_refused_by_the_share_limit(
        real_hub: RealHub, tmp_path: Path) -> None:
    """Turning on strip_domain (or any naming change) gives every person a new name: a rename of
    all managed users is refused like their removal would be, though fewer than max_removals."""
    world = World(real_hub, tmp_path, max_removal_percent=20.0)
    try:
        shorts = [f"p{i}" for i in range(5)]
        for s in shorts:
            world.people[s] = {"username": f"{world.user(s)}@example.org"}
        world.groups["analysts"] = shorts
        world.write()
        assert (await world.run()).outcome is Outcome.APPLIED
        world.policy = world.policy.model_copy(
            update={"naming": world.policy.naming.model_copy(update={"strip_domain": True})})
        refused = await world.run()
        assert refused.outcome is Outcome.REFUSED, refused.render()
        assert any("renames 5 of 5 managed users" in r for r in refused.refusal), refused.refusal
        users = (await world.hub_state())["users"]
        assert sorted(users) == sorted(f"{world.user(s)}@example.org" for s in shorts)  # nothing renamed
        assert refused.plan is not None
        approved = await world.runner().approve(world.capability(), refused.plan.id, actor="admin")
        assert approved.outcome is Outcome.APPLIED, approved.render()
        assert sorted((await world.hub_state())["users"]) == sorted(world.user(s) for s in shorts)
    finally:
        await world.close()


async def test_turning_deletion_on_does_not_delete_every_deprovisioned_user_at_once(
        real_hub: RealHub, tmp_path: Path) -> None:
    """Deletion (in z2jh: of the volume too) is the last step of a removal; a plan that deletes more
    users than the removal limits allow is refused, e.g. when sync.delete_users is first turned on
    (or the grace shortened) with many people deprovisioned long ago."""
    world = World(real_hub, tmp_path)
    try:
        world.set("analysts", *[f"p{i}" for i in range(6)])
        assert (await world.run()).outcome is Outcome.APPLIED
        world.set("analysts", "p0")
        assert (await world.run()).outcome is Outcome.APPLIED  # five deprovisioned (limits at 100 % here)
        world.policy = world.policy.model_copy(update={
            "delete_users": True, "delete_grace_hours": 0.0, "max_removals": 3, "max_removal_percent": 20.0})
        refused = await world.run()
        assert refused.outcome is Outcome.REFUSED, refused.render()
        assert refused.plan is not None and refused.plan.counts() == {"delete_user": 5}
        assert any("deletes 5 users" in r for r in refused.refusal), refused.refusal
        assert len((await world.hub_state())["users"]) == 6  # nobody deleted
        approved = await world.runner().approve(world.capability(), refused.plan.id, actor="admin")
        assert approved.outcome is Outcome.APPLIED, approved.render()
        assert list((await world.hub_state())["users"]) == [world.user("p0")]
        assert list((await world.store.get(MANAGED_KEY) or {})["users"]) == [world.user("p0")]
    finally:
        await world.close()


async def test_two_directory_groups_are_never_mirrored_by_one_hub_group(real_hub: RealHub, tmp_path: Path) -> None:
    """'Data Team' and 'data-team' (or cn=staff in two OUs) both become the hub group
    <prefix>data-team: mirrored together, each group's members were taken out of it by the other
    at every run. Such a configuration is refused; sync.group_names tells them apart."""
    world = World(real_hub, tmp_path, users_groups=["Data Team"], admin_groups=[])
    try:
        world.groups = {"Data Team": ["alice"], "data-team": ["bob"]}
        world.set("Data Team", "alice")
        world.set("data-team", "bob")
        assert (await world.run()).outcome is Outcome.APPLIED
        assert (await world.hub_state())["groups"] == {f"{world.prefix}data-team": [world.user("alice")]}
        with pytest.raises(ValidationError, match=r"'Data Team' and 'data-team' would both be mirrored by "
                                                  rf"the hub group '{world.prefix}data-team'.*sync.group_names"):
            SyncSettings(**(world.policy.model_dump() | {"users_groups": ["Data Team", "data-team"]}))
        with pytest.raises(ValidationError, match="would both be mirrored"):
            SyncSettings(users_groups=["cn=staff,ou=physics,dc=example,dc=org"],
                         admin_groups=["cn=staff,ou=chemistry,dc=example,dc=org"])
        world.policy = SyncSettings(**(world.policy.model_dump() | {
            "users_groups": ["Data Team", "data-team"], "group_names": {"data-team": "data-team-2"}}))
        assert (await world.run()).outcome is Outcome.APPLIED
        assert (await world.hub_state())["groups"] == {f"{world.prefix}data-team": [world.user("alice")],
                                                       f"{world.prefix}data-team-2": [world.user("bob")]}
    finally:
        await world.close()


async def test_leaving_the_admin_group_in_role_mode_reports_an_admin_flag_that_stays(
        real_hub: RealHub, tmp_path: Path) -> None:
    """In role mode sync takes a person out of the admin group's mirror; an admin flag set by hand
    (or by flag mode before a switch to role mode) keeps their admin rights, and a least-privilege
    service cannot clear it: the plan says so instead of reporting the rights gone."""
    world = World(real_hub, tmp_path)
    try:
        world.set("analysts", "alice", "bob")
        world.set("admins", "alice", "bob")
        assert (await world.run()).outcome is Outcome.APPLIED
        async with real_hub.admin() as admin:
            r = await admin.patch(f"/users/{world.user('alice')}", json={"admin": True})
            assert r.status_code == 200, r.text
        world.set("admins", "bob")
        record = await world.run()
        assert record.outcome is Outcome.APPLIED and record.plan is not None, record.render()
        assert record.plan.counts() == {"remove_from_group": 1}
        flagged = [n for n in record.plan.notes if "admin flag" in n]
        assert len(flagged) == 1 and flagged[0].startswith(f"{world.user('alice')} left the synced admin groups")
        assert (await world.hub_state())["users"][world.user("alice")]["admin"] is True  # not hubpilot's to clear
    finally:
        await world.close()

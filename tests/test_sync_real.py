"""Sync end to end against the real parts: a real JupyterHub (+ proxy, real single-user servers),
a real slapd, the SQLite store; the CLI host too. Each test uses its own group prefix and store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hubpilot.adapters.ldap import LdapDirectory, normalize_dn
from hubpilot.cull import CullCapability
from hubpilot.loop import Action, LockHeld, Outcome, Plan, Status, no_progress
from hubpilot.ports.hub import HubError
from hubpilot.settings import load_settings
from hubpilot.sync import MANAGED_KEY, SyncObserved
from hubpilot.wiring import Context
from tests.fixtures.hub import unique_name
from tests.fixtures.syncworld import World
from tests.realhub import RealHub

pytestmark = pytest.mark.hub
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)




async def test_first_sync_then_no_change_then_one_addition(world: World) -> None:
    world.set("analysts", "alice", "bob")
    world.set("gpu", "bob")
    world.set("admins", "carol")
    record = await world.run()
    assert record.outcome is Outcome.APPLIED, record.render()
    u = world.user
    state = await world.hub_state()
    assert state["users"] == {
        u("alice"): {"admin": False, "groups": [f"{world.prefix}analysts"]},
        u("bob"): {"admin": False, "groups": sorted([f"{world.prefix}analysts", f"{world.prefix}gpu"])},
        u("carol"): {"admin": False, "groups": [f"{world.prefix}admins"]},  # role mode: rights via the group
    }
    managed = await world.store.get(MANAGED_KEY)
    assert managed is not None and set(managed["users"]) == {u("alice"), u("bob"), u("carol")}

    world.client.reset_stats()
    again = await world.run()
    assert again.outcome is Outcome.APPLIED and again.plan is not None and again.plan.empty
    assert world.client.stats["writes"] == 0  # a run with no change writes nothing
    # ... and reads the hub's groups once, no user list: membership proves the users exist
    assert world.client.stats["by_route"] == {"GET /groups": 1}

    world.set("analysts", "alice", "bob", "dave")
    third = await world.run()
    assert third.plan is not None and third.plan.counts() == {"create_user": 1, "add_to_group": 1}
    assert (await world.hub_state())["users"][u("dave")]["groups"] == [f"{world.prefix}analysts"]

    entries, _ = await world.store.read_audit(operation="sync", limit=10)
    assert [e["outcome"] for e in entries] == ["applied", "applied", "applied"]
    assert {e["trigger"] for e in entries} == {"test"}
    assert entries[0]["results"][0]["status"] in ("done", "noop")


async def test_removed_person_is_deprovisioned_server_stopped_tokens_revoked_not_deleted(
    world: World, real_hub: RealHub
) -> None:
    world.set("analysts", "alice", "bob")
    world.set("admins", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    bob = world.user("bob")
    await real_hub.spawn(bob)
    async with real_hub.admin() as admin:
        r = await admin.post(f"/users/{bob}/tokens", json={"note": "bob's token"})
        assert r.status_code == 201, r.text

    world.set("analysts", "alice")
    world.set("admins", "alice")
    record = await world.run()
    assert record.outcome is Outcome.APPLIED, record.render()
    by_kind = {r.action.kind: r for r in record.results}
    assert by_kind["stop_servers"].status in (Status.DONE, Status.PENDING)
    assert by_kind["revoke_tokens"].status is Status.DONE  # its own token and the server's
    async with real_hub.admin() as admin:
        user = (await admin.get(f"/users/{bob}")).json()
        tokens = (await admin.get(f"/users/{bob}/tokens")).json()
    assert user["groups"] == []
    assert all(not s.get("ready") for s in user["servers"].values())
    assert tokens["api_tokens"] == []
    managed = await world.store.get(MANAGED_KEY)
    assert managed is not None and managed["users"][bob]["deprovisioned_at"]
    # Back in the group: managed again, in the group again.
    world.set("analysts", "alice", "bob")
    back = await world.run()
    assert back.plan is not None and {"manage_user", "add_to_group"} <= set(back.plan.counts())
    assert (await world.hub_state())["users"][bob]["groups"] == [f"{world.prefix}analysts"]


async def test_cull_never_deletes_a_user_sync_keeps_provisioning(world: World, real_hub: RealHub) -> None:
    """A synced member who never logs in is long-inactive to cull; deleting them would only make
    the next sync create them again (and cull delete them again, in z2jh with their volume). Cull
    deletes users who left the directory (deprovisioned) and users sync does not manage."""
    world.set("analysts", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    world.set("analysts", "alice")
    assert (await world.run()).outcome is Outcome.APPLIED  # bob left: deprovisioned
    alice, bob, carl, dora = (world.user(s) for s in ("alice", "bob", "carl", "dora"))
    async with real_hub.admin() as admin:
        for name in (carl, dora):  # hub users sync does not manage
            (await admin.post(f"/users/{name}")).raise_for_status()

    settings = load_settings(
        hub={"api_url": real_hub.api_url, "token": real_hub.hubpilot_token},
        # the session's hub holds every test's users: this test looks at its own
        cull={"cull_users": True, "delete_users": True, "max_user_deletions_per_round": 10000,
              "max_stops_per_round": 10000},
    )
    now = datetime.now(UTC) + timedelta(hours=3)
    ctx = Context(settings=settings, store=world.store, clock=lambda: now)
    mine = {alice, bob, carl, dora}
    try:
        cap = ctx.capability("cull")
        dry = await ctx.runner.run(cap, trigger="test", actor="test", dry_run=True)
        assert dry.plan is not None
        assert sorted(a.target for a in dry.plan.actions if a.target in mine) == sorted([bob, carl, dora])
        (note,) = [n for n in dry.plan.notes if alice in n]
        assert note.startswith(f"kept long-inactive user {alice}: inactive for ") and "sync manages" in note
        assert note in dry.render()

        assert isinstance(cap, CullCapability)
        observed = await cap.observe()
        plan = cap.plan(observed, now)
        ours = Plan.build("cull", [a for a in plan.actions if a.target in mine])
        assert ours.counts() == {"delete_user": 3}
        # dora joins a synced group between the round's reading and its deletions: kept
        world.set("analysts", "alice", "dora")
        joined = await world.run()
        assert joined.plan is not None and joined.plan.counts() == {"manage_user": 1, "add_to_group": 1}
        results = {r.action.target: r for r in await cap.apply(ours, observed, no_progress)}
        assert {n: r.status for n, r in results.items()} == {
            bob: Status.DONE, carl: Status.DONE, dora: Status.SKIPPED}, results
        assert "sync manages" in results[dora].detail
        assert set((await world.hub_state())["users"]) == {alice, dora}
        # no loop: the next sync has nobody to create again
        again = await world.run()
        assert again.plan is not None and again.plan.empty, again.render()

        # sync's records unreadable: nobody is deleted this round (unknown is never "may delete")
        eve = world.user("eve")
        async with real_hub.admin() as admin:
            (await admin.post(f"/users/{eve}")).raise_for_status()
        await world.store.put(MANAGED_KEY, {"users": {alice: "damaged"}})
        observed = await cap.observe()
        plan = cap.plan(observed, now)
        assert not [a for a in plan.actions if a.kind == "delete_user"]
        assert any(n.startswith(f"kept long-inactive user {eve}: ") for n in plan.notes), plan.notes
        assert any(MANAGED_KEY in n and "damaged" in n for n in plan.notes), plan.notes
        late = Plan.build("cull", [Action("delete_user", eve, phase=1, params={"user": eve})])
        (result,) = await cap.apply(late, observed, no_progress)
        assert result.status is Status.SKIPPED and MANAGED_KEY in result.detail
        assert eve in (await world.hub_state())["users"]
    finally:
        await ctx.hub.close()


async def test_a_renamed_person_keeps_their_hub_user_groups_and_tokens(world: World, real_hub: RealHub) -> None:
    world.set("analysts", "alice", "bob")
    world.set("gpu", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    bob, robert = world.user("bob"), world.user("robert")
    managed = await world.store.get(MANAGED_KEY)
    assert managed is not None and managed["users"][bob]["directory_id"] == "bob"  # the file's key
    await real_hub.spawn(bob)
    async with real_hub.admin() as admin:
        r = await admin.post(f"/users/{bob}/tokens", json={"note": "bob's token"})
        assert r.status_code == 201, r.text
        token_id = r.json()["id"]

    world.people["bob"]["username"] = robert  # same directory entry, another name
    world.write()
    first = await world.run()
    assert first.plan is not None and first.plan.counts() == {"stop_servers": 1}, first.render()
    for _ in range(20):  # the stop may still be pending: the rename waits for it
        record = await world.run()
        assert record.plan is not None
        if record.plan.counts() != {"stop_servers": 1}:
            break
        await asyncio.sleep(0.5)
    assert record.plan.counts() == {"rename_user": 1} and record.outcome is Outcome.APPLIED, record.render()

    state = await world.hub_state()
    assert bob not in state["users"]
    assert state["users"][robert]["groups"] == sorted([f"{world.prefix}analysts", f"{world.prefix}gpu"])
    async with real_hub.admin() as admin:
        tokens = (await admin.get(f"/users/{robert}/tokens")).json()["api_tokens"]
    assert token_id in {t["id"] for t in tokens}  # the hub user itself was renamed
    after = await world.store.get(MANAGED_KEY)
    assert after is not None and bob not in after["users"]
    assert after["users"][robert]["since"] == managed["users"][bob]["since"]
    assert (await world.run()).plan.empty  # type: ignore[union-attr]


async def test_a_renamed_person_holding_the_admin_flag_is_held_until_a_hub_admin_clears_it(
        world: World, real_hub: RealHub) -> None:
    """Role mode: hubpilot is no hub admin, and the hub refuses it any PATCH of a user holding the
    admin flag (403 "Only admins can modify other admins"), a rename too. The person did not leave:
    their hub user is kept as it is (groups, tokens), no empty user is made under the new name, and
    the plan says what to do; once a hub admin clears the flag, the next run renames."""
    world.set("analysts", "alice", "bob")
    world.set("gpu", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    bob, robert = world.user("bob"), world.user("robert")
    async with real_hub.admin() as admin:  # an admin flag set by hand (or by flag mode before)
        assert (await admin.patch(f"/users/{bob}", json={"admin": True})).status_code == 200
        r = await admin.post(f"/users/{bob}/tokens", json={"note": "bob's token"})
        assert r.status_code == 201, r.text
        token_id = r.json()["id"]
    # the hub refuses hubpilot's rename of this user: what the plan must not attempt
    with pytest.raises(HubError, match="Only admins can modify other admins"):
        await world.client.rename_user(bob, robert)

    world.people["bob"]["username"] = robert  # same directory entry, another name
    world.write()
    held = await world.run()
    assert held.plan is not None and held.plan.empty, held.render()
    assert held.outcome is Outcome.APPLIED, held.render()
    (note,) = [n for n in held.plan.notes if robert in n]
    assert "admin flag" in note and f"clears {bob}'s admin flag" in note, note
    state = await world.hub_state()
    assert robert not in state["users"]
    assert state["users"][bob]["groups"] == sorted([f"{world.prefix}analysts", f"{world.prefix}gpu"])
    async with real_hub.admin() as admin:
        tokens = (await admin.get(f"/users/{bob}/tokens")).json()["api_tokens"]
    assert token_id in {t["id"] for t in tokens}
    managed = await world.store.get(MANAGED_KEY)
    assert managed is not None and managed["users"][bob]["deprovisioned_at"] is None
    assert robert not in managed["users"]
    assert (await world.run()).plan.empty  # type: ignore[union-attr]  # the same every run: no failure

    async with real_hub.admin() as admin:  # the fix the note names
        assert (await admin.patch(f"/users/{bob}", json={"admin": False})).status_code == 200
    renamed = await world.run()
    assert renamed.plan is not None and renamed.plan.counts() == {"rename_user": 1}, renamed.render()
    assert renamed.outcome is Outcome.APPLIED, renamed.render()
    state = await world.hub_state()
    assert bob not in state["users"]
    assert state["users"][robert]["groups"] == sorted([f"{world.prefix}analysts", f"{world.prefix}gpu"])


async def test_a_leaver_holding_the_admin_flag_is_deprovisioned_and_deleted_in_role_mode(
        world: World, real_hub: RealHub) -> None:
    """docs/hub-scopes.md: only a PATCH is refused on a user holding the admin flag; the group
    changes, the stop, the token revocation and the deletion a leaver gets are not."""
    world.set("analysts", "alice", "bob")
    world.set("admins", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    bob = world.user("bob")
    await real_hub.spawn(bob)
    async with real_hub.admin() as admin:
        assert (await admin.patch(f"/users/{bob}", json={"admin": True})).status_code == 200
        assert (await admin.post(f"/users/{bob}/tokens", json={"note": "bob's token"})).status_code == 201
    world.set("analysts", "alice")
    world.set("admins", "alice")
    record = await world.run()
    assert record.outcome is Outcome.APPLIED, record.render()
    assert record.plan is not None and record.plan.counts() == {
        "remove_from_group": 2, "stop_servers": 1, "revoke_tokens": 1, "deprovision": 1}, record.render()
    assert all(r.status in (Status.DONE, Status.PENDING) for r in record.results), record.render()
    world.policy = world.policy.model_copy(update={"delete_users": True, "delete_grace_hours": 0})
    deleted = await world.run()
    assert deleted.outcome is Outcome.APPLIED and deleted.plan is not None, deleted.render()
    assert deleted.plan.counts() == {"delete_user": 1}, deleted.render()
    assert bob not in (await world.hub_state())["users"]


async def test_in_role_mode_a_leaver_or_returner_holding_the_admin_flag_is_named_in_a_note(
        world: World, real_hub: RealHub) -> None:
    """Role mode: hubpilot cannot clear the admin flag (the hub lets no non-admin modify an admin).
    A leaver deprovisioned while holding it, and a person taken back into a synced group (not an
    admin group) who holds it, keep full admin rights the directory does not give: the plan that
    deprovisions, or takes back, names them and the fix."""
    world.set("analysts", "alice", "bob")
    world.set("admins", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    bob = world.user("bob")
    async with real_hub.admin() as admin:  # set by hand, or by sync.admin_mode = 'flag' before
        assert (await admin.patch(f"/users/{bob}", json={"admin": True})).status_code == 200
    world.set("analysts", "alice")
    world.set("admins", "alice")
    left = await world.run()
    assert left.outcome is Outcome.APPLIED and left.plan is not None, left.render()
    assert left.plan.counts()["deprovision"] == 1, left.render()
    (note,) = [n for n in left.plan.notes if bob in n]
    assert "admin flag" in note and "deprovisioned" in note and f"clears {bob}'s admin flag" in note, note
    assert (await world.hub_state())["users"][bob]["admin"] is True  # hubpilot could not clear it

    world.set("analysts", "alice", "bob")  # back, as no admin
    back = await world.run()
    assert back.outcome is Outcome.APPLIED and back.plan is not None, back.render()
    assert back.plan.counts() == {"manage_user": 1, "add_to_group": 1}, back.render()
    (note,) = [n for n in back.plan.notes if bob in n]
    assert "admin flag" in note and "no synced admin group" in note and f"clears {bob}'s admin flag" in note, note

    # an existing hub user, an admin by hand and in a hub group of its own, adopted as no admin
    carol, other = world.user("carol"), f"{world.prefix}other"
    async with real_hub.admin() as admin:
        assert (await admin.post(f"/users/{carol}", json={"admin": True})).status_code == 201
        assert (await admin.post(f"/groups/{other}")).status_code == 201
        assert (await admin.post(f"/groups/{other}/users", json={"users": [carol]})).status_code == 200
    world.set("analysts", "alice", "bob", "carol")
    adopted = await world.run()
    assert adopted.outcome is Outcome.APPLIED and adopted.plan is not None, adopted.render()
    assert adopted.plan.counts() == {"manage_user": 1, "add_to_group": 1}, adopted.render()
    (note,) = [n for n in adopted.plan.notes if carol in n]
    assert "admin flag" in note and f"clears {carol}'s admin flag" in note, note


async def test_flag_mode_without_the_hub_admin_role_fails_naming_the_fix(real_hub: RealHub, tmp_path: Path) -> None:
    """sync.admin_mode = 'flag' with hubpilot's least-privilege role (no hub admin): the hub
    refuses every change of the flag (403 "Only admins can ..."), run after run; the failure says
    what to fix, not only what the hub answered."""
    world = World(real_hub, tmp_path, admin_mode="flag")
    try:
        world.set("analysts", "alice", "bob")
        world.set("admins", "bob")
        record = await world.run()
        assert record.outcome is Outcome.FAILED, record.render()
        (failed,) = [r for r in record.results if r.status is Status.FAILED]
        assert failed.action.kind == "grant_admin" and failed.action.target == world.user("bob")
        assert "Only admins can grant admin permissions" in failed.detail, failed.detail
        assert "sync.admin_mode = 'flag' needs the hubpilot service to hold the hub's admin role" in failed.detail
        assert "sync.admin_mode = 'role'" in failed.detail, failed.detail
    finally:
        await world.close()


async def test_in_flag_mode_a_leaver_whose_admin_flag_the_hub_keeps_is_removed_and_counted_once(
        real_hub: RealHub, tmp_path: Path) -> None:
    """sync.admin_mode = 'flag' without the hub's admin role: the hub refuses to clear a leaver's
    admin flag (403 "Only admins can modify other admins"), run after run. The leaver still loses
    what hubpilot can take (groups, server, tokens) and is recorded as deprovisioned at once: the
    removal window counts them, once, and sync.delete_users' grace starts. Every run retries the
    flag and reports the refusal with the fix, until a hub admin clears it."""
    world = World(real_hub, tmp_path, admin_mode="flag", max_removals=1)
    try:
        world.set("analysts", "alice", "bob", "carol")
        assert (await world.run()).outcome is Outcome.APPLIED
        bob = world.user("bob")
        await real_hub.spawn(bob)
        async with real_hub.admin() as admin:  # set by hand
            assert (await admin.patch(f"/users/{bob}", json={"admin": True})).status_code == 200
            assert (await admin.post(f"/users/{bob}/tokens", json={"note": "bob's token"})).status_code == 201
        world.set("analysts", "alice", "carol")
        left = await world.run()
        assert left.outcome is Outcome.FAILED and left.plan is not None, left.render()
        by_kind = {r.action.kind: r for r in left.results}
        refused = by_kind["revoke_admin"]
        assert refused.status is Status.FAILED and "Only admins can modify other admins" in refused.detail
        assert "sync.admin_mode = 'flag' needs the hubpilot service to hold the hub's admin role" in refused.detail
        assert by_kind["deprovision"].status is Status.DONE, left.render()
        assert f"{bob} keeps the hub's admin flag" in by_kind["deprovision"].detail, left.render()
        assert by_kind["revoke_tokens"].status is Status.DONE
        assert by_kind["stop_servers"].status in (Status.DONE, Status.PENDING)
        async with real_hub.admin() as admin:
            user = (await admin.get(f"/users/{bob}")).json()
            tokens = (await admin.get(f"/users/{bob}/tokens")).json()
        assert user["groups"] == [] and tokens["api_tokens"] == [] and user["admin"] is True
        managed = await world.store.get(MANAGED_KEY)
        assert managed is not None
        stamp = managed["users"][bob]["deprovisioned_at"]
        assert stamp, managed

        again = await world.run()  # the refusal again: the flag is retried, the removal not made again
        assert again.outcome is Outcome.FAILED and again.plan is not None, again.render()
        assert again.plan.counts() == {"revoke_admin": 1}, again.render()
        (refused,) = again.results
        assert refused.status is Status.FAILED and "sync.admin_mode = 'flag' needs" in refused.detail
        assert again.plan.facts["recent_removals"] == 1, again.render()
        managed = await world.store.get(MANAGED_KEY)
        assert managed is not None and managed["users"][bob]["deprovisioned_at"] == stamp

        world.set("analysts", "alice")  # one more leaver: two in the window, over max_removals = 1
        over = await world.run()
        assert over.outcome is Outcome.REFUSED, over.render()
        assert any("the plan removes 1 users and sync removed 1" in r for r in over.refusal), over.render()
        world.set("analysts", "alice", "carol")

        async with real_hub.admin() as admin:  # the fix: a hub admin clears the flag
            assert (await admin.patch(f"/users/{bob}", json={"admin": False})).status_code == 200
        done = await world.run()
        assert done.outcome is Outcome.APPLIED and done.plan is not None and done.plan.empty, done.render()
    finally:
        await world.close()


async def test_a_rename_refused_for_an_admin_flag_set_since_the_reading_names_the_fix(
        world: World, real_hub: RealHub) -> None:
    """Role mode: the admin flag set by hand between the reading and the rename. The hub refuses the
    rename (403); its failure says what to do, and the new name's group changes are not sent for a
    user the hub does not have (reported as waiting for the rename, not as 'the next run creates')."""
    world.set("analysts", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    bob, robert = world.user("bob"), world.user("robert")
    world.set("gpu", "bob")  # in one more group, and renamed
    world.people["bob"]["username"] = robert
    world.write()
    cap = world.capability()
    observed = await cap.observe()
    plan = cap.plan(observed, datetime.now(UTC))
    assert plan.counts() == {"rename_user": 1, "add_to_group": 1}, plan.render()
    async with real_hub.admin() as admin:
        assert (await admin.patch(f"/users/{bob}", json={"admin": True})).status_code == 200
    results = {r.action.kind: r for r in await cap.apply(plan, observed, no_progress)}
    rename = results["rename_user"]
    assert rename.status is Status.FAILED and "Only admins can modify other admins" in rename.detail
    assert f"{bob} holds the hub's admin flag" in rename.detail and f"clears {bob}'s admin flag" in rename.detail
    added = results["add_to_group"]
    assert added.status is Status.SKIPPED and "not renamed" in added.detail, added.detail
    state = await world.hub_state()
    assert robert not in state["users"] and state["users"][bob]["groups"] == [f"{world.prefix}analysts"]
    # the next run holds the person (the rename's record of the new name, written ahead, is no leaver)
    held = await world.run()
    assert held.plan is not None and held.plan.empty and held.outcome is Outcome.APPLIED, held.render()
    assert any(f"clears {bob}'s admin flag" in n for n in held.plan.notes), held.render()
    async with real_hub.admin() as admin:  # the fix named
        assert (await admin.patch(f"/users/{bob}", json={"admin": False})).status_code == 200
    renamed = await world.run()
    assert renamed.outcome is Outcome.APPLIED, renamed.render()
    state = await world.hub_state()
    assert bob not in state["users"]
    assert state["users"][robert]["groups"] == sorted([f"{world.prefix}analysts", f"{world.prefix}gpu"])
    assert (await world.run()).plan.empty  # type: ignore[union-attr]


async def full_observation(world: World) -> SyncObserved:
    """What observe would see reading every hub user (the flag-mode and many-changes path)."""
    targeted = await world.capability().observe()
    return replace(targeted, users={u.name: u for u in await world.client.list_users()})


async def test_targeted_observation_plans_exactly_what_a_full_listing_plans(world: World, real_hub: RealHub) -> None:
    world.set("analysts", "alice", "bob", "carol")
    world.set("gpu", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    await real_hub.spawn(world.user("bob"))
    async with real_hub.admin() as admin:  # a hub user made by hand, later found in the directory
        assert (await admin.post(f"/users/{world.user('erin')}")).status_code == 201
        # carol was removed from her hub group by hand: the next sync puts her back
        r = await admin.request("DELETE", f"/groups/{world.prefix}analysts/users",
                                json={"users": [world.user("carol")]})
        assert r.status_code == 200, r.text
    world.set("analysts", "alice", "carol", "dave", "erin")  # bob leaves, dave and erin arrive
    world.set("gpu")
    cap = world.capability()
    world.client.reset_stats()
    targeted = await cap.observe()
    # it read less: the groups, and only the four people in question (bob, carol, dave, erin) ...
    assert world.client.stats["by_route"] == {"GET /groups": 1, "GET /users/{name}": 4}
    full = await full_observation(world)
    plan = cap.plan(targeted, NOW)
    assert plan.id == cap.plan(full, NOW).id  # ... and plans the same
    assert {(a.kind, a.target) for a in plan.actions} >= {
        ("create_user", world.user("dave")), ("manage_user", world.user("erin")),
        ("stop_servers", world.user("bob")), ("deprovision", world.user("bob"))}
    assert ("add_to_group", f"{world.prefix}analysts") in {(a.kind, a.target) for a in plan.actions}


async def test_dry_run_changes_nothing_and_records_nothing(world: World) -> None:
    world.set("analysts", "alice")
    record = await world.run(dry_run=True)
    assert record.outcome is Outcome.PLANNED and record.plan is not None
    assert record.plan.counts() == {"create_user": 1, "create_group": 3, "add_to_group": 1}
    assert (await world.hub_state())["users"] == {}
    assert (await world.store.read_audit(limit=5))[0] == []
    assert await world.store.get(MANAGED_KEY) is None


async def test_mass_removal_is_refused_then_applied_after_approval(world: World) -> None:
    world.policy = world.policy.model_copy(update={"max_removals": 1})
    world.set("analysts", "a1", "a2", "a3")
    assert (await world.run()).outcome is Outcome.APPLIED
    world.set("analysts")  # the directory says: nobody
    refused = await world.run()
    assert refused.outcome is Outcome.REFUSED and refused.plan is not None
    assert any("more than sync.max_removals = 1" in r for r in refused.refusal)
    assert any("'analysts' is empty" in r for r in refused.refusal)
    assert len((await world.hub_state())["groups"][f"{world.prefix}analysts"]) == 3  # nothing applied
    approved = await world.runner().approve(world.capability(), refused.plan.id, actor="admin")
    assert approved.outcome is Outcome.APPLIED, approved.render()
    assert (await world.hub_state())["groups"][f"{world.prefix}analysts"] == []


async def test_approval_of_a_plan_that_changed_is_refused(world: World) -> None:
    world.policy = world.policy.model_copy(update={"max_removals": 0})
    world.set("analysts", "a1", "a2")
    await world.run()
    world.set("analysts")
    refused = await world.run()
    assert refused.plan is not None
    world.set("analysts", "a1")  # the world moved on: a different plan
    stale = await world.runner().approve(world.capability(), refused.plan.id, actor="admin")
    assert stale.outcome is Outcome.REFUSED and "fresh observation yields plan" in stale.refusal[0]
    assert len((await world.hub_state())["groups"][f"{world.prefix}analysts"]) == 2


async def test_two_concurrent_runs_one_applies(world: World) -> None:
    world.set("analysts", *[f"p{i}" for i in range(15)])
    results = await asyncio.gather(world.run(), world.run(), return_exceptions=True)
    applied = [r for r in results if not isinstance(r, BaseException)]
    locked = [r for r in results if isinstance(r, LockHeld)]
    assert len(applied) == 1 and len(locked) == 1, results
    assert applied[0].outcome is Outcome.APPLIED
    assert len((await world.hub_state())["users"]) == 15


async def test_paused_sync_only_reports(world: World) -> None:
    world.set("analysts", "alice")
    await world.runner().set_paused("sync", True, "admin")
    record = await world.run()
    assert record.outcome is Outcome.PAUSED and record.plan is not None and record.plan.counts()
    assert (await world.hub_state())["users"] == {}
    await world.runner().set_paused("sync", False, "admin")
    assert (await world.run()).outcome is Outcome.APPLIED


async def test_invalid_directory_file_changes_nothing(world: World) -> None:
    world.set("analysts", "alice")
    await world.run()
    world.path.write_text("groups: [this is: not valid")
    record = await world.run()
    assert record.outcome is Outcome.FAILED and "DirectoryError" in (record.error or "")
    assert world.user("alice") in (await world.hub_state())["users"]
    assert (await world.store.get(MANAGED_KEY) or {}).get("users", {}).get(world.user("alice"), {}).get(
        "deprovisioned_at") is None


async def test_invalid_names_are_reported_in_the_plan(world: World) -> None:
    world.people["weird"] = {"username": "Not A/Name", "name": "Weird"}
    world.set("analysts", "alice")
    world.groups["analysts"].append("weird")
    world.write()
    record = await world.run()
    assert record.outcome is Outcome.APPLIED and record.plan is not None
    assert any("'not a/name' is not a valid hub name" in n for n in record.plan.notes)
    assert set((await world.hub_state())["users"]) == {world.user("alice")}


# --- a hub that fails mid-apply ---------------------------------------------------------------
class FlakyFront:
    """A loopback HTTP front for the real hub that answers 503 to the requests it is told to
    fail, and forwards everything else. It lets a test break the hub mid-apply."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail_prefixes: list[str] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def __aenter__(self) -> FlakyFront:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = await asyncio.start_server(self._handle, sock=sock)
        self.client = httpx.AsyncClient(timeout=30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.client.aclose()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hub/api"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                size = int(headers.get("Content-Length", headers.get("content-length", "0")))
                body = await reader.readexactly(size) if size else b""
                path = target.split("/hub/api", 1)[-1]
                if any(f"{method} {path}".startswith(p) for p in self.fail_prefixes):
                    status, out, ctype = 503, b'{"status": 503, "message": "hub is restarting"}', "application/json"
                else:
                    keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
                    r = await self.client.request(method, self.upstream + path, headers=keep, content=body)
                    status, out, ctype = r.status_code, r.content, r.headers.get("content-type", "")
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(out)}\r\n"
                             f"Content-Type: {ctype}\r\n\r\n".encode() + out)
                await writer.drain()


async def test_hub_failing_mid_apply_is_reported_and_the_next_run_converges(
    real_hub: RealHub, tmp_path: Path
) -> None:
    async with FlakyFront(real_hub.api_url) as front:
        world = World(real_hub, tmp_path, hub_api=front.api_url)
        try:
            world.set("analysts", "alice", "bob")
            world.set("gpu", "bob")
            front.fail_prefixes = [f"POST /groups/{world.prefix}gpu/users"]
            record = await world.run()
            assert record.outcome is Outcome.FAILED
            failed = [r for r in record.results if r.status is Status.FAILED]
            assert [(r.action.kind, r.action.target) for r in failed] == [("add_to_group", f"{world.prefix}gpu")]
            assert "503" in failed[0].detail
            done = {(r.action.kind, r.action.target) for r in record.results if r.status is Status.DONE}
            assert ("add_to_group", f"{world.prefix}analysts") in done
            front.fail_prefixes = []
            again = await world.run()
            assert again.outcome is Outcome.APPLIED
            assert again.plan is not None and again.plan.counts() == {"add_to_group": 1}
            assert (await world.hub_state())["groups"][f"{world.prefix}gpu"] == [world.user("bob")]
        finally:
            await world.close()


async def test_hub_down_at_observe_changes_nothing(real_hub: RealHub, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hub/api"
    world = World(real_hub, tmp_path, hub_api=dead)
    try:
        world.set("analysts", "alice")
        record = await world.run()
        assert record.outcome is Outcome.FAILED and record.error
        assert record.results == []
    finally:
        await world.close()


# --- LDAP ----------------------------------------------------------------------------------------
async def test_ldap_sync_with_nested_groups_and_ldap_down(real_hub: RealHub, tmp_path: Path, slapd: Any) -> None:
    world = World(real_hub, tmp_path)
    tag = world.tag
    base = slapd.base_dn
    ou = f"ou={tag},{base}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": tag})
    for short in ("ann", "ben", "cy"):
        slapd.add(f"uid={tag}-{short},{ou}", {"objectClass": ["inetOrgPerson"],
                                              "uid": f"{tag}-{short}", "cn": short, "sn": short})
    slapd.add(f"cn={tag}-interns,{ou}", {"objectClass": ["groupOfNames"],
                                         "cn": f"{tag}-interns", "member": [f"uid={tag}-cy,{ou}"]})
    slapd.add(f"cn={tag}-analysts,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{tag}-analysts",
                                          "member": [f"uid={tag}-ann,{ou}", f"cn={tag}-interns,{ou}"]})
    slapd.add(f"cn={tag}-admins,{ou}", {"objectClass": ["groupOfUniqueNames"],
                                        "cn": f"{tag}-admins", "uniqueMember": [f"uid={tag}-ben,{ou}"]})
    world.policy = world.policy.model_copy(update={
        "users_groups": [f"{tag}-analysts"], "admin_groups": [f"{tag}-admins"],
        "group_names": {f"{tag}-analysts": "analysts", f"{tag}-admins": "admins"}})
    directory = LdapDirectory(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password,
                              base_dn=base, group_base_dn=None, group_name_attribute="cn",
                              username_attribute="uid", nested=True, nested_max_depth=8, page_size=50,
                              timeout=5, start_tls=False, ca_file=None)
    try:
        record = await world.run(directory=directory)
        assert record.outcome is Outcome.APPLIED, record.render()
        state = await world.hub_state()
        assert state["groups"][f"{world.prefix}analysts"] == sorted([f"{tag}-ann", f"{tag}-cy"])
        assert state["groups"][f"{world.prefix}admins"] == [f"{tag}-ben"]

        slapd.stop()
        try:
            down = await world.run(directory=directory)
        finally:
            slapd.start()
        assert down.outcome is Outcome.FAILED and "DirectoryError" in (down.error or "")
        assert down.results == []
        assert (await world.hub_state()) == state
    finally:
        await directory.close()
        await world.close()


async def test_ldap_dn_mode_records_of_earlier_versions_stay_their_persons(
        real_hub: RealHub, tmp_path: Path, slapd: Any) -> None:
    """People known by DN (no id attribute): a DN written in a decomposed Unicode form was recorded
    without Unicode normalisation by earlier versions. After the upgrade the same person is not
    taken for another one carrying the name (which would deprovision them and hold the name)."""
    world = World(real_hub, tmp_path)
    tag = world.tag
    ou = f"ou={tag},{slapd.base_dn}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": tag})
    jose_dn = f"cn=Jose\u0301 {tag},{ou}"
    slapd.add(jose_dn, {"objectClass": ["inetOrgPerson"], "uid": f"{tag}-jose", "cn": f"Jose\u0301 {tag}",
                        "sn": "x"})
    group = f"cn={tag}-analysts,{ou}"
    slapd.add(group, {"objectClass": ["groupOfNames"], "cn": f"{tag}-analysts", "member": [jose_dn]})
    world.policy = world.policy.model_copy(update={
        "users_groups": [f"{tag}-analysts"], "admin_groups": [], "group_names": {f"{tag}-analysts": "analysts"}})
    by_dn = LdapDirectory(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password,
                          base_dn=ou, timeout=5, id_attribute=None)
    jose = f"{tag}-jose"
    try:
        assert (await world.run(directory=by_dn)).outcome is Outcome.APPLIED
        managed = await world.store.get(MANAGED_KEY)
        assert managed is not None
        now_id = managed["users"][jose]["directory_id"]
        legacy = normalize_dn(jose_dn, nfkc=False)
        assert legacy != now_id  # the decomposed form: what earlier versions recorded
        managed["users"][jose]["directory_id"] = legacy
        await world.store.put(MANAGED_KEY, managed)
        again = await world.run(directory=by_dn)
        assert again.plan is not None and again.plan.empty, again.render()
        assert (await world.hub_state())["users"][jose]["groups"] == [f"{world.prefix}analysts"]
        after = await world.store.get(MANAGED_KEY)
        assert after is not None and after["users"][jose]["directory_id"] == now_id
        assert not after["users"][jose].get("deprovisioned_at")
    finally:
        await by_dn.close()
        await world.close()


async def test_ldap_modrdn_renames_the_hub_user(real_hub: RealHub, tmp_path: Path, slapd: Any) -> None:
    """A person renamed in OpenLDAP (modrdn, the group following as refint makes it) keeps their
    hub user: the entry's entryUUID, not its DN, is the directory id."""
    world = World(real_hub, tmp_path)
    tag = world.tag
    ou = f"ou={tag},{slapd.base_dn}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": tag})
    for short in ("ann", "bob"):
        slapd.add(f"uid={tag}-{short},{ou}", {"objectClass": ["inetOrgPerson"],
                                              "uid": f"{tag}-{short}", "cn": short, "sn": short})
    group = f"cn={tag}-analysts,{ou}"
    slapd.add(group, {"objectClass": ["groupOfNames"], "cn": f"{tag}-analysts",
                      "member": [f"uid={tag}-ann,{ou}", f"uid={tag}-bob,{ou}"]})
    world.policy = world.policy.model_copy(update={
        "users_groups": [f"{tag}-analysts"], "admin_groups": [], "group_names": {f"{tag}-analysts": "analysts"}})
    directory = LdapDirectory(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password,
                              base_dn=ou, timeout=5)
    by_dn = LdapDirectory(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password,
                          base_dn=ou, timeout=5, id_attribute=None)
    bob, robert = f"{tag}-bob", f"{tag}-robert"
    try:
        # an earlier version knew people by DN: after the upgrade the ids change and nothing else
        assert (await world.run(directory=by_dn)).outcome is Outcome.APPLIED
        managed = await world.store.get(MANAGED_KEY)
        assert managed is not None and managed["users"][bob]["directory_id"] == f"uid={bob},{ou}".lower()
        upgraded = await world.run(directory=directory)
        assert upgraded.plan is not None and upgraded.plan.empty, upgraded.render()
        managed = await world.store.get(MANAGED_KEY)
        assert managed is not None and re.fullmatch(r"[0-9a-f-]{36}", managed["users"][bob]["directory_id"])
        async with real_hub.admin() as admin:
            r = await admin.post(f"/users/{bob}/tokens", json={"note": "bob's token"})
            assert r.status_code == 201, r.text
            token_id = r.json()["id"]
        slapd.rename(f"uid={bob},{ou}", f"uid={robert}", groups=[group])
        record = await world.run(directory=directory)
        assert record.plan is not None and record.plan.counts() == {"rename_user": 1}, record.render()
        assert record.outcome is Outcome.APPLIED, record.render()
        state = await world.hub_state()
        assert bob not in state["users"]
        assert state["users"][robert]["groups"] == [f"{world.prefix}analysts"]
        async with real_hub.admin() as admin:
            tokens = (await admin.get(f"/users/{robert}/tokens")).json()["api_tokens"]
        assert token_id in {t["id"] for t in tokens}
        assert (await world.run(directory=directory)).plan.empty  # type: ignore[union-attr]
    finally:
        await by_dn.close()
        await directory.close()
        await world.close()


# --- the CLI host --------------------------------------------------------------------------------
def test_cli_sync_dry_run_and_apply_exit_codes(real_hub: RealHub, tmp_path: Path) -> None:
    from hubpilot.cli import main

    tag = unique_name("cli")
    directory = tmp_path / "dir.yaml"
    directory.write_text(yaml.safe_dump({
        "people": {"x": {"username": f"{tag}-x"}},
        "groups": {"analysts": {"members": ["x"]}},
    }))
    config = tmp_path / "hubpilot.toml"
    config.write_text(
        f'[hub]\napi_url = "{real_hub.api_url}"\ntoken = "{real_hub.hubpilot_token}"\n'
        f'[directory]\nkind = "file"\n[directory.file]\npath = "{directory}"\n'
        f'[sync]\nusers_groups = ["analysts"]\ngroup_prefix = "{tag}-"\n'
        f'[state]\nsqlite_path = "{tmp_path / "state.sqlite3"}"\n'
    )
    import io

    out = io.StringIO()
    assert main(["--config", str(config), "sync", "--dry-run", "--json"], out=out) == 0
    plan = json.loads(out.getvalue())
    assert plan["outcome"] == "planned" and plan["plan"]["counts"] == {
        "create_user": 1, "create_group": 1, "add_to_group": 1}
    out = io.StringIO()
    assert main(["--config", str(config), "sync"], out=out) == 0
    assert "applied" in out.getvalue()
    assert main(["--config", str(config), "pause", "sync"], out=io.StringIO()) == 0
    assert main(["--config", str(config), "sync"], out=io.StringIO()) == 5
    assert main(["--config", str(config), "resume", "sync"], out=io.StringIO()) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[hub]\napi_url = "not a url"\n')
    assert main(["--config", str(bad), "sync"], out=io.StringIO()) == 2


async def test_hub_groups_sync_does_not_mirror_keep_their_members(world: World, real_hub: RealHub) -> None:
    """A hub group an admin made by hand is the hub admin's: sync neither empties it nor takes a
    synced member out of it, also not a member who leaves the directory groups (the gate and the
    revoked tokens take their access; what the group grants is not sync's call). A hand-made group
    whose name has the sync prefix but that sync never mirrored is left alone too."""
    world.set("analysts", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    alice, bob = world.user("alice"), world.user("bob")
    staff, prefixed = f"{world.tag}staff", f"{world.prefix}by-hand"
    async with real_hub.admin() as admin:
        for group in (staff, prefixed):
            r = await admin.post(f"/groups/{group}")
            assert r.status_code == 201, r.text
            r = await admin.post(f"/groups/{group}/users", json={"users": [alice, bob]})
            assert r.status_code == 200, r.text

    again = await world.run()
    assert again.outcome is Outcome.APPLIED and again.plan is not None and again.plan.empty, again.render()
    world.set("analysts", "alice")
    left = await world.run()
    assert left.outcome is Outcome.APPLIED, left.render()
    assert left.plan is not None and not any(
        a.target in (staff, prefixed) for a in left.plan.actions), left.render()
    async with real_hub.admin() as admin:
        for group in (staff, prefixed):
            assert sorted((await admin.get(f"/groups/{group}")).json()["users"]) == sorted([alice, bob]), group
        assert sorted((await admin.get(f"/users/{bob}")).json()["groups"]) == sorted([staff, prefixed])
    managed = await world.store.get(MANAGED_KEY)
    assert managed is not None and managed["users"][bob]["deprovisioned_at"]
    # what happened to bob, from the audit log of these real runs: created, then taken out and deprovisioned
    from hubpilot.audit import about, read_audit_about

    entries, cursor, _ = await read_audit_about(world.store, bob)
    said = [about(e, bob) for e in entries]
    assert cursor is None and len(entries) == 2, said  # the empty run in between does not name him
    assert f"remove_from_group {world.prefix}analysts: done ({bob} is no longer a member of the directory group)" \
        in said[0], said
    assert f"deprovision {bob}: done (no longer in any synced directory group)" in said[0], said
    assert f"create_user {bob}: done" in [line.split(" (")[0] for line in said[1]], said


_FAILING_ADD_USER = '''
from jupyterhub.auth import DummyAuthenticator
class FailingAddUser(DummyAuthenticator):
    async def add_user(self, user):  # provisioning somewhere fails for one person
        if user.name.endswith("-broken"):
            raise RuntimeError("home directory quota service down")
        return super().add_user(user)
c.JupyterHub.authenticator_class = FailingAddUser
'''


async def test_a_person_the_hubs_authenticator_fails_to_create_blocks_nobody_else(hub_factory: Any,
                                                                                  tmp_path: Path) -> None:
    """The hub's authenticator fails add_user for one person (every time): the hub answered the
    whole batch 400 and created nobody after that name, run after run. The others are created and
    put in their groups; that one create_user fails with the hub's reason, and the next run tries
    again, without touching the others."""
    hub: RealHub = await hub_factory(extra_config=_FAILING_ADD_USER)
    w = World(hub, tmp_path)
    try:
        w.set("analysts", "alice", "broken", "zed")
        first = await w.run()
        assert first.outcome is Outcome.FAILED, first.render()
        by = {(r.action.kind, r.action.target, r.action.params.get("user")): r for r in first.results}
        broken = by[("create_user", w.user("broken"), None)]
        assert broken.status is Status.FAILED and "home directory quota service down" in broken.detail, broken
        assert by[("create_user", w.user("alice"), None)].status is Status.DONE
        assert by[("create_user", w.user("zed"), None)].status is Status.DONE
        users = (await w.hub_state())["users"]
        assert set(users) == {w.user("alice"), w.user("zed")}
        assert all(u["groups"] == [f"{w.prefix}analysts"] for u in users.values()), users
        again = await w.run()
        assert again.plan is not None and [(a.kind, a.target) for a in again.plan.actions if a.kind != "add_to_group"
                                           ] == [("create_user", w.user("broken"))], again.render()
        assert [r.status for r in again.results if r.action.kind == "create_user"] == [Status.FAILED]
    finally:
        await w.close()

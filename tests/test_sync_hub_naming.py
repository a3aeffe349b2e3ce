"""Review: a hub that names a created user otherwise than sync.naming (its authenticator's
username_map) gets a clear error every run, and no managed record for a user that is not there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hubpilot.loop import Outcome, Status
from hubpilot.sync import MANAGED_KEY
from tests.fixtures.syncworld import World

pytestmark = pytest.mark.hub


async def test_a_hub_that_names_a_new_user_otherwise_fails_the_creation_clearly(
        hub_factory: Callable[..., Awaitable[Any]], tmp_path: Path) -> None:
    hub = await hub_factory(extra_config='c.Authenticator.username_map = {"review-bob": "review-robert"}')
    world = World(hub, tmp_path)
    try:
        world.people["bob"] = {"username": "review-bob", "name": "Bob"}
        world.groups["analysts"] = ["bob"]
        world.write()
        for _ in range(2):  # the first run and the next: the same clear error, no silent 'already exists'
            record = await world.run()
            assert record.outcome is Outcome.FAILED, record.render()
            create = [r for r in record.results if r.action.kind == "create_user"]
            assert [r.status for r in create] == [Status.FAILED], record.render()
            assert "sync.naming" in create[0].detail and "review-bob" in create[0].detail
            managed = (await world.store.get(MANAGED_KEY) or {}).get("users", {})
            assert "review-bob" not in managed
    finally:
        await world.close()


async def test_a_name_the_hub_refuses_keeps_out_only_that_person(
        hub_factory: Callable[..., Awaitable[Any]], tmp_path: Path) -> None:
    """The hub refuses a group request naming a user it does not have: the refused newcomer is left
    out of their group's additions, the others get in."""
    hub = await hub_factory(extra_config='c.Authenticator.username_pattern = r"^[^2]+$"')
    world = World(hub, tmp_path)
    try:
        world.people["amy"] = {"username": "amy", "name": "Amy"}
        world.people["bob"] = {"username": "bob2", "name": "Bob"}  # valid for hubpilot, not for this hub
        world.groups["analysts"] = ["amy", "bob"]
        world.write()
        record = await world.run()
        failed = sorted((r.action.kind, r.action.params.get("user", r.action.target))
                        for r in record.results if r.status is Status.FAILED)
        assert failed == [("add_to_group", "bob2"), ("create_user", "bob2")], record.render()
        added = [r for r in record.results if r.action.kind == "add_to_group" and r.status is Status.DONE]
        assert [r.action.params["user"] for r in added] == ["amy"]
        async with hub.admin() as admin:
            group = (await admin.get(f"/groups/{added[0].action.target}")).json()
        assert group["users"] == ["amy"]
    finally:
        await world.close()


async def test_a_leaver_the_hub_names_otherwise_now_is_not_removed_in_someone_elses_place(tmp_path: Path) -> None:
    """The hub's username_map gained bob → robert after sync had made bob a member; robert logged in
    since. The hub looks every name of DELETE /groups/{name}/users up in its authenticator's form, so
    taking bob out of the group took robert out instead (every run, after adding him back), and the
    removal counted as done while bob stayed in. Such a name is not sent: its removal fails, saying
    what to do; the other removals go through."""
    from tests.realhub import start_hub

    async with start_hub(tmp_path / "hub") as hub:
        world = World(hub, tmp_path, group_prefix="r-")
        try:
            world.people = {p: {"username": p, "name": p.title()} for p in ("bob", "carl")}
            world.groups["analysts"] = ["bob", "carl"]
            world.write()
            record = await world.run()
            assert record.outcome is Outcome.APPLIED, record.render()
        finally:
            await world.close()
    async with start_hub(tmp_path / "hub", extra_config='c.Authenticator.username_map = {"bob": "robert"}') as hub:
        async with hub.admin() as admin:
            assert (await admin.post("/users", json={"usernames": ["robert"]})).status_code == 201  # logged in
        world = World(hub, tmp_path, group_prefix="r-", naming={"username_map": {"bob": "robert"}})
        try:
            world.people = {p: {"username": p, "name": p.title()} for p in ("bob", "carl")}
            world.groups["analysts"] = ["bob"]  # carl left
            world.write()
            record = await world.run()
            async with hub.admin() as admin:
                group = (await admin.get("/groups/r-analysts")).json()
            assert sorted(group["users"]) == ["bob", "robert"], record.render()
            failed = [r for r in record.results if r.action.kind == "remove_from_group" and r.status is Status.FAILED]
            assert [r.action.params["user"] for r in failed] == ["bob"], record.render()
            assert "robert" in failed[0].detail and "username_map" in failed[0].detail, record.render()
            done = [r.action.params["user"] for r in record.results
                    if r.action.kind == "remove_from_group" and r.status is Status.DONE]
            assert done == ["carl"], record.render()
        finally:
            await world.close()


async def test_a_member_the_hub_looks_up_as_someone_else_is_not_added_in_their_place(tmp_path: Path) -> None:
    """A username_map whose target is itself mapped (bob → robert, robert → rob): bob logs in as hub
    user robert, but the hub looks every name of POST /groups/{name}/users up in its authenticator's
    form, so adding robert to a group added rob, another person, who is in no synced group (or,
    without a rob, was answered 400 and kept the group's other newcomers out). Such a name is not
    sent: its addition fails, saying what to do; the group's other additions go through."""
    from tests.realhub import start_hub

    chain = {"bob": "robert", "robert": "rob"}
    async with start_hub(tmp_path / "hub", extra_config=f"c.Authenticator.username_map = {chain!r}") as hub:
        async with hub.admin() as admin:  # bob logged in (as robert), and so did the person robert (as rob)
            for name in ("robert", "rob"):
                assert (await admin.post(f"/users/{name}")).status_code == 201
        world = World(hub, tmp_path, group_prefix="m-", naming={"username_map": chain})
        try:
            world.people = {p: {"username": p, "name": p.title()} for p in ("bob", "carl")}
            world.groups["analysts"] = ["bob", "carl"]
            world.write()
            record = await world.run()
            async with hub.admin() as admin:
                group = (await admin.get("/groups/m-analysts")).json()
            assert sorted(group["users"]) == ["carl"], record.render()
            failed = [r for r in record.results if r.action.kind == "add_to_group" and r.status is Status.FAILED]
            assert [r.action.params["user"] for r in failed] == ["robert"], record.render()
            assert "'rob'" in failed[0].detail and "username_map" in failed[0].detail, record.render()
        finally:
            await world.close()

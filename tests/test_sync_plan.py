"""The sync plan and guard are pure: tested here without any I/O, with a fixed clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubpilot.config.sync import NamingSettings, SyncSettings
from hubpilot.loop import Plan
from hubpilot.naming import hub_group_name, hub_name
from hubpilot.ports.directory import DirectorySnapshot, Member
from hubpilot.ports.hub import HubGroup, HubServer, HubUser
from hubpilot.sync import ManagedUser, SyncObserved, guard_sync, plan_sync

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
POLICY = SyncSettings(users_groups=["analysts", "gpu-users"], admin_groups=["hub-admins"],
                      max_removals=50, max_removal_percent=100, admin_mode="flag")
ROLE_POLICY = POLICY.model_copy(update={"admin_mode": "role"})


def person(name: str, username: str | None = None) -> Member:
    return Member(id=f"uid={name},ou=people", username=username if username is not None else name)


def snap(**groups: list[str]) -> DirectorySnapshot:
    full = {"analysts": [], "gpu-users": [], "hub-admins": []} | {k.replace("_", "-"): v
                                                                    for k, v in groups.items()}
    return DirectorySnapshot("test", {g: frozenset(person(n) for n in ms) for g, ms in full.items()})


def converge(observed: SyncObserved, plan: Plan) -> SyncObserved:
    """What the hub and the managed set look like once ``plan`` is applied (test model)."""
    users = dict(observed.users)
    groups = {k: set(v.users) for k, v in observed.groups.items()}
    managed = dict(observed.managed)
    for a in plan.actions:
        if a.kind == "create_user":
            users[a.target] = HubUser(a.target, False, frozenset())
            managed[a.target] = ManagedUser(NOW)
        elif a.kind == "manage_user":
            managed[a.target] = ManagedUser(NOW)
        elif a.kind == "rename_user":
            new = a.params["to"]
            users[new] = replace(users.pop(a.target), name=new)
            managed[new] = managed.pop(a.target)
            for members in groups.values():
                if a.target in members:
                    members.discard(a.target)
                    members.add(new)
        elif a.kind == "create_group":
            groups.setdefault(a.target, set())
        elif a.kind == "add_to_group":
            groups[a.target].add(a.params["user"])
        elif a.kind == "remove_from_group":
            groups[a.target].discard(a.params["user"])
        elif a.kind in ("grant_admin", "revoke_admin"):
            users[a.target] = replace(users[a.target], admin=a.kind == "grant_admin")
        elif a.kind == "stop_servers":
            users[a.target] = replace(users[a.target], servers={})
        elif a.kind == "deprovision":
            managed[a.target] = ManagedUser(managed[a.target].since, NOW)
        elif a.kind == "delete_user":
            users.pop(a.target)
            managed.pop(a.target)
    return SyncObserved(
        observed.snapshot, users, {k: HubGroup(k, frozenset(v)) for k, v in groups.items()}, managed
    )


def empty_hub(snapshot: DirectorySnapshot) -> SyncObserved:
    return SyncObserved(snapshot, {}, {})


def kinds(plan: Plan) -> list[tuple[str, str]]:
    return [(a.kind, a.target if "user" not in a.params else f"{a.target}:{a.params['user']}")
            for a in plan.actions]


def test_first_sync_creates_users_groups_and_admins_in_apply_order() -> None:
    observed = empty_hub(snap(analysts=["alice", "bob"], gpu_users=["bob"], hub_admins=["carol"]))
    plan = plan_sync(observed, POLICY, NOW)
    assert kinds(plan) == [
        ("create_user", "alice"), ("create_user", "bob"), ("create_user", "carol"),
        ("create_group", "dir-analysts"), ("create_group", "dir-gpu-users"), ("create_group", "dir-hub-admins"),
        ("add_to_group", "dir-analysts:alice"), ("add_to_group", "dir-analysts:bob"),
        ("add_to_group", "dir-gpu-users:bob"), ("add_to_group", "dir-hub-admins:carol"),
        ("grant_admin", "carol"),
    ]
    assert [a.phase for a in plan.actions] == sorted(a.phase for a in plan.actions)
    assert all(a.reason for a in plan.actions)
    assert guard_sync(observed, plan, POLICY) == []
    # Applying the plan converges: the next plan is empty.
    assert plan_sync(converge(observed, plan), POLICY, NOW).empty


def test_plan_id_is_stable_and_ignores_reasons_and_input_order() -> None:
    a = plan_sync(empty_hub(snap(analysts=["bob", "alice"])), POLICY, NOW)
    b = plan_sync(empty_hub(snap(analysts=["alice", "bob"])), POLICY, NOW + timedelta(hours=1))
    assert a.id == b.id
    c = plan_sync(empty_hub(snap(analysts=["alice"])), POLICY, NOW)
    assert c.id != a.id
    assert a.diff(c) == ["- create_user bob — member of a synced directory group",
                         "- add_to_group dir-analysts (user=bob) — bob is a member of the directory group"]
    assert Plan.from_json(a.to_json()).id == a.id


def test_removed_member_is_deprovisioned_not_deleted() -> None:
    start = empty_hub(snap(analysts=["alice", "bob"]))
    state = converge(start, plan_sync(start, POLICY, NOW))
    server = HubServer("bob", "", True, None, NOW, NOW)
    state = replace(state, users={**state.users, "bob": replace(state.users["bob"], servers={"": server})},
                    snapshot=snap(analysts=["alice"]))
    plan = plan_sync(state, POLICY, NOW)
    assert kinds(plan) == [("remove_from_group", "dir-analysts:bob"), ("revoke_tokens", "bob"),
                           ("stop_servers", "bob"), ("deprovision", "bob")]
    assert plan.actions[2].params == {"servers": [""]}
    assert "delete_user" not in plan.counts()
    after = converge(state, plan)
    assert "bob" in after.users  # not deleted
    assert plan_sync(after, POLICY, NOW).empty


def test_deletion_only_when_enabled_and_after_grace() -> None:
    state = SyncObserved(snap(analysts=["alice"]),
                         {"alice": HubUser("alice", False, frozenset()), "bob": HubUser("bob", False, frozenset())},
                         {}, {"alice": ManagedUser(NOW), "bob": ManagedUser(NOW, NOW - timedelta(hours=10))})
    state = converge(state, plan_sync(state, POLICY, NOW))
    assert "delete_user" not in plan_sync(state, POLICY, NOW + timedelta(days=400)).counts()
    deleting = POLICY.model_copy(update={"delete_users": True, "delete_grace_hours": 24})
    assert plan_sync(state, deleting, NOW).empty  # 10 h of 24 h grace
    plan = plan_sync(state, deleting, NOW + timedelta(hours=14))
    assert kinds(plan) == [("delete_user", "bob")]


def test_admin_granted_and_revoked_with_group_membership() -> None:
    start = empty_hub(snap(analysts=["alice", "bob"], hub_admins=["alice"]))
    state = converge(start, plan_sync(start, POLICY, NOW))
    assert state.users["alice"].admin and not state.users["bob"].admin
    state = replace(state, snapshot=snap(analysts=["alice", "bob"], hub_admins=["bob"]))
    plan = plan_sync(state, POLICY, NOW)
    assert set(kinds(plan)) == {("grant_admin", "bob"), ("revoke_admin", "alice"),
                                ("add_to_group", "dir-hub-admins:bob"),
                                ("remove_from_group", "dir-hub-admins:alice")}
    assert "deprovision" not in plan.counts()


def test_in_role_mode_admin_rights_follow_group_membership_and_no_flag_is_set() -> None:
    start = empty_hub(snap(analysts=["alice"], hub_admins=["bob"]))
    plan = plan_sync(start, ROLE_POLICY, NOW)
    assert ("add_to_group", "dir-hub-admins:bob") in kinds(plan)
    assert not {"grant_admin", "revoke_admin"} & set(plan.counts())
    # A hand-made admin among managed users is left alone in role mode.
    state = converge(start, plan)
    state = replace(state, users={**state.users, "alice": replace(state.users["alice"], admin=True)},
                    snapshot=snap(analysts=["alice"]))
    plan = plan_sync(state, ROLE_POLICY, NOW)
    assert kinds(plan) == [("remove_from_group", "dir-hub-admins:bob"), ("revoke_tokens", "bob"),
                           ("deprovision", "bob")]


def test_member_moving_between_synced_groups_stays_a_user() -> None:
    start = empty_hub(snap(analysts=["alice"], gpu_users=["bob"]))
    state = converge(start, plan_sync(start, POLICY, NOW))
    state = replace(state, snapshot=snap(analysts=["alice", "bob"]))
    assert kinds(plan_sync(state, POLICY, NOW)) == [("add_to_group", "dir-analysts:bob"),
                                                    ("remove_from_group", "dir-gpu-users:bob")]


def test_local_and_unmanaged_users_are_never_touched() -> None:
    hub_users = {
        "root-admin": HubUser("root-admin", True, frozenset({"dir-analysts"})),
        "service-bot": HubUser("service-bot", False, frozenset()),
    }
    groups = {"dir-analysts": HubGroup("dir-analysts", frozenset({"root-admin"}))}
    observed = SyncObserved(snap(analysts=["alice"]), hub_users, groups, {})
    plan = plan_sync(observed, POLICY, NOW)
    assert all(a.target not in hub_users and a.params.get("user") not in hub_users for a in plan.actions)


def test_existing_hub_user_in_directory_is_adopted() -> None:
    observed = SyncObserved(snap(analysts=["alice"]), {"alice": HubUser("alice", False, frozenset())}, {}, {})
    assert ("manage_user", "alice") in kinds(plan_sync(observed, POLICY, NOW))


def test_invalid_names_and_clashes_are_reported_never_dropped_silently_or_removed() -> None:
    members = frozenset({
        Member("uid=a", "Alice.Smith"), Member("uid=b", "bad/name"), Member("uid=c", None),
        Member("uid=d1", "dup"), Member("uid=d2", "DUP"),
        # entries known by a UUID are named by where they are too (an LDAP DN)
        Member("5f1e", "twin", where="uid=twin,ou=a,dc=x"), Member("9c2b", "Twin", where="uid=twin,ou=b,dc=x"),
        Member("77aa", "bad name", where="uid=bad name,ou=a,dc=x"),
    })
    snapshot = DirectorySnapshot("t", {"analysts": members, "gpu-users": frozenset(), "hub-admins": frozenset()})
    # "dup" was managed before the clash appeared: it must not be removed while unknown.
    observed = SyncObserved(snapshot, {"dup": HubUser("dup", False, frozenset({"dir-analysts"}))},
                            {"dir-analysts": HubGroup("dir-analysts", frozenset({"dup"}))},
                            {"dup": ManagedUser(NOW)})
    plan = plan_sync(observed, POLICY, NOW)
    assert ("create_user", "alice.smith") in kinds(plan)
    assert not any(a.target == "dup" or a.params.get("user") == "dup" for a in plan.actions)
    notes = "\n".join(plan.notes)
    assert "uid=b" in notes and "'bad/name' is not a valid hub name" in notes
    assert "uid=c" in notes and "no value" in notes
    assert "'dup' is claimed by several directory entries (uid=d1; uid=d2)" in notes
    assert ("'twin' is claimed by several directory entries (uid=twin,ou=a,dc=x (5f1e); "
            "uid=twin,ou=b,dc=x (9c2b))") in notes
    assert "skipped uid=bad name,ou=a,dc=x (77aa) in group analysts" in notes


@pytest.mark.parametrize(
    ("raw", "naming", "expected"),
    [
        ("Alice", NamingSettings(), "alice"),
        ("alice@contoso.com", NamingSettings(strip_domain=True), "alice"),
        ("alice@contoso.com", NamingSettings(), "alice@contoso.com"),
        ("Ｊｏｅ", NamingSettings(), "joe"),  # NFKC folds full-width letters
        ("Ｊｏｅ", NamingSettings(unicode_form="none"), None),
        ("old", NamingSettings(username_map={"old": "new"}), "new"),
        (" spaced ", NamingSettings(), "spaced"),
        ("a b", NamingSettings(), None),
        ("", NamingSettings(), None),
    ],
)
def test_hub_name_mapping(raw: str, naming: NamingSettings, expected: str | None) -> None:
    assert hub_name(raw, naming)[0] == expected


def test_hub_group_names() -> None:
    assert hub_group_name("Data Team", "dir-", {}) == "dir-data-team"
    assert hub_group_name("cn=GPU Users,ou=groups,dc=x", "dir-", {}) == "dir-gpu-users"
    assert hub_group_name("0b1e-guid", "aad-", {"0b1e-guid": "analysts"}) == "aad-analysts"


def managed_state(n: int) -> SyncObserved:
    names = [f"u{i:03}" for i in range(n)]
    start = empty_hub(snap(analysts=names))
    return converge(start, plan_sync(start, POLICY, NOW))


def test_guard_refuses_more_removals_than_the_number_limit() -> None:
    state = replace(managed_state(10), snapshot=snap(analysts=["u000", "u001", "u002", "u003"]))
    policy = POLICY.model_copy(update={"max_removals": 5})
    plan = plan_sync(state, policy, NOW)
    reasons = guard_sync(state, plan, policy)
    assert reasons == ["the plan removes 6 users, more than sync.max_removals = 5"]
    assert guard_sync(state, plan, POLICY) == []


def test_guard_refuses_more_removals_than_the_share_limit() -> None:
    state = replace(managed_state(10), snapshot=snap(analysts=[f"u{i:03}" for i in range(7)]))
    policy = POLICY.model_copy(update={"max_removal_percent": 20})
    reasons = guard_sync(state, plan_sync(state, policy, NOW), policy)
    assert len(reasons) == 1 and "3 of 10 managed users (30 %)" in reasons[0]
    ok = replace(state, snapshot=snap(analysts=[f"u{i:03}" for i in range(8)]))
    assert guard_sync(ok, plan_sync(ok, policy, NOW), policy) == []  # 20 % is not more than 20 %


def test_guard_refuses_an_empty_answer_where_members_existed() -> None:
    state = replace(managed_state(3), snapshot=snap())
    plan = plan_sync(state, POLICY, NOW)
    reasons = guard_sync(state, plan, POLICY)
    assert any("'analysts' is empty" in r for r in reasons)


@settings(max_examples=60, deadline=None)
@given(
    before=st.dictionaries(st.sampled_from(["analysts", "gpu-users", "hub-admins"]),
                           st.sets(st.sampled_from([f"p{i}" for i in range(8)])), min_size=3),
    after=st.dictionaries(st.sampled_from(["analysts", "gpu-users", "hub-admins"]),
                          st.sets(st.sampled_from([f"p{i}" for i in range(8)])), min_size=3),
)
def test_any_change_converges_in_one_plan(before: dict[str, set[str]], after: dict[str, set[str]]) -> None:
    def s(groups: dict[str, set[str]]) -> DirectorySnapshot:
        return DirectorySnapshot("h", {g: frozenset(person(n) for n in ms) for g, ms in groups.items()})

    start = empty_hub(s(before))
    state = converge(start, plan_sync(start, POLICY, NOW))
    state = replace(state, snapshot=s(after))
    state = converge(state, plan_sync(state, POLICY, NOW))
    assert plan_sync(state, POLICY, NOW).empty
    wanted = set().union(*after.values())
    active = {n for n, r in state.managed.items() if r.active}
    assert active == wanted
    for g, ms in after.items():
        assert state.groups[f"dir-{g}"].users == frozenset(ms)
    assert {n for n, u in state.users.items() if u.admin} == set(after["hub-admins"])


# --- renames: the same directory entry under another name ------------------------------------------
def renamed_world(*, servers: bool = False, admin: bool = False) -> SyncObserved:
    """ann was synced (her record knows her directory id); the directory now calls her 'anna'."""
    start = empty_hub(snap(analysts=["ann", "bob"], hub_admins=["ann"]))
    state = converge(start, plan_sync(start, POLICY, NOW))
    managed = {n: replace(r, directory_id=f"uid={n},ou=people") for n, r in state.managed.items()}
    ann = replace(state.users["ann"], admin=admin,
                  servers={"": HubServer("ann", "", True, None, NOW, NOW)} if servers else {})
    renamed = DirectorySnapshot("test", {
        "analysts": frozenset({Member("uid=ann,ou=people", "anna"), person("bob")}),
        "gpu-users": frozenset(), "hub-admins": frozenset({Member("uid=ann,ou=people", "anna")})})
    return replace(state, snapshot=renamed, users={**state.users, "ann": ann}, managed=managed)


def test_a_renamed_person_is_renamed_in_the_hub_not_removed_and_created() -> None:
    world = renamed_world(admin=True)
    plan = plan_sync(world, POLICY, NOW)
    assert kinds(plan) == [("rename_user", "ann")]  # groups and the admin flag follow the user
    assert plan.actions[0].params == {"to": "anna"} and "directory" in plan.actions[0].reason
    assert plan.facts["renames"] == 1 and plan.facts["removals"] == 0
    assert guard_sync(world, plan, POLICY) == []
    after = converge(world, plan)
    assert "ann" not in after.users and after.groups["dir-analysts"].users == {"anna", "bob"}
    assert plan_sync(after, POLICY, NOW).empty


def test_a_renamed_person_with_a_running_server_is_stopped_first_and_renamed_next_run() -> None:
    world = renamed_world(servers=True, admin=True)
    plan = plan_sync(world, POLICY, NOW)
    assert kinds(plan) == [("stop_servers", "ann")]  # no deprovision, no half-made 'anna'
    assert "before the rename" in plan.actions[0].reason
    stopped = converge(world, plan)
    assert kinds(plan_sync(stopped, POLICY, NOW)) == [("rename_user", "ann")]
    # without stop_servers the rename waits for the server to stop (e.g. culled)
    keep = POLICY.model_copy(update={"stop_servers": False})
    assert plan_sync(world, keep, NOW).empty


def test_a_rename_waiting_for_its_servers_counts_in_the_guard() -> None:
    """The plan stops the servers of a person it renames next run: the guard's rename limits see it."""
    world = renamed_world(servers=True)
    plan = plan_sync(world, POLICY, NOW)
    assert kinds(plan) == [("stop_servers", "ann")]
    tight = POLICY.model_copy(update={"max_removal_percent": 20})
    assert any("renames 1 of 2 managed users (50 %)" in r for r in guard_sync(world, plan, tight))
    assert any("renames 1 users" in r for r in guard_sync(world, plan, POLICY.model_copy(update={"max_removals": 0})))


def test_no_rename_where_it_cannot_be_one() -> None:
    world = renamed_world()
    # the person already logged in under the new name: adopt it, deprovision the old one
    exists = replace(world, users={**world.users, "anna": HubUser("anna", False, frozenset())})
    assert ("rename_user", "ann") not in kinds(plan_sync(exists, POLICY, NOW))
    assert {("manage_user", "anna"), ("deprovision", "ann")} <= set(kinds(plan_sync(exists, POLICY, NOW)))
    # a record from before directory ids were kept: removal and creation as before
    unknown = replace(world, managed={**world.managed, "ann": replace(world.managed["ann"], directory_id=None)})
    assert {("create_user", "anna"), ("deprovision", "ann")} <= set(kinds(plan_sync(unknown, POLICY, NOW)))
    # two old records of one directory entry: one is renamed, the other leaves as usual
    twice = replace(world, users={**world.users, "ann2": HubUser("ann2", False, frozenset())},
                    managed={**world.managed, "ann2": replace(world.managed["ann"])})
    assert {("rename_user", "ann"), ("deprovision", "ann2")} <= set(kinds(plan_sync(twice, POLICY, NOW)))
    # role mode: hubpilot is no hub admin, and the hub lets no non-admin modify an admin
    admin = renamed_world(admin=True)
    plan = plan_sync(admin, ROLE_POLICY, NOW)
    assert ("rename_user", "ann") not in kinds(plan) and ("create_user", "anna") in kinds(plan)
    assert any("no non-admin rename an admin" in n for n in plan.notes)


def test_guard_refuses_a_mass_rename() -> None:
    world = renamed_world()
    plan = plan_sync(world, POLICY, NOW)
    tight = POLICY.model_copy(update={"max_removals": 0})
    assert any("renames 1 users" in r for r in guard_sync(world, plan, tight))

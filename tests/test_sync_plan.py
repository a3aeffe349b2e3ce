"""The sync plan and guard are pure: tested here without any I/O, with a fixed clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubpilot.config.sync import NamingSettings, SyncSettings
from hubpilot.loop import Plan
from hubpilot.naming import hub_group_name, hub_lookup_name, hub_name
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
            managed[a.target] = replace(managed[a.target], deprovisioned_at=NOW)
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


def test_in_flag_mode_an_adopted_or_returning_admin_outside_the_admin_groups_is_revoked_in_the_same_plan() -> None:
    # the plan that makes them managed says all it will do: the next run, with nothing changed in
    # the directory, has nothing left (a dry-run of the first shows the admin flag's revocation)
    hub = {"alice": HubUser("alice", True, frozenset()), "bob": HubUser("bob", True, frozenset())}
    back = {"bob": ManagedUser(NOW - timedelta(days=3), deprovisioned_at=NOW - timedelta(days=1))}
    observed = SyncObserved(snap(analysts=["alice", "bob"]), hub, {}, back)
    plan = plan_sync(observed, POLICY, NOW)
    assert {("manage_user", "alice"), ("revoke_admin", "alice"), ("manage_user", "bob"),
            ("revoke_admin", "bob")} <= set(kinds(plan))
    assert plan_sync(converge(observed, plan), POLICY, NOW).empty


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
    # neither the clash of a managed user nor one the hub does not have yet is touched (created,
    # put in a group: the hub's gate would let whichever entry logs in under it in)
    assert not any(a.target in ("dup", "twin") or a.params.get("user") in ("dup", "twin") for a in plan.actions)
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
        # the authenticator lowercases first, then maps (normalize_username)
        ("Old", NamingSettings(username_map={"old": "new"}), "new"),
        # a pattern without anchors is still matched by the whole name
        ("alice!", NamingSettings(pattern="[a-z]+"), None),
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
    # a first RDN value with escaped characters (RFC 4514): the escaped comma is part of the name
    assert hub_group_name(r"cn=Smith\, John,ou=groups,dc=x", "dir-", {}) == "dir-smith-john"
    assert hub_group_name(r"cn=Smith\2C Jane,ou=groups,dc=x", "dir-", {}) == "dir-smith-jane"
    assert hub_group_name(r"cn=R\26D \2b Ops,ou=g", "dir-", {}) == "dir-r-d-ops"
    assert hub_group_name(r"CN = Data Team , OU=g", "dir-", {}) == "dir-data-team"
    # a multi-valued first RDN is named by its first value; no dash left at either end
    assert hub_group_name("cn=Ops+uid=ops,ou=g", "dir-", {}) == "dir-ops"
    assert hub_group_name("Data Team (EU)", "dir-", {}) == "dir-data-team-eu"


def test_hub_lookup_name_is_the_authenticators_form() -> None:
    assert hub_lookup_name("Alice", NamingSettings()) == "alice"
    assert hub_lookup_name("Old", NamingSettings(username_map={"old": "new"})) == "new"
    assert hub_lookup_name("Alice", NamingSettings(lowercase=False)) == "Alice"


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


def test_guard_refuses_a_directory_answer_without_any_member_also_where_the_mirrors_are_gone() -> None:
    """No mirror shows who was a member (deleted by hand), and the limits let every removal pass
    (max_removal_percent = 100): a directory that answers no members at all still removes nobody."""
    state = replace(managed_state(3), snapshot=snap(), groups={})
    plan = plan_sync(state, POLICY, NOW)
    assert plan.counts()["deprovision"] == 3
    assert guard_sync(state, plan, POLICY) == [
        "the directory returned no members at all while 3 users are managed"]


def test_guard_refuses_deleting_more_users_than_the_limits() -> None:
    """Turning sync.delete_users on (or shortening its grace) deletes nobody wholesale: the
    deletions of one plan are judged against max_removals and, of all managed users (deprovisioned
    ones too), against max_removal_percent."""
    state = managed_state(10)
    gone = {f"u{i:03}": replace(state.managed[f"u{i:03}"], deprovisioned_at=NOW - timedelta(days=60))
            for i in range(6)}
    state = replace(state, managed={**state.managed, **gone},
                    snapshot=snap(analysts=[f"u{i:03}" for i in range(6, 10)]),
                    groups={g: HubGroup(g, h.users - set(gone)) for g, h in state.groups.items()})
    deleting = POLICY.model_copy(update={"delete_users": True, "delete_grace_hours": 24, "max_removals": 5})
    plan = plan_sync(state, deleting, NOW)
    assert plan.counts() == {"delete_user": 6}
    assert guard_sync(state, plan, deleting) == ["the plan deletes 6 users, more than sync.max_removals = 5"]
    share = deleting.model_copy(update={"max_removals": 50, "max_removal_percent": 50})
    assert guard_sync(state, plan, share) == [
        "the plan deletes 6 of 10 managed users, active or deprovisioned (60 %), more than "
        "sync.max_removal_percent = 50 %"]
    assert guard_sync(state, plan, share.model_copy(update={"max_removal_percent": 60})) == []


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
    # a server still starting is stopped first too
    starting = HubServer("ann", "", False, "spawn", NOW, NOW)
    spawning = replace(world, users={**world.users, "ann": replace(world.users["ann"], servers={"": starting})})
    assert kinds(plan_sync(spawning, POLICY, NOW)) == [("stop_servers", "ann")]


def test_a_rename_waiting_without_stop_servers_is_no_rename_of_the_plan_and_is_noted() -> None:
    # sync.stop_servers off: the plan stops nothing and renames nobody, so the guard does not
    # refuse it (and every other change of the run with it) for a rename it does not make
    world = renamed_world(servers=True, admin=True)
    keep = POLICY.model_copy(update={"stop_servers": False, "max_removals": 0})
    plan = plan_sync(world, keep, NOW)
    assert plan.facts["renames"] == 0
    assert guard_sync(world, plan, keep) == []
    assert any("ann" in n and "anna" in n and "sync.stop_servers" in n for n in plan.notes), plan.notes


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
    # the person did not leave: held (not deprovisioned, no empty 'anna'), until a hub admin clears the flag
    assert kinds(plan) == [], plan.render()
    assert any("no non-admin rename an admin" in n and "clears ann's admin flag" in n for n in plan.notes)
    assert plan.facts["removals"] == 0 and guard_sync(admin, plan, ROLE_POLICY) == []


def test_a_rename_into_a_name_whose_leaver_was_deleted_by_hand_is_a_rename() -> None:
    """'anna' was a leaver's: her record stays (deprovisioned, sync.delete_users off), her hub user
    an admin deleted by hand. ann, renamed anna in the directory, is renamed: not deprovisioned
    ("no longer in any synced directory group", her servers and tokens gone) beside a new, empty
    anna."""
    world = renamed_world(admin=True)
    leaver = ManagedUser(NOW - timedelta(days=90), NOW - timedelta(days=60), "uid=anna-old,ou=people")
    freed = replace(world, managed={**world.managed, "anna": leaver})
    plan = plan_sync(freed, POLICY, NOW)
    assert kinds(plan) == [("rename_user", "ann")], plan.render()
    assert plan.facts["removals"] == 0 and plan.facts["renames"] == 1
    # the leaver's record held the name, nothing else: it is not renamed into, nor kept
    after = converge(freed, plan)
    assert after.managed["anna"] == world.managed["ann"] and "ann" not in after.managed
    assert plan_sync(after, POLICY, NOW).empty
    # her hub user still there: not handed over (the reused-name rule), no rename into it
    kept = replace(freed, users={**freed.users, "anna": HubUser("anna", False, frozenset())})
    assert ("rename_user", "ann") not in kinds(plan_sync(kept, POLICY, NOW))


def test_guard_refuses_a_mass_rename() -> None:
    world = renamed_world()
    plan = plan_sync(world, POLICY, NOW)
    tight = POLICY.model_copy(update={"max_removals": 0})
    assert any("renames 1 users" in r for r in guard_sync(world, plan, tight))


def test_a_rename_the_hub_made_but_no_run_recorded_is_finished_not_a_removal() -> None:
    """A run renamed ann in the hub and failed before its record of it (the hub's answer was lost):
    both names are recorded (the rename is recorded ahead), the hub has only anna. The next plan
    finishes the rename's record; it removes nobody, and the guard counts no new rename."""
    world = renamed_world(admin=True)
    users = {n: u for n, u in world.users.items() if n != "ann"} | {"anna": replace(world.users["ann"], name="anna")}
    groups = {g: HubGroup(g, frozenset("anna" if n == "ann" else n for n in h.users)) for g, h in world.groups.items()}
    lost = replace(world, users=users, groups=groups, managed={**world.managed, "anna": world.managed["ann"]})
    plan = plan_sync(lost, POLICY, NOW)
    assert kinds(plan) == [("rename_user", "ann")], plan.render()
    assert plan.actions[0].params == {"to": "anna"} and "has anna already" in plan.actions[0].reason
    assert plan.facts["removals"] == 0 and plan.facts["renames"] == 0
    assert guard_sync(lost, plan, POLICY.model_copy(update={"max_removals": 0})) == []


def test_a_deletion_the_hub_made_but_no_run_recorded_is_recorded_not_counted() -> None:
    """bob, deprovisioned, was deleted by a run whose answer was lost (or by hand): once his grace
    is over the plan records the deletion (a no-op at the hub), which the guard does not count."""
    deleting = POLICY.model_copy(update={"delete_users": True, "delete_grace_hours": 24})
    groups = {g: HubGroup(g, frozenset({"alice"} if g == "dir-analysts" else ()))
              for g in ("dir-analysts", "dir-gpu-users", "dir-hub-admins")}
    state = SyncObserved(snap(analysts=["alice"]), {"alice": HubUser("alice", False, frozenset())}, groups,
                         {"alice": ManagedUser(NOW), "bob": ManagedUser(NOW, NOW - timedelta(hours=30))})
    plan = plan_sync(state, deleting, NOW)
    assert kinds(plan) == [("delete_user", "bob")] and "no user bob any more" in plan.actions[0].reason
    assert guard_sync(state, plan, deleting.model_copy(update={"max_removals": 0})) == []
    assert plan_sync(state, deleting, NOW - timedelta(hours=10)).empty  # within the grace: nothing yet


# --- a hub name another directory entry carries now (a recycled uid, a reused UPN) -----------------
A, B = "uid=x,ou=people", "uid=b,ou=people"


def with_ids(state: SyncObserved) -> SyncObserved:
    """The records as sync writes them: each with its person's directory id."""
    return replace(state, managed={n: replace(r, directory_id=f"uid={n},ou=people") for n, r in state.managed.items()})


def reused_world(*, servers: bool = False, admin: bool = False, b: str = "x",
                 extra: frozenset[Member] = frozenset()) -> SyncObserved:
    """x was synced for entry uid=x (id A); A left, and entry uid=b (id B) carries the name ``b``."""
    start = empty_hub(snap(analysts=["x", "keep"], hub_admins=["x"]))
    state = with_ids(converge(start, plan_sync(start, POLICY, NOW)))
    x = replace(state.users["x"], admin=admin,
                servers={"": HubServer("x", "", True, None, NOW, NOW)} if servers else {})
    newcomer = Member(B, b, where="uid=b,ou=people,dc=org")
    snapshot = DirectorySnapshot("test", {"analysts": frozenset({newcomer, person("keep"), *extra}),
                                          "gpu-users": frozenset(), "hub-admins": frozenset({newcomer})})
    return replace(state, snapshot=snapshot, users={**state.users, "x": x})


def test_a_reused_name_deprovisions_the_leaver_and_holds_the_newcomer() -> None:
    world = reused_world(servers=True, admin=True)
    plan = plan_sync(world, POLICY, NOW)
    assert kinds(plan) == [("revoke_admin", "x"), ("remove_from_group", "dir-analysts:x"),
                           ("remove_from_group", "dir-hub-admins:x"), ("revoke_tokens", "x"),
                           ("stop_servers", "x"), ("deprovision", "x")]
    (note,) = [n for n in plan.notes if "not handed over" in n]
    assert note == ("hub name 'x' now belongs to directory entry uid=b,ou=people,dc=org (uid=b,ou=people) "
                    f"(id {B}), but hub user x was created for id {A}, who is no longer a member: x is "
                    f"deprovisioned, not handed over (it holds {A}'s data and tokens); uid=b,ou=people,dc=org "
                    "(uid=b,ou=people) gets access once an admin deletes or renames hub user x")
    assert plan.facts["removals"] == 1 and plan.facts["reused_names"] == 1
    # the same settings as for any leaver
    quiet = POLICY.model_copy(update={"stop_servers": False, "revoke_tokens": False})
    assert {k for k, _ in kinds(plan_sync(world, quiet, NOW))} == {"revoke_admin", "remove_from_group",
                                                                   "deprovision"}

    # every later run holds the newcomer too: the record stays the leaver's
    after = converge(world, plan)
    assert after.managed["x"].directory_id == A and not after.managed["x"].active
    again = plan_sync(after, POLICY, NOW)
    assert again.empty, kinds(again)
    assert any("x is kept deprovisioned, not handed over" in n for n in again.notes)
    assert again.facts["reused_names"] == 0 and guard_sync(after, again, POLICY.model_copy(
        update={"max_removals": 0})) == []

    # an admin deletes hub user x: the newcomer gets it as any newcomer
    deleted = replace(after, users={n: u for n, u in after.users.items() if n != "x"})
    fresh = plan_sync(deleted, POLICY, NOW)
    assert ("create_user", "x") in kinds(fresh) and ("add_to_group", "dir-analysts:x") in kinds(fresh)
    assert not any("handed over" in n for n in fresh.notes)


def test_a_reused_name_in_role_mode_is_taken_out_of_the_admin_mirror() -> None:
    plan = plan_sync(reused_world(admin=True), ROLE_POLICY, NOW)
    assert kinds(plan) == [("remove_from_group", "dir-analysts:x"), ("remove_from_group", "dir-hub-admins:x"),
                           ("revoke_tokens", "x"), ("deprovision", "x")]


def test_a_reused_name_counts_as_a_removal_and_a_changed_id_form_is_refused() -> None:
    world = reused_world()
    plan = plan_sync(world, POLICY, NOW)
    (reason,) = guard_sync(world, plan, POLICY.model_copy(update={"max_removals": 0}))
    assert reason.startswith("the plan removes 1 users, more than sync.max_removals = 0; 1 of them are hub "
                             "names another directory entry carries now") and "id_attribute" in reason
    # every entry known by another id (id_attribute changed; known by DN, an OU moved): all held, refused
    state = with_ids(managed_state(10))
    moved = DirectorySnapshot("test", {"analysts": frozenset(Member(f"uid={n},ou=moved", n) for n in state.users),
                                       "gpu-users": frozenset(), "hub-admins": frozenset()})
    world = replace(state, snapshot=moved)
    plan = plan_sync(world, POLICY, NOW)
    assert plan.counts() == {"remove_from_group": 10, "revoke_tokens": 10, "deprovision": 10}
    reasons = guard_sync(world, plan, POLICY.model_copy(update={"max_removal_percent": 20}))
    assert len(reasons) == 1 and "removes 10 of 10 managed users" in reasons[0]
    assert "10 of them are hub names another directory entry carries now" in reasons[0]
    assert "ids changed form" in reasons[0]


def test_no_reuse_where_the_entry_is_the_same() -> None:
    state = with_ids(managed_state(3))
    # the same entries under the ids of another form that name the recorded ids as theirs (LDAP:
    # entryUUID now, the DN recorded before): no change but the records' ids (apply writes them)
    upgraded = DirectorySnapshot("test", {
        "analysts": frozenset(Member(f"uuid-{n}", n, alias=f"uid={n},ou=people") for n in state.users),
        "gpu-users": frozenset(), "hub-admins": frozenset()})
    assert plan_sync(replace(state, snapshot=upgraded), POLICY, NOW).empty
    # ... also records of older versions, without an id, of such entries
    assert plan_sync(replace(managed_state(3), snapshot=upgraded), POLICY, NOW).empty
    # records of older versions hold no id: nothing says they are another person's
    world = reused_world(admin=True)
    older = replace(world, managed={n: replace(r, directory_id=None) for n, r in world.managed.items()})
    assert plan_sync(older, POLICY, NOW).empty
    # a rename's record of the new name, written ahead of the hub call, holds the same id
    world = renamed_world(admin=True)
    ahead = replace(world, managed={**world.managed, "anna": world.managed["ann"]})
    assert kinds(plan_sync(ahead, POLICY, NOW)) == [("rename_user", "ann")]


def test_a_renamed_leaver_takes_the_hub_user_along_and_the_newcomer_gets_the_name_next_run() -> None:
    # the old holder of x is still a member, as 'y'
    world = reused_world(extra=frozenset({Member(A, "y")}))
    plan = plan_sync(world, POLICY, NOW)
    # the hub keeps the renamed user's groups: y stays an analyst, and is no admin now
    assert kinds(plan) == [("rename_user", "x"), ("remove_from_group", "dir-hub-admins:y")]
    assert plan.actions[0].params == {"to": "y"}
    (note,) = [n for n in plan.notes if "hub name 'x'" in n]
    assert "now 'y' in the directory: x is renamed to y" in note and "gets x at the next run" in note
    after = converge(world, plan)
    nxt = plan_sync(after, POLICY, NOW)
    assert {("create_user", "x"), ("add_to_group", "dir-analysts:x"), ("add_to_group", "dir-hub-admins:x")} \
        <= set(kinds(nxt))
    assert plan_sync(converge(after, nxt), POLICY, NOW).empty


def test_a_renamed_leaver_with_a_running_server_leaves_the_groups_before_the_rename() -> None:
    world = reused_world(servers=True, extra=frozenset({Member(A, "y")}))
    plan = plan_sync(world, POLICY, NOW)
    # the hub's gate would let the newcomer in as x while the rename waits: x leaves the groups
    assert kinds(plan) == [("remove_from_group", "dir-analysts:x"), ("remove_from_group", "dir-hub-admins:x"),
                           ("stop_servers", "x")]
    assert any("renamed to y at a later run" in n for n in plan.notes)
    after = converge(world, plan)
    nxt = plan_sync(after, POLICY, NOW)
    assert kinds(nxt)[0] == ("rename_user", "x") and ("add_to_group", "dir-analysts:y") in kinds(nxt)


def test_two_entries_swapping_names_are_held_with_a_note() -> None:
    start = empty_hub(snap(analysts=["x", "y"]))
    state = with_ids(converge(start, plan_sync(start, POLICY, NOW)))
    swapped = DirectorySnapshot("test", {"analysts": frozenset({Member("uid=x,ou=people", "y"),
                                                                Member("uid=y,ou=people", "x")}),
                                         "gpu-users": frozenset(), "hub-admins": frozenset()})
    plan = plan_sync(replace(state, snapshot=swapped), POLICY, NOW)
    assert plan.counts() == {"remove_from_group": 2, "revoke_tokens": 2, "deprovision": 2}
    notes = [n for n in plan.notes if "swap" in n]
    assert len(notes) == 2 and all("not handed over" in n for n in notes)


def test_a_reused_name_whose_old_holder_has_no_usable_name_is_not_handed_over() -> None:
    world = reused_world(extra=frozenset({Member(A, "x y")}))
    plan = plan_sync(world, POLICY, NOW)
    assert ("deprovision", "x") in kinds(plan) and not any(a.kind == "add_to_group" for a in plan.actions)
    assert any("still a member but has no usable hub name now: x is deprovisioned" in n for n in plan.notes)


def test_a_deprovisioned_person_holding_the_admin_flag_or_a_server_again_is_fixed_each_run() -> None:
    """bob left and was deprovisioned; since then a hub admin set his admin flag and a server of his
    started: in flag mode each run clears the flag, with sync.stop_servers each run stops the
    server; role mode does not touch the flag, stop_servers off does not stop the server, and a
    deletion takes both."""
    server = HubServer("bob", "", True, None, NOW, NOW)
    state = SyncObserved(snap(analysts=["alice"]),
                         {"alice": HubUser("alice", False, frozenset()),
                          "bob": HubUser("bob", True, frozenset(), servers={"": server})},
                         {g: HubGroup(g, frozenset({"alice"} if g == "dir-analysts" else ()))
                          for g in ("dir-analysts", "dir-gpu-users", "dir-hub-admins")},
                         {"alice": ManagedUser(NOW), "bob": ManagedUser(NOW, NOW - timedelta(hours=10))})
    plan = plan_sync(state, POLICY, NOW)
    assert kinds(plan) == [("revoke_admin", "bob"), ("stop_servers", "bob")], plan.render()
    assert "holds the hub's admin flag" in plan.actions[0].reason and "started since" in plan.actions[1].reason
    assert kinds(plan_sync(state, ROLE_POLICY, NOW)) == [("stop_servers", "bob")]
    assert kinds(plan_sync(state, POLICY.model_copy(update={"stop_servers": False}), NOW)) == [("revoke_admin", "bob")]
    deleting = POLICY.model_copy(update={"delete_users": True, "delete_grace_hours": 1})
    assert kinds(plan_sync(state, deleting, NOW)) == [("delete_user", "bob")]


def test_a_deprovisioned_person_found_in_a_synced_group_again_is_taken_out_each_run() -> None:
    """bob left and was deprovisioned, yet the hub lists him in a synced group: a group write of a
    run killed before he left that the hub applied only after the next run had read the group, or
    an admin's addition. Each run takes him out again; he stays deprovisioned (no second
    deprovisioning, his removal counted once), and a group sync does not mirror keeps him."""
    groups = {"dir-analysts": {"alice", "bob"}, "dir-gpu-users": {"alice", "bob"}, "dir-hub-admins": set(),
              "lab": {"bob"}}
    state = SyncObserved(snap(analysts=["alice"], gpu_users=["alice"]),
                         {"alice": HubUser("alice", False, frozenset()), "bob": HubUser("bob", False, frozenset())},
                         {g: HubGroup(g, frozenset(m)) for g, m in groups.items()},
                         {"alice": ManagedUser(NOW), "bob": ManagedUser(NOW, NOW - timedelta(hours=10))})
    plan = plan_sync(state, POLICY, NOW)
    assert kinds(plan) == [("remove_from_group", "dir-analysts:bob"), ("remove_from_group", "dir-gpu-users:bob")]
    assert guard_sync(state, plan, POLICY) == []
    assert plan_sync(converge(state, plan), POLICY, NOW).empty


@pytest.mark.parametrize(
    "bob",
    [
        [Member("uid=bob,ou=people", "bob smith")],  # not a valid hub name
        [Member("uid=bob,ou=people", None)],  # the username attribute is gone (or unreadable)
        [Member("uid=bob,ou=people", "Robert"), Member("uid=robert,ou=people", "robert")],  # a clash
    ],
)
def test_a_deprovisioned_person_back_in_a_group_without_a_usable_name_is_not_deleted(bob: list[Member]) -> None:
    """bob left and was deprovisioned; his entry is a member again, but its username is unusable
    now. Membership under an unusable name is unknown (an active one is kept as they are): he is
    not taken back (no name to take him back under), and not deleted either with
    sync.delete_users, which would take his hub user and (z2jh) volume while the directory lists
    him; a note names the fix. Once the entry is fixed he is taken back; really gone, deleted."""
    state = SyncObserved(snap(analysts=["alice"]),
                         {"alice": HubUser("alice", False, frozenset()), "bob": HubUser("bob", False, frozenset())},
                         {g: HubGroup(g, frozenset({"alice"} if g == "dir-analysts" else ()))
                          for g in ("dir-analysts", "dir-gpu-users", "dir-hub-admins")},
                         {"alice": ManagedUser(NOW, None, "uid=alice,ou=people"),
                          "bob": ManagedUser(NOW - timedelta(days=40), NOW - timedelta(days=31), "uid=bob,ou=people")})
    deleting = POLICY.model_copy(update={"delete_users": True, "delete_grace_hours": 720})
    snapshot = DirectorySnapshot("test", {"analysts": frozenset({person("alice"), *bob}),
                                          "gpu-users": frozenset(), "hub-admins": frozenset()})
    back = replace(state, snapshot=snapshot)
    plan = plan_sync(back, deleting, NOW)
    assert not any(a.target == "bob" or a.params.get("user") == "bob" for a in plan.actions), plan.render()
    assert any("bob is kept deprovisioned, not deleted" in n and "fix the entry" in n for n in plan.notes), plan.notes
    # the entry fixed: taken back
    fixed = replace(state, snapshot=snap(analysts=["alice", "bob"]))
    assert {("manage_user", "bob"), ("add_to_group", "dir-analysts:bob")} <= set(kinds(plan_sync(fixed, deleting, NOW)))
    # no longer a member: deleted after the grace, as before
    assert kinds(plan_sync(state, deleting, NOW)) == [("delete_user", "bob")]


def test_a_renamed_person_whose_old_name_two_other_entries_claim_now_is_renamed() -> None:
    """ann is 'anna' in the directory now, and two other entries both carry 'ann' (a clash). The
    hub user ann is her entry's (its record's id), whoever gets the name 'ann' once the clash is
    fixed: she is renamed, keeping her groups, tokens and volume. Skipping the rename while the
    clash lasts gave her a new, empty anna, and once the clash cleared the old ann was
    deprovisioned (and with sync.delete_users deleted) as a leaver, her data with it."""
    world = renamed_world(admin=True)
    claimants = frozenset({Member("uid=ann2,ou=people", "ann"), Member("uid=ann3,ou=people", "Ann")})
    groups = {**world.snapshot.groups, "analysts": world.snapshot.groups["analysts"] | claimants}
    clash = replace(world, snapshot=replace(world.snapshot, groups=groups))
    plan = plan_sync(clash, POLICY, NOW)
    assert kinds(plan) == [("rename_user", "ann")], plan.render()
    assert plan.actions[0].params == {"to": "anna"}
    assert plan.facts["renames"] == 1 and plan.facts["removals"] == 0
    assert any("'ann' is claimed by several directory entries" in n for n in plan.notes)
    after = converge(clash, plan)
    assert "ann" not in after.users and after.managed["anna"] == world.managed["ann"]
    assert plan_sync(after, POLICY, NOW).empty  # nothing is done for 'ann' while the clash lasts
    # the clash fixed: the entry that keeps 'ann' gets a new hub user, nobody is deprovisioned
    fixed = {**groups, "analysts": groups["analysts"] - {Member("uid=ann3,ou=people", "Ann")}}
    nxt = plan_sync(replace(after, snapshot=replace(world.snapshot, groups=fixed)), POLICY, NOW)
    assert kinds(nxt) == [("create_user", "ann"), ("add_to_group", "dir-analysts:ann")], nxt.render()
    # with a running server: stopped first (the rename follows next run), no new, empty anna; ann
    # leaves the groups meanwhile (the hub's gate would let whichever claimant logs in as ann in)
    running = replace(clash, users={**clash.users, "ann": replace(
        clash.users["ann"], servers={"": HubServer("ann", "", True, None, NOW, NOW)})})
    waits = plan_sync(running, POLICY, NOW)
    assert kinds(waits) == [("remove_from_group", "dir-analysts:ann"), ("remove_from_group", "dir-hub-admins:ann"),
                            ("stop_servers", "ann")], waits.render()
    stopped = converge(running, waits)
    assert kinds(plan_sync(stopped, POLICY, NOW)) == [("rename_user", "ann"), ("add_to_group", "dir-analysts:anna"),
                                                      ("add_to_group", "dir-hub-admins:anna")]

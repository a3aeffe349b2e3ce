"""The sync guard counts removals over a window of runs, and refuses mass membership loss of a
mirrored group. Pure: plan and guard with an injected clock, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hubpilot.config.sync import SyncSettings
from hubpilot.loop import Plan
from hubpilot.ports.directory import DirectorySnapshot, Member
from hubpilot.ports.hub import HubGroup, HubUser
from hubpilot.sync import ManagedUser, SyncObserved, guard_sync, plan_sync

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
POLICY = SyncSettings(users_groups=["analysts", "gpu-users"], admin_groups=["hub-admins"],
                      max_removals=50, max_removal_percent=20, removal_window_hours=24)


def names(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i:03}" for i in range(n)]


def snap(analysts: list[str], gpu: list[str] = (), admins: list[str] = ()) -> DirectorySnapshot:  # type: ignore[assignment]
    def members(ns: list[str]) -> frozenset[Member]:
        return frozenset(Member(id=f"uid={n},ou=people", username=n) for n in ns)
    return DirectorySnapshot("test", {"analysts": members(analysts), "gpu-users": members(list(gpu)),
                                      "hub-admins": members(list(admins))})


def hub(analysts: list[str], gpu: list[str] = (), admins: list[str] = (), *,  # type: ignore[assignment]
        gone: dict[str, datetime] | None = None, approved: datetime | None = None,
        policy: SyncSettings = POLICY) -> SyncObserved:
    """A hub in step with a directory of these groups, plus people deprovisioned at the given times
    (still hub users, in no group); the directory answers the same until a test replaces it."""
    gone = gone or {}
    everyone = sorted({*analysts, *gpu, *admins})
    managed = {n: ManagedUser(NOW - 100 * H, directory_id=f"uid={n},ou=people") for n in everyone}
    managed |= {n: ManagedUser(NOW - 100 * H, at, f"uid={n},ou=people") for n, at in gone.items()}
    users = {n: HubUser(n, False, frozenset()) for n in [*everyone, *gone]}
    prefix = policy.group_prefix
    groups = {f"{prefix}analysts": HubGroup(f"{prefix}analysts", frozenset(analysts)),
              f"{prefix}gpu-users": HubGroup(f"{prefix}gpu-users", frozenset(gpu)),
              f"{prefix}hub-admins": HubGroup(f"{prefix}hub-admins", frozenset(admins))}
    return SyncObserved(snap(analysts, gpu, admins), users, groups, managed, removals_approved_at=approved)


def judge(observed: SyncObserved, policy: SyncSettings = POLICY, now: datetime = NOW) -> tuple[Plan, list[str]]:
    plan = plan_sync(observed, policy, now)
    return plan, guard_sync(observed, plan, policy)


# --- removals that add up across runs -----------------------------------------------------------

def test_removals_of_recent_runs_count_with_the_plans_own_against_the_share_limit() -> None:
    """50 people were managed; 8 were removed in the last hours, each run under the 20 % limit. A
    plan removing 4 more takes 12 of the 50 (24 %) within the window: refused, with the numbers,
    what the window is and what to do. With the window off the plan passes, as before."""
    people = names(50)
    observed = hub(people[12:], gone={n: NOW - 3 * H for n in people[:8]})
    observed = replace(observed, snapshot=snap(people[12:]))  # four more left
    # the hub still has them: managed and in the group
    observed = replace(observed, managed={**observed.managed, **{
        n: ManagedUser(NOW - 100 * H, directory_id=f"uid={n},ou=people") for n in people[8:12]}},
        users={**observed.users, **{n: HubUser(n, False, frozenset()) for n in people[8:12]}},
        groups={**observed.groups, "dir-analysts": HubGroup("dir-analysts", frozenset(people[8:]))})
    plan, reasons = judge(observed)
    assert plan.counts()["deprovision"] == 4 and plan.facts["recent_removals"] == 8
    assert len(reasons) == 1, reasons
    assert reasons[0].startswith("the plan removes 4 users and sync removed 8 in the last 24 h "
                                 "(sync.removal_window_hours): 12 in all of 50 managed users (24 %), "
                                 "more than sync.max_removal_percent = 20 %"), reasons[0]
    assert f"approve the plan {plan.id} (the run says how)" in reasons[0]  # the run's approval line: how
    assert "fix the directory" in reasons[0] and "restarts the count" in reasons[0]

    off = POLICY.model_copy(update={"removal_window_hours": 0})
    plan_off, reasons_off = judge(observed, off)
    assert plan_off.id == plan.id and plan_off.facts["recent_removals"] == 0
    assert reasons_off == []  # 4 of 42 alone is under 20 %


def test_recent_removals_count_against_the_number_limit() -> None:
    people = names(30)
    policy = POLICY.model_copy(update={"max_removals": 5, "max_removal_percent": 100})
    observed = hub(people[:28], gone={n: NOW - 2 * H for n in people[28:]}, policy=policy)
    observed = replace(observed, snapshot=snap(people[:24]))
    plan, reasons = judge(observed, policy)
    assert plan.counts()["deprovision"] == 4
    assert len(reasons) == 1 and reasons[0].startswith(
        "the plan removes 4 users and sync removed 2 in the last 24 h (sync.removal_window_hours): "
        "6 in all, more than sync.max_removals = 5"), reasons
    # one fewer removed now: 5 in all is not more than 5
    fewer = replace(observed, snapshot=snap(people[:25]))
    assert judge(fewer, policy)[1] == []


def test_the_window_starts_just_after_now_minus_its_length() -> None:
    """A removal exactly removal_window_hours ago is out of the window, one a second later is in."""
    people = names(10)
    policy = POLICY.model_copy(update={"max_removals": 1, "max_removal_percent": 100, "removal_window_hours": 6})
    edge = hub(people[:9], gone={people[9]: NOW - 6 * H}, policy=policy)
    edge = replace(edge, snapshot=snap(people[:8]))  # one more leaves
    plan, reasons = judge(edge, policy)
    assert plan.facts["recent_removals"] == 0 and reasons == []
    inside = replace(edge, managed={**edge.managed,
                                    people[9]: ManagedUser(NOW - 100 * H, NOW - 6 * H + timedelta(seconds=1))})
    plan, reasons = judge(inside, policy)
    assert plan.facts["recent_removals"] == 1
    assert len(reasons) == 1 and "removes 1 users and sync removed 1 in the last 6 h" in reasons[0]
    # the same removals, judged an hour later: out of the window
    assert judge(inside, policy, NOW + H)[1] == []
    # the window off (0): each plan alone, also beside a removal another instance stamped ahead
    ahead = replace(edge, managed={**edge.managed, people[9]: ManagedUser(NOW - 100 * H, NOW + timedelta(minutes=1))})
    off = policy.model_copy(update={"removal_window_hours": 0})
    plan, reasons = judge(ahead, off)
    assert plan.facts["recent_removals"] == 0 and reasons == []


def test_a_gradual_loss_over_runs_stops_at_the_limit() -> None:
    """Four people leave at each quarter-hour run: 8 % and 16 % of the 50 pass, the third run
    (24 %) is refused; each run alone would pass (the window off)."""
    people = names(50)
    observed = hub(people)
    off = POLICY.model_copy(update={"removal_window_hours": 0})
    for run in range(1, 4):
        now = NOW + run * H / 4
        observed = replace(observed, snapshot=snap(people[4 * run:]))
        plan, reasons = judge(observed, POLICY, now)
        assert plan.counts()["deprovision"] == 4
        assert judge(observed, off, now)[1] == []
        if run < 3:
            assert reasons == [], (run, reasons)
            observed = applied(observed, plan, now)
        else:
            assert len(reasons) == 1 and "12 in all of 50 managed users (24 %)" in reasons[0], reasons


def applied(observed: SyncObserved, plan: Plan, now: datetime) -> SyncObserved:
    """The removals of ``plan`` recorded at ``now`` (the test model of apply for these plans)."""
    managed = dict(observed.managed)
    groups = {k: set(v.users) for k, v in observed.groups.items()}
    for a in plan.actions:
        if a.kind == "deprovision":
            managed[a.target] = replace(managed[a.target], deprovisioned_at=now)
        elif a.kind == "remove_from_group":
            groups[a.target].discard(a.params["user"])
        elif a.kind == "manage_user":
            managed[a.target] = ManagedUser(now, directory_id=managed[a.target].directory_id)
        else:
            assert a.kind in ("revoke_tokens", "add_to_group"), a
            if a.kind == "add_to_group":
                groups[a.target].add(a.params["user"])
    return replace(observed, managed=managed, groups={k: HubGroup(k, frozenset(v)) for k, v in groups.items()})


def test_an_approval_restarts_the_count() -> None:
    """The admin approved a plan refused for its removals at the time apply recorded them: removals
    up to that moment (the approved plan's own among them) are not counted again, so routine
    removals pass afterwards; removals after the approval count again."""
    people = names(50)
    approval = NOW - 2 * H
    gone = {n: NOW - 5 * H for n in people[:8]} | {n: approval for n in people[8:14]}  # 6 approved ones
    observed = hub(people[14:], gone=gone, approved=approval)
    observed = replace(observed, snapshot=snap(people[15:]))  # one routine leaver
    plan, reasons = judge(observed)
    assert plan.counts()["deprovision"] == 1 and plan.facts["recent_removals"] == 0 and reasons == []
    # without the approval the 14 earlier removals would count: refused
    unapproved = replace(observed, removals_approved_at=None)
    plan, reasons = judge(unapproved)
    assert plan.facts["recent_removals"] == 14 and len(reasons) == 1
    # removals after the approval count: 10 more since, + this plan's 1 = 11 of the 36 managed since
    later = {n: approval + timedelta(seconds=1) for n in people[14:24]}
    after = hub(people[24:], gone=gone | later, approved=approval)
    after = replace(after, snapshot=snap(people[25:]))
    plan, reasons = judge(after)
    assert plan.facts["recent_removals"] == 10
    assert len(reasons) == 1 and "removes 1 users and sync removed 10" in reasons[0] \
        and "11 in all of 36 managed users (31 %)" in reasons[0], reasons


def test_people_who_came_back_are_not_counted() -> None:
    """A person removed within the window who is back in a synced group now returns in this plan;
    one who came back at an earlier run has an active record again: neither counts."""
    people = names(20)
    policy = POLICY.model_copy(update={"max_removals": 1, "max_removal_percent": 100})
    # p000 and p001 left an hour ago; p001 is back now; p002 came back earlier (record active)
    observed = hub(people[2:], gone={people[0]: NOW - H, people[1]: NOW - H}, policy=policy)
    observed = replace(observed, managed={**observed.managed,
                                          people[2]: ManagedUser(NOW - 30 * timedelta(minutes=1))})
    back = replace(observed, snapshot=snap([people[1], *people[2:19]]))  # p001 back; p019 leaves
    plan, reasons = judge(back, policy)
    assert ("manage_user", people[1]) in [(a.kind, a.target) for a in plan.actions]
    assert plan.counts()["deprovision"] == 1
    assert plan.facts["recent_removals"] == 1  # p000 only
    assert len(reasons) == 1 and "removes 1 users and sync removed 1 in the last 24 h" in reasons[0]
    # with p000 back too, only this plan's leaver counts
    both = replace(observed, snapshot=snap([people[0], people[1], *people[2:19]]))
    plan, reasons = judge(both, policy)
    assert plan.facts["recent_removals"] == 0 and reasons == []


def test_a_plan_that_removes_nobody_is_not_refused_for_recent_removals() -> None:
    """Newcomers still arrive after many removals: only a plan that removes someone is judged."""
    people = names(20)
    observed = hub(people[10:], gone={n: NOW - H for n in people[:10]})
    observed = replace(observed, snapshot=snap([*people[10:], "newcomer"]))
    plan, reasons = judge(observed)
    assert plan.facts["recent_removals"] == 10 and "deprovision" not in plan.counts() and reasons == []


# --- mass membership loss of a mirrored group ---------------------------------------------------

def test_a_partly_hidden_group_that_takes_most_people_out_of_its_mirror_is_refused() -> None:
    """40 of the 100 analysts are in gpu-users; an answer that hides 30 of them (an ACL) takes
    them out of the mirror while they stay hub users. Refused with the numbers and what to do."""
    people = names(100)
    gpu = people[:40]
    observed = hub(people, gpu)
    hidden = replace(observed, snapshot=snap(people, gpu[30:]))
    plan, reasons = judge(hidden)
    assert plan.counts() == {"remove_from_group": 30}
    assert len(reasons) == 1, reasons
    assert reasons[0].startswith(
        "the plan takes 30 of the 40 members out of hub group dir-gpu-users (directory group 'gpu-users'; "
        "75 %) who stay hub users, more than sync.max_removal_percent = 20 % and more than "
        "sync.group_removal_floor = 5; they lose what the group grants (profiles, GPUs)"), reasons[0]
    assert f"approve the plan {plan.id}" in reasons[0] and "fix the directory" in reasons[0]
    # 8 of 40 is 20 %: not more than the share; 9 is
    assert judge(replace(observed, snapshot=snap(people, gpu[8:])))[1] == []
    assert len(judge(replace(observed, snapshot=snap(people, gpu[9:])))[1]) == 1


def test_small_groups_churn_under_the_floor_passes() -> None:
    """2 of a 5-person admin group (40 %) is ordinary churn: not refused under the floor of 5. Above
    the floor the share counts (6 of 7); a lower floor refuses smaller losses."""
    people = names(30)
    admins = people[:5]
    observed = hub(people, admins=admins)
    plan, reasons = judge(replace(observed, snapshot=snap(people, admins=admins[2:])))
    assert plan.counts() == {"remove_from_group": 2} and reasons == []
    # all but one of 6 admins: 5 is not more than the floor
    six = hub(people, admins=people[:6])
    assert judge(replace(six, snapshot=snap(people, admins=people[5:6])))[1] == []
    seven = hub(people, admins=people[:7])
    plan, reasons = judge(replace(seven, snapshot=snap(people, admins=people[6:7])))
    assert len(reasons) == 1 and "takes 6 of the 7 members out of hub group dir-hub-admins" in reasons[0]
    assert "they lose admin rights" in reasons[0]
    strict = POLICY.model_copy(update={"group_removal_floor": 1})
    plan, reasons = judge(replace(observed, snapshot=snap(people, admins=admins[2:])), strict)
    assert len(reasons) == 1 and "takes 2 of the 5 members out of hub group dir-hub-admins" in reasons[0]


def test_an_admin_mirror_in_flag_mode_is_judged_too() -> None:
    """In flag mode the plan revokes the admin flag of those who leave the admin group as well."""
    people = names(30)
    flag = POLICY.model_copy(update={"admin_mode": "flag"})
    admins = people[:10]
    observed = hub(people, admins=admins, policy=flag)
    observed = replace(observed, users={n: replace(u, admin=n in admins) for n, u in observed.users.items()})
    plan, reasons = judge(replace(observed, snapshot=snap(people, admins=admins[:3])), flag)
    assert plan.counts() == {"remove_from_group": 7, "revoke_admin": 7}
    assert len(reasons) == 1 and "takes 7 of the 10 members out of hub group dir-hub-admins" in reasons[0] \
        and "admin rights" in reasons[0]


def test_people_who_leave_the_hub_count_as_removals_not_as_group_loss() -> None:
    """Leavers are judged by the removal limits (here well under them); a group loses only them."""
    people = names(100)
    gpu = people[:10]
    observed = hub(people, gpu)
    plan, reasons = judge(replace(observed, snapshot=snap(people[8:], gpu[8:])))  # 8 leave entirely
    assert plan.counts()["deprovision"] == 8 and reasons == []


def test_an_empty_answer_is_refused_once_as_such() -> None:
    people = names(30)
    observed = hub(people, people[:10])
    _, reasons = judge(replace(observed, snapshot=snap(people, [])))
    assert len(reasons) == 1 and "'gpu-users' is empty" in reasons[0], reasons


def test_an_empty_answer_is_judged_by_the_managed_users_its_mirror_had() -> None:
    """An empty directory group whose mirror holds only a hub user sync does not manage (a local
    admin put in by hand, never touched): nobody managed is lost, the plan is not refused."""
    people = names(30)
    observed = hub(people, people[:10])
    groups = {**observed.groups, "dir-gpu-users": HubGroup("dir-gpu-users", frozenset({"root-admin"}))}
    observed = replace(observed, users={**observed.users, "root-admin": HubUser("root-admin", True, frozenset())},
                       groups=groups, snapshot=snap(people, []))
    plan, reasons = judge(observed)
    assert "gpu-users" in plan.facts["empty_groups"] and plan.empty, plan.render()
    assert reasons == []


def test_a_mirror_no_longer_configured_is_not_judged() -> None:
    """A retired mirror loses only people who leave the hub: the removal limits judge them."""
    people = names(100)
    observed = hub(people)
    observed = replace(observed, mirrors=frozenset({"dir-old"}),
                       groups={**observed.groups, "dir-old": HubGroup("dir-old", frozenset(people[:8]))})
    plan, reasons = judge(replace(observed, snapshot=snap(people[6:])))
    assert sum(1 for a in plan.actions if a.kind == "remove_from_group" and a.target == "dir-old") == 6
    assert reasons == []


def test_a_rename_is_no_group_loss() -> None:
    """A renamed person keeps their groups (the hub renames the user): not taken out."""
    people = names(20)
    gpu = people[:10]
    observed = hub(people, gpu)
    renamed = DirectorySnapshot("test", {
        g: frozenset(Member(m.id, m.username + "x" if m.username in gpu else m.username) for m in ms)
        for g, ms in observed.snapshot.groups.items()})
    policy = POLICY.model_copy(update={"max_removal_percent": 100})  # the renames' own limit aside
    plan, _ = judge(replace(observed, snapshot=renamed), policy)
    assert plan.counts() == {"rename_user": 10}
    tight = POLICY.model_copy(update={"group_removal_floor": 0})
    assert not any("hub group" in r for r in judge(replace(observed, snapshot=renamed), tight)[1])


def test_people_taken_out_of_a_group_in_recent_runs_count_with_the_plans_own() -> None:
    """30 of 30 analysts were in gpu-users; sync took 5 out an hour ago (then under the floor of
    5). A plan taking 3 more out: 8 of the 30 members the group had when the window began (27 %),
    over 20 % and over the floor: refused with both numbers. Stamps older than the window, people
    back in the directory's group or the hub's, and people no longer wanted as hub users (counted as
    removals) do not count; the window off (0) judges the plan alone."""
    people = names(30)
    earlier = {n: NOW - H for n in people[:5]}
    now_in = people[5:]
    observed = replace(hub(people, now_in), snapshot=snap(people, now_in[3:]),
                       group_removed={"dir-gpu-users": earlier})
    plan, reasons = judge(observed)
    assert plan.counts() == {"remove_from_group": 3}
    assert plan.facts["recent_group_removals"] == {"dir-gpu-users": 5}
    assert len(reasons) == 1, reasons
    assert reasons[0].startswith(
        "the plan takes 3 of the 25 members out of hub group dir-gpu-users (directory group 'gpu-users') and "
        "sync took 5 out in the last 24 h (sync.removal_window_hours): 8 of the 30 members then (27 %) who stay "
        "hub users, more than sync.max_removal_percent = 20 %"), reasons[0]
    assert "degrades over several runs" in reasons[0] and "restarts the count" in reasons[0]

    def passes(obs: SyncObserved, policy: SyncSettings = POLICY) -> bool:
        plan, reasons = judge(obs, policy)
        return plan.counts() == {"remove_from_group": 3} and reasons == []

    assert passes(replace(observed, group_removed={"dir-gpu-users": {n: NOW - 25 * H for n in people[:5]}}))
    # the window starts just after now minus its length, as for removals
    assert passes(replace(observed, group_removed={"dir-gpu-users": {n: NOW - 24 * H for n in people[:5]}}))
    assert not passes(replace(observed, group_removed={"dir-gpu-users": {n: NOW - 23 * H for n in people[:5]}}))
    assert passes(observed, POLICY.model_copy(update={"removal_window_hours": 0}))
    # two of the five are back in the directory's group, one in the hub's (added by hand): 5 + ... of 27
    back = replace(observed, snapshot=snap(people, [*people[:2], *now_in[3:]]))
    assert judge(back)[0].facts["recent_group_removals"] == {"dir-gpu-users": 3}
    by_hand = replace(observed, groups={**observed.groups, "dir-gpu-users": HubGroup(
        "dir-gpu-users", frozenset([*now_in, people[0]]))})
    assert judge(by_hand)[0].facts["recent_group_removals"] == {"dir-gpu-users": 4}
    # the five left the hub meanwhile: removals, not group loss
    left = replace(observed, snapshot=snap(people[5:], now_in[3:]))
    assert "recent_group_removals" not in judge(left)[0].facts


def test_earlier_group_loss_refuses_no_plan_that_takes_nobody_out_of_that_group() -> None:
    people = names(30)
    observed = replace(hub(people, people[10:]), group_removed={"dir-gpu-users": {n: NOW - H for n in people[:10]}})
    plan, reasons = judge(observed)
    assert plan.empty and reasons == []
    newcomer = replace(observed, snapshot=snap([*people, "new"], [*people[10:], "new"]))
    plan, reasons = judge(newcomer)
    assert plan.counts()["add_to_group"] == 2 and reasons == [], (plan.counts(), reasons)


def test_a_leaver_whose_name_another_person_carries_now_still_counts() -> None:
    """Five people left within the window; an admin deleted hub user p000 by hand and another
    directory entry (a recycled uid) carries p000 now: p000 is a newcomer, not the leaver back.
    The leaver's removal still counts, so the guard allows no extra removal per reused name."""
    people = names(30)
    policy = POLICY.model_copy(update={"max_removals": 5, "max_removal_percent": 100})
    observed = hub(people[5:], gone={n: NOW - 2 * H for n in people[:5]}, policy=policy)
    users = {n: u for n, u in observed.users.items() if n != people[0]}  # deleted by hand
    newcomer = Member(id="uid=newcomer,ou=people", username=people[0])
    directory = snap(people[5:28])  # two more leave
    directory = replace(directory, groups={**directory.groups,
                                           "analysts": directory.groups["analysts"] | {newcomer}})
    plan, reasons = judge(replace(observed, users=users, snapshot=directory), policy)
    assert ("create_user", people[0]) in [(a.kind, a.target) for a in plan.actions]
    assert plan.counts()["deprovision"] == 2
    assert plan.facts["recent_removals"] == 5
    assert len(reasons) == 1 and reasons[0].startswith(
        "the plan removes 2 users and sync removed 5 in the last 24 h (sync.removal_window_hours): 7 in all"), reasons
    # the leaver back under their name (their own entry) returns in this plan: not counted
    own = replace(directory, groups={**directory.groups, "analysts": directory.groups["analysts"] - {newcomer} | {
        Member(id=f"uid={people[0]},ou=people", username=people[0])}})
    plan, _ = judge(replace(observed, users=users, snapshot=own), policy)
    assert plan.facts["recent_removals"] == 4


def test_a_leavers_group_stamps_are_no_group_loss_of_another_person_carrying_the_name() -> None:
    """p000, in gpu-users, left an hour ago (deprovisioned; sync stamped their removal from the
    group). A recycled uid gives p000 to another directory entry, in analysts only, whose hub user
    is not made yet (the leaver's record still holds the name). The stamp is the leaver's, who
    counts as a removal: no group loss of the newcomer. The leaver back under their own entry
    is (they stay a hub user who lost gpu-users)."""
    people = names(30)
    observed = replace(hub(people[1:], people[10:], gone={people[0]: NOW - H}),
                       group_removed={"dir-gpu-users": {people[0]: NOW - H}})
    newcomer = Member(id="uid=newcomer,ou=people", username=people[0])
    directory = snap(people[1:], people[10:])
    reused = replace(directory, groups={**directory.groups, "analysts": directory.groups["analysts"] | {newcomer}})
    assert "recent_group_removals" not in judge(replace(observed, snapshot=reused))[0].facts
    gone = {n: r for n, r in observed.managed.items() if n != people[0]}  # deleted: only its id is kept
    deleted = replace(observed, snapshot=reused, managed=gone, deleted={people[0]: NOW - H},
                      deleted_ids={people[0]: f"uid={people[0]},ou=people"})
    assert "recent_group_removals" not in judge(deleted)[0].facts
    back = snap(people, people[10:])
    assert judge(replace(observed, snapshot=back))[0].facts["recent_group_removals"] == {"dir-gpu-users": 1}

"""The pure part of culling: policy, plan and guard (no hub needed; the real hub tests are in
test_cull_realhub.py)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from hubpilot.config.cull import CullSettings
from hubpilot.cull import CullObserved, guard_cull, limits_for, plan_cull
from hubpilot.cull.policy import human
from hubpilot.ports.hub import HubServer, HubUser
from hubpilot.schedule import longest_gap
from hubpilot.settings import SettingsError, load_settings

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def ago(**kw: float) -> datetime:
    return NOW - timedelta(**kw)


def server(user: str, name: str = "", *, idle: timedelta | None = None, age: timedelta = timedelta(days=1),
           ready: bool = True, pending: str | None = None, profile: str | None = None) -> HubServer:
    return HubServer(
        user=user, name=name, ready=ready, pending=pending, started=NOW - age,
        last_activity=NOW - idle if idle is not None else None,
        user_options={"profile": profile} if profile else {},
    )


def user(name: str, *servers: HubServer, groups: tuple[str, ...] = (), admin: bool = False,
         last_activity: datetime | None = None, created: datetime | None = None) -> HubUser:
    return HubUser(name=name, admin=admin, groups=frozenset(groups), created=created or ago(days=100),
                   last_activity=last_activity, servers={s.name: s for s in servers})


def settings(**kw: object) -> CullSettings:
    # these tests plan single rounds at chosen times; a schedule of every second fits any timeout
    return CullSettings.model_validate({"inactivity_timeout": 3600, "schedule": "* * * * * *", **kw})


def targets(plan, kind: str | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    return [a.target for a in plan.actions if kind is None or a.kind == kind]


def test_idle_server_stopped_active_kept_with_reasons() -> None:
    obs = CullObserved((
        user("ann", server("ann", idle=timedelta(hours=2, minutes=3))),
        user("bob", server("bob", idle=timedelta(minutes=5))),
    ))
    plan = plan_cull(obs, settings(), NOW)
    assert targets(plan) == ["ann"]
    (action,) = plan.actions
    assert action.kind == "stop_server" and action.params == {"user": "ann", "server": ""}
    assert action.reason == "idle for 2h 03m (policy default: 1h)"
    assert "kept bob: active 5m ago (policy default: 1h)" in plan.notes
    assert plan.facts["to_stop"] == 1 and plan.facts["kept"] == 1 and plan.facts["servers_seen"] == 2


def test_exactly_at_timeout_is_idle_and_one_second_short_is_not() -> None:
    obs = CullObserved((user("a", server("a", idle=timedelta(seconds=3600))),
                        user("b", server("b", idle=timedelta(seconds=3599)))))
    assert targets(plan_cull(obs, settings(), NOW)) == ["a"]



def test_exactly_at_max_age_is_stopped_and_one_second_short_is_not() -> None:
    obs = CullObserved((user("a", server("a", idle=timedelta(minutes=1), age=timedelta(seconds=86400))),
                        user("b", server("b", idle=timedelta(minutes=1), age=timedelta(seconds=86399)))))
    assert targets(plan_cull(obs, settings(max_age=86400), NOW)) == ["a"]


def test_a_user_exactly_at_the_timeout_is_long_inactive_and_one_second_short_is_not() -> None:
    obs = CullObserved((), inactive=(user("a", last_activity=ago(seconds=3600)),
                                     user("b", last_activity=ago(seconds=3599))))
    plan = plan_cull(obs, settings(cull_users=True), NOW)
    assert [u["user"] for u in plan.facts["inactive_users"]] == ["a"]


def test_inactivity_falls_back_to_started() -> None:
    obs = CullObserved((
        user("never", server("never", idle=None, age=timedelta(hours=3))),
        user("fresh", server("fresh", idle=None, age=timedelta(minutes=10))),
    ))
    plan = plan_cull(obs, settings(), NOW)
    assert targets(plan) == ["never"]
    assert plan.actions[0].reason.startswith("idle for 3h ")


def test_pending_and_not_ready_servers_are_left_alone() -> None:
    long = timedelta(days=3)
    obs = CullObserved((
        user("spawning", server("spawning", idle=long, ready=False, pending="spawn")),
        user("stopping", server("stopping", idle=long, pending="stop")),
        user("odd", server("odd", idle=long, ready=False)),
    ))
    plan = plan_cull(obs, settings(max_age=60), NOW)
    assert plan.empty
    assert set(plan.notes) == {"skipped spawning: pending spawn", "skipped stopping: pending stop",
                               "skipped odd: not ready"}


def test_named_servers_stop_remove_and_switches() -> None:
    idle = timedelta(hours=5)
    obs = CullObserved((user("ann", server("ann", idle=idle), server("ann", "gpu", idle=idle)),))
    plan = plan_cull(obs, settings(), NOW)
    assert [(a.kind, a.target, dict(a.params)) for a in plan.actions] == [
        ("stop_server", "ann", {"user": "ann", "server": ""}),
        ("stop_server", "ann/gpu", {"user": "ann", "server": "gpu"}),
    ]
    removing = plan_cull(obs, settings(remove_named_servers=True), NOW)
    assert {(a.kind, a.target) for a in removing.actions} == {
        ("stop_server", "ann"), ("remove_server", "ann/gpu")}
    no_named = plan_cull(obs, settings(cull_named_servers=False), NOW)
    assert targets(no_named) == ["ann"]
    assert any(n.startswith("kept ann/gpu: idle for 5h") and "named servers is off" in n
               for n in no_named.notes)
    no_default = plan_cull(obs, settings(cull_default_servers=False), NOW)
    assert targets(no_default) == ["ann/gpu"]


def test_max_age_stops_active_servers() -> None:
    obs = CullObserved((
        user("old", server("old", idle=timedelta(minutes=1), age=timedelta(hours=25))),
        user("young", server("young", idle=timedelta(minutes=1), age=timedelta(hours=2))),
    ))
    plan = plan_cull(obs, settings(max_age=86400), NOW)
    assert targets(plan) == ["old"]
    assert plan.actions[0].reason == "max age: running for 1d 1h, idle for 1m (policy default: max age 1d)"
    assert plan_cull(obs, settings(max_age=0), NOW).empty


def test_policies_by_profile_and_group_first_match_wins() -> None:
    s = settings(inactivity_timeout=8 * 3600, policies=[
        {"name": "vip", "match_group": "dir-vip*", "inactivity_timeout": 0},
        {"name": "gpu", "match_profile": "gpu*", "inactivity_timeout": 3600, "max_age": 6 * 3600},
        {"name": "teaching", "match_group": "course-*", "inactivity_timeout": 1800},
    ])
    two_h = timedelta(hours=2)
    obs = CullObserved((
        user("g", server("g", idle=two_h, profile="gpu-a100")),
        user("c", server("c", idle=two_h, profile="cpu")),
        user("n", server("n", idle=two_h)),
        user("v", server("v", idle=timedelta(days=3), profile="gpu-a100"), groups=("dir-vip-team",)),
        user("t", server("t", idle=timedelta(minutes=45), profile="cpu"), groups=("course-101", "x")),
        user("old", server("old", idle=timedelta(minutes=1), age=timedelta(hours=7), profile="gpu-small")),
    ))
    plan = plan_cull(obs, s, NOW)
    assert targets(plan) == ["g", "old", "t"]
    reasons = {a.target: a.reason for a in plan.actions}
    assert reasons["g"] == "idle for 2h (policy gpu: 1h), profile gpu-a100"
    assert reasons["t"] == "idle for 45m (policy teaching: 30m), profile cpu"
    assert "policy gpu: max age 6h" in reasons["old"]
    assert "kept v: active 3d ago (policy vip: no inactivity timeout)" in plan.notes
    assert "kept c: active 2h ago (policy default: 8h)" in plan.notes
    assert plan.facts["stops_by_policy"] == {"gpu": 2, "teaching": 1}
    # a policy that leaves a value unset inherits the default
    lim = limits_for(settings(max_age=7200, policies=[{"name": "p", "match_profile": "x"}]),
                     server("u", profile="x"), [])
    assert (lim.policy, lim.inactivity_timeout, lim.max_age) == ("p", timedelta(hours=1), timedelta(hours=2))


def test_plan_is_pure_and_stable() -> None:
    users = [user(f"u{i}", server(f"u{i}", idle=timedelta(hours=i))) for i in range(6)]
    a = plan_cull(CullObserved(tuple(users)), settings(), NOW)
    b = plan_cull(CullObserved(tuple(reversed(users))), settings(), NOW)
    assert a == b and a.id == b.id
    assert targets(a) == ["u1", "u2", "u3", "u4", "u5"]
    later = plan_cull(CullObserved(tuple(users)), settings(), NOW + timedelta(hours=1))
    assert targets(later) == ["u0", "u1", "u2", "u3", "u4", "u5"] and later.id != a.id


def test_users_reported_not_deleted_by_default() -> None:
    obs = CullObserved(
        active=(user("ann", server("ann", idle=timedelta(days=2)), last_activity=ago(days=2)),
               user("bob", server("bob", idle=timedelta(days=2)),
                    server("bob", "x", idle=timedelta(minutes=1)), last_activity=ago(minutes=1))),
        inactive=(user("carl", last_activity=ago(days=40)), user("dora", last_activity=ago(minutes=10)),
                  user("root", admin=True, last_activity=ago(days=40))),
    )
    plan = plan_cull(obs, settings(cull_users=True), NOW)
    assert plan.counts() == {"stop_server": 2}  # ann, and bob's idle default server
    assert [u["user"] for u in plan.facts["inactive_users"]] == ["ann", "carl", "root"]
    assert any(n.startswith("long-inactive user carl: inactive for 40d") and "reported only" in n
               for n in plan.notes)
    no_admins = plan_cull(obs, settings(cull_users=True, cull_admin_users=False), NOW)
    assert [u["user"] for u in no_admins.facts["inactive_users"]] == ["ann", "carl"]
    off = plan_cull(obs, settings(), NOW)
    assert off.facts["inactive_users"] == []


def test_user_deletion_only_when_enabled_and_after_stops() -> None:
    obs = CullObserved(active=(user("ann", server("ann", idle=timedelta(days=2)), last_activity=ago(days=2)),),
                       inactive=(user("carl", last_activity=ago(days=40)),), sync_members=frozenset())
    plan = plan_cull(obs, settings(cull_users=True, delete_users=True), NOW)
    assert [(a.kind, a.target, a.phase) for a in plan.actions] == [
        ("stop_server", "ann", 0), ("delete_user", "ann", 1), ("delete_user", "carl", 1)]
    assert guard_cull(settings(cull_users=True, delete_users=True), plan) == []
    assert guard_cull(settings(cull_users=True, delete_users=True, max_user_deletions_per_round=1), plan)
    refusal = guard_cull(settings(cull_users=True), plan)
    assert refusal == ["the plan deletes 2 users but cull.delete_users is off"]


def test_users_sync_provisions_are_never_deleted_and_unknown_deletes_nobody() -> None:
    """A user sync manages as an active member would be created again by the next sync run."""
    obs = CullObserved(active=(user("ann", server("ann", idle=timedelta(days=2)), last_activity=ago(days=2)),),
                       inactive=(user("carl", last_activity=ago(days=40)), user("dora", last_activity=ago(days=40))),
                       sync_members=frozenset({"ann", "carl"}))
    on = settings(cull_users=True, delete_users=True)
    plan = plan_cull(obs, on, NOW)
    assert [(a.kind, a.target) for a in plan.actions] == [("stop_server", "ann"), ("delete_user", "dora")]
    assert "kept long-inactive user carl: inactive for 40d (timeout 1h); not deleted: sync manages them as a " \
           "member of a synced directory group (deleted, they would be created again by the next sync)" in plan.notes
    assert any(n.startswith("kept long-inactive user ann: ") for n in plan.notes)
    assert [u["user"] for u in plan.facts["inactive_users"]] == ["ann", "carl", "dora"]

    unknown = replace(obs, sync_members=None, sync_unknown="sync's managed users cannot be read: boom")
    plan = plan_cull(unknown, on, NOW)
    assert plan.counts() == {"stop_server": 1}
    assert plan.notes[0] == "no user is deleted this round: sync's managed users cannot be read: boom"
    assert sum(n.startswith("kept long-inactive user ") for n in plan.notes) == 3
    # only deletion needs them: reported users and stops go on
    assert plan_cull(unknown, settings(cull_users=True), NOW).counts() == {"stop_server": 1}
    assert plan_cull(CullObserved(obs.active, obs.inactive), on, NOW).counts() == {"stop_server": 1}


def test_a_user_with_a_server_that_keeps_running_or_spawning_is_never_deleted() -> None:
    """Only users whose every server the round stops, or who have none running or starting, are
    judged long-inactive: a server kept (here: culling default servers is off) or spawning is
    theirs still, however old their last activity."""
    obs = CullObserved(
        active=(user("ann", server("ann", idle=timedelta(days=2)), last_activity=ago(days=2)),),
        inactive=(user("eve", server("eve", idle=timedelta(days=40), ready=False, pending="spawn"),
                       last_activity=ago(days=40)),),
        sync_members=frozenset())
    plan = plan_cull(obs, settings(cull_users=True, delete_users=True, cull_default_servers=False), NOW)
    assert plan.empty
    assert plan.facts["inactive_users"] == []


def test_guard_refuses_more_stops_than_the_limit() -> None:
    obs = CullObserved(tuple(user(f"u{i}", server(f"u{i}", idle=timedelta(days=1))) for i in range(5)))
    plan = plan_cull(obs, settings(), NOW)
    assert guard_cull(settings(max_stops_per_round=5), plan) == []
    (reason,) = guard_cull(settings(max_stops_per_round=4), plan)
    assert "stops 5 servers, more than cull.max_stops_per_round=4" in reason


def test_nothing_idle_is_an_empty_plan() -> None:
    obs = CullObserved(tuple(user(f"u{i}", server(f"u{i}", idle=timedelta(minutes=i))) for i in range(3)))
    plan = plan_cull(obs, settings(), NOW)
    assert plan.empty and guard_cull(settings(), plan) == [] and plan.facts["kept"] == 3


@pytest.mark.parametrize(("seconds", "text"), [
    (20, "20s"), (125, "2m 05s"), (45 * 60, "45m"), (7380, "2h 03m"), (7200, "2h"), (90000, "1d 1h"),
    (86400 * 3, "3d")])
def test_human_durations(seconds: int, text: str) -> None:
    assert human(timedelta(seconds=seconds)) == text


def test_a_round_period_longer_than_the_shortest_timeout_is_refused() -> None:
    """A 5-minute GPU policy on the default 10-minute schedule would let idle GPU servers run 15 min."""
    gpu = {"name": "gpu", "match_profile": "gpu*", "inactivity_timeout": 300}
    with pytest.raises(ValueError, match=r"up to 600 s between rounds, longer than "
                                         r"cull.policies\[gpu\].inactivity_timeout=300 s.*'0 \*/2 \* \* \* \*'"):
        CullSettings.model_validate({"policies": [gpu], "activity_interval": 60})
    ok = CullSettings.model_validate({"policies": [gpu], "activity_interval": 60, "schedule": "0 */2 * * * *"})
    assert ok.schedule == "0 */2 * * * *"
    # a schedule with a long gap (weekdays at 09:00 only) is measured over the week
    with pytest.raises(ValueError, match=r"259200 s \(3d\) between rounds"):
        CullSettings(schedule="0 0 9 * * 1-5")
    with pytest.raises(ValueError, match=r"longer than cull\.max_age=86400 s"):
        CullSettings(inactivity_timeout=0, max_age=86400, schedule="0 0 9 * * 1-5")
    assert CullSettings(inactivity_timeout=0, max_age=4 * 86400, schedule="0 0 9 * * 1-5").max_age == 4 * 86400


def test_settings_defaults_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    s = CullSettings()
    assert s.schedule == "0 */10 * * * *" and s.inactivity_timeout == 3600 and not s.delete_users
    with pytest.raises(ValueError, match="must exceed the hub's activity-update interval"):
        CullSettings(inactivity_timeout=300)
    with pytest.raises(ValueError, match=r"policies\[gpu\].inactivity_timeout=120"):
        CullSettings.model_validate({"policies": [{"name": "gpu", "inactivity_timeout": 120}]})
    with pytest.raises(ValueError, match="repeated: a"):
        CullSettings.model_validate({"policies": [{"name": "a"}, {"name": "a"}]})
    monkeypatch.setenv("HUBPILOT_CULL__POLICIES", json.dumps(
        [{"name": "gpu", "match_profile": "gpu*", "inactivity_timeout": 3600}]))
    monkeypatch.setenv("HUBPILOT_CULL__MAX_STOPS_PER_ROUND", "7")
    loaded = load_settings().cull
    assert loaded.policies[0].match_profile == "gpu*" and loaded.max_stops_per_round == 7
    monkeypatch.setenv("HUBPILOT_CULL__SCHEDULE", "*/10 * * * *")
    with pytest.raises(SettingsError, match=r"cull\.schedule"):
        load_settings()


def test_an_empty_match_profile_is_kubespawners_default_profile() -> None:
    """A server started without ``user_options["profile"]`` (a REST API start, a form-less
    spawn) runs KubeSpawner's default profile (the ``profile_list`` entry marked default, else the
    first), and the hub shows it without a profile: ``match_profile = ""`` is that profile, the
    way an empty profile is in ``scale.gpu_profiles``. Globs still need a profile."""
    s = settings(inactivity_timeout=8 * 3600, policies=[
        {"name": "gpu-default", "match_profile": "", "inactivity_timeout": 3600},
        {"name": "any", "match_profile": "*", "inactivity_timeout": 7000},
    ])
    two_h = timedelta(hours=2)
    obs = CullObserved((
        user("n", server("n", idle=two_h)),
        user("c", server("c", idle=two_h, profile="cpu")),
    ))
    plan = plan_cull(obs, s, NOW)
    assert targets(plan) == ["c", "n"]
    reasons = {a.target: a.reason for a in plan.actions}
    assert reasons["n"] == "idle for 2h (policy gpu-default: 1h)"
    assert reasons["c"] == "idle for 2h (policy any: 1h 56m), profile cpu"


def test_timeouts_exceed_the_activity_lag_of_a_silent_busy_server() -> None:
    """hubpilot_activity marks a silent busy server every HUBPILOT_ACTIVITY_CHECK_SECONDS (60 as
    shipped) and the server reports every JUPYTERHUB_ACTIVITY_INTERVAL (300): while the cell
    runs, its hub activity can be 360 s old, so a 330 s timeout stops it mid-computation."""
    every_2m = "0 */2 * * * *"
    with pytest.raises(ValueError, match=r"cull\.inactivity_timeout=330: .*cull\.activity_interval=300 s"
                                         r" \+ cull\.activity_check_seconds=60 s"):
        CullSettings(inactivity_timeout=330, schedule=every_2m)
    with pytest.raises(ValueError, match=r"policies\[gpu\]\.inactivity_timeout=90"):
        CullSettings.model_validate({"activity_interval": 60, "schedule": "*/30 * * * * *",
                                     "policies": [{"name": "gpu", "inactivity_timeout": 90}]})
    assert CullSettings(inactivity_timeout=391, schedule=every_2m).inactivity_timeout == 391
    # an image without the extension: only the activity reports lag
    assert CullSettings(inactivity_timeout=331, activity_check_seconds=0,
                        schedule=every_2m).inactivity_timeout == 331


def test_timeouts_exceed_the_activity_lag_with_the_reports_jitter() -> None:
    """jupyterhub-singleuser waits JUPYTERHUB_ACTIVITY_INTERVAL * (1 ± 10%) between two reports
    (``keep_activity_updated``), so a silent busy server's hub activity can be 330 s + 60 s old
    with the shipped values: a 361 s timeout (which passed) stops it mid-computation."""
    every_2m = "0 */2 * * * *"
    for timeout in (361, 390):
        with pytest.raises(ValueError, match=rf"cull\.inactivity_timeout={timeout}: .*up to 10% later.*390 s"):
            CullSettings(inactivity_timeout=timeout, schedule=every_2m)
    with pytest.raises(ValueError, match=r"cull\.inactivity_timeout=330: .*330 s"):
        CullSettings(inactivity_timeout=330, activity_check_seconds=0, schedule=every_2m)
    # 60 s reports and a check every 60 s (docs/scale.md's example): the lag is up to 126 s
    with pytest.raises(ValueError, match=r"policies\[gpu\]\.inactivity_timeout=125: .*126 s"):
        CullSettings.model_validate({"activity_interval": 60, "schedule": "*/30 * * * * *",
                                     "policies": [{"name": "gpu", "inactivity_timeout": 125}]})
    assert CullSettings(inactivity_timeout=391, schedule=every_2m).inactivity_timeout == 391


def test_a_stop_is_judged_again_on_the_hubs_current_state() -> None:
    """recheck_stop: what the stop of a server read idle does with the hub's answer of now."""
    from hubpilot.cull.plan import recheck_stop
    from hubpilot.loop import Status

    s = settings()
    before = server("u", idle=timedelta(hours=2))
    assert recheck_stop("stop_server", before, user("u", before), "", s, NOW) is None  # still idle
    assert recheck_stop("stop_server", before, None, "", s, NOW) == (
        Status.NOOP, "already gone: the hub no longer has the user")
    assert recheck_stop("stop_server", before, user("u"), "", s, NOW) == (Status.NOOP, "already stopped")
    named = server("u", "big", idle=timedelta(hours=2))
    assert recheck_stop("remove_server", named, user("u"), "big", s, NOW)[0] is Status.NOOP  # type: ignore[index]
    back = replace(before, last_activity=ago(minutes=4))
    assert recheck_stop("stop_server", before, user("u", back), "", s, NOW) == (
        Status.SKIPPED, "active 4m ago (policy default: 1h), since the round's reading")
    respawn = replace(before, ready=False, pending="spawn", started=ago(seconds=5))
    assert recheck_stop("stop_server", before, user("u", respawn), "", s, NOW)[0] is Status.SKIPPED  # type: ignore[index]
    again = replace(before, started=ago(minutes=1), last_activity=ago(hours=3))
    assert "restarted since the round's reading" in recheck_stop(  # type: ignore[index]
        "stop_server", before, user("u", again), "", s, NOW)[1]
    # with no reading to compare to (None), a spawn pending now is a restart all the same
    assert recheck_stop("stop_server", None, user("u", replace(before, ready=False, pending="spawn")),
                        "", s, NOW) == (Status.SKIPPED, "pending spawn since the round's reading (a restart)")
    stopping = replace(before, ready=False, pending="stop")
    assert recheck_stop("stop_server", before, user("u", stopping), "", s, NOW) is None  # joins the stop
    # a max-age stop stays a stop however active the server
    aged = server("u", idle=timedelta(minutes=1), age=timedelta(hours=10))
    assert recheck_stop("stop_server", aged, user("u", aged), "", settings(max_age=6 * 3600), NOW) is None


@pytest.mark.parametrize("timeout", [300, 1000, 7100, 7200, 14400, 86400, 2 * 86400])
def test_the_schedule_a_refusal_suggests_is_taken_and_fires_often_enough(timeout: int) -> None:
    """The refusal's example must be a schedule to copy: accepted, every field's step within its
    field's range (a '*/120' minute step fires hourly, not every 120 minutes), rounds at least
    every half timeout."""
    settings = {"inactivity_timeout": timeout, "activity_interval": 60}
    with pytest.raises(ValueError, match=r"e\.g\. cull\.schedule = '([^']+)'") as info:
        CullSettings.model_validate({**settings, "schedule": "0 0 9 * * 1-5"})
    example = re.search(r"e\.g\. cull\.schedule = '([^']+)'", str(info.value)).group(1)  # type: ignore[union-attr]
    for field, top in zip(example.split(), (59, 59, 23), strict=False):
        if field.startswith("*/"):
            assert 1 <= int(field[2:]) <= top, example
    ok = CullSettings.model_validate({**settings, "schedule": example})
    assert longest_gap(ok.schedule).total_seconds() <= max(1, timeout // 2)


def test_after_a_hub_outage_inactivity_waits_until_the_activity_reports_caught_up() -> None:
    """catch_up (the hub answered again at ``back``; the reports reach it by ``until``): before
    ``until`` no server is stopped and no user deleted for inactivity, each kept with why; a server
    past its max age is stopped; from ``until`` on, the round is as without an outage."""
    back = NOW - timedelta(minutes=2)
    until = NOW + timedelta(minutes=4)
    obs = CullObserved(
        (user("ann", server("ann", idle=timedelta(hours=3))),
         user("old", server("old", idle=timedelta(hours=3), age=timedelta(days=9)), groups=("long",)),
         user("bob", server("bob", idle=timedelta(minutes=5)))),
        (user("gone", last_activity=ago(days=90)),), frozenset(), catch_up=(back, until))
    policy = settings(cull_users=True, delete_users=True, inactivity_timeout=3600,
                      policies=[{"name": "long", "match_group": "long", "max_age": 7 * 86400}])
    plan = plan_cull(obs, policy, NOW)
    assert [(a.kind, a.target) for a in plan.actions] == [("stop_server", "old")]
    held = {n.split(":")[0] for n in plan.notes if "the hub was unreachable until about 2026-03-02 11:58 UTC" in n
            and "by 12:04 UTC" in n}
    # (old's only server is stopped this round: as a user, long-inactive too)
    assert held == {"kept ann", "kept long-inactive user gone", "kept long-inactive user old"}, plan.notes
    assert any(n.startswith("kept bob: active 5m ago") for n in plan.notes)
    just_before = plan_cull(obs, policy, until - timedelta(seconds=1))
    assert [(a.kind, a.target) for a in just_before.actions] == [("stop_server", "old")]
    later = plan_cull(obs, policy, until)
    assert sorted((a.kind, a.target) for a in later.actions) == [
        ("delete_user", "ann"), ("delete_user", "gone"), ("delete_user", "old"), ("stop_server", "ann"),
        ("stop_server", "old")], later.notes
    assert not any("unreachable" in n for n in later.notes)
    assert [a.target for a in plan_cull(replace(obs, catch_up=None), policy, NOW).actions if a.kind == "stop_server"] \
        == ["ann", "old"]

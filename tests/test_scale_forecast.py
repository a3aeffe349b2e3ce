"""The learned demand forecast: counting arrivals, folding hours, sizing the spare, in the plan."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hubpilot.config.scale import ScaleSettings, WarmWindow
from hubpilot.ports.cluster import ClusterView, NodeInfo, Toleration, UserPod
from hubpilot.ports.pool import PoolState
from hubpilot.scale import Forecast, ForecastPolicy, Memory, Observed, Policy, Schedule, guard_scale, plan_scale
from hubpilot.scale.forecast import bucket, forecast_policy_from, forecast_spare, learn, poisson_quantile, rate_at
from hubpilot.scale.plan import arrival_keys

MON9 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
FP = ForecastPolicy(quantile=0.95, boot=timedelta(minutes=3), max_spare=3, half_life_weeks=4.0)


def feed(f: Forecast, arrivals_per_hour: dict[int, int], day: datetime, fp: ForecastPolicy = FP) -> Forecast:
    """One day: ``n`` distinct arrivals in each given hour, then a tick at every hour."""
    for hour in range(24):
        at = day + timedelta(hours=hour)
        for i in range(arrivals_per_hour.get(hour, 0)):
            f = learn(f, [f"{day.date()}-{hour}-{i}~"], at + timedelta(minutes=i), fp)
        f = learn(f, [], at + timedelta(minutes=59), fp)
    return learn(f, [], day + timedelta(days=1), fp)


def test_a_key_in_sight_counts_once_and_again_after_it_was_forgotten() -> None:
    f = learn(Forecast(), [], MON9 - timedelta(minutes=1), FP)  # looking before alice comes
    for minute in range(10):  # alice's pod is seen every minute: one arrival
        f = learn(f, ["alice~"], MON9 + timedelta(minutes=minute), FP)
    assert (f.open_bucket, f.open_count) == ("0-09", 1)
    f = learn(f, ["alice~", "bob~"], MON9 + timedelta(minutes=11), FP)
    assert f.open_count == 2
    # alice out of sight longer than `forget` (runs go on meanwhile): her next start is a new arrival
    for minute in range(12, 42, 10):
        f = learn(f, [], MON9 + timedelta(minutes=minute), FP)
    f = learn(f, ["alice~"], MON9 + timedelta(minutes=11) + FP.forget + timedelta(minutes=1), FP)
    assert f.open_count == 3


def test_a_finished_hour_is_folded_mean_first_then_exponential() -> None:
    f = Forecast()
    for week, n in enumerate([4, 2, 6, 0, 0]):
        f = feed(f, {9: n}, MON9.replace(hour=0) + timedelta(days=7 * week))
    alpha = 1 - 0.5 ** (1 / 4)  # half-life 4 weeks: weeks 1-4 are a plain mean (1/n >= alpha)
    mean4 = (4 + 2 + 6 + 0) / 4
    assert f.weeks["0-09"] == 5
    assert f.rates["0-09"] == pytest.approx(mean4 + max(1 / 5, alpha) * (0 - mean4))
    assert f.rates["0-10"] == 0 and f.weeks["0-10"] == 5  # quiet hours are learned as quiet


def test_a_team_that_stops_coming_loses_its_spare_at_the_half_life() -> None:
    # eight busy Mondays, then eight quiet ones: the rate halves every half-life (4 weeks), it does
    # not stay at the mean of all weeks, which would keep the spare node warm for months
    f = Forecast()
    for week in range(16):
        f = feed(f, {9: 6 if week < 8 else 0}, MON9.replace(hour=0) + timedelta(days=7 * week))
    assert f.weeks["0-09"] == 16
    assert f.rates["0-09"] == pytest.approx(6 * 0.5 ** (8 / 4))
    fp = dataclasses.replace(FP, min_rate=2.0)
    assert forecast_spare(f, MON9 + timedelta(days=7 * 16), fp) == (0, pytest.approx(1.5))


def test_an_hour_of_a_zone_half_an_hour_off_utc_is_folded_once() -> None:
    # India is UTC+05:30: the local hour 10:00-11:00 is 04:30-05:30 UTC, one hour, not two halves
    india = ForecastPolicy(quantile=0.95, timezone="Asia/Kolkata")
    start = datetime(2026, 3, 2, 4, 29, tzinfo=UTC)  # Monday 09:59 IST
    f = learn(Forecast(), [], start, india)
    for minute in range(1, 62):  # 6 arrivals in 10:00-11:00 IST, observed every minute
        f = learn(f, [f"u{minute}~"] if minute % 10 == 1 else [], start + timedelta(minutes=minute), india)
    assert f.open_bucket == "0-11"
    assert (f.rates["0-10"], f.weeks["0-10"]) == (6, 1)


def test_the_hour_being_counted_when_the_timezone_changes_is_folded_into_its_local_hour() -> None:
    # counting 07:00 UTC (learned in UTC); scale.timezone becomes Europe/Berlin at 07:30, where it is 08:30
    f = learn(Forecast(), [], MON9.replace(hour=7), FP)
    for minute in range(1, 30):
        f = learn(f, [f"u{minute}~"] if minute % 10 == 1 else [], MON9.replace(hour=7, minute=minute), FP)
    assert (f.open_bucket, f.open_count) == ("0-07", 3)
    berlin = dataclasses.replace(FP, timezone="Europe/Berlin")
    for minute in range(30, 61):
        f = learn(f, [f"u{minute}~"] if minute % 10 == 1 else [], MON9.replace(hour=7) + timedelta(minutes=minute),
                  berlin)
    # the hour goes on as Berlin's 08:00 with its six arrivals; no hour is learned as a half
    assert f.open_bucket == "0-09" and f.rates == {"0-08": 6} and f.weeks == {"0-08": 1}


def test_hours_are_local_and_follow_daylight_saving() -> None:
    berlin = ForecastPolicy(timezone="Europe/Berlin")
    assert bucket(datetime(2026, 1, 5, 8, 0, tzinfo=UTC), berlin.timezone) == "0-09"  # CET
    assert bucket(datetime(2026, 7, 6, 8, 0, tzinfo=UTC), berlin.timezone) == "0-10"  # CEST
    assert bucket(datetime(2026, 3, 1, 23, 30, tzinfo=UTC), berlin.timezone) == "0-00"  # Sunday UTC, Monday local


def test_the_hour_that_happens_twice_when_daylight_saving_ends_is_folded_as_two_hours() -> None:
    berlin = ForecastPolicy(timezone="Europe/Berlin")
    start = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)  # Sunday 01:00 CEST; 02:00-03:00 comes twice
    f = learn(Forecast(), [], start - timedelta(minutes=1), berlin)  # looking before the first arrival
    for minute in range(4 * 60):  # 6 arrivals in every real hour
        f = learn(f, [f"u{minute}~"] if minute % 10 == 0 else [], start + timedelta(minutes=minute), berlin)
    assert bucket(start + timedelta(hours=1, minutes=30), berlin.timezone) == "6-02"
    assert bucket(start + timedelta(hours=2, minutes=30), berlin.timezone) == "6-02"
    assert f.rates["6-01"] == 6 and f.rates["6-02"] == 6  # not 12 from two hours counted as one
    assert f.weeks["6-02"] == 2
    assert Forecast.from_json(f.to_json()) == f


def test_holidays_are_not_learned_and_get_no_spare() -> None:
    hol = ForecastPolicy(quantile=0.95, holidays=frozenset({date(2026, 3, 9)}))
    f = feed(Forecast(), {9: 6}, MON9.replace(hour=0), hol)
    before = dict(f.rates)
    f = feed(f, {9: 0}, MON9.replace(hour=0) + timedelta(days=7), hol)  # the quiet Monday is a holiday
    assert f.rates["0-09"] == before["0-09"] == 6
    assert forecast_spare(f, MON9 + timedelta(days=7), hol) == (0, 0.0)
    assert forecast_spare(f, MON9 + timedelta(days=14), hol)[0] >= 1


def test_rate_is_shrunk_towards_the_same_hour_of_the_day_kind() -> None:
    f = Forecast({"0-09": 8.0, "1-09": 0.0, "2-09": 0.0, "3-09": 0.0, "4-09": 2.0, "5-09": 50.0},
                 {"0-09": 1, "1-09": 1, "2-09": 1, "3-09": 1, "4-09": 1, "5-09": 1})
    prior = 10.0 / 5  # the weekday mean; Saturday's 50 does not count
    assert rate_at(f, MON9, "UTC") == pytest.approx((1 * 8.0 + 4 * prior) / 5)
    assert rate_at(f, MON9 + timedelta(days=1), "UTC") == pytest.approx((0 + 4 * prior) / 5)
    assert rate_at(f, MON9 + timedelta(hours=5), "UTC") == 0.0  # nothing learned for 14:00


@pytest.mark.parametrize(("mean", "q", "k"), [
    (0.0, 0.95, 0), (0.05, 0.95, 0), (0.06, 0.95, 1), (0.3, 0.95, 1), (0.3, 0.97, 2), (0.4, 0.95, 2),
    (50.0, 0.95, 3),  # capped
])
def test_poisson_quantile(mean: float, q: float, k: int) -> None:
    assert poisson_quantile(mean, q, 3) == k


def test_the_spare_rises_one_boot_before_a_busy_hour() -> None:
    rates = {f"{d}-{h:02d}": (6.0 if h == 9 else 0.0) for d in range(5) for h in range(24)}
    f = Forecast(rates, dict.fromkeys(rates, 8))
    assert forecast_spare(f, MON9 - timedelta(minutes=10), FP) == (0, 0.0)
    k, rate = forecast_spare(f, MON9 - timedelta(minutes=2), FP)
    assert (k, rate) == (1, 6.0)
    assert forecast_spare(f, MON9 + timedelta(minutes=59), FP)[0] == 1  # 10:00 is quiet, 9:59 is not
    assert forecast_spare(f, MON9 + timedelta(hours=1, minutes=1), FP)[0] == 0


def test_below_the_minimum_rate_no_spare_is_kept() -> None:
    f = busy_forecast(1.2)
    assert forecast_spare(f, MON9, FP) == (1, pytest.approx(1.2))
    assert forecast_spare(f, MON9, ForecastPolicy(quantile=0.95, boot=timedelta(minutes=3), min_rate=1.5)) == (
        0, pytest.approx(1.2))
    assert forecast_spare(busy_forecast(2.0), MON9, ForecastPolicy(boot=timedelta(minutes=3), min_rate=1.5))[0] == 1
    # at the minimum rate itself the spare is kept: none only below it
    assert forecast_spare(busy_forecast(1.5), MON9, ForecastPolicy(boot=timedelta(minutes=3), min_rate=1.5))[0] == 1


def test_malformed_stored_forecast_starts_afresh() -> None:
    good = feed(Forecast(), {9: 3}, MON9.replace(hour=0))
    assert Forecast.from_json(good.to_json()) == good
    assert Forecast.from_json({"rates": {"0-09": "x"}}) == Forecast()
    assert Forecast.from_json({"rates": {"9-99": 3.0, "0-09": 1.0}}).rates == {"0-09": 1.0}
    assert Forecast.from_json(None) == Forecast()
    # numbers no learning makes: a negative week count would divide by zero in every plan
    for bad in ({"rates": {"0-09": 1.0}, "weeks": {"0-09": -4}}, {"rates": {"0-09": float("nan")}},
                {"rates": {"0-09": float("inf")}}, {"rates": {"0-09": -1.0}}, {"open_count": -2}):
        f = Forecast.from_json(bad)
        assert f == Forecast(), bad
        assert forecast_spare(f, MON9, FP) == (0, 0.0)


def test_settings_build_the_forecast_policy_and_reject_nonsense() -> None:
    assert forecast_policy_from(ScaleSettings()) is None
    fp = forecast_policy_from(ScaleSettings(forecast=True, forecast_quantile=0.9, forecast_boot_minutes=2.5,
                                            timezone="Europe/Berlin", holidays=[date(2026, 12, 24)]))
    assert fp == ForecastPolicy(quantile=0.9, boot=timedelta(minutes=2.5), max_spare=3, min_rate=1.0,
                                half_life_weeks=4.0, timezone="Europe/Berlin",
                                holidays=frozenset({date(2026, 12, 24)}))
    with pytest.raises(ValidationError, match="forecast_quantile"):
        ScaleSettings(forecast_quantile=1.0)
    for q in (1.5, 1.0, 0.0):  # 1: the spare would always be forecast_max_spare
        with pytest.raises(ValueError, match="between 0 and 1"):
            ForecastPolicy(quantile=q)


# --- in the plan --------------------------------------------------------------------------------
def pool(count: int) -> PoolState:
    return PoolState("gpu", count, None, None, False, "Running", "Succeeded", "Standard_NC4as_T4_v3", "e1")


def nodes(*names: str) -> tuple[NodeInfo, ...]:
    return tuple(NodeInfo(n, True, False, MON9 - timedelta(days=1), n) for n in names)


def busy_forecast(rate: float) -> Forecast:
    rates = {f"{d}-{h:02d}": (rate if 8 <= h < 18 else 0.0) for d in range(5) for h in range(24)}
    return Forecast(rates, dict.fromkeys(rates, 8))


def test_plan_keeps_the_forecast_spare_and_says_why() -> None:
    pol = Policy(max_nodes=8, forecast=FP, idle=timedelta(minutes=1))
    pods = (UserPod("a", "n0", "Running", False, MON9, "a", "", True),)
    obs = Observed(pool(1), ClusterView(nodes("n0"), pods), forecast=busy_forecast(8.0), at=MON9)
    plan = plan_scale(obs, pol, MON9)
    assert [(a.kind, dict(a.params)) for a in plan.actions] == [("set_count", {"count": 3, "from": 1})]
    assert any("forecast 8.0 GPU arrivals/h: spare 2" in w for w in plan.facts["why"])
    # the evening: no spare, the empty node (empty long enough) goes
    evening = MON9.replace(hour=19)
    since = {"n1": evening - timedelta(minutes=5)}
    obs = Observed(pool(2), ClusterView(nodes("n0", "n1"), pods), memory=Memory(since),
                   forecast=busy_forecast(8.0), at=evening)
    plan = plan_scale(obs, pol, evening)
    assert [(a.kind, dict(a.params)) for a in plan.actions] == [("remove_nodes", {"nodes": ["n1"], "from": 2})]


def test_a_node_that_just_became_empty_is_the_spare_no_boot_no_removal() -> None:
    pol = Policy(max_nodes=8, forecast=FP, idle=timedelta(minutes=1))
    pods = (UserPod("a", "n0", "Running", False, MON9, "a", "", True),)
    obs = Observed(pool(2), ClusterView(nodes("n0", "n1"), pods), memory=Memory({"n1": MON9 - timedelta(hours=1)}),
                   forecast=busy_forecast(4.0), at=MON9)
    assert plan_scale(obs, pol, MON9).empty


def test_windows_and_forecast_take_the_larger_spare() -> None:
    window = Schedule.of([WarmWindow(days="mon-fri", start="08:00", end="18:00", spare=2)], "UTC", [])
    pol = Policy(schedule=window, max_nodes=8, forecast=FP)
    obs = Observed(pool(0), ClusterView((), ()), forecast=busy_forecast(4.0), at=MON9)
    assert plan_scale(obs, pol, MON9).facts["desired"] == 2
    assert plan_scale(obs, Policy(max_nodes=8, forecast=FP), MON9).facts["desired"] == 1
    assert plan_scale(obs, Policy(max_nodes=8), MON9).facts["desired"] == 0  # forecast off: ignored


def test_arrival_keys_are_gpu_servers_in_sight() -> None:
    from hubpilot.scale import Demand
    pods = (UserPod("a", "n0", "Running", False, MON9, "alice", "", True),
            UserPod("b", "n0", "Running", False, MON9, "bob", "", False),  # no GPU
            UserPod("c", None, "Succeeded", False, MON9, "carol", "", True),  # finished
            UserPod("d", None, "Pending", True, MON9, "", "", True))
    demand = (Demand("erin~", MON9 - timedelta(minutes=1)), Demand("old~", MON9 - timedelta(hours=1)))
    obs = Observed(pool(1), ClusterView(nodes("n0"), pods), demand, at=MON9)
    assert arrival_keys(obs, MON9, timedelta(minutes=15)) == {"alice~", "pod:d", "erin~"}


def test_a_waiting_pod_that_cannot_land_on_the_pool_is_no_arrival() -> None:
    """As in the plan (``fits_pool``): a waiting GPU pod that does not tolerate the pool's own taint
    (nodeTaints) can land on none of its nodes; it is no demand, and no arrival the forecast learns
    (nor is its demand signal). One that tolerates it is, as is a pod already on a pool node."""
    from hubpilot.scale import Demand
    tol = (Toleration("sku", "Equal", "gpu", "NoSchedule"),)
    pods = (UserPod("a", "n0", "Running", False, MON9, "alice", "", True),  # on the pool: in sight
            UserPod("b", None, "Pending", True, MON9, "bob", "", True, tol),
            UserPod("c", None, "Pending", True, MON9, "carol", "", True))  # no toleration: another pool's
    demand = (Demand("carol~", MON9 - timedelta(minutes=1)), Demand("erin~", MON9 - timedelta(minutes=1)))
    tainted = dataclasses.replace(pool(1), node_taints=("sku=gpu:NoSchedule",))
    obs = Observed(tainted, ClusterView(nodes("n0"), pods), demand, at=MON9)
    assert arrival_keys(obs, MON9, timedelta(minutes=15)) == {"alice~", "bob~", "erin~"}
    assert plan_scale(obs, Policy(max_nodes=8), MON9).facts["pending"] == ["bob~", "erin~"]


@st.composite
def forecasts(draw: st.DrawFn) -> Forecast:
    rates = draw(st.dictionaries(st.sampled_from([f"{d}-{h:02d}" for d in range(7) for h in range(24)]),
                                 st.floats(0, 40), max_size=30))
    return Forecast(rates, {k: draw(st.integers(1, 20)) for k in rates})


@settings(max_examples=200, deadline=None)
@given(forecasts(), st.integers(0, 6), st.integers(0, 4), st.integers(0, 7 * 24 * 60))
def test_forecast_spare_is_bounded_and_plans_pass_their_guard(f: Forecast, busy: int, empty: int, minute: int) -> None:
    now = MON9 + timedelta(minutes=minute)
    fp = ForecastPolicy(quantile=0.97, max_spare=2)
    k, rate = forecast_spare(f, now, fp)
    assert 0 <= k <= 2 and rate >= 0
    names = [f"n{i}" for i in range(busy + empty)]
    pods = tuple(UserPod(f"p{i}", f"n{i}", "Running", False, MON9, f"u{i}", "", True) for i in range(busy))
    pol = Policy(max_nodes=8, max_step_up=3, max_step_down=2, forecast=fp)
    obs = Observed(pool(len(names)), ClusterView(nodes(*names), pods),
                   memory=Memory(dict.fromkeys(names[busy:], now - timedelta(hours=1))), forecast=f, at=now)
    plan = plan_scale(obs, pol, now)
    assert guard_scale(obs, plan, pol) == []
    assert plan.facts["desired"] == min(8, busy + k)
    removed = [n for a in plan.actions if a.kind == "remove_nodes" for n in a.params["nodes"]]
    assert not set(removed) & {f"n{i}" for i in range(busy)}

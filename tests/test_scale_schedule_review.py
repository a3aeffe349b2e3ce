"""Warm windows, the timezone setting and the learned forecast at their edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hubpilot.scale import Forecast, ForecastPolicy
from hubpilot.scale.forecast import forecast_spare, learn

MON = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday, winter (Berlin is UTC+1)
FP = ForecastPolicy(quantile=0.95, boot=timedelta(minutes=3), max_spare=3, min_rate=1.0)


def test_servers_already_running_at_the_first_observation_are_no_arrivals() -> None:
    # the forecast is switched on at 10:45 while 20 GPU servers have been running since the morning
    running = [f"u{i}~" for i in range(20)]
    f = Forecast()
    for minute in range(45, 60 + 30):  # seen every minute until 11:30, nobody else comes
        f = learn(f, running, MON.replace(hour=10) + timedelta(minutes=minute), FP)
    assert f.rates["0-10"] == 0  # nobody arrived in that hour
    # so no weekday morning gets spare GPU nodes for arrivals that never were
    assert forecast_spare(Forecast.from_json(f.to_json()), MON + timedelta(days=1, hours=10, minutes=10), FP)[0] == 0
    # a server that starts while the forecast is looking is an arrival
    f = learn(f, [*running, "new~"], MON.replace(hour=11, minute=31), FP)
    assert f.open_count == 1


def test_after_a_gap_in_observation_the_servers_in_sight_are_no_arrivals() -> None:
    f = Forecast()
    f = learn(f, [], MON.replace(hour=8), FP)
    f = learn(f, ["early~"], MON.replace(hour=8, minute=1), FP)
    assert f.open_count == 1
    # no run for two hours (the app was stopped): whoever runs now may have come at any time since
    running = ["early~", *(f"u{i}~" for i in range(10))]
    f = learn(f, running, MON.replace(hour=10, minute=15), FP)
    assert (f.open_bucket, f.open_count) == ("0-10", 0)
    f = learn(f, [*running, "late~"], MON.replace(hour=10, minute=16), FP)
    assert f.open_count == 1

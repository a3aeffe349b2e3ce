"""Warm windows, the timezone setting and the learned forecast at their edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from hubpilot.config.scale import ScaleSettings, WarmWindow
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


def weeks_in(fp: ForecastPolicy, weeks: int, busy_utc_hour: int) -> Forecast:
    """``weeks`` Mondays observed every 10 minutes, 6 arrivals in one UTC hour."""
    f = Forecast()
    for w in range(weeks):
        day = MON + timedelta(days=7 * w)
        for tick in range(24 * 6 + 1):
            at = day + timedelta(minutes=10 * tick)
            new = [f"{w}-{tick}~"] if at.hour == busy_utc_hour else []
            f = learn(f, new, at, fp)
    return f


def test_a_forecast_learned_in_another_timezone_keeps_its_hours() -> None:
    # learned with the default UTC: 6 arrivals/h at 07:00 UTC, 08:00 in Berlin (winter)
    f = Forecast.from_json(weeks_in(FP, 3, busy_utc_hour=7).to_json())
    assert forecast_spare(f, MON.replace(hour=7, minute=10), FP)[0] == 1
    # then scale.timezone is set to Europe/Berlin: the spare stays at the hour the people come
    berlin = ForecastPolicy(quantile=0.95, boot=timedelta(minutes=3), max_spare=3, min_rate=1.0,
                            timezone="Europe/Berlin")
    later = MON + timedelta(days=28)
    assert forecast_spare(f, later.replace(hour=6, minute=10), berlin)[0] == 0  # 07:10 in Berlin: nobody yet
    assert forecast_spare(f, later.replace(hour=7, minute=10), berlin)[0] == 1  # 08:10 in Berlin
    # and learning goes on in Berlin's hours, from the hours already learned
    g = Forecast.from_json(learn(f, [], later.replace(hour=6), berlin).to_json())
    assert g.rates.get("0-08") == 6 and not g.rates.get("0-07")
    assert forecast_spare(g, later.replace(hour=7, minute=10), berlin)[0] == 1


@pytest.mark.parametrize("zone", ["Europe", "America", "Etc"])
def test_a_timezone_that_names_a_region_says_what_to_fix(zone: str) -> None:
    # a folder of the zone database, not a zone: was an OSError naming the tzdata path
    with pytest.raises(ValidationError, match=f"'{zone}' is no IANA timezone; use e.g. 'Europe/Berlin'"):
        ScaleSettings(timezone=zone)


@pytest.mark.parametrize(("start", "end"), [("24:00", "24:00"), ("24:00", "00:00")])
def test_a_window_that_never_covers_a_minute_is_refused(start: str, end: str) -> None:
    with pytest.raises(ValidationError, match=r"never covers a minute.*start '00:00' and end '24:00'"):
        WarmWindow(days="mon-fri", start=start, end=end)
    # the whole day is written so, and a start at midnight after the day ends still works
    assert WarmWindow(start="00:00", end="24:00").end == "24:00"
    assert WarmWindow(start="24:00", end="06:00").start == "24:00"

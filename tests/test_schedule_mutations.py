"""Warm windows at the edges a mutation review found unheld: 24:00 as an end and as a start, and
the configured timezone and holidays as the scale round gets them from the settings, and a
holiday of the forecast as a local date.

docs/scale.md: the start is inclusive, the end exclusive; ``00:00``-``24:00`` is the whole day; an
end before the start runs past midnight and belongs to the start day."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime

from hubpilot.config.scale import ScaleSettings, WarmWindow
from hubpilot.scale import Forecast
from hubpilot.scale.forecast import forecast_spare, learn
from hubpilot.wiring.scale import policy_from
from tests.test_scale_time_edges import BERLIN, active, window


def test_a_window_ending_at_24_00_covers_its_last_minute_up_to_midnight() -> None:
    evening = window("mon", "18:00", "24:00", "UTC")  # 2026-01-05 is a Monday
    assert not active(evening, 2026, 1, 5, 17, 59) and active(evening, 2026, 1, 5, 18, 0)
    assert active(evening, 2026, 1, 5, 23, 59)  # the last minute of the day is in the window
    assert evening.at(datetime(2026, 1, 5, 23, 59, 59, 999000, tzinfo=UTC)).active
    assert not active(evening, 2026, 1, 6, 0, 0)  # Tuesday midnight: the end
    whole = window("mon", "00:00", "24:00", "UTC")
    assert active(whole, 2026, 1, 5, 0, 0) and active(whole, 2026, 1, 5, 23, 59)
    assert not active(whole, 2026, 1, 4, 23, 59) and not active(whole, 2026, 1, 6, 0, 0)


def test_a_window_starting_at_24_00_is_the_night_after_its_day() -> None:
    # "sat 24:00-06:00": from the midnight that ends Saturday to Sunday 06:00, and Saturday's by
    # its day (a holiday on the Saturday switches it off, one on the Sunday does not)
    s = window("sat", "24:00", "06:00", "UTC")  # 2026-01-10 is a Saturday
    assert not active(s, 2026, 1, 10, 0, 0) and not active(s, 2026, 1, 10, 5, 0)
    assert not active(s, 2026, 1, 10, 23, 59)
    assert active(s, 2026, 1, 11, 0, 0) and active(s, 2026, 1, 11, 5, 59)
    assert not active(s, 2026, 1, 11, 6, 0)
    assert not active(window("sat", "24:00", "06:00", "UTC", (date(2026, 1, 10),)), 2026, 1, 11, 1, 0)
    assert active(window("sat", "24:00", "06:00", "UTC", (date(2026, 1, 11),)), 2026, 1, 11, 1, 0)


def test_the_scale_round_reads_its_warm_windows_in_the_configured_timezone_and_holidays() -> None:
    # the wiring from the settings to the plan: scale.timezone and scale.holidays reach the schedule
    settings = ScaleSettings(timezone="Europe/Berlin", holidays=[date(2026, 12, 24)],
                             warm=[WarmWindow(days="mon-fri", start="08:00", end="18:00", spare=1)])
    schedule = policy_from(settings).schedule
    assert not schedule.at(datetime(2026, 12, 23, 6, 59, tzinfo=UTC)).active  # Wed 07:59 CET
    assert schedule.at(datetime(2026, 12, 23, 7, 0, tzinfo=UTC)).active  # 08:00 CET, not 08:00 UTC
    assert not schedule.at(datetime(2026, 12, 23, 17, 0, tzinfo=UTC)).active  # 18:00 CET
    assert not schedule.at(datetime(2026, 12, 24, 10, 0, tzinfo=UTC)).active  # the holiday (a Thursday)
    assert schedule.at(datetime(2026, 12, 28, 10, 0, tzinfo=UTC)).spare == 1  # the Monday after


def test_a_forecast_holiday_is_the_local_date_not_the_utc_one() -> None:
    # Monday 2026-03-09 is a holiday in Berlin; its first local hour is Sunday 23:00-24:00 UTC
    hol = dataclasses.replace(BERLIN, holidays=frozenset({date(2026, 3, 9)}))
    f = Forecast({"0-00": 6.0, "1-00": 6.0}, {"0-00": 4, "1-00": 4}, timezone="Europe/Berlin")
    assert forecast_spare(f, datetime(2026, 3, 8, 23, 30, tzinfo=UTC), hol) == (0, 0.0)  # Mon 00:30 local
    assert forecast_spare(f, datetime(2026, 3, 9, 23, 30, tzinfo=UTC), hol)[0] >= 1  # Tue 00:30 local
    # nor is that hour learned: its arrivals would teach Monday's 00:00 hour a holiday's demand
    g = learn(Forecast(timezone="Europe/Berlin"), [], datetime(2026, 3, 8, 22, 55, tzinfo=UTC), hol)
    for i in range(6):
        g = learn(g, [f"u{i}~"], datetime(2026, 3, 8, 23, 5 + 5 * i, tzinfo=UTC), hol)
    g = learn(g, [], datetime(2026, 3, 9, 0, 5, tzinfo=UTC), hol)
    assert "0-00" not in g.rates, g.rates
    # the same hour a week later (no holiday) is learned
    g = learn(g, [], datetime(2026, 3, 15, 22, 55, tzinfo=UTC), hol)
    for i in range(6):
        g = learn(g, [f"v{i}~"], datetime(2026, 3, 15, 23, 5 + 5 * i, tzinfo=UTC), hol)
    g = learn(g, [], datetime(2026, 3, 16, 0, 5, tzinfo=UTC), hol)
    assert g.rates.get("0-00") == 6, g.rates

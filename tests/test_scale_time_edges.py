"""Warm windows and the forecast at the edges of time: daylight saving, holidays, zone changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from pydantic import ValidationError

from hubpilot.config.scale import ScaleSettings, WarmWindow
from hubpilot.scale import Forecast, ForecastPolicy, Schedule
from hubpilot.scale.forecast import bucket, forecast_spare, learn


def active(s: Schedule, year: int, month: int, day: int, hour: int, minute: int) -> bool:
    return s.at(datetime(year, month, day, hour, minute, tzinfo=UTC)).active


def window(days: str, start: str, end: str, zone: str, holidays: tuple[date, ...] = ()) -> Schedule:
    return Schedule.of([WarmWindow(days=days, start=start, end=end, spare=1)], zone, list(holidays))


# --- the hour that comes twice (New York 2026-11-01 06:00 UTC, Berlin 2026-10-25 01:00 UTC) --------

def test_a_night_window_ending_in_the_repeated_hour_is_one_stretch() -> None:
    # Sat 20:00-01:30 New York: 01:30 comes at 05:30 UTC (EDT) and again at 06:30 UTC (EST);
    # it was off from the first 01:30 and on again at 01:00 EST (a spare removed, then booted again)
    s = window("sat", "20:00", "01:30", "America/New_York")
    assert active(s, 2026, 11, 1, 5, 29)
    assert active(s, 2026, 11, 1, 5, 45)  # 01:45 EDT
    assert active(s, 2026, 11, 1, 6, 15)  # 01:15 EST
    assert not active(s, 2026, 11, 1, 6, 30)  # the second 01:30: the end
    berlin = window("sat", "20:00", "02:30", "Europe/Berlin")
    assert [active(berlin, 2026, 10, 25, 0, m) for m in (29, 45)] == [True, True]
    assert active(berlin, 2026, 10, 25, 1, 15) and not active(berlin, 2026, 10, 25, 1, 30)


def test_a_window_starting_in_the_repeated_hour_stays_on_when_the_clock_goes_back() -> None:
    # Sun 01:30-06:00 New York: on at the first 01:30 (05:30 UTC); at 01:00 EST it was off for half an hour
    s = window("sun", "01:30", "06:00", "America/New_York")
    assert not active(s, 2026, 11, 1, 5, 29)
    assert all(active(s, 2026, 11, 1, 5 + m // 60, m % 60) for m in range(30, 60 * 6, 5))
    assert not active(s, 2026, 11, 1, 11, 0)  # 06:00 EST
    berlin = window("sun", "02:30", "06:00", "Europe/Berlin")
    assert not active(berlin, 2026, 10, 25, 0, 29)
    assert all(active(berlin, 2026, 10, 25, m // 60, m % 60) for m in range(30, 60 * 5, 5))


def test_a_window_inside_the_repeated_hour_runs_from_its_first_start_to_its_second_end() -> None:
    s = window("sun", "01:10", "01:40", "America/New_York")
    assert not active(s, 2026, 11, 1, 5, 9)
    assert all(active(s, 2026, 11, 1, 5 + m // 60, m % 60) for m in range(10, 100, 5))
    assert not active(s, 2026, 11, 1, 6, 40)  # the second 01:40
    assert not any(active(s, 2026, 11, 1, h, 0) for h in range(7, 24))  # and after the repeated hour
    # the hour that comes twice on a day the window is not for: nothing
    assert not any(active(window("mon", "01:10", "01:40", "America/New_York"), 2026, 11, 1, 5 + m // 60, m % 60)
                   for m in range(0, 120, 5))


def test_windows_away_from_the_repeated_hour_are_unchanged_on_that_day() -> None:
    s = window("sun", "08:00", "18:00", "America/New_York")
    assert not active(s, 2026, 11, 1, 12, 59) and active(s, 2026, 11, 1, 13, 0)  # 08:00 EST
    assert active(s, 2026, 11, 1, 22, 59) and not active(s, 2026, 11, 1, 23, 0)
    night = window("sat", "22:00", "00:30", "America/New_York")  # ends before the repeated hour
    assert active(night, 2026, 11, 1, 4, 29) and not active(night, 2026, 11, 1, 4, 30)
    assert not active(night, 2026, 11, 1, 5, 15) and not active(night, 2026, 11, 1, 6, 15)


# --- the hour that does not exist (New York 2026-03-08 07:00 UTC, Berlin 2026-03-29 01:00 UTC) ------

@pytest.mark.parametrize(("zone", "jump"), [("America/New_York", datetime(2026, 3, 8, 7, 0, tzinfo=UTC)),
                                            ("Europe/Berlin", datetime(2026, 3, 29, 1, 0, tzinfo=UTC))])
def test_a_start_or_end_at_a_time_that_does_not_exist_is_the_moment_the_clock_jumps(zone: str,
                                                                                    jump: datetime) -> None:
    starts = window("sun", "02:30", "06:00", zone)
    ends = window("sat", "20:00", "02:30", zone)
    minute = timedelta(minutes=1)
    assert not starts.at(jump - minute).active and starts.at(jump).active
    assert ends.at(jump - minute).active and not ends.at(jump).active


# --- holidays: a window past midnight belongs to the day it starts on --------------------------------

def test_the_night_before_a_holiday_runs_into_it_and_the_holiday_night_is_off() -> None:
    s = window("mon-fri", "20:00", "06:00", "Europe/Berlin", (date(2026, 12, 24),))  # a Thursday
    assert active(s, 2026, 12, 23, 19, 0)  # Wed 20:00
    assert active(s, 2026, 12, 24, 4, 59)  # Thu 05:59, the holiday: Wednesday's night
    assert not active(s, 2026, 12, 24, 5, 0)
    assert not active(s, 2026, 12, 24, 19, 0)  # the holiday's own night: off
    assert not active(s, 2026, 12, 25, 1, 0)  # and its hours past midnight too
    assert active(s, 2026, 12, 25, 19, 0)  # Friday's night


def test_a_holiday_night_when_the_clock_goes_back_stays_off() -> None:
    s = window("sat", "20:00", "02:30", "Europe/Berlin", (date(2026, 10, 24),))
    assert not any(active(s, 2026, 10, 24 + (h + m // 60) // 24, (h + m // 60) % 24, m % 60)
                   for h in (18, 22) for m in range(0, 240, 10))
    assert not any(active(s, 2026, 10, 25, h, m) for h in (0, 1) for m in range(0, 60, 5))


# --- the forecast learns by the local wall-clock hour ------------------------------------------------

BERLIN = ForecastPolicy(quantile=0.95, boot=timedelta(minutes=3), max_spare=3, min_rate=1.0,
                        timezone="Europe/Berlin")


def mondays_at_nine(policy: ForecastPolicy, first: datetime, weeks: int) -> Forecast:
    """Six arrivals in the local 09:00 hour of ``weeks`` Mondays from ``first`` (a Monday 00:00 UTC)."""
    f = Forecast()
    for w in range(weeks):
        day = first + timedelta(days=7 * w)
        nine = bucket(day, policy.timezone)  # Monday local; find the UTC instant of the local 09:00
        at = next(day + timedelta(hours=h) for h in range(6, 12)
                  if bucket(day + timedelta(hours=h), policy.timezone) == f"{nine[0]}-09")
        f = learn(f, [], at - timedelta(minutes=5), policy)
        for i in range(6):
            f = learn(f, [f"{w}-{i}~"], at + timedelta(minutes=5 * i), policy)
        f = learn(f, [], at + timedelta(hours=1, minutes=5), policy)
    return f


def test_a_spare_learned_in_winter_stays_at_the_local_hour_after_the_clock_goes_forward() -> None:
    f = mondays_at_nine(BERLIN, datetime(2026, 2, 9, tzinfo=UTC), 6)  # up to 2026-03-16, CET (09:00 = 08:00 UTC)
    after = datetime(2026, 3, 30, tzinfo=UTC)  # the Monday after the change, CEST (09:00 = 07:00 UTC)
    assert forecast_spare(f, after.replace(hour=7, minute=10), BERLIN)[0] == 1
    assert forecast_spare(f, after.replace(hour=8, minute=10), BERLIN)[0] == 0  # 10:10 local: nobody


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "Australia/Adelaide"])
def test_a_forecast_moved_to_a_zone_half_an_hour_off_starts_its_spare_half_an_hour_early(zone: str) -> None:
    f = mondays_at_nine(BERLIN, datetime(2026, 1, 5, tzinfo=UTC), 4)  # 09:00-10:00 CET = 08:00-09:00 UTC
    moved = ForecastPolicy(quantile=0.95, boot=timedelta(minutes=3), max_spare=3, min_rate=1.0, timezone=zone)
    later = datetime(2026, 2, 2, tzinfo=UTC)
    # the spare is up from the local hour that holds 08:00 UTC (that began half an hour before)
    spare_at = [forecast_spare(f, later + timedelta(hours=7, minutes=m), moved)[0] for m in (25, 35, 65, 95)]
    assert spare_at == [0, 1, 1, 0]


# --- holidays as written in the settings ----------------------------------------------------------

@pytest.mark.parametrize("entry", ["2026-12-24..2026-12-31", "2026-12-24/2026-12-31", "24.12.2026", "2026/12/24",
                                   "2026-02-30", "2026-12-24T10:00", "christmas", ""])
def test_a_holiday_that_is_no_single_date_is_refused_saying_how_to_write_it(entry: str) -> None:
    with pytest.raises(ValidationError, match=r"holidays\n  Value error, '.*' is no date; "
                       r"write each day as YYYY-MM-DD, "
                       r"e.g. holidays = \[\"2026-12-24\", \"2026-12-25\"\] \(a range day by day\)"):
        ScaleSettings(holidays=["2026-12-23", entry])


def test_holidays_with_spaces_twice_or_as_toml_dates_are_the_days_they_name() -> None:
    s = ScaleSettings(holidays=[" 2026-12-24", "2026-12-24 ", date(2026, 12, 25)])
    assert s.holidays == [date(2026, 12, 24), date(2026, 12, 24), date(2026, 12, 25)]
    schedule = Schedule.of([WarmWindow(days="mon-sun", start="00:00", end="24:00")], "UTC", s.holidays)
    assert not active(schedule, 2026, 12, 24, 12, 0) and not active(schedule, 2026, 12, 25, 12, 0)
    assert active(schedule, 2026, 12, 26, 12, 0)

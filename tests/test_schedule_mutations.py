"""Warm windows at the edges a mutation review found unheld: 24:00 as an end and as a start, and
the configured timezone and holidays as the scale round gets them from the settings.

docs/scale.md: the start is inclusive, the end exclusive; ``00:00``-``24:00`` is the whole day; an
end before the start runs past midnight and belongs to the start day."""

from __future__ import annotations

from datetime import UTC, date, datetime

from hubpilot.config.scale import ScaleSettings, WarmWindow
from hubpilot.wiring.scale import policy_from
from tests.test_scale_time_edges import active, window


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

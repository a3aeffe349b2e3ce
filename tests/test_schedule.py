"""NCRONTAB schedules read as the Functions host's NCrontab reads them, so that ``hubpilot serve``
fires when the Functions timer would, and an expression the host would not load is refused with
an error naming the setting. The expected times follow NCrontab's documented rules (the Functions
timer documentation and NCrontab's parser): day and day of week must both match, days of week are
0-6, no L/W/#/?, a backwards range is read forwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from hubpilot.config.cull import CullSettings
from hubpilot.schedule import ScheduleError, longest_gap, next_fire, previous_fire, validate_ncrontab
from hubpilot.settings import SettingsError, load_settings

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # a Thursday


def fires(expr: str, after: datetime, n: int) -> list[datetime]:
    out = []
    for _ in range(n):
        after = next_fire(expr, after)
        out.append(after)
    return out


def test_a_day_and_a_day_of_week_must_both_match_as_in_ncrontab() -> None:
    # the 1st of a month when it is a Monday: June 2026 (cron would fire on every 1st and every Monday)
    assert next_fire("0 0 12 1 * Mon", T0) == datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert fires("0 0 9 1-7 * 1", T0, 2) == [datetime(2026, 1, 5, 9, tzinfo=UTC),
                                               datetime(2026, 2, 2, 9, tzinfo=UTC)]  # first Mondays
    # a first-Monday schedule leaves four or five weeks between fires
    assert longest_gap("0 0 9 1-7 * 1") >= timedelta(days=28)


def test_names_ranges_and_steps_read_as_ncrontab_reads_them() -> None:
    assert next_fire("0 0 9 * * Monday", T0) == datetime(2026, 1, 5, 9, tzinfo=UTC)
    assert next_fire("0 0 9 * February *", T0) == datetime(2026, 2, 1, 9, tzinfo=UTC)
    # a range written backwards is the same range forwards (cron would wrap round midnight)
    assert [t.hour for t in fires("0 0 22-2 * * *", T0, 3)] == [13, 14, 15]
    assert [t.minute for t in fires("0 5/20 * * * *", T0, 4)] == [5, 25, 45, 5]
    assert validate_ncrontab("  0  */5 * * * *  ") == "  0  */5 * * * *  "


def test_the_previous_fire_is_at_or_before_the_instant_never_after() -> None:
    # the missed-fire check of `hubpilot serve`: a fire at this very instant counts as fired
    assert previous_fire("0 */15 * * * *", T0) == T0
    assert previous_fire("0 */15 * * * *", T0 - timedelta(microseconds=1)) == T0 - timedelta(minutes=15)
    assert previous_fire("0 */15 * * * *", T0 + timedelta(minutes=14, seconds=59)) == T0
    # a schedule of every second, between two seconds: the one before, not the next one
    half = T0 + timedelta(milliseconds=500)
    assert previous_fire("* * * * * *", half) == T0
    assert next_fire("* * * * * *", half) == T0 + timedelta(seconds=1)


def test_the_longest_gap_counts_days_and_months_without_a_fire() -> None:
    # every 5 minutes, January to June: July to December has no round at all
    assert longest_gap("0 */5 * * 1-6 *") == timedelta(days=184, minutes=5)
    assert longest_gap("0 */5 * 1-15 * *") == timedelta(days=16, minutes=5)  # the 16th to the 31st
    assert longest_gap("*/30 * 8-17 1-5 * *") == timedelta(days=26, hours=14, seconds=30)  # Jan 5 17:59:30 on
    assert longest_gap("0 0 9 1-7 * 1") == timedelta(days=35)  # first Mondays: 4 or 5 weeks apart
    assert longest_gap("0 0 9 * * Mon,Thu") == timedelta(days=4)
    assert longest_gap("0 */10 * * * *") == timedelta(minutes=10)
    # so a cull that runs every 5 minutes half of the year is refused for a 10-minute timeout
    half_year = r"cull.schedule \('0 \*/5 \* \* 1-6 \*'\) leaves up to 15897900 s \(184d\) between rounds"
    with pytest.raises(ValidationError, match=half_year):
        CullSettings(schedule="0 */5 * * 1-6 *", inactivity_timeout=600)
    assert CullSettings(schedule="0 */5 * * * *", inactivity_timeout=600).schedule == "0 */5 * * * *"


@pytest.mark.parametrize(("expr", "says"), [
    ("0 0 12 L * *", "not a day value"),  # last day of the month: not NCrontab
    ("0 0 12 15W * *", "not a day value"),
    ("0 0 12 ? * *", "not a day value"),
    ("0 0 12 * * 5#2", "not a day-of-week value"),
    ("0 0 12 * * 7", "Sunday is 0"),  # cron's other Sunday; NCrontab's days are 0-6
    ("0 0 12 * * 0-7", "Sunday is 0"),
    ("0 0 12 * * Funday", "no day-of-week name"),
    ("0 0 25 * * *", "outside the hour range 0-23"),
    ("*/0 * * * * *", "step"),
    ("0 0 0 31 2 *", "never fires"),  # the 31st of February
    ("0 0 0 30 2 *", "never fires"),
    ("*/5 * * * *", "with seconds first: '0 \\*/5 \\* \\* \\* \\*'"),
])
def test_expressions_the_functions_host_would_not_load_or_that_never_fire_are_refused(expr: str, says: str) -> None:
    with pytest.raises(ScheduleError, match=says):
        validate_ncrontab(expr)


def test_a_bad_schedule_setting_is_an_error_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("HUBPILOT_SYNC_SCHEDULE", "HUBPILOT_SYNC__SCHEDULE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HUBPILOT_SYNC_SCHEDULE", "0 0 12 L * *")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "sync.schedule" in str(err.value) and "HUBPILOT_SYNC_SCHEDULE" in str(err.value)
    assert "not a day value" in str(err.value)
    monkeypatch.setenv("HUBPILOT_SYNC_SCHEDULE", "0 0 0 31 2 *")
    with pytest.raises(SettingsError, match="never fires"):
        load_settings()

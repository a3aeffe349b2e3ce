"""NCRONTAB schedules, the six-field form Azure Functions timers use.

``{second} {minute} {hour} {day} {month} {day-of-week}``, e.g. ``0 */5 * * * *`` (every five
minutes). The same expression drives the Functions timer and ``hubpilot serve``'s in-process
scheduler, so both hosts fire at the same times.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from croniter import croniter


class ScheduleError(ValueError):
    pass


def validate_ncrontab(expr: str) -> str:
    """Return the expression if it is a valid six-field NCRONTAB, else raise ScheduleError."""
    fields = expr.split()
    if len(fields) != 6:
        raise ScheduleError(
            f"{expr!r} has {len(fields)} fields; an NCRONTAB expression has six: "
            "'{second} {minute} {hour} {day} {month} {day-of-week}', e.g. '0 */5 * * * *'"
        )
    try:
        croniter(expr, second_at_beginning=True)
    except Exception as exc:
        raise ScheduleError(f"{expr!r} is not a valid NCRONTAB expression: {exc}") from exc
    return expr


def next_fire(expr: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` at which the schedule fires (same timezone)."""
    it = croniter(validate_ncrontab(expr), after, second_at_beginning=True)
    nxt: datetime = it.get_next(datetime)
    return nxt


def longest_gap(expr: str, *, within: timedelta = timedelta(days=7), max_fires: int = 20_000) -> timedelta:
    """The longest time between two fires of the schedule over a week (UTC), e.g. 10 minutes for
    '0 */10 * * * *'. A schedule that fires more than ``max_fires`` times a week is measured on its
    first ``max_fires`` fires (its gaps are seconds)."""
    start = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
    it = croniter(validate_ncrontab(expr), start - timedelta(seconds=1), second_at_beginning=True)
    first = last = it.get_next(datetime)
    gap = timedelta(0)
    for _ in range(max_fires):
        nxt: datetime = it.get_next(datetime)
        gap = max(gap, nxt - last)
        last = nxt
        if nxt - first > within:
            break
    return gap

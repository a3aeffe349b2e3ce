"""NCRONTAB schedules, the six-field form Azure Functions timers use.

``{second} {minute} {hour} {day} {month} {day-of-week}``, e.g. ``0 */5 * * * *`` (every five
minutes). The same expression drives the Functions timer and ``hubpilot serve``'s in-process
scheduler, so both hosts fire at the same times.
"""

from __future__ import annotations

from datetime import datetime

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

"""NCRONTAB schedules, the six-field form Azure Functions timers use.

``{second} {minute} {hour} {day} {month} {day-of-week}``, e.g. ``0 */5 * * * *`` (every five
minutes). The same expression drives the Functions timer and ``hubpilot serve``'s in-process
scheduler, so both hosts fire at the same times: expressions are read as the NCrontab library
the Functions host uses reads them, not as cron does.

- Each field is a list (``,``) of ``*``, a value or a range ``a-b``, each optionally with a step
  ``/n``; a value with a step runs to the field's end (``5/20`` minutes: 5, 25, 45). A range
  written backwards is read forwards (``22-2`` hours is 2 to 22), as NCrontab does.
- Months and days of week may be names (English, any prefix: ``Mon``, ``Monday``); days of week
  are 0-6, Sunday 0 (7 is not Sunday). ``L``, ``W``, ``#`` and ``?`` are not NCrontab.
- A day and a day of week both restricted must **both** match (``0 0 12 1 * Mon``: the 1st when
  it is a Monday), where cron fires on either.
- Times are the host's clock in UTC (the Functions default; ``hubpilot serve`` uses UTC), so
  there is no daylight-saving gap or repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from croniter import CroniterError, croniter


class ScheduleError(ValueError):
    pass


_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december")
_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
)
_FORM = "'{second} {minute} {hour} {day} {month} {day-of-week}', e.g. '0 */5 * * * *'"


def _value(text: str, field: str, lo: int, hi: int, names: tuple[str, ...]) -> int:
    if text.isdigit():
        value = int(text)
    elif text.isalpha() and names:
        found = [i for i, name in enumerate(names) if name.startswith(text.lower())]
        if not found:
            raise ValueError(f"{text!r} is no {field} name (use e.g. {names[1][:3].title()!r})")
        value = lo + found[0]
    else:
        allowed = f"{lo}-{hi}" + (" or a name" if names else "")
        raise ValueError(f"{text!r} is not a {field} value ({allowed}; NCRONTAB has no L, W, # or ?)")
    if not lo <= value <= hi:
        hint = " (Sunday is 0)" if field == "day-of-week" and value == 7 else ""
        raise ValueError(f"{value} is outside the {field} range {lo}-{hi}{hint}")
    return value


def _field(text: str, field: str, lo: int, hi: int, names: tuple[str, ...]) -> list[int]:
    """The values one field selects, read as NCrontab reads it."""
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{item!r}: the step after '/' must be a whole number from 1")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi
        elif "-" in base[1:]:
            first, _, last = base.partition("-")
            start, end = sorted((_value(first, field, lo, hi, names), _value(last, field, lo, hi, names)))
        else:
            start = _value(base, field, lo, hi, names)
            end = hi if slash else start
        values.update(range(start, end + 1, step))
    return sorted(values)


def _normalized(expr: str) -> str:
    """The expression with every field as its explicit values, for croniter; ScheduleError if
    it is not a six-field NCRONTAB expression."""
    fields = expr.split()
    if len(fields) != 6:
        hint = f"; with seconds first: '0 {expr.strip()}'" if len(fields) == 5 else ""
        raise ScheduleError(
            f"{expr!r} has {len(fields)} fields; an NCRONTAB expression has six: {_FORM}{hint}"
        )
    out = []
    for text, (field, lo, hi, names) in zip(fields, _FIELDS, strict=True):
        try:
            values = _field(text, field, lo, hi, names)
        except ValueError as exc:
            raise ScheduleError(f"{expr!r} is not a valid NCRONTAB expression: {field} field: {exc}") from None
        out.append("*" if values == list(range(lo, hi + 1)) else ",".join(map(str, values)))
    return " ".join(out)


def _iter(expr: str, after: datetime) -> croniter:
    # day_or=False: NCrontab fires when the day *and* the day of week match
    return croniter(_normalized(expr), after, second_at_beginning=True, day_or=False)


def validate_ncrontab(expr: str) -> str:
    """Return the expression if it is a valid six-field NCRONTAB that fires, else raise ScheduleError."""
    try:
        _iter(expr, datetime(2026, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterError as exc:
        raise ScheduleError(f"{expr!r} never fires (e.g. the 31st of a month that has 30 days): {exc}") from None
    return expr


def next_fire(expr: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` at which the schedule fires (same timezone)."""
    nxt: datetime = _iter(validate_ncrontab(expr), after).get_next(datetime)
    return nxt


def previous_fire(expr: str, at: datetime) -> datetime:
    """The last time at or before ``at`` at which the schedule fired (same timezone)."""
    # fire times are whole seconds: the last one strictly before the next whole second
    after = at.replace(microsecond=0) + timedelta(seconds=1)
    prev: datetime = _iter(validate_ncrontab(expr), after).get_prev(datetime)
    return prev


def longest_gap(expr: str, *, within: timedelta = timedelta(days=7), max_fires: int = 20_000) -> timedelta:
    """The longest time between two fires of the schedule (UTC), e.g. 10 minutes for
    '0 */10 * * * *': measured over a week (a schedule that fires more than ``max_fires`` times a
    week on its first ``max_fires`` fires: its gaps are seconds), and with a day or month field
    restricted also between its firing days over a year ('0 */5 * * 1-6 *' leaves July to
    December without a fire)."""
    start = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
    it = _iter(validate_ncrontab(expr), start - timedelta(seconds=1))
    first = last = it.get_next(datetime)
    gap = timedelta(0)
    for _ in range(max_fires):
        nxt: datetime = it.get_next(datetime)
        gap = max(gap, nxt - last)
        last = nxt
        if nxt - first > within:
            break
    return max(gap, _longest_gap_between_days(expr))


def _longest_gap_between_days(expr: str) -> timedelta:
    """The longest time from a firing day's last fire to the next firing day's first, over a year
    (the times of day are the same on every firing day); 0 when every week is alike."""
    fields = _normalized(expr).split()
    if fields[3] == "*" and fields[4] == "*":
        return timedelta(0)
    ends = []
    for text, (_, lo, hi, _names) in zip(fields[:3], _FIELDS[:3], strict=True):
        values = [lo, hi] if text == "*" else [int(v) for v in text.split(",")]
        ends.append((values[0], values[-1]))
    (s0, s1), (m0, m1), (h0, h1) = ends
    day_span = timedelta(hours=h1 - h0, minutes=m1 - m0, seconds=s1 - s0)  # first to last fire of a day
    days = _iter(f"{s0} {m0} {h0} {' '.join(fields[3:])}", datetime(2026, 1, 1, tzinfo=UTC))
    first = last = days.get_next(datetime)
    gap = timedelta(0)
    while last - first <= timedelta(days=366):
        nxt: datetime = days.get_next(datetime)
        gap = max(gap, nxt - last)
        last = nxt
    return gap - day_span if gap else timedelta(0)


async def sleep_unless_stopped(sleep: Callable[[float], Awaitable[object]], seconds: float,
                               stopping: asyncio.Event) -> bool:
    """Sleep ``seconds`` with ``sleep`` (injected: tests pass their own clock); False at once when
    ``stopping`` is or becomes set first (a shutdown ends a timer's or a retry's wait)."""
    if stopping.is_set():
        return False
    sleeper = asyncio.ensure_future(sleep(seconds))
    stopper = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleeper, stopper):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
    return not stopping.is_set()

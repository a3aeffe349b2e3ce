"""Warm-capacity windows: which window (if any) applies at an instant, in the configured timezone.

Pure. Wall-clock comparison in the window's timezone, so daylight-saving changes need no special
case: 08:00 in Europe/Berlin is 07:00 UTC in winter and 06:00 UTC in summer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hubpilot.config.scale import WarmWindow, parse_days, parse_hhmm


@dataclass(frozen=True)
class Warm:
    """What the schedule asks for now: spare empty nodes and a floor of nodes in total."""

    spare: int = 0
    min_nodes: int = 0
    window: str = ""  # a readable name of the window that applies, "" when none

    @property
    def active(self) -> bool:
        return bool(self.window)


@dataclass(frozen=True)
class Schedule:
    windows: tuple[WarmWindow, ...]
    timezone: str = "UTC"
    holidays: frozenset[date] = frozenset()

    @classmethod
    def of(cls, windows: Sequence[WarmWindow], timezone: str, holidays: Sequence[date]) -> Schedule:
        return cls(tuple(windows), timezone, frozenset(holidays))

    def at(self, now: datetime) -> Warm:
        """The warm capacity asked for at ``now`` (timezone-aware); the largest of overlapping windows."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        local = now.astimezone(ZoneInfo(self.timezone))
        best = Warm()
        for w in self.windows:
            if _covers(w, local, self.holidays):
                name = f"{w.days} {w.start}-{w.end} {self.timezone}"
                best = Warm(max(best.spare, w.spare), max(best.min_nodes, w.min_nodes),
                            best.window + ("; " if best.window else "") + name)
        return best


def _covers(w: WarmWindow, local: datetime, holidays: frozenset[date]) -> bool:
    days = parse_days(w.days)
    start, end = parse_hhmm(w.start), parse_hhmm(w.end)
    t = local.time().replace(tzinfo=None)
    today = local.date()

    def on(day: date) -> bool:
        return day.weekday() in days and day not in holidays

    if start == end:  # all day
        return on(today)
    # the hour that comes twice when daylight saving ends is inside a window from the first pass of
    # its start to the second pass of its end, so the window is one stretch, not off and on again
    begun = t >= start or (local.fold == 1 and _twice(today, start, local))
    ended = t >= end and not (local.fold == 0 and _twice(today, t, local) and _twice(today, end, local))
    if start < end or end == time.max:
        return on(today) and begun and not ended
    # runs past midnight: belongs to the day it starts on
    return (begun and on(today)) or (not ended and on(today - timedelta(days=1)))


def _twice(day: date, wall: time, local: datetime) -> bool:
    """Whether the wall-clock time ``wall`` comes twice on ``day`` (in the hour daylight saving ends)."""
    first = datetime.combine(day, wall.replace(fold=0), tzinfo=local.tzinfo)
    before, after = first.utcoffset(), first.replace(fold=1).utcoffset()
    return before is not None and after is not None and before > after

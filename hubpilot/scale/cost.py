"""Pool size history and GPU cost: node-hours per day against an always-on pool. Pure + store reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from hubpilot.loop import ConflictPause, stored_time
from hubpilot.ports.store import ConflictError, StateStore, StoreError

log = logging.getLogger(__name__)

SIZES = "sizes"  # the pool's running size (its count): GPU node-hours
STOPPED = "stopped"  # a Deallocate pool's stopped VMs: their managed disks are billed while stopped
SERIES_KEY = "scale/{series}/{day}"
SIZES_KEY = SERIES_KEY.replace("{series}", SIZES)


OBSERVATION_SLACK = timedelta(minutes=5)


def observation_gap(schedule_gap: timedelta) -> timedelta:
    """How long after an observation the next one is due: the longest pause of the scale schedule,
    plus a run's time and a timer's lateness (at least 5 minutes, else one more schedule pause).
    A longer pause is time in which hubpilot did not observe the pool."""
    return schedule_gap + max(schedule_gap, OBSERVATION_SLACK)


DEFAULT_GAP = observation_gap(timedelta(minutes=1))  # the default schedule: every minute


@dataclass(frozen=True)
class DayCost:
    day: date
    node_hours: float
    cost: float | None  # None: no price is set
    peak: int
    always_on_node_hours: float
    always_on_cost: float | None
    changes: int
    hours: float = 24.0  # real hours of the day counted (23 or 25 on a DST day; less for today)
    partial: bool = False  # today: counted until now
    unobserved_hours: float = 0.0  # hours (from the first record on) hubpilot did not observe the pool
    unobserved_node_hours: float = 0.0  # the part of node_hours assumed: the last observed size held
    # a Deallocate pool's stopped VMs: not in node_hours (no compute billed), but their managed
    # disks are billed; the cost is None without scale.stopped_vm_price_per_hour
    stopped_vm_hours: float = 0.0
    stopped_vm_cost: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(), "hours": round(self.hours, 3), "partial": self.partial,
            "node_hours": round(self.node_hours, 3), "cost": _money(self.cost),
            "peak_nodes": self.peak, "always_on_node_hours": round(self.always_on_node_hours, 3),
            "always_on_cost": _money(self.always_on_cost), "changes": self.changes,
            "unobserved_hours": round(self.unobserved_hours, 3),
            "unobserved_node_hours": round(self.unobserved_node_hours, 3),
            "stopped_vm_hours": round(self.stopped_vm_hours, 3), "stopped_vm_cost": _money(self.stopped_vm_cost),
        }


def _money(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


@dataclass(frozen=True)
class CostReport:
    days: tuple[DayCost, ...]
    price_per_node_hour: float | None  # None: not set
    currency: str
    always_on_nodes: int
    timezone: str = "UTC"
    always_on_source: str = "peak"  # "peak": the peak recorded in the period; "given": asked for
    # the first recorded observation (None: none); ``untracked``: recorded sizes of the period
    # precede it (history of a version that recorded no observation times): gaps there are unknown
    observed_from: datetime | None = None
    untracked: bool = False
    # from when the report knows the pool's size (its first record, or the last one before the
    # period; None: none): the hours before count no node-hours, and no always-on hours
    recorded_from: datetime | None = None
    period_start: datetime | None = None
    stopped_vm_price_per_hour: float | None = None  # None: not set

    @property
    def stopped_vm_hours(self) -> float:
        return sum(d.stopped_vm_hours for d in self.days)

    def _cost(self, hours: float) -> float | None:
        return None if self.price_per_node_hour is None else hours * self.price_per_node_hour

    def notes(self) -> list[str]:
        out = [f"days are cut at midnight {self.timezone}; a DST day counts its real 23 or 25 hours"]
        what = ("the peak size recorded in the period" if self.always_on_source == "peak"
                else "the size asked for")
        out.append(f"always-on: {self.always_on_nodes} node(s) ({what}) around the clock, over the same "
                   "hours as the recorded sizes (from the first record on)")
        if self.price_per_node_hour is None:
            out.append("scale.price_per_node_hour is not set: node-hours only, no cost")
        else:
            out.append(f"cost: every day at today's scale.price_per_node_hour ({self.price_per_node_hour:g} "
                       f"{self.currency}); a price changed within the period is not tracked")
        partial = [d for d in self.days if d.partial]
        if partial:
            out.append(f"{partial[-1].day.isoformat()} is partial: {partial[-1].hours:.2f} h so far")
        if self.recorded_from is None:
            out.append("nothing is recorded in the period: its node-hours are 0 as unknown, not as an empty "
                       "pool (hubpilot's scale runs had not observed the pool yet)")
        elif self.period_start is not None and self.recorded_from > self.period_start:
            out.append(f"nothing is recorded before {self.recorded_from.isoformat()} (hubpilot's first record "
                       "of the pool): the hours before count neither node-hours nor always-on hours")
        if self.untracked and self.observed_from is None:
            out.append("no observation times are recorded in the period (history of a version that did not "
                       "record them): the hours hubpilot did not observe the pool are not known, reported as 0")
        elif self.untracked and self.observed_from is not None:
            out.append(f"observation times are recorded from {self.observed_from.isoformat()} on (earlier history "
                       "is of a version that did not record them): before then the hours hubpilot did not observe "
                       "the pool are not known, reported as 0")
        if self.stopped_vm_hours:
            priced = ("not priced: set scale.stopped_vm_price_per_hour (what a stopped VM's managed disks cost "
                      "an hour)" if self.stopped_vm_price_per_hour is None else
                      f"priced at today's scale.stopped_vm_price_per_hour ({self.stopped_vm_price_per_hour:g} "
                      f"{self.currency})")
            out.append(f"stopped VMs of the pool (scale-down mode Deallocate): {self.stopped_vm_hours:.2f} VM-hours, "
                       "not in the node-hours (no compute is billed) nor in the always-on comparison, but Azure "
                       f"bills their managed disks while they are stopped; {priced}")
        gaps = sum(d.unobserved_hours for d in self.days)
        if gaps:
            assumed = sum(d.unobserved_node_hours for d in self.days)
            out.append(f"hubpilot did not observe the pool for {gaps:.2f} h (not running, paused, refused or failing): "
                       f"{assumed:.2f} of the node-hours assume the last observed size held then")
        return out

    def to_json(self) -> dict[str, Any]:
        total = sum(d.node_hours for d in self.days)
        always = sum(d.always_on_node_hours for d in self.days)
        return {
            "currency": self.currency, "price_per_node_hour": self.price_per_node_hour,
            "stopped_vm_price_per_hour": self.stopped_vm_price_per_hour,
            "timezone": self.timezone,
            "observed_from": self.observed_from.isoformat() if self.observed_from else None,
            "recorded_from": self.recorded_from.isoformat() if self.recorded_from else None,
            "always_on_nodes": self.always_on_nodes, "always_on": self.always_on_source,
            "days": [d.to_json() for d in self.days],
            "total": {
                "node_hours": round(total, 3), "cost": _money(self._cost(total)),
                "always_on_node_hours": round(always, 3),
                "always_on_cost": _money(self._cost(always)),
                "saving_ratio": round(1 - total / always, 4) if always else None,
                "unobserved_hours": round(sum(d.unobserved_hours for d in self.days), 3),
                "unobserved_node_hours": round(sum(d.unobserved_node_hours for d in self.days), 3),
                "stopped_vm_hours": round(self.stopped_vm_hours, 3),
                "stopped_vm_cost": _money(None if self.stopped_vm_price_per_hour is None
                                          else self.stopped_vm_hours * self.stopped_vm_price_per_hour),
            },
            "notes": self.notes(),
        }

    def render(self) -> str:
        def money(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        stopped = bool(self.stopped_vm_hours)  # the columns of a Deallocate pool's stopped VMs

        def vms(hours: float, cost: float | None) -> str:
            return f"{hours:>11.2f}{money(cost):>14}" if stopped else ""

        lines = [f"{'date':<12}{'hours':>7}{'node-h':>9}{'cost':>10}{'peak':>6}{'always-on h':>13}"
                 f"{'always-on':>11}{'unobserved h':>14}"
                 + (f"{'stopped h':>11}{'stopped cost':>14}" if stopped else "")]
        for d in self.days:
            lines.append(f"{d.day.isoformat() + ('*' if d.partial else ''):<12}{d.hours:>7.2f}{d.node_hours:>9.2f}"
                         f"{money(d.cost):>10}{d.peak:>6}{d.always_on_node_hours:>13.2f}"
                         f"{money(d.always_on_cost):>11}{d.unobserved_hours:>14.2f}"
                         + vms(d.stopped_vm_hours, d.stopped_vm_cost))
        t = self.to_json()["total"]
        lines.append(f"{'total':<12}{'':>7}{t['node_hours']:>9.2f}{money(t['cost']):>10}{'':>6}"
                     f"{t['always_on_node_hours']:>13.2f}{money(t['always_on_cost']):>11}"
                     f"{t['unobserved_hours']:>14.2f}" + vms(t["stopped_vm_hours"], t["stopped_vm_cost"])
                     + f"  ({self.currency})")
        lines += [f"note: {n}" for n in self.notes()]
        return "\n".join(lines)


def node_hours(points: Sequence[tuple[datetime, int]], start: datetime, end: datetime,
               before: int | None) -> tuple[float, int]:
    """Integrate a step function of the pool size over [start, end).

    ``points`` are (time, count) change points in time order; ``before`` is the size in force at
    ``start`` (None: unknown, the interval until the first point is not counted).
    Returns (node-hours, peak size).
    """
    total = 0.0
    level = before
    at = start
    peak = before or 0
    for t, count in points:
        if t >= end:
            break
        if t > at:
            if level is not None:
                total += level * (t - at).total_seconds() / 3600
            at = t
        level = count
        peak = max(peak, count)
    if level is not None and end > at:
        total += level * (end - at).total_seconds() / 3600
    return total, peak


Span = tuple[datetime, datetime]


def merge_spans(spans: Sequence[Span], gap: timedelta) -> list[Span]:
    """Observation spans joined where the next one starts within ``gap`` of the last."""
    out: list[Span] = []
    for a, b in sorted(spans):
        if out and a - out[-1][1] <= gap:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _unobserved(spans: Sequence[Span], start: datetime, end: datetime, gap: timedelta,
                until: datetime) -> list[Span]:
    """The parts of [start, end) outside the observed spans (merged with ``gap``). The time after
    the last observation counts as observed while the next one is not yet due (``gap``)."""
    out: list[Span] = []
    at = start
    for a, b in spans:
        if until - b <= gap:
            b = until
        if a > at:
            out.append((at, min(a, end)))
        at = max(at, b)
        if at >= end:
            break
    if at < end:
        out.append((at, end))
    return [(a, b) for a, b in out if b > a]


def day_costs(points: Sequence[tuple[datetime, int]], days: Sequence[date], *, price: float | None,
              always_on_nodes: int, until: datetime, tz: tzinfo = UTC,
              spans: Sequence[Span] | None = None, gap: timedelta = DEFAULT_GAP) -> list[DayCost]:
    """Per day (midnight to midnight in ``tz``, its real hours): node-hours and cost of the recorded
    sizes, and of an always-on pool (over the same time: from the first recorded size on).

    ``spans``: when hubpilot observed the pool; the hours from the first span on outside them are
    reported as unobserved (their node-hours assume the last observed size). None or empty: no
    observation times were recorded, nothing is reported unobserved."""
    pts = sorted(points, key=lambda p: p[0])
    known_from = pts[0][0] if pts else until  # nothing is known before the first record
    seen = merge_spans(spans or [], gap)
    tracked_from = max(seen[0][0], known_from) if seen else until
    out = []
    for d in days:
        start = datetime.combine(d, time(0), tz).astimezone(UTC)
        full = datetime.combine(d + timedelta(days=1), time(0), tz).astimezone(UTC)
        end = min(full, until)
        if end < start:  # a day still to come; today is a row even at 00:00 sharp
            continue
        before = None
        for t, c in pts:
            if t <= start:
                before = c
        inside = [(t, c) for t, c in pts if start < t < end]
        hours, peak = node_hours(inside, start, end, before)
        span = max(0.0, (end - max(start, known_from)).total_seconds() / 3600)
        gaps = _unobserved(seen, max(start, tracked_from), end, gap, until) if seen else []
        gap_hours = sum((b - a).total_seconds() for a, b in gaps) / 3600
        gap_node_hours = 0.0
        for a, b in gaps:
            lvl = None
            for t, c in pts:
                if t <= a:
                    lvl = c
            gap_node_hours += node_hours([(t, c) for t, c in pts if a < t < b], a, b, lvl)[0]
        always = always_on_nodes * span
        out.append(DayCost(d, hours, None if price is None else hours * price, peak, always,
                           None if price is None else always * price, len(inside),
                           (end - start).total_seconds() / 3600, end < full, gap_hours, gap_node_hours))
    return out


async def record_size(store: StateStore, at: datetime, count: int, *, source: str,
                      observed: timedelta | None = None, seconds: float = 10.0, series: str = SIZES) -> bool:
    """Append a size change point unless the size in force at ``at`` is already ``count``.
    Idempotent; safe to run concurrently (the day's document is written with its etag).

    ``observed``: ``at`` is an observation of the pool, and the next one is due within this long:
    it extends the day's observation spans (``seen``), so the report can tell the hours hubpilot did
    not observe. Returns whether a change point was appended.

    A conditional write that loses to another writer reads and merges again, with a growing pause,
    for up to ``seconds``; it never overwrites what the other wrote.

    ``series``: which history: the pool's size (``SIZES``) or its stopped VMs (``STOPPED``), each
    kept the same way in its own documents."""
    at = at.astimezone(UTC)
    day = at.date()
    key = SERIES_KEY.format(series=series, day=day.isoformat())
    pause = ConflictPause(seconds)
    while True:
        got = await store.get_with_etag(key)
        doc, etag = got if got else ({"points": []}, "")
        points = list(doc["points"]) if isinstance(doc.get("points"), list) else []
        # the size in force at ``at`` (records may arrive out of time order: two hosts, skew)
        parsed = _parsed(points, key)
        earlier = [p for p in parsed if p[0] <= at]
        start = _start(doc)  # the size in force when the day began, kept since the day's first record
        if start is None and (not got or not earlier):
            start = await last_size(store, day - timedelta(days=1), series=series)
        last = earlier[-1][1] if earlier else start
        change = last is None or last != count
        seen = _spans(doc.get("seen"), key)
        if observed is not None:
            seen = merge_spans([*seen, (at, at)], observed)
        elif not change and got:  # (a day's first record writes its document: the next ones need
            return False  # not walk back for the size the day began with)
        if change:
            points = _with_point(points, [at.isoformat(), count, source], at, count)
        new = {**doc, "points": points}
        if not got and start is not None:  # the size in force when the day began: no walk back
            new["start"] = start
        if seen:
            new["seen"] = [[a.isoformat(), b.isoformat()] for a, b in seen]
        if new == doc:
            return False
        try:
            await store.put(key, new, if_match=etag)
        except ConflictError:
            if not await pause.lost():
                break
            continue
        if change and len(earlier) == len(parsed):  # the day's last point: the size it ends with
            await _next_day_begins(store, day + timedelta(days=1), count, seconds, series)
        if not got and start is not None:  # a late record of the day before may have landed since
            await _next_day_begins(store, day, None, seconds, series)
        return change
    log.warning("the size history %s was written by others %d times in a row within %g s: %s at %s not recorded",
                key, pause.conflicts, seconds, count, at.isoformat())
    return False


async def _next_day_begins(store: StateStore, day: date, size: int | None, seconds: float,
                           series: str = SIZES) -> None:
    """The day document of ``day``, when it exists, begins with ``size`` (None: the size the day
    before ends with, as ``last_size`` finds it), which a record of the day before that arrived
    late (after ``day``'s first record read it) has changed. The observations of
    ``day`` before its first point saw the size it began with until now: that becomes a point at
    the first of them. Otherwise a first point of ``size`` is no change any more and is dropped.
    Idempotent; conditional writes, as ``record_size``."""
    key = SERIES_KEY.format(series=series, day=day.isoformat())
    pause = ConflictPause(seconds)
    while True:
        try:
            if size is None and (size := await last_size(store, day - timedelta(days=1), series=series)) is None:
                return
            got = await store.get_with_etag(key)
            if not got:
                return
            doc, etag = got
            began = _start(doc)
            if began is None or began == size:
                return
            points = list(doc["points"]) if isinstance(doc.get("points"), list) else []
            first = min((t for t, _ in _parsed(points, key)), default=None)
            seen = min((a for a, _ in _spans(doc.get("seen"), key)), default=None)
            if seen is not None and (first is None or seen < first):
                points = _with_point(points, [seen.isoformat(), began, "observed"], seen, began)
            elif first is not None:  # the same as a late record of ``size`` at 00:00 would do
                mark: list[Any] = []  # placed just before the first point, then taken out (by identity)
                points = [p for p in _with_point(points, mark, first - timedelta(microseconds=1), size)
                          if p is not mark]
            await store.put(key, {**doc, "points": points, "start": size}, if_match=etag)
            return
        except ConflictError:
            if not await pause.lost():
                break
        except StoreError as exc:
            log.warning("could not correct the size %s begins with to %s (a late record of the day before): %s",
                        key, size, exc)
            return
    log.warning("the size history %s was written by others %d times in a row within %g s: the size it begins "
                "with not corrected to %d (a late record of the day before)", key, pause.conflicts, seconds, size)


def _with_point(points: list[Any], point: list[Any], at: datetime, count: int) -> list[Any]:
    """``points`` with ``point`` (the size ``count`` from ``at``) in its place by time, after the
    points of the same instant. A record that arrives late (two instances, a skewed clock) can be
    earlier than a point of the same size: that point is no longer a change and is dropped, so the
    day counts the change once, at its earliest time. Damaged points stay as they are."""
    def when(p: Any) -> datetime | None:
        try:
            return stored_time(p[0], "time")
        except (ValueError, TypeError, IndexError, KeyError):
            return None
    def sized(p: Any) -> bool:  # a count the readers take (else the point is left out, as damaged)
        return isinstance(p, list) and len(p) > 1 and isinstance(p[1], int) and not isinstance(p[1], bool)
    timed = [(when(p), p) for p in points]
    later = [(t, p) for t, p in timed if t is not None and t > at and sized(p)]
    if later and (nxt := min(later, key=lambda tp: tp[0])[1])[1] == count:
        timed = [(t, p) for t, p in timed if p is not nxt]
    valid = sorted([(t, p) for t, p in timed if t is not None], key=lambda tp: tp[0])  # stable: same instants
    cut = sum(1 for t, _ in valid if t <= at)
    damaged = [p for t, p in timed if t is None]
    return [p for _, p in valid[:cut]] + [point] + [p for _, p in valid[cut:]] + damaged


def _spans(value: Any, key: str) -> list[Span]:
    out: list[Span] = []
    for s in value if isinstance(value, list) else []:
        try:
            a, b = stored_time(s[0], "from"), stored_time(s[1], "to")
            if a is None or b is None or b < a:
                raise ValueError(f"not [from, to]: {s!r}"[:120])
            out.append((a, b))
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            log.warning("the size history %s has a damaged observation span, left out: %s", key, exc)
    return out


LOOKBACK_DAYS = 31  # days looked back for the size in force before a day without a record


async def last_size(store: StateStore, day: date, lookback_days: int = LOOKBACK_DAYS, *,
                    series: str = SIZES) -> int | None:
    """The size in force at the end of the UTC ``day``: its last change point, else the size it
    began with (``start``), else the same of the days before (up to ``lookback_days``)."""
    async for d, key, doc in _walk_back(store, day, lookback_days, series):
        found = _in_force(doc, d, key)
        if found:
            return found[-1][1]
    return None


async def _walk_back(store: StateStore, day: date, days: int,
                     series: str = SIZES) -> AsyncIterator[tuple[date, str, dict[str, Any]]]:
    """The day documents of ``day`` and the ``days - 1`` days before it, newest first ({} when none)."""
    for i in range(days):
        d = day - timedelta(days=i)
        key = SERIES_KEY.format(series=series, day=d.isoformat())
        yield d, key, await store.get(key) or {}


def _in_force(doc: Mapping[str, Any], day: date, key: str) -> list[tuple[datetime, int]]:
    """A day document's change points, else the size the day began with (a point at its 00:00 UTC)."""
    began = _start(doc)
    return _parsed(doc.get("points"), key) or (
        [(datetime.combine(day, time(0), UTC), began)] if began is not None else [])


def _start(doc: Mapping[str, Any]) -> int | None:
    v = doc.get("start")
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _parsed(points: Any, key: str) -> list[tuple[datetime, int]]:
    """Stored points ``[time, count, source]`` by time (points of the same instant stay in the
    order they were recorded). The history only feeds the cost report: a damaged point is left out
    with a warning, never an error that stops a scale run."""
    out: list[tuple[datetime, int]] = []
    for p in points if isinstance(points, list) else [points] if points else []:
        try:
            when = stored_time(p[0], "time")
            if when is None or isinstance(p[1], bool) or not isinstance(p[1], int):
                raise ValueError(f"not [time, count, source]: {p!r}"[:120])
            out.append((when, p[1]))
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            log.warning("the size history %s has a damaged point, left out (fix or delete it): %s", key, exc)
    return sorted(out, key=lambda p: p[0])


READ_CONCURRENCY = 16  # day documents read at once


async def _day_docs(store: StateStore, days: Sequence[date], series: str = SIZES) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    keys = [SERIES_KEY.format(series=series, day=d.isoformat()) for d in days]
    for i in range(0, len(keys), READ_CONCURRENCY):
        chunk = keys[i:i + READ_CONCURRENCY]
        docs = await asyncio.gather(*(store.get(k) for k in chunk))
        out += [(k, doc) for k, doc in zip(chunk, docs, strict=True) if doc]
    return out


async def read_points(store: StateStore, since: datetime, until: date, series: str = SIZES
                      ) -> tuple[list[tuple[datetime, int]], list[Span]]:
    """The recorded change points from the last one before ``since`` through the UTC day ``until``,
    and the observation spans of those days. Reads the days of the period (and the one before),
    not the whole history; the size in force at ``since`` is looked for up to ``last_size``'s
    LOOKBACK_DAYS back, and only when none is recorded there in the whole history. The observation
    spans of the document that holds that size come along: hubpilot not running since before the
    period is time it did not observe (without them the period would start as if observed)."""
    first = since.astimezone(UTC).date() - timedelta(days=1)
    docs = await _day_docs(store, [first + timedelta(days=i) for i in range((until - first).days + 1)], series)
    pts: list[tuple[datetime, int]] = []
    spans: list[Span] = []
    starts: list[tuple[datetime, int]] = []  # the size each day began with, at its 00:00 UTC
    for key, doc in docs:
        pts += _parsed(doc.get("points"), key)
        spans += _spans(doc.get("seen"), key)
        began = _start(doc)
        if began is not None:
            starts.append((datetime.combine(date.fromisoformat(key.rsplit("/", 1)[-1]), time(0), UTC), began))
    pts.sort(key=lambda p: p[0])  # stable: the same instant keeps the order of recording
    earlier = [p for p in pts if p[0] <= since]
    # the size a day of the period began with: carried from an earlier document (found within
    # LOOKBACK_DAYS when that day was first recorded), whose observation spans are needed too
    carried = [] if earlier else sorted(p for p in starts if p[0] <= since)
    if not earlier:
        async for d, key, doc in _walk_back(store, first - timedelta(days=1), LOOKBACK_DAYS - 1, series):
            spans += _spans(doc.get("seen"), key)
            earlier = _in_force(doc, d, key)
            if earlier:
                break
        earlier = carried or earlier
    if not earlier:  # a month without a record: the whole history, once
        for key, doc in (await store.list(f"scale/{series}/")).items():
            if key.rsplit("/", 1)[-1] < first.isoformat():
                earlier += _parsed(doc.get("points"), key)
                spans += _spans(doc.get("seen"), key)
        earlier.sort(key=lambda p: p[0])
    return ([earlier[-1]] if earlier else []) + [p for p in pts if p[0] > since], sorted(spans)


async def cost_report(store: StateStore, *, now: datetime, days: int, price: float | None, currency: str,
                      always_on_nodes: int | None = None, timezone: str = "UTC",
                      gap: timedelta = DEFAULT_GAP, stopped_price: float | None = None) -> CostReport:
    """GPU node-hours and cost per day in ``timezone`` for the last ``days`` days (today included).

    ``price``: None or 0 means not set (node-hours only). ``always_on_nodes``: size of the
    always-on pool to compare with; default the peak recorded. ``gap``: how long after an
    observation the next one is due (see :func:`observation_gap`). ``stopped_price``: what a
    stopped VM of a Deallocate pool costs an hour (its managed disks; None or 0: not set).
    """
    if isinstance(days, bool) or not isinstance(days, int) or days < 1 or days > 366:
        raise ValueError(f"days must be a whole number between 1 and 366, not {days!r}")
    tz = ZoneInfo(timezone)
    today = now.astimezone(tz).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, time(0), tz).astimezone(UTC)
    points, spans = await read_points(store, since, now.astimezone(UTC).date())
    peak = max((c for _, c in points), default=0)
    size = peak if always_on_nodes is None else always_on_nodes
    dlist = [first + timedelta(days=i) for i in range(days)]
    unit = price or None
    observed_from = spans[0][0] if spans else None
    known = max(since, points[0][0]) if points else None  # the recorded sizes count from here
    untracked = known is not None and known < now and (observed_from is None or observed_from > known)
    rows = day_costs(points, dlist, price=unit, always_on_nodes=size, until=now, tz=tz, spans=spans, gap=gap)
    # a Deallocate pool's stopped VMs, recorded apart (none recorded: a Delete pool, or none stopped)
    stopped, _ = await read_points(store, since, now.astimezone(UTC).date(), STOPPED)
    vm_unit = stopped_price or None
    if stopped:
        vm_rows = {r.day: r.node_hours for r in day_costs(stopped, dlist, price=None, always_on_nodes=0,
                                                          until=now, tz=tz)}
        rows = [replace(r, stopped_vm_hours=vm_rows.get(r.day, 0.0),
                        stopped_vm_cost=None if vm_unit is None else vm_rows.get(r.day, 0.0) * vm_unit) for r in rows]
    return CostReport(tuple(rows), unit, currency, size, timezone, "peak" if always_on_nodes is None else "given",
                      observed_from, untracked, points[0][0] if points else None, since, vm_unit)

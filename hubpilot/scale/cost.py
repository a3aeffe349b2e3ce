"""Pool size history and GPU cost: node-hours per day against an always-on pool. Pure + store reads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from hubpilot.loop import stored_time
from hubpilot.ports.store import ConflictError, StateStore

log = logging.getLogger(__name__)

SIZES_KEY = "scale/sizes/{day}"


@dataclass(frozen=True)
class DayCost:
    day: date
    node_hours: float
    cost: float
    peak: int
    always_on_node_hours: float
    always_on_cost: float
    changes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(), "node_hours": round(self.node_hours, 3),
            "cost": round(self.cost, 2),
            "peak_nodes": self.peak, "always_on_node_hours": round(self.always_on_node_hours, 3),
            "always_on_cost": round(self.always_on_cost, 2), "changes": self.changes,
        }


@dataclass(frozen=True)
class CostReport:
    days: tuple[DayCost, ...]
    price_per_node_hour: float
    currency: str
    always_on_nodes: int

    def to_json(self) -> dict[str, Any]:
        total = sum(d.node_hours for d in self.days)
        always = sum(d.always_on_node_hours for d in self.days)
        return {
            "currency": self.currency, "price_per_node_hour": self.price_per_node_hour,
            "always_on_nodes": self.always_on_nodes,
            "days": [d.to_json() for d in self.days],
            "total": {
                "node_hours": round(total, 3), "cost": round(total * self.price_per_node_hour, 2),
                "always_on_node_hours": round(always, 3),
                "always_on_cost": round(always * self.price_per_node_hour, 2),
                "saving_ratio": round(1 - total / always, 4) if always else None,
            },
        }

    def render(self) -> str:
        lines = [f"{'date':<12}{'node-h':>9}{'cost':>10}{'peak':>6}{'always-on h':>13}{'always-on':>11}"]
        for d in self.days:
            lines.append(f"{d.day.isoformat():<12}{d.node_hours:>9.2f}{d.cost:>10.2f}{d.peak:>6}"
                         f"{d.always_on_node_hours:>13.2f}{d.always_on_cost:>11.2f}")
        t = self.to_json()["total"]
        lines.append(f"{'total':<12}{t['node_hours']:>9.2f}{t['cost']:>10.2f}{'':>6}"
                     f"{t['always_on_node_hours']:>13.2f}{t['always_on_cost']:>11.2f}  ({self.currency})")
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


def day_costs(points: Sequence[tuple[datetime, int]], days: Sequence[date], *, price: float,
              always_on_nodes: int, until: datetime) -> list[DayCost]:
    """Per UTC day: node-hours and cost of the recorded sizes, and of an always-on pool
    (over the same time: from the first recorded size on)."""
    pts = sorted(points, key=lambda p: p[0])
    known_from = pts[0][0] if pts else until  # nothing is known before the first record
    out = []
    for d in days:
        start = datetime.combine(d, time(0), UTC)
        end = min(start + timedelta(days=1), until)
        if end < start:  # a day still to come; today is a row even at 00:00 sharp
            continue
        before = None
        for t, c in pts:
            if t <= start:
                before = c
        inside = [(t, c) for t, c in pts if start < t < end]
        hours, peak = node_hours(inside, start, end, before)
        span = max(0.0, (end - max(start, known_from)).total_seconds() / 3600)
        out.append(DayCost(d, hours, hours * price, peak, always_on_nodes * span,
                           always_on_nodes * span * price, len(inside)))
    return out


async def record_size(store: StateStore, at: datetime, count: int, *, source: str) -> bool:
    """Append a size change point unless the last recorded size is already ``count``. Idempotent."""
    at = at.astimezone(UTC)
    day = at.date()
    key = SIZES_KEY.format(day=day.isoformat())
    for _ in range(5):
        got = await store.get_with_etag(key)
        doc, etag = got if got else ({"points": []}, "")
        points = list(doc["points"]) if isinstance(doc.get("points"), list) else []
        # the size in force at ``at`` (records may arrive out of time order: two hosts, skew)
        earlier = [p for p in _parsed(points, key) if p[0] <= at]
        last = earlier[-1][1] if earlier else await last_size(store, day - timedelta(days=1))
        if last is not None and last == count:
            return False
        points.append([at.isoformat(), count, source])
        try:
            await store.put(key, {"points": points}, if_match=etag)
            return True
        except ConflictError:
            continue
    return False


async def last_size(store: StateStore, day: date, lookback_days: int = 31) -> int | None:
    for i in range(lookback_days):
        key = SIZES_KEY.format(day=(day - timedelta(days=i)).isoformat())
        points = _parsed((await store.get(key) or {}).get("points"), key)
        if points:
            return points[-1][1]
    return None


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


async def read_points(store: StateStore, since: date, until: date) -> list[tuple[datetime, int]]:
    """All recorded change points from the last one before ``since`` through ``until``."""
    pts: list[tuple[datetime, int]] = []
    docs = await store.list("scale/sizes/")
    for key, doc in docs.items():
        try:
            day = date.fromisoformat(key.rsplit("/", 1)[-1])
        except ValueError:
            continue
        if day > until:
            continue
        pts += _parsed(doc.get("points"), key)
    pts.sort(key=lambda p: p[0])  # stable: the same instant keeps the order of recording
    start = datetime.combine(since, time(0), UTC)
    earlier = [p for p in pts if p[0] <= start]
    return ([earlier[-1]] if earlier else []) + [p for p in pts if p[0] > start]


async def cost_report(store: StateStore, *, now: datetime, days: int, price: float, currency: str,
                      always_on_nodes: int | None = None) -> CostReport:
    """GPU node-hours and cost per UTC day for the last ``days`` days (today included).

    ``always_on_nodes``: size of the always-on pool to compare with; default the peak recorded.
    """
    if days < 1 or days > 366:
        raise ValueError("days must be between 1 and 366")
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    points = await read_points(store, first, today)
    peak = max((c for _, c in points), default=0)
    size = peak if always_on_nodes is None else always_on_nodes
    dlist = [first + timedelta(days=i) for i in range(days)]
    return CostReport(tuple(day_costs(points, dlist, price=price, always_on_nodes=size, until=now)),
                      price, currency, size)

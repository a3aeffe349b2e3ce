"""Warm capacity from a learned demand forecast: GPU server arrivals per local weekday and hour.

Pure. The capability learns arrivals from what it already observes (GPU pods and the hub's
demand signals; a key ``<user>~<server>`` counts once while it stays in sight) and keeps the
forecast in the state store (``scale/forecast``). The plan asks :func:`forecast_spare` how many
empty ready nodes to keep: the smallest ``k`` such that the arrivals expected within one boot of
a deallocated node are at most ``k`` with probability ``quantile`` (Poisson). A node that has
just become empty is such a spare already: the plan removes only the surplus.

Buckets are ``"<weekday>-<hour>"`` in the schedule's timezone (Monday = 0). Each finished hour
folds its count into the bucket's rate: the plain mean of the first weeks, then an exponential
average with the configured half-life, so the forecast follows a changing team. A rate is shrunk
towards the mean of the same hour on days of the same kind (Mon–Fri, Sat–Sun) while the bucket has
few weeks of data, so one odd week does not set the spare.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hubpilot.config.scale import ScaleSettings
from hubpilot.loop import stored_time

PRIOR_WEEKS = 4.0  # weight of the same-hour mean of the day kind, in weeks of data


@dataclass(frozen=True)
class ForecastPolicy:
    quantile: float = 0.97  # P(arrivals within one boot <= spare)
    boot: timedelta = timedelta(minutes=3)  # start time of a deallocated node, ready for a pod
    max_spare: int = 3
    min_rate: float = 0.0  # fewer expected arrivals per hour than this: no spare (they wait one boot)
    half_life_weeks: float = 4.0
    forget: timedelta = timedelta(minutes=30)  # a key out of sight this long may arrive again
    timezone: str = "UTC"
    holidays: frozenset[date] = frozenset()  # no spare and no learning on these local dates

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1:
            raise ValueError(f"forecast quantile {self.quantile} must be between 0 and 1 (e.g. 0.95)")
        if self.boot <= timedelta(0):
            raise ValueError("forecast boot time must be positive")
        if self.min_rate < 0:
            raise ValueError("forecast min_rate must not be negative")
        if self.half_life_weeks <= 0:
            raise ValueError("forecast half-life must be positive")


@dataclass(frozen=True)
class Forecast:
    """Learned arrivals per hour, per local ``"<weekday>-<hour>"`` bucket."""

    rates: Mapping[str, float] = field(default_factory=dict)
    weeks: Mapping[str, int] = field(default_factory=dict)  # finished hours folded into each bucket
    open_bucket: str | None = None  # the hour being counted
    open_count: int = 0
    seen: Mapping[str, datetime] = field(default_factory=dict)  # key → last time it was in sight
    open_hour: datetime | None = None  # when the open hour began (UTC): 02:00 twice on a 25-hour day
    at: datetime | None = None  # the last observation learned (None: none yet)
    timezone: str | None = None  # the zone of the buckets (None: stored before it was kept, the policy's)

    def to_json(self) -> dict[str, Any]:
        return {
            "rates": {k: round(v, 4) for k, v in sorted(self.rates.items())},
            "weeks": dict(sorted(self.weeks.items())),
            "open_bucket": self.open_bucket,
            "open_count": self.open_count,
            "seen": {k: v.isoformat() for k, v in sorted(self.seen.items())},
            "open_hour": self.open_hour.isoformat() if self.open_hour is not None else None,
            "at": self.at.isoformat() if self.at is not None else None,
            "timezone": self.timezone,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Forecast:
        """Read a stored forecast; anything malformed starts afresh (a forecast only adds spare)."""
        if not data:
            return cls()
        try:
            rates = {str(k): float(v) for k, v in (data.get("rates") or {}).items() if _valid_bucket(str(k))}
            weeks = {str(k): int(v) for k, v in (data.get("weeks") or {}).items() if _valid_bucket(str(k))}
            seen = {str(k): t for k, v in (data.get("seen") or {}).items()
                    if (t := stored_time(v, "seen")) is not None}
            open_bucket = data.get("open_bucket")
            valid = bool(open_bucket) and _valid_bucket(str(open_bucket))
            if (any(not math.isfinite(r) or r < 0 for r in rates.values()) or any(n < 0 for n in weeks.values())
                    or int(data.get("open_count") or 0) < 0):
                raise ValueError("a negative or non-finite rate or count")
            return cls(rates, weeks, str(open_bucket) if valid else None, int(data.get("open_count") or 0), seen,
                       stored_time(data.get("open_hour"), "open_hour") if valid else None,
                       stored_time(data.get("at"), "at"), _stored_zone(data.get("timezone")))
        except (TypeError, ValueError, AttributeError, KeyError, OSError):
            return cls()


def _stored_zone(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("timezone is not a string")
    ZoneInfo(value)  # an unknown zone: the forecast starts afresh (ZoneInfoNotFoundError is a KeyError)
    return value


def in_zone(forecast: Forecast, timezone: str, now: datetime) -> Forecast:
    """The forecast with its buckets in ``timezone``: learned in another zone (``scale.timezone``
    changed), each bucket moves by the hours between the zones at ``now``, so the spare stays at
    the hours the people come and learning goes on from what was learned."""
    old = forecast.timezone
    if old is None or old == timezone:
        return forecast if old == timezone else dataclasses.replace(forecast, timezone=timezone)
    delta = _offset(now, timezone) - _offset(now, old)
    shift = math.floor(delta.total_seconds() / 3600)

    def moved(b: str) -> str:
        d, _, h = b.partition("-")
        i = (int(d) * 24 + int(h) + shift) % (7 * 24)
        return f"{i // 24}-{i % 24:02d}"

    return dataclasses.replace(
        forecast, rates={moved(b): r for b, r in forecast.rates.items()},
        weeks={moved(b): n for b, n in forecast.weeks.items()},
        open_bucket=moved(forecast.open_bucket) if forecast.open_bucket is not None else None,
        timezone=timezone)


def _offset(now: datetime, timezone: str) -> timedelta:
    return now.astimezone(ZoneInfo(timezone)).utcoffset() or timedelta(0)


def _valid_bucket(b: str) -> bool:
    d, _, h = b.partition("-")
    return d.isdigit() and h.isdigit() and 0 <= int(d) <= 6 and 0 <= int(h) <= 23


def bucket(now: datetime, timezone: str) -> str:
    local = now.astimezone(ZoneInfo(timezone))
    return f"{local.weekday()}-{local.hour:02d}"


def _hour_start(now: datetime, timezone: str) -> datetime:
    """The instant (UTC) the local hour of ``now`` began; the repeated hour of a 25-hour day differs."""
    return now.astimezone(ZoneInfo(timezone)).replace(minute=0, second=0, microsecond=0).astimezone(UTC)


def _local_date(now: datetime, timezone: str) -> date:
    return now.astimezone(ZoneInfo(timezone)).date()


def learn(forecast: Forecast, keys: Iterable[str], now: datetime, policy: ForecastPolicy) -> Forecast:
    """The forecast after seeing the GPU server ``keys`` in sight at ``now``.

    A key not seen within ``policy.forget`` is a new arrival of the current hour, unless nothing
    was observed within ``policy.forget`` (the first observation, or after a pause): the servers in
    sight then may have come at any time before, so they are taken as already there. When the hour
    changes, the finished hour's count is folded into its bucket (not on holidays); the hour that
    comes twice when daylight saving ends is folded twice, as the two hours it is."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    forecast = in_zone(forecast, policy.timezone, now)
    current = bucket(now, policy.timezone)
    rates, weeks = dict(forecast.rates), dict(forecast.weeks)
    open_bucket, count = forecast.open_bucket, forecast.open_count
    hour = _hour_start(now, policy.timezone)
    if open_bucket != current or (forecast.open_hour is not None and forecast.open_hour != hour):
        if open_bucket is not None:  # the hour is over: fold its count into its bucket
            n = weeks.get(open_bucket, 0) + 1
            alpha = max(1.0 / n, 1.0 - 0.5 ** (1.0 / policy.half_life_weeks))
            old = rates.get(open_bucket, 0.0)
            rates[open_bucket] = old + alpha * (count - old)
            weeks[open_bucket] = n
        count = 0
    if _local_date(now, policy.timezone) in policy.holidays:
        open_bucket = None  # a holiday hour is not folded: it would teach the weekday a quiet hour
    else:
        open_bucket = current
    seen = {k: t for k, t in forecast.seen.items() if now - t <= policy.forget}
    gap = forecast.at is None or now - forecast.at > policy.forget
    fresh = set() if gap else {k for k in keys if k not in seen}
    if open_bucket is not None:
        count += len(fresh)
    for k in keys:
        seen[k] = now
    return Forecast(rates, weeks, open_bucket, count, seen, hour if open_bucket is not None else None, now,
                    policy.timezone)


def rate_at(forecast: Forecast, when: datetime, timezone: str) -> float:
    """Expected arrivals per hour in the hour of ``when``, shrunk towards its day kind's mean."""
    b = bucket(when, timezone)
    day, hour = b.split("-")
    kind = range(0, 5) if int(day) < 5 else range(5, 7)
    same = [forecast.rates[f"{d}-{hour}"] for d in kind if f"{d}-{hour}" in forecast.rates]
    if not same:
        return 0.0
    prior = sum(same) / len(same)
    n = forecast.weeks.get(b, 0)
    own = forecast.rates.get(b, prior)
    return (n * own + PRIOR_WEEKS * prior) / (n + PRIOR_WEEKS)


def poisson_quantile(mean: float, quantile: float, cap: int) -> int:
    """The smallest k (at most ``cap``) with P(N <= k) >= quantile for N ~ Poisson(mean)."""
    if mean <= 0:
        return 0
    term = math.exp(-mean)
    total = term
    k = 0
    while total < quantile and k < cap:
        k += 1
        term *= mean / k
        total += term
    return k


def forecast_spare(forecast: Forecast, now: datetime, policy: ForecastPolicy) -> tuple[int, float]:
    """Spare nodes to keep warm at ``now``, and the arrival rate (per hour) it is sized for.

    The rate is the larger of this hour's and the hour one boot ahead's, so capacity is ready when
    a busier hour begins."""
    if _local_date(now, policy.timezone) in policy.holidays:
        return 0, 0.0
    forecast = in_zone(forecast, policy.timezone, now)
    rate = max(rate_at(forecast, now, policy.timezone), rate_at(forecast, now + policy.boot, policy.timezone))
    if rate < policy.min_rate:
        return 0, rate
    mean = rate * policy.boot.total_seconds() / 3600
    return poisson_quantile(mean, policy.quantile, policy.max_spare), rate


def forecast_policy_from(s: ScaleSettings) -> ForecastPolicy | None:
    """The forecast part of the scale policy (None when ``scale.forecast`` is off)."""
    if not s.forecast:
        return None
    return ForecastPolicy(quantile=s.forecast_quantile, boot=timedelta(minutes=s.forecast_boot_minutes),
                          max_spare=s.forecast_max_spare, min_rate=s.forecast_min_rate,
                          half_life_weeks=s.forecast_half_life_weeks,
                          timezone=s.timezone, holidays=frozenset(s.holidays))

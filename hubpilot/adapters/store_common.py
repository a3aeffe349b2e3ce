"""Helpers both state stores share: times as microseconds, audit-entry validation, JSON in and
out with errors that say what to fix. Internal to the store adapters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from hubpilot.ports.store import StoreError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check_limit(limit: int) -> None:
    """``read_audit``'s page size must be positive (both stores)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


MAX_KEY_LENGTH = 1000


def check_key(key: str) -> str:
    """A document key every store can hold (the rule of Azure's blob names, applied by both stores
    so that a key one refuses is not kept by the other): not empty, no '\\', no '.' or '..'
    segment, at most :data:`MAX_KEY_LENGTH` characters. Returns it; else ValueError."""
    if not key:
        raise ValueError("a document key must not be empty")
    if "\\" in key or any(p in (".", "..") for p in key.split("/")) or len(key) > MAX_KEY_LENGTH:
        shown = key if len(key) <= 100 else key[:100] + "..."
        raise ValueError(f"document key {shown!r} cannot be a key of the state store: no '\\', no '.' or '..' "
                         f"segments, at most {MAX_KEY_LENGTH} characters")
    return key


def to_micros(when: datetime, what: str = "time") -> int:
    """Microseconds since the epoch of a timezone-aware datetime (naive ones are refused)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {when.isoformat()}")
    return (when - _EPOCH) // timedelta(microseconds=1)


def check_prune(prefix: str, before: datetime, limit: int) -> None:
    """What every store's ``prune`` refuses: no prefix (the whole store), a naive time, a limit
    below 1 (SQLite would read a negative LIMIT as none at all)."""
    if not prefix:
        raise ValueError("prune needs a key prefix")
    to_micros(before, "prune's before")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"prune's limit must be a whole number of at least 1, got {limit!r}")


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def audit_time(entry: Mapping[str, Any]) -> datetime:
    """The ``at`` of an audit entry, validated (ISO time; naive means UTC)."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"an audit entry must be a JSON object, got {type(entry).__name__}")
    at, operation = entry.get("at"), entry.get("operation")
    if not isinstance(operation, str) or not operation:
        raise ValueError("an audit entry needs a non-empty string 'operation'")
    if isinstance(at, datetime):
        when = at
    elif isinstance(at, str):
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise ValueError(f"audit entry 'at' is not an ISO time: {at!r}") from None
    else:
        raise ValueError("an audit entry needs 'at', an ISO time string")
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def dump_json(value: Mapping[str, Any], what: str) -> str:
    """Serialise a JSON object, or say clearly why it cannot be stored."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    try:
        text = json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not storable as JSON: {exc}") from None
    try:  # both stores keep UTF-8: a lone surrogate (json.loads of "\ud800") is no text they can hold
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end].encode("unicode_escape").decode("ascii")
        raise ValueError(f"{what} is not storable as JSON: it holds {bad}, a lone UTF-16 surrogate "
                         f"that is no Unicode character (at {exc.start} of its JSON text)") from None
    return text


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_json(text: str | bytes, what: str) -> dict[str, Any]:
    """Parse a stored JSON object; anything else is a StoreError naming what was read."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{what} holds corrupt JSON ({exc}); fix or delete it") from None
    if not isinstance(value, dict):
        raise StoreError(f"{what} holds {type(value).__name__}, not a JSON object; fix or delete it")
    return value

"""The state store: a lease lock per operation, an append-only audit log, keyed documents."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

AZURE_TABLE_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,56}$")
"""The Azure store's table prefix: its tables (``<prefix>locks``, ``<prefix>audit``) are names Azure
Tables takes (3-63 letters and digits, starting with a letter)."""
AZURE_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
"""A blob container name Azure Storage takes."""
AZURE_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
"""A storage account name."""


@dataclass(frozen=True)
class Lease:
    """A held lock. ``token`` is the store's own concurrency token (etag, row version)."""

    name: str
    holder: str
    expires_at: datetime
    token: str = ""


class StoreError(Exception):
    """The state store could not be read or written."""


class ConflictError(StoreError):
    """A conditional write (``if_match``) lost to another writer."""


class BadCursor(ValueError):
    """An audit cursor the log did not return (the caller's mistake, not the store's): what
    ``read_audit`` and the search by user raise for it, and only for it, so a host tells a bad
    cursor (400, exit 2) from an entry it cannot read (500, exit 1)."""


class StateStore(Protocol):
    """Small and generic so every capability reuses it.

    Keys are ``/``-separated paths such as ``sync/managed`` or ``runs/<id>``; documents are JSON
    objects of any size. Every method is safe to call concurrently from several processes.
    """

    async def acquire_lock(self, name: str, holder: str, ttl: timedelta, now: datetime) -> Lease | None:
        """Take the lock ``name`` unless an unexpired lease exists; None when another holds it.

        ``now`` is the caller's clock. A store shared by several machines judges expiry by a clock
        of its own where it has one (Azure: the service's), so a caller whose clock runs ahead
        cannot take a lease that is still held; a lease's ``expires_at`` is in the caller's clock.
        """
        ...

    async def renew_lock(self, lease: Lease, ttl: timedelta, now: datetime) -> Lease | None:
        """Extend a lease we hold; None when it was lost (expired and taken by another)."""
        ...

    async def release_lock(self, lease: Lease) -> None:
        """Release a lease we hold; a lease taken over by another is left alone."""
        ...

    async def read_lock(self, name: str, now: datetime) -> Lease | None:
        """The unexpired lease on ``name``, if any."""
        ...

    async def append_audit(self, entry: Mapping[str, Any]) -> str:
        """Append one entry (a JSON object with at least ``at`` (ISO time) and ``operation``).

        Returns the entry's id. Entries are never changed or removed.
        """
        ...

    async def read_audit(
        self,
        *,
        since: datetime | None = None,
        operation: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Entries newest first, at or after ``since``, of ``operation`` when given.

        Returns at most ``limit`` entries and a cursor for the next (older) page, or None.
        A ``cursor`` it did not return is a :class:`BadCursor`.
        Each returned entry carries its ``id``.
        """
        ...

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def get_with_etag(self, key: str) -> tuple[dict[str, Any], str] | None: ...

    async def put(self, key: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> str:
        """Write a document and return its new etag.

        ``if_match=None`` writes unconditionally; ``if_match="<etag>"`` only if the stored etag is
        still that one; ``if_match=""`` only if no document exists yet. Raises ConflictError when
        the condition fails.
        """
        ...

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete a document; deleting a missing one is not an error. ``if_match="<etag>"``:
        only that version; raises ConflictError when another one is stored now."""
        ...

    async def list(self, prefix: str) -> dict[str, dict[str, Any]]:
        """All documents whose key starts with ``prefix``."""
        ...

    async def prune(self, prefix: str, before: datetime, *, limit: int = 5000) -> int:
        """Delete up to ``limit`` documents under ``prefix`` last written before ``before`` (the
        store's own clock); returns how many were deleted."""
        ...

    async def close(self) -> None: ...

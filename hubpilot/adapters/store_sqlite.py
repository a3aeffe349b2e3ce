"""The state store in one SQLite file: the local default (CLI, local server, on-prem).

Safe with several processes on one file (a timer-driven server and a CLI run): the file is in
WAL mode, every write is a ``BEGIN IMMEDIATE`` transaction (so exactly one of several lock
acquirers wins) and a busy timeout makes writers queue instead of failing. The sqlite3 work runs
in a worker thread so the event loop never waits on the disk or on another process's lock.

Tables: ``locks`` (one row per lock), ``audit`` (append-only; triggers refuse UPDATE and DELETE)
and ``docs`` (key, JSON, etag). The schema is created on first use.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from hubpilot.adapters.store_common import (
    audit_time,
    check_key,
    check_limit,
    check_prune,
    dump_json,
    from_micros,
    load_json,
    to_micros,
)
from hubpilot.ports.store import BadCursor, ConflictError, Lease, StoreError

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_us INTEGER NOT NULL,
    token TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us INTEGER NOT NULL,
    operation TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_order ON audit (at_us DESC, id DESC);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
CREATE TABLE IF NOT EXISTS docs (
    key TEXT PRIMARY KEY,
    json TEXT NOT NULL,
    etag TEXT NOT NULL,
    written_us INTEGER NOT NULL DEFAULT 0
);
"""

def _parse_cursor(cursor: str) -> tuple[int, int]:
    """``<at_us>:<id>`` as read_audit returns it; anything else is a BadCursor."""
    at_text, _, id_text = cursor.partition(":")
    if not (at_text.lstrip("-").isdigit() and id_text.isdigit()):
        raise BadCursor(f"not an audit cursor of this store: {cursor!r}")
    at_us, row_id = int(at_text), int(id_text)
    if not (-(2**63) <= at_us < 2**63 and row_id < 2**63):
        raise BadCursor(f"audit cursor out of range: {cursor!r}")
    return at_us, row_id


def _now_us() -> int:
    return to_micros(datetime.now(UTC))


def _new_token() -> str:
    return uuid.uuid4().hex


class SqliteStore:
    """:class:`hubpilot.ports.store.StateStore` in a SQLite file (``":memory:"`` for one process)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._mutex = threading.Lock()

    # --- plumbing --------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            if self.path != ":memory:" and not self.path.startswith("file:"):
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            looked = "" if os.path.isabs(self.path) or self.path == ":memory:" or self.path.startswith("file:") \
                else f" ({os.path.abspath(self.path)})"  # a relative one: from the working directory
            raise StoreError(f"cannot open the state file {self.path!r}{looked}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                # documents remember when they were written (for prune); a file made before that
                # gains the column, its documents dated when it is first opened so
                if "written_us" not in {row[1] for row in conn.execute("PRAGMA table_info(docs)")}:
                    conn.execute("ALTER TABLE docs ADD COLUMN written_us INTEGER NOT NULL DEFAULT 0")
                    conn.execute("UPDATE docs SET written_us = ?", (_now_us(),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot set up the state file {self.path!r}: {exc}") from exc
        self._conn = conn
        return conn

    def _wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL. SQLite answers "database is locked" at once, without its busy handler,
        while another process opening a new file holds the lock this needs: wait for it here, as
        long as the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _sync(self, work: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        with self._mutex:
            conn = self._connect()
            try:
                if not write:
                    return work(conn)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                raise StoreError(f"state file {self.path!r}: {exc}") from exc

    async def _run(self, work: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        return await asyncio.to_thread(self._sync, work, write=write)

    # --- locks -----------------------------------------------------------------------------
    async def acquire_lock(self, name: str, holder: str, ttl: timedelta, now: datetime) -> Lease | None:
        now_us, expires = to_micros(now, "now"), to_micros(now + ttl)

        def work(conn: sqlite3.Connection) -> Lease | None:
            row = conn.execute("SELECT expires_us FROM locks WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] > now_us:
                return None
            token = _new_token()
            conn.execute(
                "INSERT INTO locks (name, holder, expires_us, token) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_us = excluded.expires_us, token = excluded.token",
                (name, holder, expires, token),
            )
            return Lease(name, holder, from_micros(expires), token)

        return await self._run(work, write=True)

    async def renew_lock(self, lease: Lease, ttl: timedelta, now: datetime) -> Lease | None:
        expires = to_micros(now + ttl, "now")

        def work(conn: sqlite3.Connection) -> Lease | None:
            token = _new_token()
            cur = conn.execute(
                "UPDATE locks SET expires_us = ?, token = ? WHERE name = ? AND token = ?",
                (expires, token, lease.name, lease.token),
            )
            if cur.rowcount != 1:
                return None
            return Lease(lease.name, lease.holder, from_micros(expires), token)

        return await self._run(work, write=True)

    async def release_lock(self, lease: Lease) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM locks WHERE name = ? AND token = ?", (lease.name, lease.token))

        await self._run(work, write=True)

    async def read_lock(self, name: str, now: datetime) -> Lease | None:
        now_us = to_micros(now, "now")

        def work(conn: sqlite3.Connection) -> Lease | None:
            row = conn.execute(
                "SELECT holder, expires_us, token FROM locks WHERE name = ? AND expires_us > ?",
                (name, now_us),
            ).fetchone()
            return Lease(name, row[0], from_micros(row[1]), row[2]) if row else None

        return await self._run(work)

    # --- audit -----------------------------------------------------------------------------
    async def append_audit(self, entry: Mapping[str, Any]) -> str:
        at_us = to_micros(audit_time(entry))
        operation = str(entry["operation"])
        text = dump_json({k: v for k, v in entry.items() if k != "id"}, "the audit entry")

        def work(conn: sqlite3.Connection) -> str:
            cur = conn.execute(
                "INSERT INTO audit (at_us, operation, entry) VALUES (?, ?, ?)", (at_us, operation, text)
            )
            return str(cur.lastrowid)

        return await self._run(work, write=True)

    async def read_audit(
        self,
        *,
        since: datetime | None = None,
        operation: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        check_limit(limit)
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if since is not None:
            where.append("at_us >= ?")
            args.append(to_micros(since if since.tzinfo else since.replace(tzinfo=UTC), "since"))
        if operation is not None:
            where.append("operation = ?")
            args.append(operation)
        if cursor is not None:
            c_at, c_id = _parse_cursor(cursor)
            where.append("(at_us < ? OR (at_us = ? AND id < ?))")
            args += [c_at, c_at, c_id]
        sql = (f"SELECT id, at_us, entry FROM audit WHERE {' AND '.join(where)} "  # noqa: S608
               "ORDER BY at_us DESC, id DESC LIMIT ?")
        args.append(limit + 1)

        def work(conn: sqlite3.Connection) -> list[tuple[int, int, str]]:
            return list(conn.execute(sql, args).fetchall())

        rows = await self._run(work)
        entries = []
        for row_id, _, text in rows[:limit]:
            entry = load_json(text, f"audit entry {row_id}")
            entry["id"] = str(row_id)
            entries.append(entry)
        more = len(rows) > limit
        next_cursor = f"{rows[limit - 1][1]}:{rows[limit - 1][0]}" if more else None
        return entries, next_cursor

    # --- documents -------------------------------------------------------------------------
    async def get(self, key: str) -> dict[str, Any] | None:
        found = await self.get_with_etag(key)
        return found[0] if found else None

    async def get_with_etag(self, key: str) -> tuple[dict[str, Any], str] | None:
        def work(conn: sqlite3.Connection) -> tuple[str, str] | None:
            row = conn.execute("SELECT json, etag FROM docs WHERE key = ?", (key,)).fetchone()
            return (row[0], row[1]) if row else None

        row = await self._run(work)
        if row is None:
            return None
        return load_json(row[0], f"document {key!r}"), row[1]

    async def put(self, key: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> str:
        # the keys Azure can hold (a key written before this rule is still read and deleted)
        check_key(key)
        text = dump_json(doc, f"document {key!r}")

        def work(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT etag FROM docs WHERE key = ?", (key,)).fetchone()
            if if_match == "" and row is not None:
                raise ConflictError(f"document {key!r} already exists")
            if if_match and (row is None or row[0] != if_match):
                state = "is gone" if row is None else "was changed by another writer"
                raise ConflictError(f"document {key!r} {state} (expected etag {if_match})")
            etag = _new_token()
            conn.execute(
                "INSERT INTO docs (key, json, etag, written_us) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET json = excluded.json, etag = excluded.etag, "
                "written_us = excluded.written_us",
                (key, text, etag, _now_us()),
            )
            return etag

        return await self._run(work, write=True)

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        def work(conn: sqlite3.Connection) -> None:
            if if_match is not None:
                row = conn.execute("SELECT etag FROM docs WHERE key = ?", (key,)).fetchone()
                if row is not None and row[0] != if_match:
                    raise ConflictError(f"document {key!r} changed (expected etag {if_match}): not deleted")
            conn.execute("DELETE FROM docs WHERE key = ?", (key,))

        await self._run(work, write=True)

    async def list(self, prefix: str) -> dict[str, dict[str, Any]]:
        def work(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            return list(conn.execute(
                "SELECT key, json FROM docs WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix),
            ).fetchall())

        rows = await self._run(work)
        return {key: load_json(text, f"document {key!r}") for key, text in rows}

    async def prune(self, prefix: str, before: datetime, *, limit: int = 5000) -> int:
        check_prune(prefix, before, limit)
        cutoff = to_micros(before)

        def work(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM docs WHERE key IN (SELECT key FROM docs WHERE substr(key, 1, ?) = ? "
                "AND written_us < ? LIMIT ?)",
                (len(prefix), prefix, cutoff, limit),
            )
            return int(cur.rowcount)

        return await self._run(work, write=True)

    async def close(self) -> None:
        def work() -> None:
            with self._mutex:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(work)

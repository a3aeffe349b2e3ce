"""Conformance of the state stores: the same tests against SQLite (a temp file) and Azure (Azurite)."""

from __future__ import annotations

import asyncio
import http.server
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hubpilot.adapters.store_azure import AzureStore
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import Action, ActionResult, LockHeld, Outcome, Plan, Progress, Runner, Status
from hubpilot.ports.store import BadCursor, ConflictError, StateStore, StoreError
from tests.azurite import ACCOUNT_KEY, Azurite

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=5)


def _name(stem: str = "x") -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}"


def azure_store(azurite: Azurite, **kwargs: Any) -> AzureStore:
    """A store on its own tables and container, so tests never see each other's data."""
    unique = uuid.uuid4().hex[:12]
    return AzureStore.from_settings(connection_string=azurite.connection_string,
                                    table_prefix=f"t{unique}", container=f"c{unique}", **kwargs)


@pytest.fixture(params=["sqlite", pytest.param("azure", marks=pytest.mark.azurite)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    s: StateStore
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "state.sqlite3")
    else:
        s = azure_store(request.getfixturevalue("azurite"))
    try:
        yield s
    finally:
        await s.close()


# --- locks ---------------------------------------------------------------------------------------

def _short_ttl(store: StateStore) -> timedelta:
    """A TTL tests can outlive: Azure judges expiry by the service's clock, so it must pass for real."""
    return timedelta(seconds=1) if isinstance(store, AzureStore) else TTL


async def _outlive(store: StateStore, taken: datetime, ttl: timedelta) -> datetime:
    """Let a lease taken at ``taken`` for ``ttl`` expire; returns the (injected) time it expires.
    SQLite judges by the injected time; Azure by the service's, whose Date has whole seconds."""
    if isinstance(store, AzureStore):
        await asyncio.sleep(ttl.total_seconds() + 1.2)
    return taken + ttl


async def test_acquire_then_second_acquirer_is_refused(store: StateStore) -> None:
    name = _name("lock")
    lease = await store.acquire_lock(name, "a", TTL, T0)
    assert lease is not None and lease.holder == "a" and lease.name == name
    assert lease.expires_at == T0 + TTL and lease.token
    assert await store.acquire_lock(name, "b", TTL, T0 + timedelta(minutes=4)) is None
    held = await store.read_lock(name, T0)
    assert held is not None and held.holder == "a"
    # in the reader's clock; Azure counts what is left by the service's clock (whole seconds)
    assert T0 + TTL - timedelta(seconds=3) <= held.expires_at <= T0 + TTL + timedelta(seconds=1)
    # other names are independent
    assert await store.acquire_lock(_name("lock"), "b", TTL, T0) is not None


async def test_expiry_lets_another_take_it_and_the_old_holder_cannot_renew(store: StateStore) -> None:
    name = _name("lock")
    ttl = _short_ttl(store)
    old = await store.acquire_lock(name, "a", ttl, T0)
    assert old is not None
    expired = await _outlive(store, T0, ttl)
    assert await store.read_lock(name, expired) is None  # expired exactly at expires_at
    new = await store.acquire_lock(name, "b", TTL, expired + timedelta(seconds=1))
    assert new is not None and new.holder == "b"
    assert await store.renew_lock(old, TTL, expired + timedelta(seconds=2)) is None
    held = await store.read_lock(name, expired + timedelta(seconds=3))
    assert held is not None and held.holder == "b"


async def test_renew_extends_and_keeps_others_out(store: StateStore) -> None:
    name = _name("lock")
    lease = await store.acquire_lock(name, "a", TTL, T0)
    assert lease is not None
    later = T0 + timedelta(minutes=4)
    renewed = await store.renew_lock(lease, TTL, later)
    assert renewed is not None and renewed.expires_at == later + TTL and renewed.holder == "a"
    # past the first expiry, the renewed lease still holds
    assert await store.acquire_lock(name, "b", TTL, T0 + timedelta(minutes=6)) is None
    again = await store.renew_lock(renewed, TTL, T0 + timedelta(minutes=7))
    assert again is not None and again.expires_at == T0 + timedelta(minutes=12)


async def test_release_frees_the_lock(store: StateStore) -> None:
    name = _name("lock")
    lease = await store.acquire_lock(name, "a", TTL, T0)
    assert lease is not None
    await store.release_lock(lease)
    assert await store.read_lock(name, T0) is None
    other = await store.acquire_lock(name, "b", TTL, T0)
    assert other is not None and other.holder == "b"
    await store.release_lock(lease)  # releasing twice is harmless and leaves b alone
    held = await store.read_lock(name, T0)
    assert held is not None and held.holder == "b"


async def test_release_after_takeover_leaves_the_new_holder(store: StateStore) -> None:
    name = _name("lock")
    ttl = _short_ttl(store)
    old = await store.acquire_lock(name, "a", ttl, T0)
    assert old is not None
    later = await _outlive(store, T0, ttl) + ttl
    new = await store.acquire_lock(name, "b", TTL, later)
    assert new is not None
    await store.release_lock(old)
    held = await store.read_lock(name, later)
    assert held is not None and held.holder == "b" and held.token == new.token
    assert await store.acquire_lock(name, "c", TTL, later) is None


async def test_twenty_concurrent_acquirers_exactly_one_wins(store: StateStore) -> None:
    name = _name("lock")
    leases = await asyncio.gather(*(store.acquire_lock(name, f"h{i}", TTL, T0) for i in range(20)))
    winners = [lease for lease in leases if lease is not None]
    assert len(winners) == 1
    held = await store.read_lock(name, T0)
    assert held is not None and held.holder == winners[0].holder


async def test_twenty_concurrent_takeovers_of_an_expired_lease_exactly_one_wins(store: StateStore) -> None:
    name = _name("lock")
    ttl = _short_ttl(store)
    assert await store.acquire_lock(name, "old", ttl, T0) is not None
    later = await _outlive(store, T0, ttl) + ttl
    leases = await asyncio.gather(*(store.acquire_lock(name, f"h{i}", TTL, later) for i in range(20)))
    assert len([lease for lease in leases if lease is not None]) == 1


async def test_naive_times_are_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.acquire_lock(_name("lock"), "a", TTL, datetime(2026, 1, 1))


_PROCESS_SCRIPT = textwrap.dedent("""
    import asyncio, sys, time
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from hubpilot.adapters.store_sqlite import SqliteStore

    async def main():
        store = SqliteStore(sys.argv[1])
        await store.read_lock("warm-up", datetime.now(UTC))
        go = Path(sys.argv[2])
        print("ready", flush=True)
        while not go.exists():
            time.sleep(0.005)
        lease = await store.acquire_lock(sys.argv[3], sys.argv[4], timedelta(minutes=5),
                                         datetime(2026, 3, 1, 12, tzinfo=UTC))
        print("won" if lease else "lost", flush=True)
        await store.close()

    asyncio.run(main())
""")


async def test_sqlite_a_lease_is_free_to_take_at_its_expiry(tmp_path: Path) -> None:
    """SQLite judges expiry by the caller's clock: a lease holds until just before its
    ``expires_at`` and is free to take at that instant, as read_lock says."""
    store = SqliteStore(tmp_path / "s.sqlite3")
    try:
        name = _name("lock")
        old = await store.acquire_lock(name, "a", TTL, T0)
        assert old is not None
        assert await store.acquire_lock(name, "b", TTL, old.expires_at - timedelta(microseconds=1)) is None
        assert await store.read_lock(name, old.expires_at) is None
        new = await store.acquire_lock(name, "b", TTL, old.expires_at)
        assert new is not None and new.holder == "b"
    finally:
        await store.close()


def test_sqlite_lock_across_os_processes(tmp_path: Path) -> None:
    path, go = tmp_path / "shared.sqlite3", tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", _PROCESS_SCRIPT, str(path), str(go), "sync", f"p{i}"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
    go.touch()
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outcomes.append(out.strip())
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]


# --- audit ---------------------------------------------------------------------------------------

def _entry(op: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return {"at": at.isoformat(), "operation": op, **extra}


async def _walk(store: StateStore, limit: int, **filters: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page, cursor = await store.read_audit(limit=limit, cursor=cursor, **filters)
        assert len(page) <= limit
        # a cursor that repeats an entry would walk for ever (limit 1): fail instead
        assert not {e["id"] for e in page} & {e["id"] for e in out}, "a page repeats an earlier page's entry"
        out += page
        if cursor is None:
            return out
        assert page, "a cursor must not follow an empty page"


async def test_audit_append_and_newest_first(store: StateStore) -> None:
    op = _name("op")
    ids = [await store.append_audit(_entry(op, T0 + timedelta(minutes=i), n=i)) for i in range(3)]
    assert len(set(ids)) == 3
    page, cursor = await store.read_audit(operation=op)
    assert cursor is None
    assert [e["n"] for e in page] == [2, 1, 0]
    assert [e["id"] for e in page] == ids[::-1]
    assert page[0]["operation"] == op and page[0]["at"] == (T0 + timedelta(minutes=2)).isoformat()


async def test_audit_same_time_keeps_append_order(store: StateStore) -> None:
    op = _name("op")
    for i in range(5):
        await store.append_audit(_entry(op, T0, n=i))
    page, _ = await store.read_audit(operation=op)
    assert [e["n"] for e in page] == [4, 3, 2, 1, 0]


async def test_audit_since_and_operation_filters(store: StateStore) -> None:
    a, b = _name("opa"), _name("opb")
    base = T0 + timedelta(days=30)
    for i in range(4):
        await store.append_audit(_entry(a, base + timedelta(hours=i), n=i))
        await store.append_audit(_entry(b, base + timedelta(hours=i), n=i))
    page, _ = await store.read_audit(operation=a, since=base + timedelta(hours=2))
    assert [(e["operation"], e["n"]) for e in page] == [(a, 3), (a, 2)]
    page, _ = await store.read_audit(since=base + timedelta(hours=3), limit=1000)
    assert {(e["operation"], e["n"]) for e in page} >= {(a, 3), (b, 3)}
    assert all(datetime.fromisoformat(e["at"]) >= base + timedelta(hours=3) for e in page)
    page, _ = await store.read_audit(operation=_name("nobody"))
    assert page == []


async def test_audit_limit_and_cursor_walk_every_entry_once(store: StateStore) -> None:
    op = _name("op")
    # some entries share a time, and appends are not in time order
    times = [T0 + timedelta(seconds=s) for s in (5, 1, 3, 3, 3, 0, 9, 7, 7, 2, 4, 6, 8)]
    for i, at in enumerate(times):
        await store.append_audit(_entry(op, at, n=i))
    for limit in (1, 3, 4, 13, 50):
        walked = await _walk(store, limit, operation=op)
        assert sorted(e["n"] for e in walked) == list(range(len(times)))
        ats = [datetime.fromisoformat(e["at"]) for e in walked]
        assert ats == sorted(ats, reverse=True)
    # and with `since` combined
    walked = await _walk(store, 2, operation=op, since=T0 + timedelta(seconds=3))
    expected = sorted(i for i, t in enumerate(times) if t >= T0 + timedelta(seconds=3))
    assert sorted(e["n"] for e in walked) == expected


async def test_audit_a_full_last_page_has_no_cursor(store: StateStore) -> None:
    """A page that holds the last entries has no cursor, even when it is full: a reader is not
    sent on to an empty page."""
    op = _name("op")
    for i in range(3):
        await store.append_audit(_entry(op, T0 + timedelta(seconds=i), n=i))
    page, cursor = await store.read_audit(operation=op, limit=3)
    assert [e["n"] for e in page] == [2, 1, 0] and cursor is None
    page, cursor = await store.read_audit(operation=op, limit=2)
    assert [e["n"] for e in page] == [2, 1] and cursor is not None
    page, cursor = await store.read_audit(operation=op, limit=1, cursor=cursor)
    assert [e["n"] for e in page] == [0] and cursor is None


async def test_audit_large_entry_round_trips(store: StateStore) -> None:
    op = _name("op")
    actions = [{"kind": "add_user", "target": f"user{i:05d}", "reason": "member of hub-users " * 5}
               for i in range(25_000)]
    entry = _entry(op, T0, plan={"actions": actions}, note="é€" * 1000)
    assert len(str(entry)) > 3_000_000
    entry_id = await store.append_audit(entry)
    await store.append_audit(_entry(op, T0 + timedelta(seconds=1), small=True))
    page, _ = await store.read_audit(operation=op)
    assert [e.get("small") for e in page] == [True, None]
    got = page[1]
    assert got["id"] == entry_id
    assert got["plan"] == entry["plan"] and got["note"] == entry["note"]


async def test_audit_entries_are_not_modifiable(store: StateStore) -> None:
    op = _name("op")
    original = _entry(op, T0, detail={"a": 1})
    entry_id = await store.append_audit(original)
    original["detail"]["a"] = 2  # the caller's object changing later does not change the log
    page, _ = await store.read_audit(operation=op)
    page[0]["detail"]["a"] = 3  # neither does changing what was read
    again, _ = await store.read_audit(operation=op)
    assert again[0]["detail"] == {"a": 1} and again[0]["id"] == entry_id
    # appending "the same" entry adds one; an entry cannot pick its own id
    second = await store.append_audit({**_entry(op, T0, detail={"a": 1}), "id": entry_id})
    assert second != entry_id
    assert len((await store.read_audit(operation=op))[0]) == 2


def test_sqlite_audit_refuses_update_and_delete_at_the_file_level(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SqliteStore(path)
    asyncio.run(store.append_audit(_entry("sync", T0)))
    asyncio.run(store.close())
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET operation = 'other'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit")
    conn.close()


async def test_audit_bad_entries_are_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="operation"):
        await store.append_audit({"at": T0.isoformat()})
    with pytest.raises(ValueError, match="ISO time"):
        await store.append_audit({"at": "yesterday", "operation": "sync"})
    with pytest.raises(ValueError, match="JSON"):
        await store.append_audit({"at": T0.isoformat(), "operation": "sync", "x": object()})
    for cursor in ("not-a-cursor", "99999999999999999999999:1", "1:99999999999999999999999", "",
                   "000000000000000000-00000000000000000000-0000abcx"):
        with pytest.raises(BadCursor, match="cursor"):
            await store.read_audit(cursor=cursor)
    with pytest.raises(ValueError, match="limit"):
        await store.read_audit(limit=0)


async def test_audit_naive_since_means_utc(store: StateStore) -> None:
    op = _name("op")
    await store.append_audit({"at": "2026-03-01T12:00:00", "operation": op, "n": 0})  # naive: UTC
    await store.append_audit(_entry(op, T0 + timedelta(hours=1), n=1))
    page, _ = await store.read_audit(operation=op, since=datetime(2026, 3, 1, 12, 30))
    assert [e["n"] for e in page] == [1]
    page, _ = await store.read_audit(operation=op, since=datetime(2026, 3, 1, 12, 0))
    assert [e["n"] for e in page] == [1, 0]


# --- documents -----------------------------------------------------------------------------------

async def test_put_get_and_etags(store: StateStore) -> None:
    key = f"runs/{_name()}"
    assert await store.get(key) is None and await store.get_with_etag(key) is None
    etag = await store.put(key, {"a": 1, "nested": {"list": [1, "two", None]}, "text": "ünïcode"})
    assert etag
    assert await store.get(key) == {"a": 1, "nested": {"list": [1, "two", None]}, "text": "ünïcode"}
    got = await store.get_with_etag(key)
    assert got is not None and got[1] == etag
    etag2 = await store.put(key, {"a": 2})
    assert etag2 != etag and await store.get(key) == {"a": 2}


async def test_conditional_put_wins_then_loses(store: StateStore) -> None:
    key = f"sync/{_name()}"
    etag = await store.put(key, {"v": 0})
    # two writers read the same etag; the first conditional write wins, the second loses
    won = await store.put(key, {"v": "first"}, if_match=etag)
    with pytest.raises(ConflictError, match=key):
        await store.put(key, {"v": "second"}, if_match=etag)
    assert await store.get_with_etag(key) == ({"v": "first"}, won)
    # a conditional write on a missing document loses too
    with pytest.raises(ConflictError):
        await store.put(f"sync/{_name()}", {"v": 1}, if_match=etag)


async def test_concurrent_conditional_puts_exactly_one_wins(store: StateStore) -> None:
    key = f"sync/{_name()}"
    etag = await store.put(key, {"v": -1})
    results = await asyncio.gather(*(store.put(key, {"v": i}, if_match=etag) for i in range(10)),
                                   return_exceptions=True)
    wins = [r for r in results if isinstance(r, str)]
    assert len(wins) == 1
    assert all(isinstance(r, ConflictError) for r in results if not isinstance(r, str))
    got = await store.get_with_etag(key)
    assert got is not None and got[1] == wins[0]


async def test_create_only_put(store: StateStore) -> None:
    key = f"refused/{_name()}"
    results = await asyncio.gather(*(store.put(key, {"n": i}, if_match="") for i in range(5)),
                                   return_exceptions=True)
    assert len([r for r in results if isinstance(r, str)]) == 1
    assert all(isinstance(r, ConflictError) for r in results if not isinstance(r, str))
    with pytest.raises(ConflictError, match="exists"):
        await store.put(key, {"n": 99}, if_match="")


async def test_delete_is_idempotent(store: StateStore) -> None:
    key = f"paused/{_name()}"
    await store.put(key, {"paused": True})
    await store.delete(key)
    assert await store.get(key) is None
    await store.delete(key)
    await store.delete(f"never/{_name()}")
    await store.put(key, {"again": 1}, if_match="")  # a deleted document can be created anew
    assert await store.get(key) == {"again": 1}


async def test_a_conditional_delete_leaves_a_newer_version(store: StateStore) -> None:
    """``delete(key, if_match=etag)`` removes only the version read: one written since stays, and
    the caller hears of it (ConflictError); a document already gone is not an error."""
    key = f"pending/{_name()}"
    first = await store.put(key, {"run": 1})
    newer = await store.put(key, {"run": 2})
    with pytest.raises(ConflictError):
        await store.delete(key, if_match=first)
    assert await store.get(key) == {"run": 2}
    await store.delete(key, if_match=newer)
    assert await store.get(key) is None
    await store.delete(key, if_match=newer)


async def test_prune_deletes_only_old_documents_under_the_prefix(store: StateStore) -> None:
    root = _name("prune")
    for key in (f"{root}/runs/a", f"{root}/runs/b", f"{root}/runs-other/x", f"{root}/last_run/sync"):
        await store.put(key, {"k": key})
    written = datetime.now(UTC)
    # nothing was written an hour ago: nothing goes
    assert await store.prune(f"{root}/runs/", written - timedelta(hours=1)) == 0
    # everything under the prefix was written before a minute from now: bounded by the limit
    later = written + timedelta(minutes=1)
    assert await store.prune(f"{root}/runs/", later, limit=1) == 1
    assert await store.prune(f"{root}/runs/", later) == 1
    assert await store.list(f"{root}/runs/") == {}
    assert set(await store.list(f"{root}/")) == {f"{root}/runs-other/x", f"{root}/last_run/sync"}
    with pytest.raises(ValueError, match="prefix"):
        await store.prune("", later)
    # the same refusals on both stores (SQLite read a limit below 1 as none; Azure raised a bare
    # TypeError for a naive time, or deleted nothing when no document was old)
    await store.put(f"{root}/runs/c", {"k": "c"})
    for limit in (0, -1):
        with pytest.raises(ValueError, match="limit"):
            await store.prune(f"{root}/runs/", later + timedelta(minutes=1), limit=limit)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.prune(f"{root}/runs/", (later + timedelta(minutes=1)).replace(tzinfo=None))
    assert set(await store.list(f"{root}/runs/")) == {f"{root}/runs/c"}


async def test_sqlite_prune_judges_a_rewritten_document_by_its_last_write(tmp_path: Path) -> None:
    """prune deletes documents *last* written before the cut: a run document first written a month
    ago and rewritten now (its run finished) is kept."""
    store = SqliteStore(tmp_path / "s.sqlite3")
    try:
        await store.put("runs/r", {"outcome": "running"})
        with sqlite3.connect(store.path) as conn:  # written a month ago
            conn.execute("UPDATE docs SET written_us = written_us - ? WHERE key = 'runs/r'", (30 * 86400 * 10**6,))
        await store.put("runs/r", {"outcome": "applied"})  # and again now
        assert await store.prune("runs/", datetime.now(UTC) - timedelta(days=1)) == 0
        assert await store.get("runs/r") == {"outcome": "applied"}
    finally:
        await store.close()


async def test_an_older_state_file_gains_write_times_without_losing_documents(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)  # a state file from before documents had write times
    conn.execute("CREATE TABLE docs (key TEXT PRIMARY KEY, json TEXT NOT NULL, etag TEXT NOT NULL)")
    conn.execute("INSERT INTO docs VALUES ('runs/old', '{\"n\": 1}', 'e1')")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    try:
        assert await store.get("runs/old") == {"n": 1}
        # it counts as written when the file was first opened with this version: not pruned as old
        assert await store.prune("runs/", datetime.now(UTC) - timedelta(minutes=1)) == 0
        assert await store.prune("runs/", datetime.now(UTC) + timedelta(minutes=1)) == 1
    finally:
        await store.close()


async def test_list_by_prefix(store: StateStore) -> None:
    root = _name("list")
    docs = {
        f"{root}/runs/a": {"n": 1},
        f"{root}/runs/b/c": {"n": 2},
        f"{root}/runs-other/x": {"n": 3},
        f"{root}/last_run/sync": {"n": 4},
    }
    for key, doc in docs.items():
        await store.put(key, doc)
    under_runs = {k: v for k, v in docs.items() if k.startswith(f"{root}/runs/")}
    assert await store.list(f"{root}/runs/") == under_runs
    assert await store.list(f"{root}/runs") == {k: v for k, v in docs.items() if "runs" in k}
    assert await store.list(f"{root}/") == docs
    assert await store.list(f"{root}/nothing/") == {}
    await store.delete(f"{root}/runs/a")
    assert set(await store.list(f"{root}/runs/")) == {f"{root}/runs/b/c"}


async def test_large_document(store: StateStore) -> None:
    key = f"sync/managed-{_name()}"
    users = {f"user{i:06d}": {"groups": ["hub-users", "gpu"], "pad": "x" * 60} for i in range(50_000)}
    doc = {"users": users}
    assert len(str(doc)) > 5_000_000
    etag = await store.put(key, doc)
    got = await store.get_with_etag(key)
    assert got is not None and got == (doc, etag)
    assert (await store.list(key)) == {key: doc}


async def test_bad_documents_are_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="JSON"):
        await store.put(f"x/{_name()}", {"when": float("nan")})
    with pytest.raises(ValueError, match="JSON object"):
        await store.put(f"x/{_name()}", ["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        await store.put("", {"a": 1})


async def test_both_stores_refuse_the_same_keys(store: StateStore) -> None:
    """One rule for document keys on every store (Azure blob names hold no '\\', no '.' or '..'
    segment, at most 1000 characters): a key one store refuses is not kept by the other."""
    base = f"x/{_name()}"
    for key in (f"{base}/dom\\ana", f"{base}/./a", f"{base}/../a", f"{base}/.", "..", base + "/" + "k" * 1000):
        with pytest.raises(ValueError, match="cannot be a key"):
            await store.put(key, {"a": 1})
    assert await store.list(base) == {}
    for key in (f"{base}/a.b", f"{base}/.a/..b", f"{base}/~a b%5C"):  # dots within a segment are fine
        await store.put(key, {"a": 1})
        assert await store.get(key) == {"a": 1}


async def test_text_with_a_lone_surrogate_is_not_storable_and_nothing_is_stored(store: StateStore) -> None:
    """Python text can hold a lone surrogate (json.loads of "\\ud800", a directory's data); it is no
    UTF-8, so no store can keep it: the documented ValueError, not a raw UnicodeEncodeError."""
    key = f"x/{_name()}"
    for bad in ({"name": "a\ud800b"}, {"a\udfff": 1}, {"nested": [{"n": "\ud83d"}]}):
        with pytest.raises(ValueError, match="not storable as JSON"):
            await store.put(key, bad)
        with pytest.raises(ValueError, match="not storable as JSON"):
            await store.append_audit({"at": T0.isoformat(), "operation": "sync", **bad})
    assert await store.get(key) is None
    assert (await store.read_audit())[0] == []
    await store.put(key, {"name": "a\U0001f600b"})  # a pair is a character: stored
    assert await store.get(key) == {"name": "a\U0001f600b"}


def test_sqlite_corrupt_row_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SqliteStore(path)
    asyncio.run(store.put("sync/managed", {"ok": True}))
    asyncio.run(store.append_audit(_entry("sync", T0)))
    asyncio.run(store.close())
    conn = sqlite3.connect(path)
    conn.execute("UPDATE docs SET json = '{broken' WHERE key = 'sync/managed'")
    conn.execute("INSERT INTO docs (key, json, etag) VALUES ('sync/list', '[1,2]', 'e')")
    conn.execute("INSERT INTO audit (at_us, operation, entry) VALUES (1, 'sync', 'nope')")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="sync/managed"):
        asyncio.run(store.get("sync/managed"))
    with pytest.raises(StoreError, match=r"sync/list.*not a JSON object"):
        asyncio.run(store.get("sync/list"))
    with pytest.raises(StoreError, match="sync/"):
        asyncio.run(store.list("sync/"))
    with pytest.raises(StoreError, match="audit entry"):
        asyncio.run(store.read_audit())
    asyncio.run(store.close())


def test_sqlite_unopenable_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite3").mkdir()
    store = SqliteStore(tmp_path / "dir.sqlite3")
    with pytest.raises(StoreError, match=r"dir\.sqlite3"):
        asyncio.run(store.get("a"))


# --- the runner against the store ----------------------------------------------------------------

class _Gate:
    """A capability whose apply waits on an event, so two runs overlap for certain."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.applied = 0

    async def observe(self) -> int:
        return 1

    def plan(self, observed: int, now: datetime) -> Plan:
        return Plan.build(self.name, [Action("touch", "world", reason="test")])

    def guard(self, observed: int, plan: Plan) -> Sequence[str]:
        return []

    async def apply(self, plan: Plan, observed: int, progress: Progress) -> list[ActionResult]:
        self.entered.set()
        await self.release.wait()
        self.applied += 1
        return [ActionResult(a, Status.DONE) for a in plan.actions]


async def test_runner_two_concurrent_runs_one_applies_other_gets_lock_held(store: StateStore) -> None:
    op = _name("op")
    clock: Callable[[], datetime] = lambda: T0 + timedelta(days=60)  # noqa: E731
    cap = _Gate(op)
    first_runner = Runner(store, clock=clock, holder="one")
    second_runner = Runner(store, clock=clock, holder="two")
    first = asyncio.create_task(first_runner.run(cap, trigger="timer", actor="timer"))
    await asyncio.wait_for(cap.entered.wait(), 30)
    with pytest.raises(LockHeld) as held:
        await second_runner.run(cap, trigger="manual", actor="cli")
    assert held.value.lease is not None and held.value.lease.holder.startswith("timer:")
    cap.release.set()
    record = await asyncio.wait_for(first, 30)
    assert record.outcome is Outcome.APPLIED and cap.applied == 1
    # the lock was released, the run was recorded
    assert await store.read_lock(op, clock()) is None
    page, _ = await store.read_audit(operation=op)
    assert [e["outcome"] for e in page] == ["applied"] and page[0]["run_id"] == record.run_id
    assert (await first_runner.get_run(record.run_id)) is not None
    again = await second_runner.run(cap, trigger="manual", actor="cli")
    assert again.outcome is Outcome.APPLIED and cap.applied == 2



# --- Azure specifics -----------------------------------------------------------------------------

@pytest.mark.azurite
async def test_azure_big_audit_entry_goes_to_a_blob_small_one_stays_inline(azurite: Azurite) -> None:
    from azure.data.tables.aio import TableClient
    from azure.storage.blob.aio import ContainerClient

    store = azure_store(azurite)
    try:
        small_id = await store.append_audit(_entry("sync", T0, n=1))
        big = _entry("sync", T0 + timedelta(seconds=1), blob="x" * 40_000)  # 80 KB as UTF-16
        big_id = await store.append_audit(big)
        async with TableClient.from_connection_string(azurite.connection_string, store.audit_table) as table:
            rows = {e["RowKey"]: e async for e in table.list_entities()}
        assert "entry" in rows[small_id] and "entry_blob" not in rows[small_id]
        assert "entry" not in rows[big_id] and rows[big_id]["entry_blob"] == f"audit/{big_id}.json"
        async with ContainerClient.from_connection_string(azurite.connection_string,
                                                          store.container_name) as container:
            names = [b.name async for b in container.list_blobs(name_starts_with="audit/")]
        assert names == [f"audit/{big_id}.json"]
        page, _ = await store.read_audit()
        assert [e["id"] for e in page] == [big_id, small_id] and page[0]["blob"] == big["blob"]
    finally:
        await store.close()


@pytest.mark.azurite
async def test_azure_audit_entry_of_characters_beyond_the_bmp_goes_to_a_blob(azurite: Azurite) -> None:
    """A character beyond the BMP (an emoji, a rare CJK name character) is one code point but four
    bytes of UTF-16, the form the 64 KiB property limit counts: an entry of 20,000 of them (80 KB
    as UTF-16) was judged small by its code points and stored inline, and the service refused it."""
    from azure.data.tables.aio import TableClient

    store = azure_store(azurite)
    try:
        entry = _entry("sync", T0, note="\U0001F600" * 20_000)
        entry_id = await store.append_audit(entry)
        async with TableClient.from_connection_string(azurite.connection_string, store.audit_table) as table:
            row = await table.get_entity("audit", entry_id)
        assert "entry" not in row and row["entry_blob"] == f"audit/{entry_id}.json"
        page, _ = await store.read_audit()
        assert [e["id"] for e in page] == [entry_id] and page[0]["note"] == entry["note"]
    finally:
        await store.close()


@pytest.mark.azurite
async def test_azure_lock_race_between_separate_clients(azurite: Azurite) -> None:
    """Like separate processes: each acquirer has its own store object and HTTP connections."""
    first = azure_store(azurite)
    others = [AzureStore.from_settings(connection_string=azurite.connection_string,
                                       table_prefix=first.locks_table.removesuffix("locks"),
                                       container=first.container_name) for _ in range(7)]
    stores = [first, *others]
    try:
        await first.read_lock("warm-up", T0)  # create the tables once, so the race is on the lock
        short = _short_ttl(first) * 2  # the winner is still read as the holder on a slow machine
        for round_ in range(3):
            at = T0 + short * 2 * round_  # each round starts after the previous lease expired
            if round_:
                await _outlive(first, at, short)
            leases = await asyncio.gather(*(s.acquire_lock("scale", f"s{i}", short, at)
                                            for i, s in enumerate(stores)))
            winners = [lease for lease in leases if lease is not None]
            assert len(winners) == 1, round_
            held = await others[0].read_lock("scale", at)
            assert held is not None and held.holder == winners[0].holder
    finally:
        for s in stores:
            await s.close()


def _same_account(first: AzureStore, azurite: Azurite) -> AzureStore:
    """Another client (another host) on the tables and container of ``first``."""
    return AzureStore.from_settings(connection_string=azurite.connection_string,
                                    table_prefix=first.locks_table.removesuffix("locks"),
                                    container=first.container_name)


@pytest.mark.azurite
async def test_azure_lock_expiry_ignores_a_taker_whose_clock_runs_ahead(azurite: Azurite) -> None:
    """Hosts sharing the account may disagree on the time (an on-prem CLI host off NTP): a taker
    whose clock runs more than the TTL ahead must not take a lock that is still held."""
    holder, taker = azure_store(azurite), None
    try:
        taker = _same_account(holder, azurite)
        now = datetime.now(UTC)
        lease = await holder.acquire_lock("sync", "holder", TTL, now)
        assert lease is not None
        ahead = now + TTL + timedelta(minutes=1)
        assert await taker.acquire_lock("sync", "taker", TTL, ahead) is None
        held = await taker.read_lock("sync", ahead)
        assert held is not None and held.holder == "holder"
        # reported in the reader's own clock: about a TTL from its now (Date has whole seconds)
        assert ahead + TTL - timedelta(seconds=5) <= held.expires_at <= ahead + TTL + timedelta(seconds=2)
        renewed = await holder.renew_lock(lease, TTL, now + timedelta(seconds=1))
        assert renewed is not None
        assert await taker.acquire_lock("sync", "taker", TTL, ahead + TTL * 3) is None
        held = await holder.read_lock("sync", now)
        assert held is not None and held.holder == "holder"
    finally:
        await holder.close()
        if taker is not None:
            await taker.close()


@pytest.mark.azurite
async def test_azure_lock_expires_by_service_time_whatever_the_taker_clock(azurite: Azurite) -> None:
    """A lease expires when the service's clock says so: a taker whose clock lags takes it then."""
    holder, taker = azure_store(azurite), None
    short = timedelta(seconds=1)
    try:
        taker = _same_account(holder, azurite)
        now = datetime.now(UTC)
        assert await holder.acquire_lock("cull", "holder", short, now) is not None
        await asyncio.sleep(2.2)  # past the TTL, and past the next whole second of the Date header
        behind = now - timedelta(hours=1)
        assert await taker.read_lock("cull", behind) is None
        lease = await taker.acquire_lock("cull", "taker", TTL, behind)
        assert lease is not None and lease.holder == "taker"
    finally:
        await holder.close()
        if taker is not None:
            await taker.close()


@pytest.mark.azurite
async def test_azure_lock_names_with_reserved_characters(azurite: Azurite) -> None:
    store = azure_store(azurite)
    try:
        for name in ("sync/group#1?", "cull\\all", "ünïcode"):
            lease = await store.acquire_lock(name, "a", TTL, T0)
            assert lease is not None and lease.name == name
            assert await store.acquire_lock(name, "b", TTL, T0) is None
            held = await store.read_lock(name, T0)
            assert held is not None and held.name == name
    finally:
        await store.close()


@pytest.mark.azurite
async def test_azure_corrupt_blob_and_rows_name_what_is_broken(azurite: Azurite) -> None:
    from azure.data.tables.aio import TableClient
    from azure.storage.blob.aio import ContainerClient

    store = azure_store(azurite)
    try:
        await store.put("sync/managed", {"ok": True})
        await store.acquire_lock("sync", "a", TTL, T0)
        async with ContainerClient.from_connection_string(azurite.connection_string,
                                                          store.container_name) as container:
            await container.upload_blob("docs/sync/managed", b"{broken", overwrite=True)
            await container.upload_blob("docs/sync/list", b"[1, 2]", overwrite=True)
        async with TableClient.from_connection_string(azurite.connection_string, store.audit_table) as t:
            await t.create_entity({"PartitionKey": "audit", "RowKey": "0" * 18 + "-" + "0" * 20 + "-0000abcd",
                                   "operation": "sync", "entry": "not json"})
        async with TableClient.from_connection_string(azurite.connection_string, store.locks_table) as t:
            await t.upsert_entity({"PartitionKey": "lock", "RowKey": "sync", "holder": "a", "expires_us": "soon",
                                   "ttl_us": "soon"})
        with pytest.raises(StoreError, match=r"'sync/managed'.*corrupt JSON"):
            await store.get("sync/managed")
        with pytest.raises(StoreError, match=r"'sync/list'.*not a JSON object"):
            await store.get("sync/list")
        with pytest.raises(StoreError, match="sync/"):
            await store.list("sync/")
        with pytest.raises(StoreError, match=r"audit entry 0+-0+-0000abcd"):
            await store.read_audit()
        with pytest.raises(StoreError, match=r"lock 'sync'.*malformed"):
            await store.read_lock("sync", T0)
    finally:
        await store.close()


async def test_azure_unreachable_account_is_a_store_error() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
            f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    store = AzureStore.from_settings(connection_string=conn, retry_total=0, timeout=5)
    try:
        with pytest.raises(StoreError, match="Azure Storage: cannot create the tables"):
            await store.get("sync/managed")
    finally:
        await store.close()


async def test_azure_settings_are_validated_and_endpoints_follow_the_suffix() -> None:
    with pytest.raises(ValueError, match="connection string or an account name"):
        AzureStore.from_settings()
    with pytest.raises(ValueError, match="connection string is not usable"):
        AzureStore.from_settings(connection_string="nonsense")
    with pytest.raises(ValueError, match="table prefix"):
        AzureStore.from_settings(account_name="acct1", table_prefix="hub-pilot", credential=_NoToken())
    with pytest.raises(ValueError, match="container"):
        AzureStore.from_settings(account_name="acct1", container="Hubpilot_State", credential=_NoToken())
    with pytest.raises(ValueError, match="account name"):
        AzureStore.from_settings(account_name="Not-Valid", credential=_NoToken())
    store = AzureStore.from_settings(account_name="acct1", endpoint_suffix="core.usgovcloudapi.net",
                                     credential=_NoToken())
    try:
        assert store._tables.url.startswith("https://acct1.table.core.usgovcloudapi.net")
        assert store._blobs.url.startswith("https://acct1.blob.core.usgovcloudapi.net")
    finally:
        await store.close()


class _NoToken:
    """An async token credential that is never asked (no request is sent in the test using it)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise AssertionError("no token expected")

    async def close(self) -> None:
        return None


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """Answers every request 503 ServerBusy, counting them."""

    hits: ClassVar[list[str]] = []

    def _busy(self) -> None:
        self.hits.append(f"{self.command} {self.path}")
        body = b'{"odata.error":{"code":"ServerBusy","message":{"lang":"en-US","value":"busy"}}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_MERGE = _busy

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.mark.parametrize("retries", [0, 2])
async def test_azure_uses_the_sdk_retry_policy_then_reports_a_store_error(retries: int) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    _Unavailable.hits = []
    port = server.server_address[1]
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
            f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    store = AzureStore.from_settings(connection_string=conn, retry_total=retries, retry_backoff=0)
    try:
        with pytest.raises(StoreError, match="HTTP 503"):
            await store.acquire_lock("sync", "a", TTL, T0)
        assert len(_Unavailable.hits) == retries + 1
        assert all(h.startswith("POST /devstoreaccount1/Tables") for h in _Unavailable.hits)
    finally:
        await store.close()
        server.shutdown()
        server.server_close()
        thread.join()

"""Store semantics under contention and with awkward keys, against SQLite and Azurite."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.ports.store import ConflictError, StateStore
from tests.test_store import ROOT, azure_store, store  # noqa: F401  (the fixture)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_many_appends_in_the_same_microsecond_from_two_clients_are_all_kept(
        store: StateStore, request: pytest.FixtureRequest, tmp_path: Path) -> None:  # noqa: F811
    other: StateStore
    if isinstance(store, SqliteStore):
        other = SqliteStore(store.path)
    else:
        other = azure_store(request.getfixturevalue("azurite"))
        other.audit_table, other._audit = store.audit_table, store._audit  # type: ignore[attr-defined]
    try:
        entry = {"at": T0.isoformat(), "operation": "race"}
        ids = await asyncio.gather(*(s.append_audit({**entry, "n": i})
                                     for i in range(40) for s in (store, other)))
        assert len(set(ids)) == 80
        seen, cursor = [], None
        while True:
            page, cursor = await store.read_audit(operation="race", limit=7, cursor=cursor)
            seen += page
            if cursor is None:
                break
        assert len(seen) == 80 and len({e["id"] for e in seen}) == 80
    finally:
        if other is not store and isinstance(other, SqliteStore):
            await other.close()


@pytest.mark.parametrize("key", ["scale/demand/a#b~", "scale/demand/a?b=c~x", "scale/demand/ä %20 ~s"])
async def test_awkward_document_keys_round_trip_and_list(store: StateStore, key: str) -> None:  # noqa: F811
    etag = await store.put(key, {"k": key})
    assert await store.get_with_etag(key) == ({"k": key}, etag)
    assert (await store.list("scale/demand/")) == {key: {"k": key}}
    with pytest.raises(ConflictError):
        await store.put(key, {"k": 2}, if_match="")
    await store.delete(key)
    assert await store.get(key) is None


async def test_concurrent_read_modify_writes_lose_no_update(store: StateStore) -> None:  # noqa: F811
    await store.put("counter", {"n": 0})

    async def bump() -> None:
        while True:
            found = await store.get_with_etag("counter")
            assert found is not None
            try:
                await store.put("counter", {"n": found[0]["n"] + 1}, if_match=found[1])
                return
            except ConflictError:
                await asyncio.sleep(0)

    await asyncio.gather(*(bump() for _ in range(25)))
    assert await store.get("counter") == {"n": 25}


_BUMPER = textwrap.dedent("""
    import asyncio, sys
    from hubpilot.adapters.store_sqlite import SqliteStore
    from hubpilot.ports.store import ConflictError
    from datetime import datetime, UTC

    async def main():
        s = SqliteStore(sys.argv[1])
        for i in range(int(sys.argv[2])):
            while True:
                doc, etag = await s.get_with_etag("counter")
                try:
                    await s.put("counter", {"n": doc["n"] + 1}, if_match=etag)
                    break
                except ConflictError:
                    pass
            await s.append_audit({"at": "2026-03-01T12:00:00+00:00", "operation": "p", "i": i})
        await s.close()

    asyncio.run(main())
""")


async def test_four_processes_bump_one_document_and_append_without_loss(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    s = SqliteStore(path)
    await s.put("counter", {"n": 0})
    procs = [subprocess.Popen([sys.executable, "-c", _BUMPER, path, "50"], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    try:
        assert await s.get("counter") == {"n": 200}
        page, _ = await s.read_audit(operation="p", limit=1000)
        assert len(page) == 200
    finally:
        await s.close()

"""Benchmark: "what happened to bob" over a week of audit log (``GET /audit?user=``).

A week of a hub's runs as the Runner records them, in a SQLite state store: a scale run every
minute (10 080, most with an empty plan), a cull round every 2 minutes (5 040, a few stops each
hour), a sync every 5 minutes (2 016; one leaver and one newcomer a day). The search pages
through the log newest first, 2000 entries a request at most, as the API and the CLI do. Prints
the time of one request (2000 entries read), of the whole week's search, and the entries found.

No goal is set for it; the figure tells an admin what a search of a long log costs.

    .venv/bin/python bench/audit_search.py [--days 7]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.audit import SCAN, read_audit_about
from hubpilot.loop import Action, ActionResult, Outcome, Plan, RunRecord, Status

START = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


def _entry(operation: str, at: datetime, actions: list[Action], facts: dict[str, Any]) -> dict[str, Any]:
    plan = Plan.build(operation, actions, facts=facts)
    results = [ActionResult(a, Status.DONE) for a in actions]
    record = RunRecord(run_id=f"{operation[:2]}{int(at.timestamp()):030d}", operation=operation, trigger="timer",
                       actor="timer", started=at, finished=at, outcome=Outcome.APPLIED, plan=plan, results=results)
    return {**record.to_json(), "at": at.isoformat(), "kind": "run"}


def week(days: int) -> list[dict[str, Any]]:
    out = []
    for minute in range(days * 24 * 60):
        at = START + timedelta(minutes=minute)
        out.append(_entry("scale", at, [], {"pool": "gpu", "count": 1, "ready": 1, "busy": 1, "waiting": 0}))
        if minute % 2 == 0:
            stops = [Action("stop_server", f"user{minute % 97}/", 0, {"user": f"user{minute % 97}", "server": ""},
                            "idle for 61 min")] if minute % 60 == 0 else []
            out.append(_entry("cull", at, stops, {"servers": 40, "kept": 39}))
        if minute % 5 == 0:
            actions = []
            if minute % (24 * 60) == 600:  # one leaver and one newcomer a day
                day = minute // (24 * 60)
                leaver, newcomer = ("bob" if day == 3 else f"leaver{day}"), f"new{day}"
                actions = [Action("stop_servers", leaver, 3, {"servers": [""]}, "no longer in any synced group"),
                           Action("deprovision", leaver, 5, {}, "no longer in any synced directory group"),
                           Action("create_user", newcomer, 1, {}, "member of a synced group")]
            out.append(_entry("sync", at, actions, {"members": 100}))
    return out


async def main(days: int) -> None:
    entries = week(days)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "state.sqlite3")
        try:
            t = time.perf_counter()
            for e in entries:
                await store.append_audit(e)
            print(f"audit log: {len(entries)} entries over {days} days, written in {time.perf_counter() - t:.1f} s")
            requests, read_total, found, cursor = 0, 0, [], None
            per_request = []
            while True:
                t = time.perf_counter()
                page, cursor, read = await read_audit_about(store, "bob", limit=100, cursor=cursor)
                per_request.append(time.perf_counter() - t)
                requests += 1
                read_total += read
                found += page
                if cursor is None:
                    break
            full = [d for d in per_request[:-1]] or per_request
            print(f"search for bob: {requests} requests, {read_total} entries read, {len(found)} found "
                  f"({', '.join(a['kind'] for e in found for a in e['plan']['actions'] if a['target'] == 'bob')})")
            print(f"one request ({SCAN} entries read): median {sorted(full)[len(full) // 2] * 1000:.0f} ms, "
                  f"max {max(full) * 1000:.0f} ms; the whole log: {sum(per_request):.2f} s")
            t = time.perf_counter()
            scale_only, _, read = await read_audit_about(store, "bob", operation="sync", limit=100)
            print(f"with operation=sync: one request, {read} entries read, {len(scale_only)} found, "
                  f"{(time.perf_counter() - t) * 1000:.0f} ms")
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    asyncio.run(main(parser.parse_args().days))

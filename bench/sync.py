"""Benchmark: a 10 000-person LDAP directory synced into a real JupyterHub.

Runs three syncs — the first (everyone is new), one with no change, one after a single addition —
and prints, for each: wall time, hub requests (reads/writes), directory requests, our own CPU
seconds, and the process's peak RSS.

Goals: a run with no change makes 0 hub writes and reads the hub's user list at most once; one addition
costs ≤ 2 hub writes; our CPU ≤ 5 % of the first sync's wall time; peak RSS ≤ 200 MB.

    .venv/bin/python bench/sync.py [--people 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hubpilot.adapters.hub import HubClient
from hubpilot.adapters.ldap import LdapDirectory
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.config.sync import SyncSettings
from hubpilot.localhub import start_hub
from hubpilot.localldap import people_ldif, start_slapd
from hubpilot.loop import Outcome, Runner
from hubpilot.sync import SyncCapability

BASE = "dc=example,dc=com"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def one_run(label: str, runner: Runner[Any], cap: SyncCapability, hub: HubClient,
                  directory: LdapDirectory) -> dict[str, Any]:
    hub.reset_stats()
    s0 = directory.stats.searches
    c0, t0 = cpu_seconds(), time.perf_counter()
    record = await runner.run(cap, trigger="bench", actor="bench")
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if record.outcome is not Outcome.APPLIED:
        raise SystemExit(f"{label}: {record.render()[:2000]}")
    return {
        "run": label,
        "actions": len(record.plan.actions) if record.plan else 0,
        "wall_s": wall,
        "cpu_s": cpu,
        "hub_reads": hub.stats["reads"],
        "hub_writes": hub.stats["writes"],
        "user_list_pages": hub.stats["by_route"].get("GET /users", 0),
        "dir_searches": directory.stats.searches - s0,
        "peak_rss_mb": peak_rss_mb(),
    }


async def main(people: int, hub_page: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hubpilot-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        async with start_slapd(root / "ldap", ldif=[people_ldif(people, base_dn=BASE, ou="bench",
                                                                group="bench-users")]) as ldap, \
                start_hub(root / "hub", extra_config=f"c.JupyterHub.api_page_max_limit = {hub_page}") as real_hub:
            print(f"# set-up: {people} people in slapd and a real hub in {time.perf_counter() - t0:.1f} s")
            directory = LdapDirectory(
                url=ldap.url, bind_dn=ldap.root_dn, bind_password=ldap.root_password, base_dn=BASE,
                group_base_dn=None, group_name_attribute="cn", username_attribute="uid", nested=False,
                nested_max_depth=8, page_size=1000, timeout=30, start_tls=False, ca_file=None)
            hub = HubClient(real_hub.api_url, real_hub.hubpilot_token, timeout=120, concurrency=8,
                            page_size=hub_page)
            store = SqliteStore(str(root / "state.sqlite3"))
            policy = SyncSettings(users_groups=["bench-users"], group_prefix="dir-")
            cap = SyncCapability(directory, hub, store, policy)
            runner: Runner[Any] = Runner(store)
            rows = [await one_run("first sync", runner, cap, hub, directory)]
            rows.append(await one_run("no change", runner, cap, hub, directory))
            ldap.add(f"uid=newcomer,ou=bench,{BASE}", {"objectClass": ["inetOrgPerson"], "uid": "newcomer",
                                                       "cn": "New Comer", "sn": "Comer"})
            ldap.modify(f"cn=bench-users,ou=bench,{BASE}",
                        {"member": [("MODIFY_ADD", [f"uid=newcomer,ou=bench,{BASE}"])]})
            rows.append(await one_run("one addition", runner, cap, hub, directory))
            await hub.close()
            await directory.close()
            await store.close()

    cols = ["run", "actions", "wall_s", "cpu_s", "hub_reads", "hub_writes", "user_list_pages",
            "dir_searches", "peak_rss_mb"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    first, none, one = rows
    print(f"\nno-change run: {none['hub_writes']} hub writes (goal 0), {none['hub_reads']} hub read(s): the groups, "
          f"whose membership proves the users exist; user list pages read: {none['user_list_pages']} "
          "(goal: the user list at most once)")
    print(f"one addition: {one['hub_writes']} hub writes (goal ≤ 2)")
    print(f"our CPU in the first sync: {first['cpu_s']:.2f} s = {100 * first['cpu_s'] / first['wall_s']:.1f} % "
          f"of its {first['wall_s']:.1f} s wall time (goal ≤ 5 %)")
    print(f"peak RSS: {max(r['peak_rss_mb'] for r in rows):.0f} MB (goal ≤ 200 MB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--hub-page", type=int, default=200,
                        help="the hub's api_page_max_limit and hubpilot's hub.page_size (JupyterHub's default: 200)")
    args = parser.parse_args()
    asyncio.run(main(args.people, args.hub_page))

"""Crash consistency of sync: a real ``python -m hubpilot.cli sync`` against a real hub and a file
directory, killed with SIGKILL part-way through apply, then run again."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.hub import unique_name
from tests.realhub import RealHub, read_all, start_hub

pytestmark = pytest.mark.hub
LEASE = timedelta(minutes=10)  # the CLI's lock lease
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
async def crash_hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RealHub]:
    """A hub of this module's own: its hundreds of users would push other tests' users past the
    session hub's first page of GET /users."""
    async with start_hub(tmp_path_factory.mktemp("crashhub")) as hub:
        yield hub


class Bed:
    def __init__(self, hub: RealHub, tmp: Path) -> None:
        self.hub, self.tag = hub, unique_name("crash")
        self.dir, self.db, self.cfg = tmp / "dir.yaml", tmp / "state.sqlite3", tmp / "hubpilot.toml"
        self.cfg.write_text(
            f'[hub]\napi_url = "{hub.api_url}"\ntoken = "{hub.hubpilot_token}"\n'
            f'[directory]\nkind = "file"\n[directory.file]\npath = "{self.dir}"\n'
            f'[sync]\nusers_groups = ["a", "b"]\ngroup_prefix = "{self.tag}-"\n'
            f'max_removals = 1000\nmax_removal_percent = 100.0\n'
            f'[state]\nsqlite_path = "{self.db}"\n'
        )

    def name(self, short: str) -> str:
        return f"{self.tag}-{short}"

    def write(self, groups: dict[str, list[str]]) -> None:
        people = {s: {"username": self.name(s)} for m in groups.values() for s in m}
        self.dir.write_text(yaml.safe_dump({"people": people,
                                            "groups": {g: {"members": m} for g, m in groups.items()}}))

    def start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "hubpilot.cli", "--config", str(self.cfg), "sync"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self) -> tuple[int, str]:
        p = self.start()
        out, err = p.communicate(timeout=120)
        return p.returncode, out.decode() + err.decode()

    def status(self) -> dict[str, Any]:
        """Sync's entry in ``hubpilot status --json``."""
        done = subprocess.run([sys.executable, "-m", "hubpilot.cli", "--config", str(self.cfg), "status", "--json"],
                              cwd=ROOT, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        entry: dict[str, Any] = json.loads(done.stdout)["sync"]
        return entry

    def expire_lock(self, killed_at: datetime) -> None:
        """The killed run's lock: it must lapse within its lease; then let it lapse now."""
        with sqlite3.connect(self.db) as conn:
            row = conn.execute("SELECT expires_us FROM locks WHERE name = 'sync'").fetchone()
            if row is None:
                return
            expires = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=row[0])
            assert expires <= killed_at + LEASE + timedelta(seconds=5), expires
            conn.execute("UPDATE locks SET expires_us = 0 WHERE name = 'sync'")

    def managed(self) -> dict[str, Any]:
        with sqlite3.connect(self.db) as conn:
            row = conn.execute("SELECT json FROM docs WHERE key = 'sync/managed'").fetchone()
        return json.loads(row[0])["users"] if row else {}

    async def hub_state(self, names: set[str]) -> tuple[set[str], dict[str, set[str]]]:
        """Which of ``names`` the hub has, and this test's hub groups."""
        async with self.hub.admin() as admin:
            found = {n for n in names if (await admin.get(f"/users/{n}")).status_code == 200}
            groups = {}
            for g in (self.name("a"), self.name("b")):
                got = await admin.get(f"/groups/{g}")
                if got.status_code == 200:
                    groups[g] = set(got.json()["users"])
        return found, groups

    async def kill_during_apply(self, seed: int) -> datetime:
        """Start a run and SIGKILL it at a random moment after apply's first hub write (seed 0: at
        once); return once the hub has applied what the killed run had sent."""
        delay = 0.0 if seed == 0 else random.Random(seed).uniform(0.0, 0.3)
        async with self.hub.admin() as admin:
            async def groups() -> Any:
                got = [await admin.get(f"/groups/{self.name(g)}") for g in ("a", "b")]
                return [sorted(r.json()["users"]) if r.status_code == 200 else None for r in got]
            before = await groups()
            p = self.start()
            deadline = time.monotonic() + 60
            while p.poll() is None and time.monotonic() < deadline:
                if await groups() != before:
                    await asyncio.sleep(delay)
                    break
            killed = datetime.now(UTC)
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()
            await self.settle(admin)
        return killed

    async def settle(self, admin: Any) -> None:
        """Wait until the hub has applied every request the killed process had sent. The hub
        applies one in flight at its own pace, and the order of requests on different connections
        is not kept: a loaded hub (seconds per database commit in a CI run) once applied the
        killed run's addition to group b after the next run had read b, so that run saw its
        leavers outside b and only the run after would take them out (found in a CI run: the next run's
        plan added b's members, and b then held the leavers too). A real next run waits out the
        killed run's lock lease (10 minutes) first; this bed lets the lock lapse at once
        (``expire_lock``), so it waits for the hub instead: three readings in a row of the groups
        and of this bed's users that agree."""
        async def reading() -> Any:
            users = sorted(u["name"] for u in await read_all(admin, "/users")
                           if u["name"].startswith(f"{self.tag}-"))
            got = [await admin.get(f"/groups/{self.name(g)}") for g in ("a", "b")]
            return users, [sorted(r.json()["users"]) if r.status_code == 200 else None for r in got]
        seen, same = await reading(), 1
        while same < 3:
            await asyncio.sleep(0.2)
            now = await reading()
            seen, same = now, same + 1 if now == seen else 1


async def _converge(bed: Bed, groups: dict[str, list[str]]) -> None:
    code, text = bed.run()
    assert code == 0, text
    wanted = {bed.name(s) for m in groups.values() for s in m}
    users, hub_groups = await bed.hub_state(wanted)
    for g, members in groups.items():
        assert hub_groups.get(bed.name(g), set()) == {bed.name(s) for s in members}, (g, text)
    managed = bed.managed()
    assert {n for n, r in managed.items() if not r.get("deprovisioned_at")} == wanted
    assert wanted <= users
    code, text = bed.run()
    assert code == 0 and "nothing to do" in text, text


@pytest.mark.parametrize("seed", [0, 0, 0, 1, 2, 3])
async def test_killed_first_sync_then_leavers_converge(crash_hub: RealHub, tmp_path: Path, seed: int) -> None:
    """Killed after the hub's groups changed: everyone the run put in a group is known to be
    managed, so a person who leaves before the next run leaves the groups too."""
    bed = Bed(crash_hub, tmp_path)
    first = {"a": [f"p{i}" for i in range(12)], "b": [f"p{i}" for i in range(6, 18)]}
    bed.write(first)
    killed = await bed.kill_during_apply(seed)
    bed.expire_lock(killed)
    # hubpilot status shows a run killed before it wrote its last run (as failed, "without
    # finishing", or as its document says when killed between the two); one killed later (exiting)
    # is the last run
    with sqlite3.connect(bed.db) as conn:
        (run,) = [json.loads(j) for (j,) in conn.execute("SELECT json FROM docs WHERE key LIKE 'runs/%'")]
    shown = bed.status()
    if shown["last_run"] is not None:
        assert shown["unfinished_run"] is None and shown["last_run"]["run_id"] == run["run_id"], shown
    else:
        gone = shown["unfinished_run"]
        assert gone is not None and (gone["run_id"], gone["started"]) == (run["run_id"], run["started"]), shown
        if run["outcome"] == "running":
            assert gone["outcome"] == "failed" and "without finishing" in gone["error"], gone
        else:
            assert gone["outcome"] == run["outcome"], (gone, run)
    # people leave before the next run; the rest must keep everything, the leavers lose their groups
    later = {"a": [f"p{i}" for i in range(4, 12)], "b": [f"p{i}" for i in range(6, 14)]}
    bed.write(later)
    await _converge(bed, later)
    assert bed.status()["unfinished_run"] is None


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
async def test_killed_removal_run_converges(crash_hub: RealHub, tmp_path: Path, seed: int) -> None:
    bed = Bed(crash_hub, tmp_path)
    first = {"a": [f"p{i}" for i in range(12)], "b": [f"p{i}" for i in range(6, 18)]}
    bed.write(first)
    code, text = bed.run()
    assert code == 0, text
    later = {"a": [f"p{i}" for i in range(0, 12, 2)], "b": [f"p{i}" for i in range(6, 20)]}
    bed.write(later)
    killed = await bed.kill_during_apply(seed)
    bed.expire_lock(killed)
    await _converge(bed, later)


class LdapBed(Bed):
    """The same bed with a real slapd as the directory: groupOfNames ``<tag>-a`` and ``<tag>-b``."""

    def __init__(self, hub: RealHub, tmp: Path, slapd: Any) -> None:
        super().__init__(hub, tmp)
        self.slapd, self.ou = slapd, f"ou={self.tag},{slapd.base_dn}"
        slapd.add(self.ou, {"objectClass": ["organizationalUnit"], "ou": self.tag})
        self.people: set[str] = set()
        self.made: set[str] = set()
        self.cfg.write_text(
            f'[hub]\napi_url = "{hub.api_url}"\ntoken = "{hub.hubpilot_token}"\n'
            f'[directory]\nkind = "ldap"\n[directory.ldap]\nurl = "{slapd.url}"\n'
            f'bind_dn = "{slapd.root_dn}"\nbind_password = "{slapd.root_password}"\n'
            f'base_dn = "{slapd.base_dn}"\n'
            f'[sync]\nusers_groups = ["{self.tag}-a", "{self.tag}-b"]\ngroup_prefix = "{self.tag}-"\n'
            f'group_names = {{ "{self.tag}-a" = "a", "{self.tag}-b" = "b" }}\n'
            f'max_removals = 1000\nmax_removal_percent = 100.0\n'
            f'[state]\nsqlite_path = "{self.db}"\n'
        )

    def write(self, groups: dict[str, list[str]]) -> None:
        for s in sorted({s for m in groups.values() for s in m} - self.people):
            self.slapd.add(f"uid={self.name(s)},{self.ou}", {"objectClass": ["inetOrgPerson"],
                                                             "uid": self.name(s), "cn": s, "sn": s})
            self.people.add(s)
        for g, members in groups.items():
            dn, dns = f"cn={self.name(g)},{self.ou}", [f"uid={self.name(s)},{self.ou}" for s in members]
            if g not in self.made:
                self.slapd.add(dn, {"objectClass": ["groupOfNames"], "cn": self.name(g), "member": dns})
                self.made.add(g)
            else:
                self.slapd.replace(dn, "member", dns)


@pytest.mark.ldap
@pytest.mark.parametrize("seed", [0, 0, 1, 2])
async def test_ldap_killed_runs_converge(crash_hub: RealHub, tmp_path: Path, slapd: Any, seed: int) -> None:
    bed = LdapBed(crash_hub, tmp_path, slapd)
    first = {"a": [f"p{i}" for i in range(12)], "b": [f"p{i}" for i in range(6, 18)]}
    bed.write(first)
    bed.expire_lock(await bed.kill_during_apply(seed))
    later = {"a": [f"p{i}" for i in range(4, 12)], "b": [f"p{i}" for i in range(6, 14)]}
    bed.write(later)
    bed.expire_lock(await bed.kill_during_apply(seed + 1))  # killed again, now removing people
    await _converge(bed, later)

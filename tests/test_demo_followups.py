"""The demo's follow-ups: what its terminal shows while something keeps failing, and what it
leaves in its directory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.demo import DEMO_DIRECTORY, _directory, _follow_runs
from hubpilot.loop import Outcome, RunRecord
from hubpilot.settings import Settings
from hubpilot.wiring import Context
from tests.test_demo import left_running

ROOT = str(Path(__file__).resolve().parents[1])  # this checkout's hubpilot, in every process below
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")},
       "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
BROKEN = "YAML syntax error"


def _stop(proc: subprocess.Popen[str], where: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    for _ in range(100):  # the hub stops its proxy and servers on its own way out
        if not left_running("", where):
            break
        time.sleep(0.1)


def test_a_broken_directory_file_is_said_once_on_the_terminal_and_every_run_in_the_log(tmp_path: Path) -> None:
    """Every sync round of a broken directory file (every 30 s, and each API-started run) wrote its
    outcome line (a WARNING) to the demo's terminal, under the demo's own display of that failure,
    which shows a repeated failure once on purpose: the terminal filled with the same line. The
    display says it; the outcome lines go to .hubpilot-demo/hubpilot.log."""
    proc = subprocess.Popen([sys.executable, "-m", "hubpilot.cli", "demo", "--port", "0"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None \
                and not any(line.startswith("Ctrl-C stops") for line in list(lines)):
            time.sleep(0.2)
        out = "".join(list(lines))
        assert "Ctrl-C stops" in out, out
        api_line = next(line for line in out.splitlines() if line.startswith("admin API:")).split()
        api, token = api_line[2], api_line[-1].rstrip(")")
        directory = tmp_path / ".hubpilot-demo" / "directory.yaml"
        directory.write_text(directory.read_text() + "people: [oops\n")
        failed = 0
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            for _ in range(100):  # the API listens once the demo has said all it says first
                try:
                    http.get("/healthz")
                    break
                except httpx.ConnectError:
                    time.sleep(0.2)
            for _ in range(40):  # three runs of its own (a scheduled round may hold the lock: 409)
                answer = http.post("/sync", params={"wait": 30})
                if answer.status_code != 409:
                    assert answer.json()["outcome"] == "failed", answer.text
                    failed += 1
                    if failed == 3:
                        break
                time.sleep(0.5)
        assert failed == 3
        deadline = time.monotonic() + 30  # the display reads the audit log each second
        while time.monotonic() < deadline and not any(BROKEN in line for line in list(lines)):
            time.sleep(0.2)
    finally:
        _stop(proc, tmp_path)
    terminal = "".join(list(lines))
    assert terminal.count(BROKEN) == 1, terminal
    log = (tmp_path / ".hubpilot-demo" / "hubpilot.log").read_text()
    runs = [line for line in log.splitlines() if "(api by token:demo-admin): failed" in line and BROKEN in line]
    assert len(runs) == 3, log


def _failed(at: datetime, error: str) -> dict[str, object]:
    record = RunRecord(run_id=f"r{at.timestamp():.0f}", operation="sync", trigger="timer", actor="timer",
                       started=at, outcome=Outcome.FAILED, finished=at, error=error)
    return {**record.to_json(), "at": at.isoformat(), "kind": "run"}


async def test_a_failure_that_goes_on_is_recalled_at_most_every_five_minutes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Shown once, the same failure 30 s later and after is not shown again; a short reminder
    (how many runs since when) is, once five minutes have passed since it was last said."""
    store = SqliteStore(tmp_path / "state.sqlite3")
    ctx = Context(settings=Settings(), store=store)
    first = datetime.now(UTC) - timedelta(minutes=30)
    try:
        for i in range(24):  # twelve minutes of a round every 30 s
            await store.append_audit(_failed(first + timedelta(seconds=30 * i), "DirectoryError: broken"))
        follow = asyncio.ensure_future(_follow_runs(ctx, first - timedelta(seconds=1), every=0.01))
        out = ""

        async def shown(text: str) -> None:
            nonlocal out
            async with asyncio.timeout(30):  # a guard against a hang, not a timing assert
                while text not in out:
                    assert not follow.done(), follow.exception()
                    await asyncio.sleep(0.01)
                    out += capsys.readouterr().out

        # a read of the audit shows its runs at once: the first line shown means all 24 were read
        await shown("DirectoryError: broken")
        # a run more, which only a later read shows: that read meets the 24 again, not to be said twice
        await store.append_audit(_failed(first + timedelta(minutes=12), "HubError: later"))
        await shown("HubError: later")
        follow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follow
    finally:
        await store.close()
    assert out.count("error: DirectoryError: broken") == 1, out
    reminders = [line for line in out.splitlines() if "still failed" in line]
    # said at 0:00; recalled at 5:00 (10 more runs since) and 10:00 (20 more)
    assert len(reminders) == 2, out
    assert "10 more runs since" in reminders[0] and "20 more runs since" in reminders[1], reminders
    assert all("DirectoryError: broken" in r for r in reminders), reminders


async def test_the_ldap_demo_leaves_no_directory_file_that_nothing_reads(tmp_path: Path) -> None:
    """With --ldap the demo wrote .hubpilot-demo/directory.yaml too, though its directory is slapd:
    the file demo tells the user to edit that file, and edited here it changed nothing."""
    doc = yaml.safe_load(DEMO_DIRECTORY.read_text())
    async with _directory(doc, tmp_path, ldap=True) as (directory, _leave):
        assert directory["kind"] == "ldap"
        assert not (tmp_path / "directory.yaml").exists(), sorted(p.name for p in tmp_path.iterdir())
    async with _directory(doc, tmp_path, ldap=False) as (directory, _leave):  # the file demo's is there
        assert Path(directory["file"]["path"]) == tmp_path / "directory.yaml"
        assert "`groups:` inside a group names nested groups" in (tmp_path / "directory.yaml").read_text()

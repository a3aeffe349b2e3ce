"""Review: the CLI as an admin uses it (Ctrl-C, exit codes, --json, the admin API's names)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import Runner
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub
from tests.test_loop import NOW, Shelf

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from hubpilot.cli import main; sys.exit(main(sys.argv[1:]))"


async def test_a_run_cancelled_while_the_store_takes_its_lock_leaves_no_lock_held(tmp_path: Path) -> None:
    """Ctrl-C (or SIGTERM) while the state store was still taking the run's lock (a state file
    another process was writing, a slow Azure answer) cancelled the wait, not the store's work:
    the lock was taken all the same and stayed held for its whole lease (10 min), with no run and
    no audit entry, and every run of the operation meanwhile was refused with exit code 4."""
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    await store.get("warm-up")  # the file and its schema exist
    calls = 0
    taking = asyncio.Event()

    def clock() -> object:
        nonlocal calls
        calls += 1
        if calls == 2:  # the run's record, then the time of its lock: the lock is being taken
            taking.set()
        return NOW

    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer: the lock waits on SQLite's busy timeout
    try:
        runner = Runner(store, clock=clock, lock_ttl=timedelta(minutes=10))  # type: ignore[arg-type]
        task = asyncio.create_task(runner.run(Shelf({"a"}), trigger="manual", actor="cli:ann"))
        await asyncio.wait_for(taking.wait(), 30)
        await asyncio.sleep(0)
        task.cancel()  # Ctrl-C
        await asyncio.sleep(0)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    try:
        assert await store.read_lock("shelf", NOW) is None  # the next run can take it
    finally:
        await store.close()


def _on_a_terminal(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on one pseudo-terminal, as an admin's shell does."""
    import os
    import pty
    import subprocess

    main_fd, term_fd = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=term_fd, stderr=term_fd,
                            env={**env, "PYTHONPATH": str(ROOT)})
    os.close(term_fd)
    chunks = []
    while True:
        try:
            data = os.read(main_fd, 4096)
        except OSError:  # the terminal's other end closed: the command ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(main_fd)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


async def test_an_approval_on_a_terminal_ends_its_progress_line_before_the_result(real_hub: RealHub,
                                                                                  tmp_path: Path) -> None:
    """`hubpilot approve` drew its progress bar on the terminal (stderr) and never ended that line:
    the result's first line ("sync run ...: applied") was printed onto the bar's last state, as
    `hubpilot sync` does not."""
    tag = unique_name("term")
    directory = tmp_path / "directory.yaml"

    def people(*shorts: str) -> None:
        directory.write_text(yaml.safe_dump({
            "people": {s: {"username": f"{tag}-{s}", "name": s} for s in shorts},
            "groups": {"analysts": {"members": list(shorts)}}}))

    people("ann", "bo", "cy")
    (tmp_path / "hubpilot.toml").write_text(
        f'[hub]\napi_url = "{real_hub.api_url}"\ntoken = "{real_hub.hubpilot_token}"\n'
        '[state]\nsqlite_path = "state.sqlite3"\n'
        f'[directory]\nkind = "file"\n[directory.file]\npath = "{directory.as_posix()}"\n'
        f'[sync]\nusers_groups = ["analysts"]\ngroup_prefix = "{tag}-"\nmax_removals = 1\n'
        'max_removal_percent = 100.0\n')
    hubpilot = [sys.executable, "-c", CLI, "--config", "hubpilot.toml"]
    code, text = await asyncio.to_thread(_on_a_terminal, [*hubpilot, "sync"], tmp_path)
    assert code == 0, text
    people("ann")  # two leave: more than sync.max_removals
    code, text = await asyncio.to_thread(_on_a_terminal, [*hubpilot, "sync", "--json"], tmp_path)
    assert code == 3, text
    plan_id = json.loads(text[text.index("{"):])["plan_id"]

    code, text = await asyncio.to_thread(_on_a_terminal, [*hubpilot, "approve", plan_id], tmp_path)
    assert code == 0, text
    assert "\r[" in text, text  # the progress bar was drawn
    head = "sync run "
    before = text[:text.index(head)]
    assert before.endswith("\n"), repr(text[:400])  # the result starts on a line of its own

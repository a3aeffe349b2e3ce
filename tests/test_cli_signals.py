"""Review: a CLI run stopped by a signal releases its lock and is audited as failed.

``hubpilot sync`` stopped by SIGTERM (a supervisor, a Kubernetes CronJob's pod being evicted or
past its deadline, ``timeout``, ``kill``) died at once: its lock stayed held for its 10 min lease,
so every run of the operation in that time (the CLI, the admin API, serve's schedule) was refused
with "another run holds the lock", and no audit entry said the run had ended. Ctrl-C already
cancelled the run; SIGTERM now does the same."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from hubpilot.adapters.store_sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
# SIGINT as Ctrl-C at a terminal finds it, whoever started the tests: a process started in the
# background by a shell without job control (``scripts/test > log &``) ignores SIGINT, and so did
# this CLI it started (Python installs its handler only when SIGINT is not ignored), never stopping
CLI = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
       "from hubpilot.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
async def test_a_run_stopped_by_a_signal_frees_its_lock_and_is_audited_as_failed(tmp_path: Path,
                                                                                  sig: signal.Signals) -> None:
    asked = asyncio.Event()

    async def silent_hub(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.set()  # the run holds its lock and observes: the hub never answers
        await reader.read()
        writer.close()

    hub = await asyncio.start_server(silent_hub, "127.0.0.1", 0)
    port = hub.sockets[0].getsockname()[1]
    (tmp_path / "people.yaml").write_text(yaml.safe_dump({"people": {"ann": {"username": "ann"}},
                                                          "groups": {"analysts": {"members": ["ann"]}}}))
    (tmp_path / "hubpilot.toml").write_text(
        f'[hub]\napi_url = "http://127.0.0.1:{port}/hub/api"\ntoken = "t"\ntimeout_seconds = 300\n'
        'retries = 0\n[state]\nsqlite_path = "state.sqlite3"\n'
        '[directory]\nkind = "file"\n[directory.file]\npath = "people.yaml"\n'
        '[sync]\nusers_groups = ["analysts"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLI, "--config", "hubpilot.toml", "sync", "--json", cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.wait_for(asked.wait(), 60)
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        hub.close()
    assert proc.returncode == 1, (proc.returncode, out, err)
    assert b"Traceback" not in err, err.decode()
    store = SqliteStore(tmp_path / "state.sqlite3")
    try:
        assert await store.read_lock("sync", datetime.now(UTC)) is None  # the next run may start at once
        entries, _ = await store.read_audit(since=None, operation="sync", limit=10, cursor=None)
    finally:
        await store.close()
    assert [(e["outcome"], "cancelled" in e["error"]) for e in entries] == [("failed", True)], entries

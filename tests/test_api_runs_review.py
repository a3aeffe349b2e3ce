"""Review of the run endpoints and the CLI's run commands, read for what an admin relies on: a run
started elsewhere (the CLI, a timer) holds the operation, an approval applies the plan of the operation
it was refused in, and the CLI's exit codes and --json say what happened.

The API goes through the ASGI app over the real Runner and SQLite store with the test capability of
:mod:`tests.test_api_kit`; the CLI's commands are called in process on the same context."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from hubpilot import cli
from hubpilot.api.runs import drain_tasks
from hubpilot.loop import ExitCode
from tests.test_api_kit import asgi_client, auth, make_context

ADMIN, READER = auth("admin"), auth("reader")


async def test_a_post_while_a_run_started_elsewhere_holds_the_lock_is_409_at_once(tmp_path: Path) -> None:
    """A CLI or timer run holds the lock (no reservation of the API's): the POST answers 409 naming
    the holder, as for a run the API started, rather than 202 and a run recorded as failed."""
    ctx, worlds = make_context(tmp_path)
    w = worlds["sync"]
    w.gate = asyncio.Event()
    try:
        async with asgi_client(ctx) as client:
            elsewhere = asyncio.create_task(ctx.runner.run(ctx.capability("sync"), trigger="manual", actor="cli:ana"))
            await asyncio.wait_for(w.entered.wait(), 10)
            r = await client.post("/api/v1/sync", headers=ADMIN)
            assert r.status_code == 409, r.text
            assert r.json()["holder"].startswith("cli:ana:") and int(r.headers["retry-after"]) >= 1
            w.gate.set()
            assert str((await elsewhere).outcome) == "applied"
            await drain_tasks()
            audit = (await client.get("/api/v1/audit?operation=sync", headers=READER)).json()
            assert [(e["actor"], e["outcome"]) for e in audit["entries"]] == [("cli:ana", "applied")]
    finally:
        w.gate.set()
        await drain_tasks()
        await ctx.close()


def _json(out: io.StringIO) -> dict:
    return json.loads(out.getvalue())


async def test_the_cli_exit_codes_and_json_say_refused_applied_paused_and_locked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hubpilot sync --json` refused: exit 3 and the whole record (plan id, reasons, nothing applied);
    `--dry-run` applies nothing; `approve --json` applies that plan: exit 0; a paused operation's run
    exits 5; a run while another holds the lock exits 4 naming the holder on stderr; an unknown plan
    exits 2 naming it."""
    ctx, worlds = make_context(tmp_path)
    w = worlds["sync"]
    w.items, w.desired = {"a", "b", "c", "d"}, set()
    try:
        out = io.StringIO()
        assert await cli._run_operation(ctx, "sync", True, True, out) == ExitCode.REFUSED
        dry = _json(out)
        assert dry["outcome"] == "refused" and dry["dry_run"] is True and w.applies == 0

        out = io.StringIO()
        assert await cli._run_operation(ctx, "sync", False, True, out) == ExitCode.REFUSED
        refused = _json(out)
        assert refused["outcome"] == "refused" and refused["dry_run"] is False
        assert "more than the limit of 2" in refused["refusal"][0] and refused["plan"]["counts"] == {"remove": 4}
        assert refused["plan_id"] == dry["plan_id"] and w.applies == 0 and w.items == {"a", "b", "c", "d"}

        out = io.StringIO()
        assert await cli._approve(ctx, refused["plan_id"], True, out) == ExitCode.OK
        applied = _json(out)
        assert applied["outcome"] == "applied" and applied["approved_plan"] == refused["plan_id"]
        assert applied["trigger"] == "approval" and applied["result_counts"] == {"done": 4} and w.items == set()

        capsys.readouterr()
        assert await cli._approve(ctx, refused["plan_id"], True, io.StringIO()) == ExitCode.USAGE
        assert refused["plan_id"] in capsys.readouterr().err

        assert await cli._pause(ctx, "cull", True, io.StringIO()) == ExitCode.OK
        out = io.StringIO()
        assert await cli._run_operation(ctx, "cull", False, True, out) == ExitCode.PAUSED
        assert _json(out)["outcome"] == "paused" and worlds["cull"].applies == 0
        assert await cli._pause(ctx, "cull", False, io.StringIO()) == ExitCode.OK
        assert await cli._run_operation(ctx, "cull", False, True, io.StringIO()) == ExitCode.OK

        s = worlds["scale"]
        s.gate = asyncio.Event()
        elsewhere = asyncio.create_task(ctx.runner.run(ctx.capability("scale"), trigger="timer", actor="timer"))
        await asyncio.wait_for(s.entered.wait(), 10)
        capsys.readouterr()
        out = io.StringIO()
        assert await cli._run_operation(ctx, "scale", False, True, out) == ExitCode.LOCKED
        assert out.getvalue() == "" and "timer:" in capsys.readouterr().err
        s.gate.set()
        await elsewhere
        assert s.applies == 1
    finally:
        for x in worlds.values():
            if x.gate is not None:
                x.gate.set()
        await ctx.close()


async def test_cli_status_json_holds_every_operation_with_its_lock_pause_and_runs(tmp_path: Path) -> None:
    ctx, worlds = make_context(tmp_path)
    worlds["sync"].items, worlds["sync"].desired = {"a", "b", "c"}, set()
    try:
        await cli._run_operation(ctx, "sync", False, False, io.StringIO())
        await cli._pause(ctx, "scale", True, io.StringIO())
        out = io.StringIO()
        assert await cli._status(ctx, True, out) == ExitCode.OK
        status = _json(out)
        assert sorted(status) == ["cull", "scale", "sync"]
        assert status["sync"]["last_run"]["outcome"] == "refused" and status["sync"]["last_run"]["refusal"]
        assert status["scale"]["paused"] is True and status["cull"]["paused"] is False
        assert status["cull"]["last_run"] is None and status["sync"]["lock"] is None
        assert all(set(v) == {"paused", "lock", "last_run", "unfinished_run"} for v in status.values())
    finally:
        await ctx.close()


def test_hubpilot_pause_and_resume_set_the_flag_a_status_reads(tmp_path: Path) -> None:
    """`hubpilot pause cull` pauses cull (and nothing else); `hubpilot resume cull` resumes it."""
    config = tmp_path / "hubpilot.toml"
    config.write_text(f'[state]\nsqlite_path = "{(tmp_path / "s.sqlite3").as_posix()}"\n')

    def status() -> dict:
        out = io.StringIO()
        assert cli.main(["status", "--json", "--config", str(config)], out=out) == ExitCode.OK
        return {op: st["paused"] for op, st in _json(out).items()}

    out = io.StringIO()
    assert cli.main(["pause", "cull", "--config", str(config)], out=out) == ExitCode.OK
    assert "paused" in out.getvalue()
    assert status() == {"sync": False, "cull": True, "scale": False}
    text = io.StringIO()
    assert cli.main(["status", "--config", str(config)], out=text) == ExitCode.OK
    assert [line.split()[:2] for line in text.getvalue().splitlines()] == [
        ["sync", "never"],
        ["cull", "PAUSED"],
        ["scale", "never"],
    ]
    assert cli.main(["resume", "cull", "--config", str(config)], out=io.StringIO()) == ExitCode.OK
    assert status() == {"sync": False, "cull": False, "scale": False}


async def test_a_run_still_running_after_the_wait_is_202_with_its_location(tmp_path: Path) -> None:
    """?wait answers 200 only with a finished run: one still applying when the wait ends is 202
    (outcome running), so a client does not take it as done."""
    ctx, worlds = make_context(tmp_path)
    w = worlds["cull"]
    w.gate = asyncio.Event()
    try:
        async with asgi_client(ctx) as client:
            r = await client.post("/api/v1/cull?wait=2", headers=ADMIN)
            assert w.applies == 1
            assert r.status_code == 202, r.text
            assert r.json()["outcome"] == "running" and r.headers["location"].endswith(r.json()["run_id"])
            w.gate.set()
            await drain_tasks()
    finally:
        w.gate.set()
        await drain_tasks()
        await ctx.close()

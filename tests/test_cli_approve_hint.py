"""Review: the approval hint a refused run prints is runnable as printed.

It said ``hubpilot approve <id>`` even when the run had been started with ``--config FILE``: an
admin copying it approved against the defaults (a fresh state file: "no refused plan"), or against
another deployment's settings. A dry-run's refusal named the same command, for a plan no run had
recorded. The hint now names the settings file the run used, and is given only for a refused plan
that was recorded (CLI output, the API's run, the audit entry)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from hubpilot.api.runs import drain_tasks
from hubpilot.settings import load_settings
from hubpilot.wiring import OPERATIONS
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub
from tests.test_api_kit import World, asgi_client, auth, make_context, token_settings

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from hubpilot.cli import main; sys.exit(main(sys.argv[1:]))"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
    return {**env, "PYTHONPATH": str(ROOT)}


async def _run(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=_env(), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return int(proc.returncode or 0), out.decode(), err.decode()


def _hubpilot(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


async def test_the_printed_approval_command_approves_the_plan_from_anywhere(real_hub: RealHub,
                                                                            tmp_path: Path) -> None:
    tag = unique_name("hint")
    directory = tmp_path / "directory.yaml"

    def people(*shorts: str) -> None:
        directory.write_text(yaml.safe_dump({
            "people": {s: {"username": f"{tag}-{s}", "name": s} for s in shorts},
            "groups": {"analysts": {"members": list(shorts)}}}))

    people("ann", "bo", "cy")
    deployment = tmp_path / "deployment"
    deployment.mkdir()
    (deployment / "hubpilot.toml").write_text(
        f'[hub]\napi_url = "{real_hub.api_url}"\ntoken = "{real_hub.hubpilot_token}"\n'
        '[state]\nsqlite_path = "state.sqlite3"\n'  # relative: to the working directory
        f'[directory]\nkind = "file"\n[directory.file]\npath = "{directory.as_posix()}"\n'
        f'[sync]\nusers_groups = ["analysts"]\ngroup_prefix = "{tag}-"\nmax_removals = 1\n'
        'max_removal_percent = 100.0\n')
    config = ["--config", "hubpilot.toml"]  # relative, as an admin types it in the deployment's directory

    code, out, err = await _run(_hubpilot(*config, "sync"), deployment)
    assert code == 0, (out, err)
    people("ann")  # two removals, more than sync.max_removals

    code, out, err = await _run(_hubpilot(*config, "sync", "--dry-run"), deployment)
    assert code == 3 and "approve" not in out.replace("approve the plan", ""), out  # nothing recorded to approve

    code, out, err = await _run(_hubpilot(*config, "sync"), deployment)
    assert code == 3, (out, err)
    hint = next(line for line in out.splitlines() if "an admin can approve it:" in line)
    command = hint.split("an admin can approve it:", 1)[1].split(", or POST", 1)[0].strip()
    assert "--config" in shlex.split(command), command

    # another shell, in another directory, runs the command exactly as printed
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "bin").mkdir(parents=True)
    script = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(CLI)} "$@"\n'
    (elsewhere / "bin" / "hubpilot").write_text(script)
    (elsewhere / "bin" / "hubpilot").chmod(0o755)
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", command, cwd=elsewhere, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**_env(), "PATH": f"{elsewhere / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"})
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 120)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0 and "sync run" in out and "applied" in out, (command, out, err)
    assert not (elsewhere / "state.sqlite3").exists() and not (elsewhere / "hubpilot-state.sqlite3").exists()


async def test_the_api_answer_and_the_audit_carry_the_runnable_hint(tmp_path: Path) -> None:
    file = tmp_path / "conf" / "hubpilot.toml"
    file.parent.mkdir()
    tokens = "".join(f'[[api.tokens]]\nname = "{t["name"]}"\nrole = "{t["role"]}"\nsha256 = "{t["sha256"]}"\n'
                     for t in token_settings())
    file.write_text('[hub]\napi_url = "http://127.0.0.1:9/hub/api"\ntoken = "t"\n' + tokens)
    for name in [n for n in os.environ if n.startswith("HUBPILOT_")]:
        os.environ.pop(name)  # pragma: no cover - the test runner sets none
    settings = load_settings(str(file))
    worlds = {op: World(items={"x1", "x2", "x3"}, desired=set()) for op in OPERATIONS}
    ctx, _ = make_context(tmp_path, settings, worlds)
    try:
        async with asgi_client(ctx) as client:
            dry = (await client.post("/api/v1/sync?dry_run=true", headers=auth("admin"))).json()
            assert dry["outcome"] == "refused" and dry["approval"] is None, dry  # not recorded: nothing to approve
            run = (await client.post("/api/v1/sync?wait=30", headers=auth("admin"))).json()
            assert run["outcome"] == "refused", run
            expected = f"hubpilot --config {shlex.quote(str(file))} approve {run['plan_id']}"
            assert run["approval"].endswith(f"{expected}, or POST /api/v1/plans/{run['plan_id']}/approve"), \
                run["approval"]
            entries = (await client.get("/api/v1/audit?operation=sync", headers=auth("reader"))).json()["entries"]
            assert entries[0]["approval"] == run["approval"], entries[0]
    finally:
        await drain_tasks()
        await ctx.close()
    assert json.dumps(run)  # the answer is plain JSON


async def test_a_stale_approval_records_the_new_plan_so_that_it_can_be_approved(tmp_path: Path) -> None:
    """An approval whose plan no longer matches was refused with "review the new plan and approve it
    instead", but the new plan was not recorded: approving it answered "no refused plan"."""
    from hubpilot.loop import UnknownPlan

    worlds = {op: World(items={"x1", "x2", "x3"}, desired=set()) for op in OPERATIONS}
    ctx, _ = make_context(tmp_path, worlds=worlds)
    try:
        cap = ctx.capability("sync")
        first = await ctx.runner.run(cap, trigger="test", actor="pytest")
        assert first.outcome == "refused" and first.plan is not None
        worlds["sync"].items.add("x4")  # the world moves on before the admin approves
        stale = await ctx.runner.approve(cap, first.plan.id, actor="pytest")
        assert stale.outcome == "refused" and stale.plan is not None and stale.plan.id != first.plan.id
        assert "approve it instead" in stale.refusal[0]
        try:
            done = await ctx.runner.approve(cap, stale.plan.id, actor="pytest")
        except UnknownPlan as exc:
            raise AssertionError(f"the new plan the refusal names cannot be approved: {exc}") from None
        assert stale.approval is not None and f"hubpilot approve {stale.plan.id}" in stale.approval
        assert done.outcome == "applied" and worlds["sync"].items == set(), done.render()
    finally:
        await ctx.close()


async def test_approving_an_applied_plan_again_says_which_run_applied_it(tmp_path: Path) -> None:
    """`hubpilot approve` run again on a plan already applied answered "no refused sync plan with id
    …", as for an id nobody ever recorded: the admin could not tell a typo from a plan a colleague
    approved. It now says which run applied it and who approved it (CLI exit 2, API 404)."""
    from hubpilot.cli import _approve
    from hubpilot.loop import UnknownPlan

    worlds = {op: World(items={"x1", "x2", "x3"}, desired=set()) for op in OPERATIONS}
    ctx, _ = make_context(tmp_path, worlds=worlds)
    try:
        cap = ctx.capability("sync")
        refused = await ctx.runner.run(cap, trigger="test", actor="timer")
        assert refused.outcome == "refused" and refused.plan is not None
        plan_id = refused.plan.id
        done = await ctx.runner.approve(cap, plan_id, actor="alice")
        assert done.outcome == "applied" and worlds["sync"].items == set(), done.render()

        with pytest.raises(UnknownPlan) as again:
            await ctx.runner.approve(cap, plan_id, actor="bob")
        assert f"already approved and applied by run {done.run_id}" in str(again.value), str(again.value)
        assert "alice" in str(again.value), str(again.value)

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = await _approve(ctx, plan_id, False, io.StringIO())
        assert code == 2 and f"already approved and applied by run {done.run_id}" in err.getvalue(), err.getvalue()

        async with asgi_client(ctx) as client:
            r = await client.post(f"/api/v1/plans/{plan_id}/approve", headers=auth("admin"))
            assert r.status_code == 404 and f"applied by run {done.run_id}" in r.text, r.text
            unknown = await client.post(f"/api/v1/plans/{'0' * 16}/approve", headers=auth("admin"))
            assert unknown.status_code == 404 and "no refused plan with id" in unknown.text, unknown.text
        assert worlds["sync"].items == set()
    finally:
        await drain_tasks()
        await ctx.close()


async def test_approve_json_prints_the_applied_run_as_json(tmp_path: Path) -> None:
    """`hubpilot approve ID --json` prints the run as the other commands' --json do (one JSON
    document: the approved plan's id, who approved it, the outcome) and exits as the run did."""
    from hubpilot.cli import _approve

    worlds = {op: World(items={"x1", "x2", "x3"}, desired=set()) for op in OPERATIONS}
    ctx, _ = make_context(tmp_path, worlds=worlds)
    try:
        refused = await ctx.runner.run(ctx.capability("sync"), trigger="test", actor="timer")
        assert refused.outcome == "refused" and refused.plan is not None
        out = io.StringIO()
        with contextlib.redirect_stderr(io.StringIO()):
            code = await _approve(ctx, refused.plan.id, True, out)
        doc = json.loads(out.getvalue())
        assert code == 0, out.getvalue()
        assert doc["outcome"] == "applied" and doc["operation"] == "sync", doc
        assert doc["plan_id"] == refused.plan.id and doc["run_id"] != refused.run_id, doc
        assert worlds["sync"].items == set()
    finally:
        await drain_tasks()
        await ctx.close()

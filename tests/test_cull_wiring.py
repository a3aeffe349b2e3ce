"""Cull through the wiring (settings → Context → capability) and when the hub cannot be read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.cull import CullCapability
from hubpilot.loop import Outcome
from hubpilot.settings import load_settings
from hubpilot.wiring import Context
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub, free_port


async def test_context_builds_cull_from_settings_and_dry_runs(real_hub: RealHub, tmp_path: Path) -> None:
    name = unique_name("wire")
    async with real_hub.admin() as admin:
        (await admin.post(f"/users/{name}")).raise_for_status()
    await real_hub.spawn(name)
    settings = load_settings(
        hub={"api_url": real_hub.api_url, "token": real_hub.hubpilot_token},
        cull={"inactivity_timeout": 7200, "policies": [{"name": "all", "inactivity_timeout": 3600}]},
    )
    now = datetime.now(UTC) + timedelta(hours=1, minutes=1)
    ctx = Context(settings=settings, store=SqliteStore(tmp_path / "state.db"), clock=lambda: now)
    try:
        cap = ctx.capability("cull")
        assert isinstance(cap, CullCapability) and cap.settings.policies[0].name == "all"
        report = await ctx.runner.run(cap, trigger="test", actor="test", dry_run=True)
        assert report.outcome is Outcome.PLANNED and report.plan is not None
        mine = [a for a in report.plan.actions if a.target == name]
        assert len(mine) == 1 and mine[0].reason.startswith("idle for 1h 01m (policy all: 1h)")
        async with real_hub.admin() as admin:  # the dry-run stopped nothing
            assert (await admin.get(f"/users/{name}")).json()["servers"][""]["ready"] is True
            await admin.delete(f"/users/{name}/server")
    finally:
        await ctx.close()


async def test_unreadable_hub_fails_the_round_and_applies_nothing(tmp_path: Path) -> None:
    settings = load_settings(hub={"api_url": f"http://127.0.0.1:{free_port()}/hub/api", "token": "t",
                                  "retries": 0})
    ctx = Context(settings=settings, store=SqliteStore(tmp_path / "state.db"))
    try:
        record = await ctx.runner.run(ctx.capability("cull"), trigger="test", actor="test")
        assert record.outcome is Outcome.FAILED and record.results == [] and record.plan is None
        assert record.error is not None and "unreachable" in record.error
        entries, _ = await ctx.store.read_audit(operation="cull")
        assert entries[0]["run_id"] == record.run_id and entries[0]["outcome"] == "failed"
    finally:
        await ctx.close()


@pytest.mark.parametrize("bad", [{"inactivity_timeout": 60}, {"policies": [{"name": "x", "typo": 1}]}])
def test_bad_cull_settings_say_what_to_fix(bad: dict[str, object]) -> None:
    from hubpilot.settings import SettingsError

    with pytest.raises(SettingsError, match=r"cull"):
        load_settings(cull=bad)


async def test_cli_cull_dry_run_json(real_hub: RealHub, tmp_path: Path) -> None:
    """`hubpilot cull --dry-run --json` as a user runs it: a plan with a line per server, no stop."""
    import asyncio
    import json
    import os
    import sys

    name = unique_name("cli")
    async with real_hub.admin() as admin:
        (await admin.post(f"/users/{name}")).raise_for_status()
    await real_hub.spawn(name)
    env = {**os.environ, "HUBPILOT_HUB__API_URL": real_hub.api_url,
           "HUBPILOT_HUB__TOKEN": real_hub.hubpilot_token,
           "HUBPILOT_STATE__SQLITE_PATH": str(tmp_path / "state.db"), "HUBPILOT_CONFIG": ""}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "hubpilot"), "cull", "--dry-run", "--json", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["outcome"] == "planned" and report["dry_run"] is True
    assert any(n.startswith(f"kept {name}: active ") for n in report["plan"]["notes"])
    assert not [a for a in report["plan"]["actions"] if a["target"] == name]
    async with real_hub.admin() as admin:
        assert (await admin.get(f"/users/{name}")).json()["servers"][""]["ready"] is True
        await admin.delete(f"/users/{name}/server")

"""Wiring from settings: operations whose settings are absent are skipped by schedules and are a
configuration error (exit 2) when asked for by hand."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from hubpilot.api.scheduling import run_scheduled
from hubpilot.cli import main
from hubpilot.settings import load_settings
from hubpilot.wiring import NotConfigured, build_context


async def test_scheduled_scale_without_a_pool_is_skipped_and_records_nothing(tmp_path: Path) -> None:
    ctx = build_context(load_settings(None, state={"sqlite_path": str(tmp_path / "s.sqlite3")}))
    try:
        with pytest.raises(NotConfigured, match=r"scale needs scale\.subscription_id"):
            ctx.capability("scale")
        assert await run_scheduled(ctx, "scale") is None
        assert await run_scheduled(ctx, "sync") is None  # no directory configured either
        assert (await ctx.store.read_audit(limit=5))[0] == []
    finally:
        await ctx.close()


def test_cli_names_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "hubpilot.toml"
    config.write_text(f'[state]\nsqlite_path = "{tmp_path / "s.sqlite3"}"\n')
    assert main(["--config", str(config), "scale", "--dry-run"], out=io.StringIO()) == 2
    assert "scale needs scale.subscription_id, scale.resource_group and scale.cluster" in capsys.readouterr().err


async def test_scheduled_scale_runs_only_with_scale_enabled(tmp_path: Path) -> None:
    """scale.enabled (off by default) is what runs the scale timer: a configured pool alone does not."""
    from tests.test_api_kit import make_context

    pool = {"subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg", "cluster": "aks"}
    for enabled in (False, True):
        settings = load_settings(None, state={"sqlite_path": str(tmp_path / f"{enabled}.sqlite3")},
                                 scale={**pool, "enabled": enabled})
        ctx, worlds = make_context(tmp_path, settings)
        try:
            record = await run_scheduled(ctx, "scale")
            assert (record is not None) is enabled
            assert worlds["scale"].applies == (1 if enabled else 0)
            assert len((await ctx.store.read_audit(limit=5))[0]) == (1 if enabled else 0)
            # by hand (CLI, API) the configured capability runs either way
            assert (await ctx.runner.run(ctx.capability("scale"), trigger="manual", actor="t")).outcome == "applied"
        finally:
            await ctx.close()

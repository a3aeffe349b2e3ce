"""The CLI's read commands (cost, audit, status) as an admin uses them: arguments checked before
anything runs, stdout that stays JSON with --json, and the audit log paged end to end."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.cli import main


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import os

    for key in [k for k in os.environ if k.startswith("HUBPILOT_")]:
        monkeypatch.delenv(key)
    path = tmp_path / "hubpilot.toml"
    path.write_text('[hub]\napi_url = "http://127.0.0.1:9/hub/api"\ntoken = "t"\n'
                    f'[state]\nsqlite_path = "{(tmp_path / "state.sqlite3").as_posix()}"\n')
    return path


def run(config: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--config", str(config), *args], out=out)
    return code, out.getvalue()


@pytest.mark.parametrize("days", ["0", "367", "-1"])
def test_cost_rejects_bad_days_on_stderr(config: Path, days: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(config), "cost", "--days", days, "--json"], out=out)
    assert exc.value.code == 2 and out.getvalue() == ""  # stdout carries JSON or nothing
    assert "--days" in capsys.readouterr().err


def test_cost_in_the_configured_timezone_against_a_given_always_on_pool(config: Path) -> None:
    config.write_text(config.read_text() + '[scale]\ntimezone = "Europe/Berlin"\nprice_per_node_hour = 3.5\n')
    code, text = run(config, "cost", "--days", "2", "--always-on-nodes", "4", "--json")
    assert code == 0, text
    rep = json.loads(text)
    assert rep["timezone"] == "Europe/Berlin" and rep["always_on_nodes"] == 4 and rep["always_on"] == "given"
    assert len(rep["days"]) == 2 and rep["days"][-1]["partial"] and rep["price_per_node_hour"] == 3.5
    code, text = run(config, "cost", "--days", "1")
    assert code == 0 and "note: days are cut at midnight Europe/Berlin" in text


@pytest.mark.parametrize("price", ["inf", "-1.0"])
def test_a_price_that_is_no_amount_is_refused_at_start(config: Path, price: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """An infinite price would make every cost NaN or Infinity: not JSON (the API could not answer,
    `--json` would print what no parser reads). Refused like a negative one, naming the setting."""
    config.write_text(config.read_text() + f"[scale]\nprice_per_node_hour = {price}\n")
    code, text = run(config, "cost", "--days", "1", "--json")
    assert code == 2 and text == ""
    assert "price_per_node_hour" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "1001", "two"])
def test_cost_rejects_a_bad_always_on_size(config: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(config), "cost", "--always-on-nodes", value], out=io.StringIO())
    assert exc.value.code == 2 and "--always-on-nodes" in capsys.readouterr().err


def test_audit_pages_end_to_end_through_the_cli(config: Path, tmp_path: Path) -> None:
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    async def fill() -> None:
        store = SqliteStore(tmp_path / "state.sqlite3")
        try:
            for i in range(5):
                await store.append_audit({"at": (at + timedelta(minutes=i)).isoformat(), "operation": "sync",
                                          "outcome": "applied", "trigger": "timer", "actor": "t",
                                          "plan_id": f"p{i}"})
        finally:
            await store.close()

    asyncio.run(fill())
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(5):
        code, text = run(config, "audit", "--limit", "2", "--json", *cursor)
        assert code == 0, text
        page = json.loads(text)
        seen += [e["plan_id"] for e in page["entries"]]
        if not page["cursor"]:
            break
        cursor = ["--cursor", page["cursor"]]
    assert seen == ["p4", "p3", "p2", "p1", "p0"]
    code, text = run(config, "audit", "--limit", "2")
    assert code == 0 and text.count("\n") == 3 and "--cursor " in text.splitlines()[-1]  # how to go on
    _, first = run(config, "audit", "--limit", "2", "--json")
    code, text = run(config, "audit", "--limit", "2", "--cursor", json.loads(first)["cursor"])
    assert code == 0 and "p2" in text and "p4" not in text

"""Review: the CLI read as a new admin reads it.

``hubpilot sync --config FILE`` (the option after the command, as most tools take it) was refused
with "unrecognized arguments: --config"; and several arguments had no help at all (``approve``'s
plan id, every ``--json``, ``pause``'s operation, ``serve``'s host and port and their defaults)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from hubpilot.cli import build_parser, main

LOADS_SETTINGS = ("sync", "cull", "scale", "approve", "pause", "resume", "status", "audit", "serve", "cost")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_argument_of_every_command_says_what_it_is() -> None:
    missing = [f"{name} {a.dest}" for name, p in _subparsers().items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == [], missing


@pytest.mark.parametrize("command", LOADS_SETTINGS)
def test_config_is_taken_after_the_command_too(command: str) -> None:
    args = build_parser().parse_args([command, "--config", "x.toml",
                                      *({"approve": ["0123456789abcdef"], "pause": ["sync"],
                                         "resume": ["sync"]}.get(command, []))])
    assert args.config == "x.toml"
    before = build_parser().parse_args(["--config", "y.toml", "status"])
    assert before.config == "y.toml"  # the option before the command is kept


def test_a_run_with_config_after_the_command_reads_that_file(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "hubpilot.toml"
    config.write_text(f'[state]\nsqlite_path = "{(tmp_path / "s.sqlite3").as_posix()}"\n')
    out = io.StringIO()
    assert main(["status", "--config", str(config)], out=out) == 0, capsys.readouterr().err
    assert "never run" in out.getvalue() and (tmp_path / "s.sqlite3").exists()
    assert "note:" not in capsys.readouterr().err  # the file was used, not the defaults


def test_status_says_why_the_last_run_failed_or_was_refused(tmp_path: Path) -> None:
    """`hubpilot status` shows under an operation's last run its error or the guard's reasons, and a
    later run that ended without finishing, as GET /status does; a run that applied, or one recorded
    before these fields, shows neither."""
    import asyncio

    from hubpilot.adapters.store_sqlite import SqliteStore

    db = tmp_path / "s.sqlite3"
    config = tmp_path / "hubpilot.toml"
    config.write_text(f'[state]\nsqlite_path = "{db.as_posix()}"\n')
    base = {"at": "2026-11-01T00:00:00+00:00", "trigger": "timer", "actor": "timer", "plan_id": None,
            "counts": {}, "result_counts": {}}

    async def write() -> None:
        store = SqliteStore(db)
        try:
            await store.put("last_run/sync", {**base, "run_id": "1" * 32, "outcome": "failed",
                                              "error": "directory unreachable", "refusal": []})
            await store.put("last_run/cull", {**base, "run_id": "2" * 32, "outcome": "refused", "error": None,
                                              "refusal": ["the plan stops 40 servers", "more than 10 %"]})
            await store.put("last_run/scale", {**base, "run_id": "3" * 32, "outcome": "applied"})
            # a later scale run whose process was killed: its document says running, it holds no lock
            await store.put("started_run/scale", {"run_id": "4" * 32, "at": "2026-11-01T00:05:00+00:00"})
            await store.put("runs/" + "4" * 32, {"run_id": "4" * 32, "operation": "scale", "outcome": "running",
                                                 "started": "2026-11-01T00:05:00+00:00"})
        finally:
            await store.close()

    asyncio.run(write())
    out = io.StringIO()
    assert main(["status", "--config", str(config)], out=out) == 0
    lines = out.getvalue().splitlines()
    at = {line.split()[0]: i for i, line in enumerate(lines) if not line.startswith(" ")}
    assert lines[at["sync"] + 1].split() == ["error:", "directory", "unreachable"]
    assert [lines[at["cull"] + 1].strip(), lines[at["cull"] + 2].strip()] == [
        "refused: the plan stops 40 servers", "refused: more than 10 %"]
    assert "failed" in lines[at["sync"]] and "refused" in lines[at["cull"]]
    assert "applied" in lines[at["scale"]]
    assert lines[at["scale"] + 1].startswith(f"       unfinished: run {'4' * 32} started 2026-11-01T00:05:00+00:00 "
                                             "failed: the run ended without finishing"), lines
    assert len(lines) == len(at) + 4, lines  # nothing else under any operation


def test_the_readmes_cli_synopsis_shows_every_option() -> None:
    """The README's CLI block is where a new admin looks first: each command's line there shows
    every option its --help has (``cost --always-on-nodes`` and four ``--json`` were missing)."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"### CLI\n.*?```\n(.*?)```", readme, re.S)
    assert block, "README.md has no CLI block under '### CLI'"
    missing = []
    for name, parser in _subparsers().items():
        lines = [line.split("#")[0] for line in block.group(1).splitlines()
                 if re.search(rf"\b{name}\b", line.split("#")[0])]
        assert lines, f"the README's CLI block does not show {name}"
        missing += [f"{name} {opt}" for a in parser._actions for opt in a.option_strings
                    if opt.startswith("--") and opt not in ("--help", "--config")
                    and not any(opt in line for line in lines)]
    assert missing == [], missing


def test_python_dash_m_hubpilot_is_the_command(tmp_path: Path) -> None:
    """``python -m hubpilot`` runs the CLI (an environment whose scripts folder is not on the PATH,
    a venv not activated), with its exit codes."""
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "hubpilot", "--help"], capture_output=True, text=True,
                        cwd=tmp_path, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("usage: hubpilot"), ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, "-m", "hubpilot", "no-such-command"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "no-such-command" in bad.stderr, bad.stdout + bad.stderr


def test_serve_listens_on_loopback_unless_told_otherwise() -> None:
    """The admin API starts runs that stop servers and remove users: by default it is reachable from
    this machine only, and another address is a choice (``--host``)."""
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8765)
    assert build_parser().parse_args(["serve", "--host", "0.0.0.0"]).host == "0.0.0.0"

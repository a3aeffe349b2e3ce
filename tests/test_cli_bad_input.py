"""Review: the CLI answers bad arguments with exit code 2 and a message naming the argument."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp: Path) -> Path:
    path = tmp / "hubpilot.toml"
    path.write_text('[hub]\napi_url = "http://127.0.0.1:9/hub/api"\ntoken = "t"\n'
                    f'[state]\nsqlite_path = "{(tmp / "state.sqlite3").as_posix()}"\n')
    return path


def _cli(tmp: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
    return subprocess.run([sys.executable, "-m", "hubpilot.cli", "--config", str(_config(tmp)), *args],
                          cwd=tmp, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, names", [
    (["audit", "--limit", "99999999999999999999"], "--limit"),
    (["audit", "--limit", "0"], "--limit"),
    (["audit", "--since", "yesterday"], "--since"),
    (["audit", "--since", "2025-01-01T00:00:00+25:00"], "--since"),
    (["serve", "--port", "99999"], "--port"),
    (["approve", "../runs/x"], "plan_id"),
])
def test_bad_arguments_exit_2_naming_the_argument_without_a_traceback(tmp_path: Path, args: list[str],
                                                                       names: str) -> None:
    done = _cli(tmp_path, *args)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert names in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_serve_on_a_port_in_use_fails_with_exit_1_not_the_guards_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = _cli(tmp_path, "serve", "--port", str(taken.getsockname()[1]))
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "could not start" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_malformed_config_file_is_exit_2_naming_the_file(tmp_path: Path) -> None:
    """The file may come from $HUBPILOT_CONFIG or ./hubpilot.toml: the message says which one."""
    bad = tmp_path / "elsewhere.toml"
    bad.write_text("[hub\\napi_url = ")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
    done = subprocess.run([sys.executable, "-m", "hubpilot.cli", "status"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60,
                          env={**env, "PYTHONPATH": str(ROOT), "HUBPILOT_CONFIG": str(bad)})
    assert done.returncode == 2, done.stderr
    assert str(bad) in done.stderr and "line 1" in done.stderr, done.stderr


async def test_audit_filters_by_any_operation_the_log_holds(tmp_path: Path) -> None:
    """The audit log holds more than the three operations (graph-notifications, graph-subscriptions):
    ``--operation`` takes those names too, as GET /audit?operation= does."""
    import json

    from hubpilot.adapters.store_sqlite import SqliteStore

    _config(tmp_path)
    store = SqliteStore(tmp_path / "state.sqlite3")
    for op in ("sync", "graph-notifications"):
        await store.append_audit({"at": "2026-03-02T12:00:00+00:00", "operation": op, "outcome": "refused"})
    await store.close()
    done = _cli(tmp_path, "audit", "--operation", "graph-notifications", "--json")
    assert done.returncode == 0, done.stderr
    assert [e["operation"] for e in json.loads(done.stdout)["entries"]] == ["graph-notifications"]
    bad = _cli(tmp_path, "audit", "--operation", "Graph Notifications")
    assert bad.returncode == 2 and "--operation" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


async def test_a_naive_since_means_utc_whatever_the_hosts_time_zone(tmp_path: Path) -> None:
    """``audit --since`` without an offset means UTC (as every stored time does), also on a host
    whose local time zone is not UTC: an admin in Tokyo asking from 11:30 gets the entries from
    11:30 UTC, not from 02:30 UTC (their local 11:30)."""
    import json

    from hubpilot.adapters.store_sqlite import SqliteStore

    _config(tmp_path)
    store = SqliteStore(tmp_path / "state.sqlite3")
    for at in ("2026-03-02T10:00:00+00:00", "2026-03-02T11:00:00+00:00", "2026-03-02T12:00:00+00:00"):
        await store.append_audit({"at": at, "operation": "sync", "outcome": "applied"})
    await store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
    for tz in ("Asia/Tokyo", "America/New_York"):
        done = subprocess.run([sys.executable, "-m", "hubpilot.cli", "--config", str(tmp_path / "hubpilot.toml"),
                               "audit", "--since", "2026-03-02T11:30", "--json"], cwd=tmp_path,
                              env={**env, "PYTHONPATH": str(ROOT), "TZ": tz}, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert [e["at"][:19] for e in json.loads(done.stdout)["entries"]] == ["2026-03-02T12:00:00"], (tz, done.stdout)


def test_a_command_with_no_settings_at_all_says_it_uses_the_defaults(tmp_path: Path) -> None:
    """Run outside the deployment's directory and environment, `hubpilot status` reads a fresh
    state file and reports "never run": it says that it found no settings, not only that."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
    bare = subprocess.run([sys.executable, "-m", "hubpilot.cli", "status"], cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 0, bare.stderr
    assert "no settings file" in bare.stderr and "hubpilot-state.sqlite3" in bare.stderr
    configured = _cli(tmp_path, "status")
    assert configured.returncode == 0, configured.stderr
    assert "no settings file" not in configured.stderr
    # a HUBPILOT_ variable is settings too (how Azure Functions and containers configure it)
    by_env = subprocess.run([sys.executable, "-m", "hubpilot.cli", "status"], cwd=tmp_path,
                            env={**env, "PYTHONPATH": str(ROOT),
                                 "HUBPILOT_STATE__SQLITE_PATH": str(tmp_path / "s.sqlite3")},
                            capture_output=True, text=True, timeout=60)
    assert by_env.returncode == 0, by_env.stderr
    assert "no settings file" not in by_env.stderr


def _bare(tmp: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
    return subprocess.run([sys.executable, "-m", "hubpilot.cli", *args], cwd=tmp, capture_output=True,
                          text=True, timeout=60, env={**env, "PYTHONPATH": str(ROOT), **env_extra})


def test_hubpilot_config_naming_a_missing_file_is_exit_2_not_the_defaults(tmp_path: Path) -> None:
    """$HUBPILOT_CONFIG with a typo'd path was read as no file at all: `hubpilot status` answered
    "never run" from a fresh ./hubpilot-state.sqlite3, and `sync` ran with the defaults, without
    a word (the variable itself silenced the defaults' note)."""
    done = _bare(tmp_path, "status", HUBPILOT_CONFIG=str(tmp_path / "hubpilot.tmol"))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "HUBPILOT_CONFIG" in done.stderr and "hubpilot.tmol" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "hubpilot-state.sqlite3").exists()


def test_config_naming_a_directory_says_so(tmp_path: Path) -> None:
    done = _bare(tmp_path, "--config", str(tmp_path), "status")
    assert done.returncode == 2 and "is a directory" in done.stderr, done.stderr


def test_an_empty_hub_token_names_the_setting(tmp_path: Path) -> None:
    """A new user's first settings file often has no token yet: the message names the setting."""
    (tmp_path / "people.yaml").write_text("people: {}\ngroups: {a: {members: []}}\n")
    (tmp_path / "hubpilot.toml").write_text('[directory]\nkind = "file"\n[directory.file]\npath = "people.yaml"\n'
                                            '[sync]\nusers_groups = ["a"]\n')
    done = _bare(tmp_path, "sync", "--dry-run")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "hub.token" in done.stderr and "HUBPILOT_HUB__TOKEN" in done.stderr, done.stderr


@pytest.mark.parametrize("command", [["status"], ["audit"], ["pause", "cull"]])
def test_a_state_file_that_cannot_be_opened_is_named_without_a_traceback(tmp_path: Path,
                                                                         command: list[str]) -> None:
    """state.sqlite_path under a regular file (or in a directory the user may not write) ended the
    command with a StoreError traceback."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "hubpilot.toml").write_text('[state]\nsqlite_path = "afile/state.sqlite3"\n')
    done = _bare(tmp_path, *command)
    assert done.returncode == 1, (done.stdout, done.stderr)
    # a relative path in the settings file is read from its folder, and shown absolute
    assert f"cannot open the state file '{tmp_path / 'afile' / 'state.sqlite3'}'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_a_settings_file_not_in_utf8_is_named_and_says_so(tmp_path: Path) -> None:
    """A settings file saved by a Windows editor as "Unicode" (UTF-16) was answered "cannot read
    settings: 'utf-8' codec can't decode byte 0xff in position 0", naming no file; one saved as
    UTF-8 with a byte order mark, "Invalid statement (at line 1, column 1)" of a line that reads
    right. Both now name the file and say to save it as UTF-8 without a BOM."""
    text = '[state]\nsqlite_path = "state.sqlite3"\n'
    for data in (text.encode("utf-16"), b"\xef\xbb\xbf" + text.encode()):
        (tmp_path / "hubpilot.toml").write_bytes(data)
        done = _bare(tmp_path, "status")
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "hubpilot.toml" in done.stderr and "UTF-8 without a byte order mark" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr


def test_a_directory_without_users_groups_is_a_configuration_error(tmp_path: Path) -> None:
    """A first settings file that names the directory but no group of it: a configuration error
    (exit 2) naming the setting, as a missing [directory] is, not a run that fails (exit 1) every
    time it is tried."""
    (tmp_path / "people.yaml").write_text("people: {}\ngroups: {a: {members: []}}\n")
    (tmp_path / "hubpilot.toml").write_text(
        '[hub]\napi_url = "http://127.0.0.1:9/hub/api"\ntoken = "t"\n'
        '[directory]\nkind = "file"\n[directory.file]\npath = "people.yaml"\n')
    done = _bare(tmp_path, "sync", "--dry-run")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "sync.users_groups is empty" in done.stderr and "Traceback" not in done.stderr, done.stderr


async def test_audit_blames_a_cursor_only_when_one_was_given(tmp_path: Path) -> None:
    """An audit entry the search by user cannot read (damaged, edited by hand) is not a bad
    ``--cursor`` the caller never gave: it fails (exit 1) saying an entry could not be read, as
    GET /audit answers 500; a cursor that is not one is still exit 2 naming ``--cursor``, for the
    search by user and for the plain listing alike. No traceback either way."""
    from hubpilot.adapters.store_sqlite import SqliteStore

    _config(tmp_path)
    store = SqliteStore(tmp_path / "state.sqlite3")
    await store.append_audit({"at": "2026-11-01T00:00:00+00:00", "operation": "sync", "kind": "run",
                              "outcome": "applied", "results": 3})
    await store.close()
    damaged = _cli(tmp_path, "audit", "--user", "bob")
    assert damaged.returncode == 1, (damaged.stdout, damaged.stderr)
    assert "could not be read" in damaged.stdout and "--cursor" not in damaged.stdout
    assert "Traceback" not in damaged.stderr, damaged.stderr
    good_cursor = _cli(tmp_path, "audit", "--user", "bob", "--cursor", "u0.")  # the search's own form
    assert good_cursor.returncode == 1 and "could not be read" in good_cursor.stdout, good_cursor.stdout
    for args in (["--user", "bob"], []):
        bad = _cli(tmp_path, "audit", *args, "--cursor", "zzz")
        assert bad.returncode == 2 and "--cursor" in bad.stdout + bad.stderr, (bad.stdout, bad.stderr)
        assert "Traceback" not in bad.stderr, bad.stderr
    plain = _cli(tmp_path, "audit")
    assert plain.returncode == 0 and "sync applied" in plain.stdout, (plain.stdout, plain.stderr)

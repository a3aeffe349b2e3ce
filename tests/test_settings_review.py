"""Review of the settings: bad configuration an admin writes is refused at load with an error that
names the setting and says what to fix, and a refusal's example, followed, loads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hubpilot.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("HUBPILOT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray ./hubpilot.toml


def _refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    for name in env:
        monkeypatch.delenv(name)
    return str(err.value)


@pytest.mark.parametrize("pattern", ["[a-z", "^[a-z0-9]{0,63$(", "*"])
def test_a_naming_pattern_that_is_no_regular_expression_is_refused_at_load(tmp_path: Path, pattern: str) -> None:
    """sync.naming.pattern was accepted whatever it held and compiled only when the first sync
    named a person: every sync then failed with re's "unterminated character set at position 0",
    naming no setting."""
    path = tmp_path / "h.toml"
    path.write_text(f"[sync.naming]\npattern = '{pattern}'\n")
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    message = str(err.value)
    assert "sync.naming.pattern:" in message and "regular expression" in message, message
    path.write_text("[sync.naming]\npattern = '^[a-z0-9][a-z0-9._-]{0,63}$'\n")
    assert load_settings(path).sync.naming.pattern == "^[a-z0-9][a-z0-9._-]{0,63}$"


def test_an_empty_state_file_path_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty state.sqlite_path (an app setting left empty) was accepted, and SQLite opens "" as
    a temporary database deleted when the run ends: every run started on an empty store, which
    forgets the managed users, the removal window and the approvals, without a word."""
    import sqlite3

    # what SQLite makes of it: nothing written survives the connection
    first = sqlite3.connect("")
    first.execute("CREATE TABLE t (x)")
    first.close()
    second = sqlite3.connect("")
    assert second.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    second.close()

    message = _refused(monkeypatch, {"HUBPILOT_STATE__SQLITE_PATH": ""})
    assert "state.sqlite_path:" in message and "[env HUBPILOT_STATE__SQLITE_PATH]" in message, message
    path = tmp_path / "h.toml"
    path.write_text('[state]\nsqlite_path = ""\n')
    with pytest.raises(SettingsError, match=r"state\.sqlite_path: .*empty"):
        load_settings(path)
    assert load_settings().state.sqlite_path == "hubpilot-state.sqlite3"  # unset: the default

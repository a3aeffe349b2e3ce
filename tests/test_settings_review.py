"""Review of the settings: bad configuration an admin writes is refused at load with an error that
names the setting and says what to fix, and a refusal's example, followed, loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubpilot.settings import SettingsError, load_settings
from tests.test_settings import clean_env  # noqa: F401 - autouse: no HUBPILOT_ variable, no stray ./hubpilot.toml


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


def test_a_list_item_set_by_index_in_the_environment_gets_an_example_with_its_keys(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """App Service writes array items as Section__0__Key; ``HUBPILOT_SCALE__WARM__0__SPARE=2`` was
    told to set ``HUBPILOT_SCALE__WARM='[{"0": ...}]'``, the index as a key."""
    message = _refused(monkeypatch, {"HUBPILOT_SCALE__WARM__0__SPARE": "2"})
    assert "HUBPILOT_SCALE__WARM='[{\"spare\": ...}]'" in message, message
    assert '"0"' not in message, message


@pytest.mark.parametrize(("name", "value", "example", "fixed"), [
    ("HUBPILOT_SYNC__NAMING__USERNAME_MAP", "old=new", '\'{"', '{"old": "new"}'),
    ("HUBPILOT_SCALE__WARM", "mon-fri 08:00-18:00", '\'[{"days": ', '[{"days": "mon-fri", "start": "08:00"}]'),
    ("HUBPILOT_API__TOKENS", "ops:admin", '\'[{"name": ', '[{"name": "ops", "role": "admin", "sha256": "' + "a" * 64
     + '"}]'),
    ("HUBPILOT_SCALE__GPU_PROFILES", "gpu,ml", "'[\"", '["gpu", "ml"]'),
    ("HUBPILOT_SCALE", "max_nodes=3", "'{\"", '{"max_nodes": 3}'),
])
def test_a_value_that_is_no_json_is_shown_json_of_its_own_shape(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str, example: str, fixed: str) -> None:
    """Every non-JSON list or object was shown the example ``'["a", "b"]'``: a list of strings, which
    for a map (username_map), a list of objects (warm windows, API tokens) or a whole section is
    refused again; and a whole section (HUBPILOT_SCALE) was refused naming no variable."""
    message = _refused(monkeypatch, {name: value})
    assert f"{name}: " in message and f"{name}={example}" in message, message
    monkeypatch.setenv(name, fixed)
    load_settings()


def test_a_day_range_across_the_weekend_covers_the_days_it_names(tmp_path: Path) -> None:
    """Sunday-to-Thursday work weeks (``sun-thu``) and night-shift weekends (``fri-mon``) are ranges
    that run past Sunday; nothing checked that they are read as the days they name rather than
    refused as empty."""
    from datetime import UTC, datetime

    from hubpilot.scale.schedule import Schedule

    path = tmp_path / "h.toml"
    path.write_text('[scale]\ntimezone = "UTC"\n[[scale.warm]]\ndays = "sun-thu"\nstart = "08:00"\nend = "18:00"\n'
                    'spare = 2\n[[scale.warm]]\ndays = "Fri-Mon"\nstart = "22:00"\nend = "06:00"\nspare = 1\n')
    scale = load_settings(path).scale
    schedule = Schedule.of(scale.warm, scale.timezone, scale.holidays)
    # 2026-01-04 is a Sunday
    assert schedule.at(datetime(2026, 1, 4, 10, tzinfo=UTC)).spare == 2  # Sunday, in sun-thu
    assert schedule.at(datetime(2026, 1, 8, 10, tzinfo=UTC)).spare == 2  # Thursday
    assert not schedule.at(datetime(2026, 1, 9, 10, tzinfo=UTC)).active  # Friday day: neither
    assert schedule.at(datetime(2026, 1, 3, 23, tzinfo=UTC)).spare == 1  # Saturday night, in fri-mon
    assert schedule.at(datetime(2026, 1, 6, 5, tzinfo=UTC)).spare == 1  # Tuesday 05:00, Monday's night
    assert not schedule.at(datetime(2026, 1, 6, 23, tzinfo=UTC)).active  # Tuesday night: neither


_TOKEN = {"role": "admin", "sha256": "ab" * 32}
_ENTRA = {"tenant_id": "00000000-0000-0000-0000-000000000001"}
_NOTIFIED = {**_ENTRA, "notifications": True, "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications",
             "client_state": "s", "subscription_schedule": "0 0 * * * *"}


@pytest.mark.parametrize(("overrides", "message"), [
    # found by mutating the validators: each case fails against the validator without its check
    ({"scale": {"enabled": True, "subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg"}},
     "scale.enabled needs scale.subscription_id, scale.resource_group and scale.cluster"),
    ({"scale": {"warm": [{"start": "24:30"}]}}, "'24:30' is no time of day"),
    ({"scale": {"reclaim_idle_minutes": 5.5}, "cull": {"activity_interval": 300, "activity_check_seconds": 0}},
     "scale.reclaim_idle_minutes (5.5 min) must exceed the hub's activity interval"),
    ({"cull": {"inactivity_timeout": 599, "schedule": "0 */10 * * * *"}}, "leaves up to 600 s between rounds"),
    ({"sync": {"group_prefix": "dir/"}}, "group_prefix must not contain '/'"),
    ({"api": {"tokens": [{"name": "a", **_TOKEN}, {"name": "b", **_TOKEN}]}}, "two entries carry the same sha256"),
    ({"directory": {"kind": "entra", "entra": {**_ENTRA, "subscription_minutes": 2880, "renew_before_minutes": 2880}}},
     "renew_before_minutes must be less than subscription_minutes"),
    ({"directory": {"kind": "entra", "entra": {**_ENTRA, "graph_base_url": "https://graph.microsoft.com/v1.0/v1.0"}}},
     "graph_base_url names the Graph API version twice; use https://graph.microsoft.com/v1.0"),
    ({"directory": {"kind": "entra", "entra": {**_NOTIFIED, "renew_before_minutes": 60}}},
     "renew_before_minutes=60 is not longer than the time between two rounds"),
])
def test_a_setting_just_past_its_bound_is_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(None, **overrides)
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize("overrides", [
    {"scale": {"enabled": True, "subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg",
               "cluster": "aks"}},
    {"scale": {"warm": [{"start": "23:59", "end": "24:00"}]}},
    {"scale": {"reclaim_idle_minutes": 5.6}, "cull": {"activity_interval": 300, "activity_check_seconds": 0}},
    {"cull": {"inactivity_timeout": 600, "schedule": "0 */10 * * * *"}},
    {"api": {"tokens": [{"name": "a", **_TOKEN}, {"name": "b", **{**_TOKEN, "sha256": "cd" * 32}}]}},
    {"directory": {"kind": "entra", "entra": {**_ENTRA, "subscription_minutes": 2880, "renew_before_minutes": 2879}}},
    {"directory": {"kind": "entra", "entra": {**_NOTIFIED, "renew_before_minutes": 61}}},
])
def test_a_setting_at_its_bound_loads(overrides: dict[str, object]) -> None:
    load_settings(None, **overrides)

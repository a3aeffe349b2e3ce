"""Follow-ups of the settings review: bad configuration that still got through to the run that
uses it is refused at load, naming the setting and saying what to write; what is valid loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubpilot.settings import SettingsError, load_settings
from tests.test_settings import clean_env  # noqa: F401 - autouse: no HUBPILOT_ variable, no stray ./hubpilot.toml
from tests.test_settings_review import _refused


def _file_refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "h.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    return str(err.value)


def test_a_warm_window_written_as_a_toml_time_is_that_time(tmp_path: Path) -> None:
    """``start = 08:00:00`` (a TOML local time, unquoted) was refused with "Input should be a valid
    string", which does not say to quote it; it is the same time as "08:00"."""
    path = tmp_path / "h.toml"
    path.write_text("[[scale.warm]]\ndays = 'mon-fri'\nstart = 08:00:00\nend = 18:30:00\n")
    window = load_settings(path).scale.warm[0]
    assert (window.start, window.end) == ("08:00", "18:30")


@pytest.mark.parametrize(("value", "why"), [
    ("08:00:30", "seconds"), ("08:00:00.5", "seconds"), ("2024-05-01T08:00:00", "a date"), ("8", "a number"),
])
def test_a_warm_window_time_hubpilot_cannot_take_says_to_quote_it(tmp_path: Path, value: str, why: str) -> None:
    message = _file_refused(tmp_path, f"[[scale.warm]]\nstart = {value}\n")
    assert "scale.warm.0.start:" in message, message
    assert "valid string" not in message, message
    assert "start = \"08:00\"" in message, message  # what to write
    (tmp_path / "h.toml").write_text("[[scale.warm]]\nstart = \"08:00\"\n")
    assert load_settings(tmp_path / "h.toml").scale.warm[0].start == "08:00"


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_directory_file_path_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    """``directory.file.path = ""`` was accepted, read as the working directory, and every sync
    failed with "directory file . cannot be read: Is a directory", naming no setting."""
    message = _file_refused(tmp_path, f"[directory]\nkind = 'file'\n[directory.file]\npath = '{value}'\n")
    assert "directory.file.path:" in message and "empty" in message, message
    message = _refused(monkeypatch, {"HUBPILOT_DIRECTORY__KIND": "file", "HUBPILOT_DIRECTORY__FILE__PATH": value})
    assert "directory.file.path:" in message and "[env HUBPILOT_DIRECTORY__FILE__PATH]" in message, message
    (tmp_path / "h.toml").write_text("[directory]\nkind = 'file'\n[directory.file]\npath = 'people.yaml'\n")
    assert load_settings(tmp_path / "h.toml").directory.file.path == str(tmp_path / "people.yaml")  # type: ignore[union-attr]


FILE_DIRECTORY = "[directory]\nkind = 'file'\n[directory.file]\npath = 'people.yaml'\n"


@pytest.mark.parametrize(("name", "value"), [
    ("users_groups", '[""]'), ("admin_groups", '["staff", " "]'), ("users_groups", '["staff", ""]'),
])
def test_an_empty_group_name_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str,
                                        value: str) -> None:
    """An empty name in sync.users_groups or sync.admin_groups was accepted, and failed only when a
    sync read that group from the directory."""
    message = _file_refused(tmp_path, f"{FILE_DIRECTORY}[sync]\n{name} = {value}\n")
    assert f"sync.{name}:" in message and "empty group name" in message, message
    (tmp_path / "hubpilot.toml").write_text(FILE_DIRECTORY)  # read from the working directory
    message = _refused(monkeypatch, {f"HUBPILOT_SYNC__{name.upper()}": value})
    assert f"sync.{name}:" in message and f"[env HUBPILOT_SYNC__{name.upper()}]" in message, message
    monkeypatch.setenv(f"HUBPILOT_SYNC__{name.upper()}", '["staff"]')
    assert getattr(load_settings().sync, name) == ["staff"]


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "aks1.example.org:443", "ftp://aks1.example.org", "https://"])
def test_a_kube_api_url_without_http_scheme_is_refused_with_kubeconfig_auth(
        monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """With kube_auth = kubeconfig, scale.kube_api_url is the API server hubpilot talks to (in
    place of the kubeconfig, with no credentials). One without a scheme was accepted, and the
    Kubernetes client then spoke plain http to it (urllib3 warns that a later release refuses
    such URLs); another scheme failed each run with "Not supported URL scheme"."""
    message = _refused(monkeypatch, {"HUBPILOT_SCALE__KUBE_API_URL": url})
    assert "scale.kube_api_url must be" in message and "http(s) URL" in message, message
    monkeypatch.setenv("HUBPILOT_SCALE__KUBE_API_URL", "http://127.0.0.1:8080")
    assert load_settings().scale.kube_api_url == "http://127.0.0.1:8080"


def test_an_azure_state_store_without_an_account_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """state.kind = "azure" with neither a connection string nor an account name was accepted, and
    every command then failed building the store ("set a connection string or an account name"),
    naming no setting."""
    message = _refused(monkeypatch, {"HUBPILOT_STATE__KIND": "azure"})
    assert "state.azure_connection_string" in message and "state.azure_account_name" in message, message
    message = _refused(monkeypatch, {"HUBPILOT_STATE__KIND": "azure", "HUBPILOT_STATE__AZURE_ACCOUNT_NAME": ""})
    assert "state.azure_account_name" in message, message
    monkeypatch.setenv("HUBPILOT_STATE__KIND", "azure")
    monkeypatch.setenv("HUBPILOT_STATE__AZURE_ACCOUNT_NAME", "sthubpilot1")
    assert load_settings().state.azure_account_name == "sthubpilot1"
    monkeypatch.delenv("HUBPILOT_STATE__AZURE_ACCOUNT_NAME")
    monkeypatch.setenv("HUBPILOT_STATE__AZURE_CONNECTION_STRING", "UseDevelopmentStorage=true")
    assert load_settings().state.kind == "azure"


@pytest.mark.parametrize(("name", "value"), [
    ("azure_table_prefix", "hub-pilot"), ("azure_table_prefix", "1hub"), ("azure_table_prefix", "h" * 58),
    ("azure_container", "Hub_State"), ("azure_container", "hub--state"), ("azure_container", "hs"),
    ("azure_container", "-hubstate"), ("azure_account_name", "St-Hubpilot"), ("azure_account_name", "st"),
])  # an account name with a line break after it loads without it (tests/test_settings_forms3.py)
def test_azure_store_names_azure_refuses_are_refused_at_load(monkeypatch: pytest.MonkeyPatch, name: str,
                                                             value: str) -> None:
    """A table prefix, container or account name Azure Storage refuses was accepted, and every
    command then failed building the store, naming no setting."""
    from hubpilot.adapters.store_azure import AzureStore

    store_names = {"account_name": "sthubpilot1", "table_prefix": "hubpilot", "container": "hubpilot-state",
                   name.removeprefix("azure_"): value}
    with pytest.raises(ValueError):  # what the store makes of it, at each command's start
        AzureStore.from_settings(**store_names)
    env = {"HUBPILOT_STATE__KIND": "azure", "HUBPILOT_STATE__AZURE_ACCOUNT_NAME": "sthubpilot1",
           f"HUBPILOT_STATE__{name.upper()}": value}
    message = _refused(monkeypatch, env)
    assert f"state.{name}:" in message and f"[env HUBPILOT_STATE__{name.upper()}]" in message, message
    assert "e.g." in message, message  # what to write


@pytest.mark.parametrize(("name", "value"), [
    ("HUBPILOT_SCALE__ARM_ENDPOINT", "management.azure.com"),
    ("HUBPILOT_SCALE__AUTHORITY", "http://login.microsoftonline.us"),
    ("HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL", "graph.microsoft.com/v1.0"),
])
def test_a_refused_url_is_shown_once(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """The scale.arm_endpoint refusal (and every one whose reason quotes the value) showed
    "(got '...')" twice: the reason's own, and the one added to each refusal."""
    message = _refused(monkeypatch, {"HUBPILOT_DIRECTORY__KIND": "entra", name: value})
    line = next(line for line in message.splitlines() if name in line)
    assert line.count(repr(value)) == 1, line


@pytest.mark.parametrize("text, setting, hint", [
    ('[state]\nkind = "azure"\nazure_account_name = "sthubpilot1"\nazure_endpoint_suffix = "https://core.windows.net"\n',
     "state.azure_endpoint_suffix", "core.windows.net"),
    ('[state]\nkind = "azure"\nazure_account_name = "sthubpilot1"\nazure_endpoint_suffix = " "\n',
     "state.azure_endpoint_suffix", "core.windows.net"),
    ('[sync]\nusers_groups = ["staff"]\n[sync.group_names]\nstaff = ""\n', "sync.group_names", '"users"'),
    ('[sync]\nusers_groups = ["staff"]\n[sync.group_names]\nstaff = "data/science"\n', "sync.group_names", "'/'"),
    ('[sync]\nusers_groups = ["staff"]\n[sync.group_names]\n"" = "users"\n', "sync.group_names", "directory group"),
    ('[state]\nsqlite_path = "   "\n', "state.sqlite_path", "temporary database"),
])
def test_more_values_that_failed_later_are_refused_at_load(tmp_path: Path, text: str, setting: str,
                                                           hint: str) -> None:
    """An endpoint suffix given as a URL (or blank) failed every command when the store was built,
    naming no setting; a group_names override that is empty named the hub group by the prefix alone,
    one with '/' broke every request about the group; a state path of spaces became a file named so."""
    said = _file_refused(tmp_path, text)
    assert setting in said and hint in said, said


def test_the_valid_forms_still_load(tmp_path: Path) -> None:
    path = tmp_path / "h.toml"
    path.write_text('[state]\nkind = "azure"\nazure_account_name = "sthubpilot1"\n'
                    'azure_endpoint_suffix = "core.chinacloudapi.cn"\n'
                    '[directory]\nkind = "file"\n[directory.file]\npath = "people.yaml"\n'
                    '[sync]\nusers_groups = ["staff", "cn=Data Team,ou=g"]\n'
                    '[sync.group_names]\nstaff = "users"\n"cn=Data Team,ou=g" = "data-team"\n')
    loaded = load_settings(path)
    assert loaded.state.azure_endpoint_suffix == "core.chinacloudapi.cn"
    assert loaded.sync.group_names == {"staff": "users", "cn=Data Team,ou=g": "data-team"}


@pytest.mark.parametrize(("line", "setting", "typed", "write"), [
    ("[hub]\napi_url = 8081", "hub.api_url", "a number", 'api_url = "8081"'),
    ("[scale]\nresource_group = 2024-01-01", "scale.resource_group", "a date", 'resource_group = "2024-01-01"'),
    ("[sync]\ngroup_prefix = true", "sync.group_prefix", "a boolean", 'group_prefix = "true"'),
    ("[sync]\ngroup_prefix = 1.5", "sync.group_prefix", "a number", 'group_prefix = "1.5"'),
    ("[sync]\ngroup_prefix = 2024-01-01T08:00:00", "sync.group_prefix", "a date-time",
     'group_prefix = "2024-01-01T08:00:00"'),
    ("[scale]\nresource_group = 08:00:00", "scale.resource_group", "a time", 'resource_group = "08:00:00"'),
])
def test_an_unquoted_toml_value_for_a_text_setting_says_to_quote_it(tmp_path: Path, line: str, setting: str,
                                                                    typed: str, write: str) -> None:
    """TOML types an unquoted number, boolean, date or time; a text setting given one was refused
    with pydantic's "Input should be a valid string", which does not say what to write."""
    message = _file_refused(tmp_path, line + "\n")
    assert f"{setting}: is text" in message and f"read as {typed}: quote it, {write}" in message, message
    assert "valid string" not in message, message
    if setting != "hub.api_url":  # quoted as it says, it loads ("8081" is text, and no URL)
        key, _, value = line.partition(" = ")
        (tmp_path / "h.toml").write_text(f'{key} = "{value}"\n')
        assert load_settings(tmp_path / "h.toml")


def test_an_unquoted_secret_says_to_quote_it_without_showing_it(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    message = _file_refused(tmp_path, "[hub]\ntoken = 4242424242\n")
    assert "hub.token: is text, but the value is unquoted and was read as a number" in message, message
    assert 'token = "..."' in message and "4242424242" not in message, message
    message = _refused(monkeypatch, {"HUBPILOT_HUB": '{"token": 4242424242, "api_url": 8081}'})
    assert '"token": "..."' in message and "4242424242" not in message, message
    assert 'hub.api_url: is text, but 8081 is unquoted and was read as a number: quote it, "api_url": "8081"' \
        in message, message

"""The settings model: environment (Functions app settings) and TOML, validation messages, and
the README's generated reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hubpilot.schedule import ScheduleError, next_fire, validate_ncrontab
from hubpilot.settings import SettingsError, load_settings, settings_reference

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("HUBPILOT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray ./hubpilot.toml


def test_environment_with_nesting_and_json_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBPILOT_HUB__API_URL", "http://hub.example:8081/hub/api")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "file")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__FILE__PATH", "people.yaml")
    monkeypatch.setenv("HUBPILOT_SYNC__USERS_GROUPS", '["analysts", "gpu users"]')
    monkeypatch.setenv("HUBPILOT_SYNC__NAMING__USERNAME_MAP", '{"old": "new"}')
    s = load_settings()
    assert str(s.hub.api_url) == "http://hub.example:8081/hub/api"
    assert s.sync.users_groups == ["analysts", "gpu users"]
    assert s.sync.naming.username_map == {"old": "new"}
    assert s.directory is not None and s.directory.file is not None and s.directory.file.path == "people.yaml"


def test_toml_file_and_environment_overrides_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "conf.toml"
    path.write_text('[sync]\nusers_groups = ["a"]\nmax_removals = 7\n[directory]\nkind = "file"\n'
                    '[directory.file]\npath = "d.yaml"\n')
    assert load_settings(path).sync.max_removals == 7
    monkeypatch.setenv("HUBPILOT_SYNC__MAX_REMOVALS", "3")
    assert load_settings(path).sync.max_removals == 3
    monkeypatch.setenv("HUBPILOT_CONFIG", str(path))
    assert load_settings().sync.users_groups == ["a"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HUBPILOT_HUB__TIMEOUT_SECONDS": "-1"},
         "hub.timeout_seconds: Input should be greater than 0 (got '-1') [env HUBPILOT_HUB__TIMEOUT_SECONDS]"),
        ({"HUBPILOT_SYNC__SCHEDULE": "*/5 * * * *"}, "sync.schedule: Value error, '*/5 * * * *' has 5 fields"),
        ({"HUBPILOT_SYNC__USERS_GROUPS": '["a"]'}, "no [directory] section says where to read them"),
        ({"HUBPILOT_DIRECTORY__KIND": "ldap"}, "the [directory.ldap] section is missing"),
        ({"HUBPILOT_SYNC__TYPO": "1"}, "sync.typo: no such setting 'typo' (known keys of [sync]: admin_groups,"),
        ({"HUBPILOT_SYNC__MAX_REMOVAL": "1"},
         "sync.max_removal: no such setting 'max_removal'; did you mean 'sync.max_removals'?"),
        ({"HUBPILOT_SYNC__USERS_GROUPS": "analysts"}, "HUBPILOT_SYNC__USERS_GROUPS"),
    ],
)
def test_invalid_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                           message: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert message in str(err.value)


@pytest.mark.parametrize(("toml", "message"), [
    ('[sync]\nmax_removal_percnt = 50\n',
     "sync.max_removal_percnt: no such setting 'max_removal_percnt'; did you mean 'sync.max_removal_percent'?"),
    ('[synk]\nmax_removals = 5\n', "synk: no settings section 'synk'; did you mean 'sync'? (known sections: api,"),
    ('[cull]\ninactivity_timeout = "1h"\n', "cull.inactivity_timeout: Input should be a valid integer"),
    ('[[api.tokens]]\nnmae = "ops"\nrole = "admin"\nsha256 = "' + "0" * 64 + '"\n',
     "api.tokens.0.nmae: no such setting 'nmae'; did you mean 'api.tokens.name'?"),
])
def test_a_mistake_in_the_file_is_named_in_the_file(tmp_path: Path, toml: str, message: str) -> None:
    """A typo'd key or section in the TOML file read "Extra inputs are not permitted" and pointed
    at an environment variable (``[env HUBPILOT_SYNK]``) that nobody had set: the message says
    what is unknown, the nearest known name, and that the file holds it."""
    path = tmp_path / "hubpilot.toml"
    path.write_text(toml)
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    assert message in str(err.value), str(err.value)
    assert f"[in {path}]" in str(err.value) and "[env " not in str(err.value), str(err.value)


def test_ldap_id_attribute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hubpilot.adapters.store_sqlite import SqliteStore
    from hubpilot.wiring import Context, build_directory

    store = SqliteStore(tmp_path / "state.db")

    for k, v in {"HUBPILOT_DIRECTORY__KIND": "ldap", "HUBPILOT_DIRECTORY__LDAP__URL": "ldap://ldap.example:389",
                 "HUBPILOT_DIRECTORY__LDAP__BASE_DN": "dc=example,dc=org"}.items():
        monkeypatch.setenv(k, v)
    assert build_directory(Context(settings=load_settings(), store=store)).id_attribute == "entryUUID"  # type: ignore[attr-defined]
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__ID_ATTRIBUTE", "objectGUID")
    assert build_directory(Context(settings=load_settings(), store=store)).id_attribute == "objectGUID"  # type: ignore[attr-defined]
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__ID_ATTRIBUTE", "")
    assert load_settings().directory.ldap.id_attribute is None  # type: ignore[union-attr]  # the DN
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__ID_ATTRIBUTE", "entry UUID")
    with pytest.raises(SettingsError, match=r"directory.ldap.id_attribute: .*'entry UUID' is no LDAP attribute name"):
        load_settings()


@pytest.mark.parametrize("doc", [README, *sorted(README.parent.glob("docs/*.md"))], ids=lambda p: p.name)
def test_every_toml_example_in_the_docs_loads(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)
    for i, block in enumerate(blocks):
        # the bind password is given in the environment, as the docs say, not in the file
        if "bind_dn" in block and "bind_password" not in block:
            monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BIND_PASSWORD", "from-the-environment")
        else:
            monkeypatch.delenv("HUBPILOT_DIRECTORY__LDAP__BIND_PASSWORD", raising=False)
        path = tmp_path / f"{doc.stem}-{i}.toml"
        path.write_text(block)
        try:
            load_settings(str(path))
        except SettingsError as exc:
            pytest.fail(f"{doc.name}, TOML example {i + 1}: {exc}")


def test_secrets_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBPILOT_HUB__TOKEN", "s3cret-token")
    monkeypatch.setenv("HUBPILOT_HUB__RETRIES", "many")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "s3cret" not in str(err.value)
    monkeypatch.delenv("HUBPILOT_HUB__RETRIES")
    assert "s3cret" not in repr(load_settings())


def test_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sync\n")
    with pytest.raises(SettingsError, match="cannot read settings"):
        load_settings(bad)


def test_ncrontab() -> None:
    from datetime import UTC, datetime

    assert validate_ncrontab("0 */5 * * * *") == "0 */5 * * * *"
    with pytest.raises(ScheduleError, match="six"):
        validate_ncrontab("*/5 * * * *")
    with pytest.raises(ScheduleError, match="not a valid"):
        validate_ncrontab("0 */5 * * * mon-xyz")
    assert next_fire("30 */15 * * * *", datetime(2026, 1, 1, 10, 7, tzinfo=UTC)) == datetime(
        2026, 1, 1, 10, 15, 30, tzinfo=UTC)


def test_readme_carries_the_generated_settings_reference() -> None:
    text = README.read_text()
    start, end = "<!-- settings:begin -->\n", "<!-- settings:end -->"
    assert start in text and end in text, "README.md lacks the settings reference markers"
    embedded = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert embedded == settings_reference().strip(), (
        "README's settings reference is stale: regenerate it with scripts/readme-settings"
    )


def test_a_timer_schedule_by_its_flat_app_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Functions timers read HUBPILOT_<OP>_SCHEDULE; the settings read the same value."""
    monkeypatch.setenv("HUBPILOT_SYNC_SCHEDULE", "0 */5 * * * *")
    assert load_settings().sync.schedule == "0 */5 * * * *"
    monkeypatch.setenv("HUBPILOT_SYNC__SCHEDULE", "0 */5 * * * *")  # the nested name may say the same
    assert load_settings().sync.schedule == "0 */5 * * * *"
    monkeypatch.setenv("HUBPILOT_SYNC__SCHEDULE", "0 */30 * * * *")
    with pytest.raises(SettingsError, match="HUBPILOT_SYNC_SCHEDULE='0 \\*/5 \\* \\* \\* \\*' and "
                                           "HUBPILOT_SYNC__SCHEDULE='0 \\*/30 \\* \\* \\* \\*' disagree"):
        load_settings()
    monkeypatch.delenv("HUBPILOT_SYNC__SCHEDULE")
    monkeypatch.setenv("HUBPILOT_SYNC_SCHEDULE", "*/5 * * * *")
    with pytest.raises(SettingsError, match=r"sync.schedule: .*has 5 fields.*\[env HUBPILOT_SYNC_SCHEDULE\]"):
        load_settings()


def test_entra_username_attribute_is_spelled_as_graph_answers() -> None:
    """Graph's JSON spells a property its own way: a known one given in another case is respelled
    (else every person would read as nameless); an unknown one is kept as written."""
    def attr(value: str) -> str:
        s = load_settings(directory={"kind": "entra", "entra": {
            "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "username_attribute": value}})
        assert s.directory is not None and s.directory.entra is not None
        return s.directory.entra.username_attribute

    assert attr("userprincipalname") == "userPrincipalName"
    assert attr("ONPREMISESSAMACCOUNTNAME") == "onPremisesSamAccountName"
    assert attr("extension_abc_uid") == "extension_abc_uid"
    with pytest.raises(SettingsError, match="Graph user property name"):
        attr("user-principal")


def test_a_variable_for_a_section_that_does_not_exist_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """HUBPILOT_SYNCC__MAX_REMOVALS would be ignored, and the limit silently the default."""
    monkeypatch.setenv("HUBPILOT_SYNCC__MAX_REMOVALS", "3")
    with pytest.raises(SettingsError, match="HUBPILOT_SYNCC__MAX_REMOVALS: there is no settings section 'syncc'"):
        load_settings()
    monkeypatch.delenv("HUBPILOT_SYNCC__MAX_REMOVALS")
    monkeypatch.setenv("HUBPILOT_HUB_TOKEN", "x")  # hub-side names without '__' are not hubpilot settings
    monkeypatch.setenv("HUBPILOT_SYNC__MAX_REMOVALS", "3")
    assert load_settings().sync.max_removals == 3


@pytest.mark.parametrize("doc", [README, *sorted(README.parent.glob("docs/*.md"))], ids=lambda p: p.name)
def test_every_app_setting_example_in_the_docs_loads(doc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``HUBPILOT_<SECTION>__<KEY>=value`` examples, as an app setting carries them."""
    for name, value in re.findall(r"`(HUBPILOT_[A-Z0-9_]+)=([^`]+)`", doc.read_text()):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            try:
                load_settings()
            except SettingsError as exc:
                pytest.fail(f"{doc.name}, {name}={value}: {exc}")


def test_an_azure_notification_queue_needs_somewhere_to_go() -> None:
    """queue = "azure" without a connection string or queue URL loaded, and every Graph notification
    then failed (500) when its hint was to be queued: it is refused at start instead."""
    entra = {"notifications": True, "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications",
             "client_state": "s3cret", "queue": "azure"}
    with pytest.raises(SettingsError, match=r"queue_connection_string or queue_account_url"):
        load_settings(None, directory={"kind": "entra", "entra": entra})
    url = "https://hubpilotstore.queue.core.windows.net"
    assert load_settings(None, directory={"kind": "entra", "entra": {**entra, "queue_account_url": url}})
    assert load_settings(None, directory={"kind": "entra", "entra": {**entra, "queue": "memory"}})


@pytest.mark.parametrize("url", [
    "http://hubpilotstore.queue.core.windows.net",  # the storage client sends no token over plain http
    "hubpilotstore",  # an account's name is no host
    "https://user:pw@hubpilotstore.queue.core.windows.net",
])
def test_a_notification_queue_url_no_token_can_be_sent_to_is_refused_at_start(url: str) -> None:
    entra = {"notifications": True, "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications",
             "client_state": "s3cret", "queue": "azure"}
    with pytest.raises(SettingsError) as err:
        load_settings(None, directory={"kind": "entra", "entra": {**entra, "queue_account_url": url}})
    assert "directory.entra.queue_account_url" in str(err.value)
    assert "pw" not in str(err.value)


@pytest.mark.parametrize(("url", "read"), [
    ("https://hubpilotstore.queue.core.windows.net/", "https://hubpilotstore.queue.core.windows.net"),
    ("hubpilotstore.queue.core.windows.net", "https://hubpilotstore.queue.core.windows.net"),  # as the client reads it
    ("http://127.0.0.1:10001/devstoreaccount1", "http://127.0.0.1:10001/devstoreaccount1"),  # Azurite
])
def test_a_notification_queue_url_the_storage_client_can_use_loads(url: str, read: str) -> None:
    entra = {"notifications": True, "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications",
             "client_state": "s3cret", "queue": "azure", "queue_account_url": url}
    directory = load_settings(None, directory={"kind": "entra", "entra": entra}).directory
    assert directory is not None and directory.entra is not None
    assert directory.entra.queue_account_url == read

def test_an_azure_notification_queue_is_the_one_the_functions_app_reads() -> None:
    """The graph_hints trigger reads ``hubpilot-graph`` (Bicep creates that queue): hints put on a
    queue of another name were never read, and no sync followed a notification."""
    from functions.graph import HINT_QUEUE

    entra = {"notifications": True, "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications",
             "client_state": "s3cret", "queue": "azure",
             "queue_account_url": "https://hubpilotstore.queue.core.windows.net"}
    with pytest.raises(SettingsError, match=HINT_QUEUE):
        load_settings(None, directory={"kind": "entra", "entra": {**entra, "queue_name": "my-hints"}})
    assert load_settings(None, directory={"kind": "entra", "entra": {**entra, "queue_name": HINT_QUEUE}})


@pytest.mark.parametrize(("toml", "setting"), [
    ('[cull]\ninactivity_timeout = 100000000000000\n', "cull.inactivity_timeout"),
    ('[cull]\nmax_age = 100000000000000\n', "cull.max_age"),
    ('[[cull.policies]]\nname = "gpu"\ninactivity_timeout = 100000000000000\n', "cull.policies.0.inactivity_timeout"),
    ('[[cull.policies]]\nname = "gpu"\nmax_age = 100000000000000\n', "cull.policies.0.max_age"),
    ('[cull]\nactivity_check_seconds = inf\n', "cull.activity_check_seconds"),
    ('[sync]\nremoval_window_hours = inf\n', "sync.removal_window_hours"),
    ('[sync]\nremoval_window_hours = 80000000\n', "sync.removal_window_hours"),  # 9000 years before now
    ('[sync]\ndelete_grace_hours = inf\n', "sync.delete_grace_hours"),
    ('[sync]\ndelete_grace_hours = 1e12\n', "sync.delete_grace_hours"),
])
def test_a_duration_no_clock_can_hold_is_refused_at_start(tmp_path: Path, toml: str, setting: str) -> None:
    """A huge timeout (or ``inf``, written to mean "never") passed the settings and crashed every
    round later with Python's OverflowError (``timedelta(seconds=1e14)``, ``now - 1e12 hours``):
    the cull's and sync's. Refused at start, naming the setting; the
    documented way to say "never" is 0."""
    path = tmp_path / "hubpilot.toml"
    path.write_text(toml)
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    assert f"{setting}: Input should be" in str(err.value), str(err.value)


def _reference_rows() -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in settings_reference().splitlines()[2:]]


def test_every_environment_name_in_the_reference_can_be_set() -> None:
    """The reference listed ``HUBPILOT_SCALE__WARM__SPARE``, ``HUBPILOT_CULL__POLICIES__NAME`` and
    ``HUBPILOT_API__TOKENS__SHA256`` for the keys of a list's items: no such variable can be set
    (the list is one JSON value), and the list's own variable was not listed at all. Every name
    in the environment column is a variable hubpilot reads, and every list of objects is listed
    by its own variable."""
    from hubpilot.settings import ENV_PREFIX, Settings, _model_in

    listed = {row[1].strip("`") for row in _reference_rows() if row[1].startswith("`HUBPILOT_")}
    for name in sorted(listed):
        model: object = Settings
        parts = name[len(ENV_PREFIX):].lower().split("__")
        for i, part in enumerate(parts):
            field = getattr(model, "model_fields", {}).get(part)
            assert field is not None, f"the reference lists {name}, which sets no setting"
            if i < len(parts) - 1:
                assert getattr(field.annotation, "__origin__", None) is not list, (
                    f"the reference lists {name}, but {'.'.join(parts[:i + 1])} is a list: it is set whole, as JSON")
            model = _model_in(field.annotation)
    for name in ("HUBPILOT_SCALE__WARM", "HUBPILOT_CULL__POLICIES", "HUBPILOT_API__TOKENS"):
        assert name in listed, f"the reference does not list {name}"


def test_a_list_item_key_set_in_the_environment_is_named_with_how_to_set_the_list(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``HUBPILOT_SCALE__WARM__SPARE=2`` was answered ``scale.warm: Input should be a valid list
    [env HUBPILOT_SCALE__WARM]``: a variable nobody had set, and not the one to change."""
    monkeypatch.setenv("HUBPILOT_SCALE__WARM__SPARE", "2")
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert "[env HUBPILOT_SCALE__WARM__SPARE]" in message, message
    assert "HUBPILOT_SCALE__WARM='[{" in message and "JSON" in message, message
    monkeypatch.delenv("HUBPILOT_SCALE__WARM__SPARE")
    monkeypatch.setenv("HUBPILOT_SCALE__WARM", '[{"spare": 2}]')  # as the message says
    assert load_settings().scale.warm[0].spare == 2


def test_admin_groups_without_a_directory_are_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only ``sync.admin_groups`` set, no directory: the refusal said "sync.users_groups is set",
    a setting the admin had not given."""
    monkeypatch.setenv("HUBPILOT_SYNC__ADMIN_GROUPS", '["hub-admins"]')
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "sync.admin_groups is set but no [directory] section" in str(err.value), str(err.value)
    assert "users_groups" not in str(err.value), str(err.value)


def test_the_cull_settings_table_states_the_defaults_the_code_has() -> None:
    """docs/cull.md maps jupyterhub-idle-culler's options to hubpilot's with their defaults; a
    default changed in the code must change there too."""
    from hubpilot.settings import Settings

    text = (README.parent / "docs" / "cull.md").read_text()
    table = text.split("## Settings (`[cull]`", 1)[1].split("\n\n", 2)[1]
    checked = 0
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        keys = re.findall(r"`([a-z_.]+)`", cells[1])
        values = re.findall(r"`([^`]+)`", cells[2])
        if len(keys) != len(values):
            continue  # a default said in words ("every 10 min")
        for key, value in zip(keys, values, strict=True):
            section, _, name = key.rpartition(".")
            default = getattr(getattr(Settings(), section or "cull"), name)
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert value in (shown, f"{default:g}" if isinstance(default, float) else shown), (
                f"docs/cull.md says {key} defaults to {value}; the code's default is {default!r}")
            checked += 1
    assert checked >= 14, checked



def test_the_whole_example_app_settings_file_loads_once_its_placeholders_are_replaced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """local.settings.example.json as ``func start`` hands it over: the placeholders are refused,
    each variable named (the hub token's was sent to the hub as a bearer token), and with them
    replaced every value loads as it is."""
    import hashlib
    import json

    values = json.loads((README.parent / "local.settings.example.json").read_text())["Values"]
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    text = str(err.value)
    for name in ("HUBPILOT_HUB__TOKEN", "HUBPILOT_API__TOKENS"):
        assert f"  {name}: still holds a placeholder of local.settings.example.json" in text, text
    sha = hashlib.sha256(b"the-token").hexdigest()
    monkeypatch.setenv("HUBPILOT_HUB__TOKEN", "the-service-token")
    monkeypatch.setenv("HUBPILOT_API__TOKENS", values["HUBPILOT_API__TOKENS"].replace(
        "replace-with-the-64-hex-sha256-of-the-token", sha))
    s = load_settings()
    assert str(s.hub.api_url) == values["HUBPILOT_HUB__API_URL"]
    assert s.hub.token.get_secret_value() == "the-service-token"
    assert s.state.kind == "azure" and s.api.run_mode == "queue" and not s.api.app_service_auth
    assert [t.sha256 for t in s.api.tokens] == [sha]
    assert (s.sync.schedule, s.cull.schedule, s.scale.schedule) == (
        values["HUBPILOT_SYNC_SCHEDULE"], values["HUBPILOT_CULL_SCHEDULE"], values["HUBPILOT_SCALE_SCHEDULE"])



def test_every_setting_in_the_reference_says_what_it_does() -> None:
    """``log_level`` had an empty meaning."""
    assert [row[0] for row in _reference_rows() if not row[4]] == []



@pytest.mark.parametrize(("name", "meant"), [
    ("HUBPILOT_LOG_LEVL", "HUBPILOT_LOG_LEVEL"),
    ("HUBPILOT_SYNC_SCHEDUL", "HUBPILOT_SYNC_SCHEDULE"),
    ("HUBPILOT_SYNC_MAX_REMOVALS", "HUBPILOT_SYNC__MAX_REMOVALS"),
    ("HUBPILOT_SCALE_ENABLED", "HUBPILOT_SCALE__ENABLED"),
])
def test_a_misspelt_variable_without_a_double_underscore_is_refused(
        monkeypatch: pytest.MonkeyPatch, name: str, meant: str) -> None:
    """Names without ``__`` were all left alone (the hub side, the timers and the deployment use
    some): HUBPILOT_SYNC_MAX_REMOVALS=3 was ignored and the removal limit silently the default."""
    monkeypatch.setenv(name, "3")
    with pytest.raises(SettingsError, match=f"  {name}: hubpilot reads no such variable; did you mean {meant}\\?"):
        load_settings()


def test_the_variables_other_parts_read_still_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub side's, the user image's, the deployment's and the development tools' own
    ``HUBPILOT_`` names are no settings and no typos: an environment holding them loads."""
    for name, value in {"HUBPILOT_API_TOKEN": "t", "HUBPILOT_DEMAND_URL": "https://hubpilot.example.org/api/v1",
                        "HUBPILOT_DEMAND_TOKEN": "t", "HUBPILOT_ACTIVITY_CHECK_SECONDS": "60",
                        "HUBPILOT_HUB_TOKEN": "t", "HUBPILOT_API_TOKENS": "[]", "HUBPILOT_GRAPH_CLIENT_STATE": "s",
                        "HUBPILOT_HUB_VENV": ".venv-hub-newest", "HUBPILOT_SKIP_NEWEST_HUB": "1",
                        "HUBPILOT_SLAPD": "/usr/sbin/slapd", "HUBPILOT_LOG_LEVEL": "DEBUG",
                        "HUBPILOT_CULL_SCHEDULE": "0 */3 * * * *"}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.log_level == "DEBUG" and settings.cull.schedule == "0 */3 * * * *"


def test_every_flat_variable_the_project_names_is_known() -> None:
    """Every ``HUBPILOT_`` name without ``__`` that the code, the deployment files or the docs name
    is a setting or one of ``OTHER_ENV`` (the one list): a new one left out would stop hubpilot
    where it is set."""
    from hubpilot.settings import OTHER_ENV, Settings

    root = README.parent
    files = [README, root / "local.settings.example.json", root / "function_app.py",
             *(p for d in ("hubpilot", "hubpilot_hub", "hubpilot_activity", "functions", "deploy", "infra",
                           "scripts", "docs", ".ci", "bench")
               for p in (root / d).rglob("*") if p.is_file() and p.suffix != ".pyc")]
    named = r"\bHUBPILOT_[A-Z0-9_]*[A-Z0-9]\b"
    seen = {name for p in files for name in re.findall(named, p.read_text(errors="replace")) if "__" not in name}
    seen -= {"HUBPILOT_SCOPES"}  # hubpilot_hub.scopes' constant, no variable
    seen -= {"HUBPILOT_LOG_LEVL", "HUBPILOT_SYNC_MAX_REMOVALS"}  # README's examples of names refused
    assert {"HUBPILOT_DEMAND_TOKEN", "HUBPILOT_ACTIVITY_CHECK_SECONDS", "HUBPILOT_HUB_VENV"} <= seen
    settings_names = {"HUBPILOT_" + name.upper() for name in Settings.model_fields}
    assert sorted(seen - settings_names - set(OTHER_ENV)) == []


@pytest.mark.parametrize("setting", ["HUBPILOT_SCALE__AUTHORITY", "HUBPILOT_DIRECTORY__ENTRA__AUTHORITY_HOST"])
def test_an_authority_is_checked_at_load_as_azure_identity_takes_it(monkeypatch: pytest.MonkeyPatch,
                                                                     setting: str) -> None:
    """An Entra authority is what azure-identity takes: an https URL, or a bare host it reads as
    https. A plain-http one (which azure-identity refuses only when the first token is asked for,
    naming no setting) is refused at load, naming the setting; a bare host is taken as https."""
    if "ENTRA" in setting:
        monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "entra")
    dotted = "scale.authority" if "SCALE" in setting else "directory.entra.authority_host"

    def read() -> str | None:
        s = load_settings()
        return s.scale.authority if "SCALE" in setting else s.directory.entra.authority_host  # type: ignore[union-attr]

    monkeypatch.setenv(setting, "http://login.microsoftonline.us")
    with pytest.raises(SettingsError) as err:
        read()
    assert f"{dotted}: Value error, {dotted} must be the https URL of an Entra authority host" in str(err.value)
    monkeypatch.setenv(setting, "login.microsoftonline.us")
    assert read() == "https://login.microsoftonline.us"
    monkeypatch.setenv(setting, "https://login.chinacloudapi.cn/")
    assert read() == "https://login.chinacloudapi.cn"

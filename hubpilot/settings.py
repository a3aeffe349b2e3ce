"""The one typed settings model, validated at start.

Sources, highest priority first: environment variables ``HUBPILOT_<SECTION>__<KEY>`` (``__``
nests; lists and objects are JSON — how Azure Functions app settings arrive), then a TOML file
(``hubpilot.toml``, same structure), then defaults. The operations' schedules also have flat
names (``HUBPILOT_SYNC_SCHEDULE``, see ``TIMER_SCHEDULE_ENV``). Any other ``HUBPILOT_`` name is
refused unless ``OTHER_ENV`` lists it (the hub side's, the user image's, the deployment's).
"""

from __future__ import annotations

import datetime
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hubpilot.config.api import ApiSettings
from hubpilot.config.base import PathSetting
from hubpilot.config.cull import CullSettings
from hubpilot.config.directory import DirectorySettings
from hubpilot.config.hub import HubSettings
from hubpilot.config.scale import ScaleSettings
from hubpilot.config.state import StateSettings
from hubpilot.config.sync import SyncSettings
from hubpilot.ports.directory import without_password

ENV_PREFIX = "HUBPILOT_"
CONFIG_ENV = "HUBPILOT_CONFIG"
DEFAULT_FILE = "hubpilot.toml"
# The Functions host resolves a timer binding's %NAME% in its configuration, where ``__`` in an app
# setting's name is the section delimiter, so no binding can read HUBPILOT_SYNC__SCHEDULE
# (Azure/azure-functions-host#10246), and names with ``__`` or ``:`` are reported to confuse the
# scale controller that wakes an idle app (MicrosoftDocs/azure-docs#71095). The timers read these
# flat names, and so do the settings: one value for the timer and for what hubpilot validates.
TIMER_SCHEDULE_ENV = {"sync": "HUBPILOT_SYNC_SCHEDULE", "cull": "HUBPILOT_CULL_SCHEDULE",
                      "scale": "HUBPILOT_SCALE_SCHEDULE"}

OTHER_ENV: dict[str, str] = {
    CONFIG_ENV: "hubpilot: the settings file",
    **{name: f"the Functions timer of {op}, and {op}.schedule" for op, name in TIMER_SCHEDULE_ENV.items()},
    "HUBPILOT_API_TOKEN": "the hub's configuration: the hubpilot service's token (deploy/z2jh)",
    "HUBPILOT_DEMAND_URL": "the hub's configuration: the GPU demand signal's URL (docs/scale.md)",
    "HUBPILOT_DEMAND_TOKEN": "the hub's configuration: the GPU demand signal's token (docs/scale.md)",
    "HUBPILOT_ACTIVITY_CHECK_SECONDS": "hubpilot_activity in the user image",
    "HUBPILOT_HUB_TOKEN": "infra/bicep/main.bicepparam (the deployment's shell)",
    "HUBPILOT_API_TOKENS": "infra/bicep/main.bicepparam (the deployment's shell)",
    "HUBPILOT_GRAPH_CLIENT_STATE": "infra/bicep/main.bicepparam (the deployment's shell)",
    "HUBPILOT_LDAP_BIND_PASSWORD": "infra/bicep/main.bicepparam (the deployment's shell)",
    "HUBPILOT_HUB_VENV": "development: the JupyterHub the local hub and the tests run",
    "HUBPILOT_SKIP_NEWEST_HUB": "development: scripts/test",
    "HUBPILOT_SLAPD": "development: the local LDAP server (hubpilot.localldap)",
    "HUBPILOT_TEST_SLAPADD": "development: the local LDAP server (hubpilot.localldap)",
    "HUBPILOT_SLAPD_MODULES": "development: the local LDAP server (hubpilot.localldap)",
    "HUBPILOT_SLAPD_SCHEMA": "development: the local LDAP server (hubpilot.localldap)",
    "HUBPILOT_TEST_DEMO_MARK": "development: the demo's tests",
}
"""Every ``HUBPILOT_`` name without ``__`` that is not a setting, and who reads it. Any other such
name is refused at load (a misspelt setting would be ignored): add a new one here."""


class SettingsError(Exception):
    """Settings are missing or invalid; the message names each setting and what it expects."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    hub: HubSettings = Field(default_factory=HubSettings)
    directory: DirectorySettings | None = None
    sync: SyncSettings = Field(default_factory=SyncSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    cull: CullSettings = Field(default_factory=CullSettings)
    scale: ScaleSettings = Field(default_factory=ScaleSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description=(
        "Log level of hubpilot serve (its log lines on stderr, uvicorn's too): DEBUG, INFO, WARNING or "
        "ERROR. The one-shot commands (sync, cull, scale, status, ...) print their result and log "
        "warnings and errors only; the Functions app logs at host.json's logging.logLevel. Every host leaves the "
        "HTTP libraries' per-request lines (azure-core's, httpx's) out of its log but at DEBUG. Each run a timer, "
        "the API or a Graph notification starts writes one line with its operation, run id and outcome: INFO "
        "when applied (what it did, or 'nothing to do') or paused, WARNING with the reasons when refused, with "
        "the cause when failed."))
    _file: Path | None = PrivateAttr(default=None)

    @property
    def file(self) -> Path | None:
        """The settings file these settings were read from (absolute), or None (environment and
        defaults only). Commands hubpilot tells an admin to run name it."""
        return self._file

    @model_validator(mode="after")
    def _reclaim_exceeds_activity_interval(self) -> Settings:
        reclaim = self.scale.reclaim_idle_minutes * 60
        check = self.cull.activity_check_seconds
        if 0 < reclaim <= self.cull.activity_lag:
            how_often = (f" + cull.activity_check_seconds={check:g} s, how often hubpilot_activity marks a "
                         "silent busy server" if check else "")
            raise ValueError(
                f"scale.reclaim_idle_minutes ({self.scale.reclaim_idle_minutes:g} min) must exceed the hub's "
                f"activity interval (cull.activity_interval={self.cull.activity_interval} s{how_often}; "
                f"{self.cull.lag_note}), or "
                "servers in use would look idle and be reclaimed; raise it or lower JUPYTERHUB_ACTIVITY_INTERVAL "
                "and cull.activity_interval together (or HUBPILOT_ACTIVITY_CHECK_SECONDS and "
                "cull.activity_check_seconds)"
            )
        return self

    @model_validator(mode="after")
    def _sync_needs_directory(self) -> Settings:
        given = [f"sync.{name}" for name in ("users_groups", "admin_groups") if getattr(self.sync, name)]
        if given and self.directory is None:
            raise ValueError(
                f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but no [directory] section "
                "says where to read them (set directory.kind and its section)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, _TimerSchedules(settings_cls)]
        path = _config_path()
        if path is not None:
            sources.append(_SettingsFile(settings_cls, toml_file=path))
        return tuple(sources)


class _SettingsFile(TomlConfigSettingsSource):
    """The TOML settings file, its relative paths (settings marked ``PathSetting``) read from its
    folder: ``hubpilot --config /etc/hubpilot/hubpilot.toml`` finds the files beside it from any
    working directory. The environment's values replace these whole, so theirs stay relative to
    the working directory."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        _paths_from_folder(Settings, data, Path(os.path.abspath(file_path)).parent)
        return data


def _paths_from_folder(model: Any, data: dict[str, Any], folder: Path) -> None:
    for key, value in data.items():
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            continue  # an unknown key: the model refuses it
        marker = next((m for m in field.metadata if isinstance(m, PathSetting)), None)
        if marker is not None:
            if isinstance(value, str):
                data[key] = _from_folder(value, folder, marker)
            continue
        sub = _model_in(field.annotation)
        if sub is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                _paths_from_folder(sub, item, folder)


def _from_folder(value: str, folder: Path, marker: PathSetting) -> str:
    """``value`` read from ``folder`` when relative; absolute, ``~`` and empty (or blank) ones as they
    are (the setting's own check refuses a blank one, naming it)."""
    if not value.strip():
        return value
    if marker.sqlite and (value == ":memory:" or value.startswith("file:")):
        return value
    if marker.sqlite and value and not value.startswith("~") and not os.path.isabs(value):
        beside, here = os.path.normpath(os.path.join(folder, value)), os.path.abspath(value)
        if beside != here and not os.path.exists(beside) and os.path.exists(here):
            # a release before this one read it from the working directory: starting on an empty
            # state store would forget the managed users, the removal window and the approvals
            raise SettingsError(
                f"state.sqlite_path {value!r} in the settings file is read from the file's folder ({beside}), "
                f"which has no state file, but the working directory has one ({here}), where earlier releases "
                "read it: move that file beside the settings file, or write the path absolute")
    parts = value.split(os.pathsep) if marker.several else [value]
    return os.pathsep.join(p if not p or p.startswith("~") or os.path.isabs(p)
                           else os.path.normpath(os.path.join(folder, p)) for p in parts)


class _TimerSchedules(PydanticBaseSettingsSource):
    """``HUBPILOT_<OP>_SCHEDULE`` as ``<op>.schedule``; the nested name may be set too, to the same value."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for op, name in TIMER_SCHEDULE_ENV.items():
            flat = os.environ.get(name)
            if flat is None:
                continue
            nested_name = _env_name((op, "schedule"), flat=False)
            nested = os.environ.get(nested_name)
            if nested is not None and nested.strip() != flat.strip():
                raise SettingsError(f"invalid settings:\n  {op}.schedule: {name}={flat!r} and {nested_name}={nested!r} "
                                    f"disagree; set {name} only (the Functions timer reads it)")
            out[op] = {"schedule": flat}
        return out


_explicit_path: Path | None = None


def _config_path() -> Path | None:
    if _explicit_path is not None:
        return _explicit_path
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    default = Path(DEFAULT_FILE)
    return default if default.exists() else None


def defaults_note(path: str | Path | None = None) -> str | None:
    """A line saying that only the defaults are in use (no settings file, no ``HUBPILOT_``
    variable): a command run outside the deployment's directory or environment would otherwise
    quietly use a fresh state file and report "never run"."""
    if path is not None or _config_path() is not None \
            or any(name.upper().startswith(ENV_PREFIX) for name in os.environ):
        return None
    state_file = StateSettings.model_fields["sqlite_path"].default
    return (f"no settings file (--config, ${CONFIG_ENV} or ./{DEFAULT_FILE}) and no {ENV_PREFIX}* "
            f"variables: using the defaults, with state in ./{state_file} of this directory")


def _env_name(loc: tuple[Any, ...], *, flat: bool = True) -> str:
    """The environment variable of a setting (for a schedule set by its flat name, that name)."""
    if flat and len(loc) == 2 and loc[1] == "schedule" and TIMER_SCHEDULE_ENV.get(str(loc[0])) in os.environ:
        return TIMER_SCHEDULE_ENV[str(loc[0])]
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc if not isinstance(p, int))


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate settings; raise SettingsError with one readable line per problem."""
    global _explicit_path
    named, by = (path, "") if path is not None else (os.environ.get(CONFIG_ENV) or None, f" (${CONFIG_ENV})")
    if named is not None and not Path(named).is_file():
        # a missing file named on purpose is an error, never "no settings": the defaults would
        # act on another hub and state store without a word
        what = "is a directory" if Path(named).is_dir() else "does not exist"
        raise SettingsError(f"config file {named}{by} {what}")
    unknown = [f"  {name}: there is no settings section {name[len(ENV_PREFIX):].split('__')[0].lower()!r} "
               f"(sections: {', '.join(sorted(Settings.model_fields))}); a misspelt name would be ignored"
               for name in _unknown_sections()]
    unknown += [f"  {name}: hubpilot reads no such variable{hint} (settings are {ENV_PREFIX}<SECTION>__<KEY>; "
                f"the other {ENV_PREFIX} names allowed: README, Settings reference); a misspelt name would be ignored"
                for name, hint in _unknown_flat_names()]
    if unknown:
        raise SettingsError("invalid settings:\n" + "\n".join(unknown))
    unresolved = _unresolved_key_vault_references()
    if unresolved:
        raise SettingsError("invalid settings:\n" + "\n".join(
            f"  {name}: holds an unresolved Key Vault reference (@Microsoft.KeyVault(...)): App Service "
            "passes the reference itself when it cannot read the secret. Check that the secret exists "
            "and is enabled, that the app's keyVaultReferenceIdentity has 'Key Vault Secrets User' on "
            "the vault, and the reference's status in the app's environment variables; then restart the app"
            for name in unresolved))
    placeholders = _placeholders()
    if placeholders:
        raise SettingsError("invalid settings:\n" + "\n".join(
            f"  {name}: still holds a placeholder of local.settings.example.json ({PLACEHOLDER}...): "
            "put the real value in its place (the settings reference in README.md says what it is)"
            for name in placeholders))
    previous, _explicit_path = _explicit_path, Path(path) if path is not None else None
    try:
        settings = Settings(**overrides)
        file = _config_path()
        settings._file = file.resolve() if file is not None else None
        _check_default_state_file(settings)
        return settings
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if p not in ("function-after",))
            dotted = ".".join(str(p) for p in loc) or "(settings)"
            got = err.get("input")
            secret = _is_secret(loc) or "secret" in dotted or "password" in dotted or "token" in dotted
            shown = "" if isinstance(got, dict) or secret else f" (got {_without_password(got)!r})"
            if shown and shown.strip(" ()") in err["msg"]:
                shown = ""  # the reason quotes the value already
            where = _where(loc) if loc else ""
            typed = _typed_not_text(err["type"], got)
            if typed is not None:
                lines.append(f"  {dotted}: {_quote_it(loc, typed, got, where, secret=secret)}{where}")
            elif err["type"] == "extra_forbidden":
                lines.append(f"  {dotted}: {_unknown(loc)}{where}")
            elif err["type"] == "list_type" and isinstance(got, dict) and _env_name(loc) not in os.environ:
                # HUBPILOT_SCALE__WARM__SPARE=2: the items of a list have no variables of their own
                name = _env_name(loc)
                # HUBPILOT_SCALE__WARM__0__SPARE (App Service's array items) arrives as {"0": {"spare": ...}}
                items = [v for v in got.values() if isinstance(v, dict)] \
                    if got and all(str(k).isdigit() for k in got) else [got]
                keys = ", ".join(f'"{k}": ...' for k in dict.fromkeys(k for item in items for k in item))
                lines.append(f"  {dotted}: is a list, set whole as JSON in one variable, e.g. "
                             f"{name}='[{{{keys}}}]', not key by key{where}")
            else:
                lines.append(f"  {dotted}: {err['msg']}{shown}{where}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML, or non-JSON lists in env
        bad = _non_json_env()
        hint = "".join(f"\n  {name}: lists and objects must be JSON, e.g. {name}='{example}'"
                       for name, example in bad)
        file = _config_path()
        in_file = file is not None and isinstance(exc, OSError | tomllib.TOMLDecodeError | UnicodeDecodeError)
        where = f" from {file}" if in_file else ""
        if in_file and file is not None and _not_plain_utf8(file):
            hint += ("\n  a settings file must be UTF-8 without a byte order mark (BOM): save it so "
                     "(an editor's \"Unicode\" is UTF-16)")
        raise SettingsError(f"cannot read settings{where}: {exc}{hint}") from None
    finally:
        _explicit_path = previous


def _check_default_state_file(settings: Settings) -> None:
    """state.sqlite_path left unset is the default file of the working directory. Run from another
    folder than before (a service manager starts in /), that would be a new, empty store beside the
    one in use, forgetting the managed users, the removal window and the approvals: refused when
    the working directory has no state file and the settings file's folder has one."""
    state, file = settings.state, settings.file
    if state.kind != "sqlite" or "sqlite_path" in state.model_fields_set or file is None:
        return
    here, beside = Path(os.path.abspath(state.sqlite_path)), file.parent / state.sqlite_path
    if here != beside and not here.exists() and beside.exists():
        raise SettingsError(
            f"state.sqlite_path is not set: the state file is {state.sqlite_path} of the working directory "
            f"({here}), which has none, but the settings file's folder has one ({beside}): run hubpilot "
            f"from that folder, or set state.sqlite_path in the settings file (a relative path there is "
            f"read from the file's folder, e.g. sqlite_path = \"{state.sqlite_path}\")")


def _without_password(value: Any) -> Any:
    """A URL's ``user:password@`` shown as ``***@`` (:func:`without_password`); any other value as it is."""
    return without_password(value) if isinstance(value, str) else value


def _is_secret(loc: tuple[Any, ...]) -> bool:
    """The setting at ``loc`` holds a secret (a SecretStr: a connection string, the clientState),
    whose value no refusal may show, whatever its name."""
    import typing

    from pydantic import SecretStr

    model: Any = Settings
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            continue  # a list index, or a union member's tag
        ann = field.annotation
        if SecretStr in (ann, *typing.get_args(ann)):
            return True
        model = _model_in(ann)
    return False


def _not_plain_utf8(file: Path) -> bool:
    """The file starts with a byte order mark or is not UTF-8 (TOML is UTF-8, without a BOM)."""
    try:
        data = file.read_bytes()
        data.decode("utf-8")
    except OSError:
        return False
    except UnicodeDecodeError:
        return True
    return data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"))


def _typed_not_text(kind: str, got: Any) -> str | None:
    """What a text setting got instead of text, when TOML (or a JSON variable) typed an unquoted
    value: a number, a boolean, a date, a time or a date-time; else None."""
    if kind not in ("string_type", "url_type"):
        return None
    if isinstance(got, bool):
        return "a boolean"
    if isinstance(got, int | float):
        return "a number"
    if isinstance(got, datetime.datetime):
        return "a date-time"
    if isinstance(got, datetime.date):
        return "a date"
    if isinstance(got, datetime.time):
        return "a time"
    return None


def _quote_it(loc: tuple[Any, ...], typed: str, got: Any, where: str, *, secret: bool) -> str:
    """Says that the value is text and how to write it quoted (a secret's value is not shown)."""
    if isinstance(got, bool):
        text = str(got).lower()
    elif isinstance(got, datetime.date | datetime.time):
        text = got.isoformat()
    else:
        text = repr(got)
    key = str(loc[-1]) if loc else "value"
    shown = "..." if secret else text
    written = f'{key} = "{shown}"' if where.startswith(" [in ") else f'"{key}": "{shown}"'
    what = "the value" if secret else text
    return f"is text, but {what} is unquoted and was read as {typed}: quote it, {written}"


def _where(loc: tuple[Any, ...]) -> str:
    """Where a setting was given: its environment variable (or the one whose JSON holds it) when
    that is set, else the settings file when the file has its section, else the variable that
    would set it."""
    name = _env_name(loc)
    for end in range(len(loc), 0, -1):  # the variable, or the one whose JSON holds it
        if _env_name(loc[:end]) in os.environ:
            return f" [env {_env_name(loc[:end])}]"
    below = sorted(n for n in os.environ if n.upper().startswith(name.upper() + "__"))
    if below:  # the variables nested below it that made it (HUBPILOT_SCALE__WARM__SPARE)
        return f" [env {', '.join(below)}]"
    file = _config_path()
    if file is not None:
        try:
            in_file = loc[0] in tomllib.loads(file.read_text())  # its section, at least
        except (OSError, ValueError):
            in_file = False
        if in_file:
            return f" [in {file}]"
    return f" [env {name}]"


def _unknown(loc: tuple[Any, ...]) -> str:
    """What to say of a key the model does not have: the nearest known names, and the known ones."""
    import difflib

    model: Any = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        model = _model_in(field.annotation) if field is not None else None
    known = sorted(getattr(model, "model_fields", {}))
    key = str(loc[-1])
    prefix = ".".join(str(p) for p in loc[:-1] if not isinstance(p, int))
    near = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
    what = "no settings section" if len(loc) == 1 else "no such setting"
    hint = f"; did you mean {(prefix + '.' if prefix else '') + near[0]!r}?" if near else ""
    return f"{what} {key!r}{hint} (known {'sections' if len(loc) == 1 else f'keys of [{prefix}]'}: {', '.join(known)})"


def _unknown_sections() -> list[str]:
    """``HUBPILOT_<SECTION>__…`` variables whose section does not exist (an unknown key inside a
    known section is refused by the model itself). Names without ``__``: ``_unknown_flat_names``."""
    return sorted(name for name in os.environ
                  if name.upper().startswith(ENV_PREFIX) and "__" in name
                  and name[len(ENV_PREFIX):].split("__")[0].lower() not in Settings.model_fields)


def _unknown_flat_names() -> list[tuple[str, str]]:
    """``HUBPILOT_…`` variables without ``__`` that are neither a setting (``HUBPILOT_LOG_LEVEL``, a
    whole section as JSON) nor one of ``OTHER_ENV``, each with a "did you mean" when a name is near."""
    import difflib

    flat = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | set(OTHER_ENV)
    out = []
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or "__" in upper or upper in flat:
            continue
        near = difflib.get_close_matches(upper, sorted(flat | _setting_env_names()), n=1, cutoff=0.8)
        out.append((name, f"; did you mean {near[0]}?" if near else ""))
    return out


def _setting_env_names() -> set[str]:
    """The environment variable of every setting (a list of objects: the list's own)."""
    names: set[str] = set()

    def walk(model: Any, loc: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            sub = _model_in(info.annotation)
            names.add(_env_name((*loc, name), flat=False))
            if sub is not None and getattr(info.annotation, "__origin__", None) is not list:
                walk(sub, (*loc, name))

    walk(Settings, ())
    return names


KEY_VAULT_REFERENCE = "@microsoft.keyvault("
"""How an App Service Key Vault reference starts (case-insensitive). App Service replaces it by the
secret's value; one it cannot resolve reaches the app as the reference text itself
(learn.microsoft.com/azure/app-service/app-service-key-vault-references, "Troubleshoot")."""


def _unresolved_key_vault_references() -> list[str]:
    """``HUBPILOT_…`` variables whose value is still a Key Vault reference (never their values: a
    resolved secret is never shown, and the reference names the vault)."""
    return sorted(name for name, value in os.environ.items()
                  if name.upper().startswith(ENV_PREFIX) and value.strip().lower().startswith(KEY_VAULT_REFERENCE))


PLACEHOLDER = "replace-with-"
"""How the placeholders of local.settings.example.json start: a value still holding one (the hub
token, an API token's sha256) is refused, not sent to the hub as a bearer token."""


def _placeholders() -> list[str]:
    """``HUBPILOT_…`` variables that still hold a placeholder of the example app settings (never
    their values: a secret is never shown)."""
    return sorted(name for name, value in os.environ.items()
                  if name.upper().startswith(ENV_PREFIX) and PLACEHOLDER in value.lower())


def _non_json_env() -> list[tuple[str, str]]:
    """Environment variables that set a list or object setting (or a whole section) with a value that
    is no JSON, each with an example of the JSON its setting takes."""
    import json
    import typing

    out = []
    for name, value in os.environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        model: Any = Settings
        ann: Any = None
        for part in name[len(ENV_PREFIX):].lower().split("__"):
            fields = getattr(model, "model_fields", {})
            if part not in fields:
                ann = None
                break
            ann = fields[part].annotation
            model = _model_in(ann) or ann
        origin = typing.get_origin(ann)
        sub = _model_in(ann)
        if origin in (list, dict) or ann in (list, dict) or sub is not None:
            try:
                json.loads(value)
            except ValueError:
                out.append((name, _json_example(ann)))
    return out


def _json_example(ann: Any) -> str:
    """An example of the JSON a list or object setting takes: a list of objects shows its items'
    keys (the required ones, else the first two), an object its first key, a map any key."""
    import typing

    sub = _model_in(ann)
    if sub is not None:
        fields = sub.model_fields
        keys = [k for k, info in fields.items() if info.is_required()] or list(fields)[:2]
        if typing.get_origin(ann) is list:
            return "[{" + ", ".join(f'"{k}": ...' for k in keys) + "}]"
        return "{" + f'"{next(iter(fields))}": ...' + "}"
    if typing.get_origin(ann) is dict or ann is dict:
        return '{"key": "value"}'
    return '["a", "b"]'


def settings_reference() -> str:
    """A Markdown table of every setting: name, environment variable, type, default, meaning."""
    import typing

    from pydantic import BaseModel

    rows: list[str] = []

    def walk(model: type[BaseModel], prefix: tuple[str, ...], in_list: str | None = None) -> None:
        for name, info in model.model_fields.items():
            loc = (*prefix, name)
            ann = info.annotation
            sub = _model_in(ann)
            if sub is not None and typing.get_origin(ann) is list:
                # a list of objects is one JSON value in the environment: its items' keys have no
                # variable of their own (HUBPILOT_SCALE__WARM__SPARE is refused)
                env = f"`{_env_name(loc)}`"
                rows.append(f"| `{'.'.join(loc)}` | {env} | list of objects | "
                            f"{_show_default(info)} | {info.description or ''} |")
                walk(sub, (*loc[:-1], f"{name}[]"), env)
                continue
            if sub is not None:
                walk(sub, loc, in_list)
                continue
            default = "" if info.is_required() else _show_default(info)
            typ = _type_name(ann)
            env = f"in {in_list}" if in_list else f"`{_env_name(loc)}`"
            rows.append(
                f"| `{'.'.join(loc)}` | {env} | {typ} | {default} | {info.description or ''} |"
            )

    walk(Settings, ())
    head = "| setting | environment | type | default | meaning |\n|---|---|---|---|---|"
    return head + "\n" + "\n".join(rows)


def _type_name(ann: Any) -> str:
    """A short readable type: ``str``, ``int | unset``, ``"file" | "ldap"``, ``list[str]``."""
    import typing

    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, __import__("types").UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" (optional)" if type(None) in args else "")
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if getattr(ann, "__metadata__", None) is not None:  # Annotated
        return _type_name(args[0]) if args else "str"
    return getattr(ann, "__name__", str(ann).replace("typing.", ""))


def _model_in(ann: Any) -> Any:
    from pydantic import BaseModel

    candidates = getattr(ann, "__args__", None) or (ann,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def _show_default(info: Any) -> str:
    if info.default_factory is not None:
        try:
            value = info.default_factory()
        except TypeError:
            return ""
        return f"`{value!r}`" if not hasattr(value, "model_fields") else ""
    value = info.default
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    return f"`{value}`" if value is not None else "unset"

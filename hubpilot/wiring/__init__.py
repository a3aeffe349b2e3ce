"""Wiring: settings → adapters → capabilities. The one place that knows both sides.

Hosts (CLI, ``serve``, the Functions app, the admin API) build a :class:`Context` from settings
and ask it for the runner and for capabilities by operation name. Heavy SDKs are imported here
lazily, on first use, so that a host's cold start stays cheap.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from hubpilot.config.scale import ScaleSettings
from hubpilot.loop import Capability, Clock, Runner, utcnow
from hubpilot.ports.directory import Directory
from hubpilot.ports.hub import Hub
from hubpilot.ports.store import StateStore
from hubpilot.settings import Settings

OPERATIONS = ("sync", "cull", "scale")


class UnknownOperation(KeyError):
    pass


class NotConfigured(ValueError):
    """An operation was asked for whose settings are absent (e.g. scale without a pool): a
    scheduled round skips it; a manual run reports it as a configuration error."""


NO_DIRECTORY = "no [directory] is configured (directory.kind and its section)"
NO_SYNC_GROUPS = ("sync.users_groups is empty: name the directory groups whose members are hub users "
                  "(sync.users_groups, and sync.admin_groups for admins)")
NO_POOL = "scale needs scale.subscription_id, scale.resource_group and scale.cluster"


def not_configured(settings: Settings, operation: str) -> str | None:
    """Why hubpilot's own capability of ``operation`` cannot be built from ``settings`` (the
    :class:`NotConfigured` its factory raises), None when it can. Reads the settings alone."""
    if operation == "sync":
        if not (settings.sync.users_groups or settings.sync.admin_groups):
            return NO_SYNC_GROUPS
        if settings.directory is None:
            return NO_DIRECTORY
    if operation == "scale" and not pool_named(settings.scale):
        return NO_POOL
    return None


def pool_named(s: ScaleSettings) -> bool:
    """Whether the scale settings name the AKS pool (subscription, resource group, cluster)."""
    return bool(s.subscription_id and s.resource_group and s.cluster)


@dataclass
class Context:
    """Everything a host needs, built once per process (or per test)."""

    settings: Settings
    store: StateStore
    clock: Clock = utcnow
    holder: str = "hubpilot"
    _hub: Hub | None = None
    _directory: Directory | None = None
    _closers: list[Callable[[], Any]] = field(default_factory=list)
    _runner: Runner[Any] | None = None
    factories: dict[str, Callable[[Context], Capability[Any]]] = field(default_factory=dict)
    # schedules this host runs at a time of its own, whatever their setting says (dotted setting →
    # NCRONTAB): the Functions app's subscription manager is an hourly timer; GET /status shows it
    host_schedules: dict[str, str] = field(default_factory=dict)
    # whether this host fires the schedules: the Functions app does, hubpilot serve unless
    # api.serve_schedules is off; None: not known (a context of its own, the CLI)
    fires_schedules: bool | None = None
    # schedules whose trigger this host does not fire, whatever the settings say (schedule name →
    # why): the Functions app's timers switched off with AzureWebJobs.<function>.Disabled
    host_disabled: dict[str, str] = field(default_factory=dict)
    # App Service injects WEBSITE_AUTH_ENABLED=True when its authentication fronts the app; only
    # then does it strip and set X-MS-CLIENT-PRINCIPAL (elsewhere any caller could send one)
    platform_auth: bool = field(
        default_factory=lambda: os.environ.get("WEBSITE_AUTH_ENABLED", "").strip().lower() == "true")

    @property
    def runner(self) -> Runner[Any]:
        if self._runner is None:
            days = self.settings.state.run_retention_days
            self._runner = Runner(self.store, clock=self.clock, holder=self.holder,
                                  lock_ttl=timedelta(minutes=10),
                                  run_retention=timedelta(days=days) if days else None,
                                  cli=cli_command(self.settings))
        return self._runner

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            from hubpilot.adapters.hub import HubClient

            s = self.settings.hub
            self._hub = HubClient(
                str(s.api_url),
                s.token.get_secret_value(),
                timeout=s.timeout_seconds,
                stop_timeout=s.stop_timeout_seconds,
                retries=s.retries,
                concurrency=s.concurrency,
                page_size=s.page_size,
            )
        return self._hub

    @property
    def directory(self) -> Directory:
        if self._directory is None:
            self._directory = build_directory(self)
        return self._directory

    def unconfigured(self, operation: str) -> str | None:
        """Why :meth:`capability` would raise :class:`NotConfigured` for ``operation``, without
        building anything; None when it builds (a factory given in ``factories`` decides itself)."""
        if operation in self.factories:
            return None
        return not_configured(self.settings, operation)

    def capability(self, operation: str) -> Capability[Any]:
        factory = self.factories.get(operation) or _DEFAULT_FACTORIES.get(operation)
        if factory is None:
            raise UnknownOperation(operation)
        return factory(self)

    async def close(self) -> None:
        for closer in reversed(self._closers):
            result = closer()
            if hasattr(result, "__await__"):
                await result
        self._closers.clear()
        if self._hub is not None:
            await self._hub.close()
        if self._directory is not None:
            await self._directory.close()
        await self.store.close()


def cli_command(settings: Settings) -> str:
    """The command line that reaches the state of ``settings`` from any shell (an approval hint
    names it): ``--config`` with the settings file they were read from, and, when the state file's
    path is relative (to the working directory), a ``cd`` to this process's working directory.
    The program is this process's ``hubpilot`` by its path when ``hubpilot`` on the PATH is not it
    (the setup's ``.venv/bin/hubpilot``, its venv not activated: the demo's own commands)."""
    command = "hubpilot"
    exe = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if exe is not None and exe.name == "hubpilot" and exe.is_file():
        found = shutil.which("hubpilot")
        if found is None or Path(found).resolve() != exe.resolve():
            command = shlex.quote(str(exe.absolute()))
    if settings.file is not None:
        command += f" --config {shlex.quote(str(settings.file))}"
    if settings.state.kind == "sqlite" and not Path(settings.state.sqlite_path).is_absolute():
        command = f"cd {shlex.quote(os.getcwd())} && {command}"
    return command


def build_store(settings: Settings) -> StateStore:
    s = settings.state
    if s.kind == "azure":
        from hubpilot.adapters.store_azure import AzureStore

        return AzureStore.from_settings(
            connection_string=s.azure_connection_string.get_secret_value()
            if s.azure_connection_string else None,
            account_name=s.azure_account_name,
            endpoint_suffix=s.azure_endpoint_suffix,
            table_prefix=s.azure_table_prefix,
            container=s.azure_container,
        )
    from hubpilot.adapters.store_sqlite import SqliteStore

    return SqliteStore(s.sqlite_path)


def build_directory(ctx: Context) -> Directory:
    d = ctx.settings.directory
    if d is None:
        raise NotConfigured(NO_DIRECTORY)
    if d.kind == "file" and d.file is not None:
        from hubpilot.adapters.filedir import FileDirectory

        return FileDirectory(d.file.path)
    if d.kind == "ldap" and d.ldap is not None:
        from hubpilot.adapters.ldap import LdapDirectory

        l = d.ldap  # noqa: E741
        return LdapDirectory(
            url=l.url,
            bind_dn=l.bind_dn,
            bind_password=l.bind_password.get_secret_value() if l.bind_password else None,
            base_dn=l.base_dn,
            group_base_dn=l.group_base_dn,
            group_name_attribute=l.group_name_attribute,
            username_attribute=l.username_attribute,
            nested=l.nested,
            nested_max_depth=l.nested_max_depth,
            page_size=l.page_size,
            timeout=l.timeout_seconds,
            start_tls=l.start_tls,
            ca_file=l.ca_file,
            id_attribute=l.id_attribute,
        )
    if d.kind == "entra" and d.entra is not None:
        from hubpilot.wiring.entra import build_entra_directory

        return build_entra_directory(ctx)
    raise ValueError(f"directory kind {d.kind!r} has no section")


def _sync(ctx: Context) -> Capability[Any]:
    from hubpilot.sync import SyncCapability

    if (reason := not_configured(ctx.settings, "sync")) is not None:
        # a configuration error: not a run that fails every time
        raise NotConfigured(reason)
    return SyncCapability(ctx.directory, ctx.hub, ctx.store, ctx.settings.sync)


def _cull(ctx: Context) -> Capability[Any]:
    from hubpilot.wiring.cull import build_cull

    return build_cull(ctx)


def _scale(ctx: Context) -> Capability[Any]:
    from hubpilot.wiring.scale import build_scale

    return build_scale(ctx)


_DEFAULT_FACTORIES: dict[str, Callable[[Context], Capability[Any]]] = {
    "sync": _sync,
    "cull": _cull,
    "scale": _scale,
}


REQUEST_LOGGERS = ("azure.core.pipeline.policies.http_logging_policy", "httpx")
"""Libraries that log every HTTP request at INFO (azure-core: each request and response with its
headers, a dozen lines a round against the Azure state store; httpx: each hub request)."""


def quiet_request_logs(settings: Settings) -> None:
    """Leave the libraries' per-request lines out of every host's log (the Functions host and
    serve log at INFO, and App Insights bills each line of a timer that fires every minute), unless
    serve's ``log_level`` is DEBUG or the logger's level was set already (by whoever runs hubpilot)."""
    if settings.log_level == "DEBUG":
        return
    for name in REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def build_context(settings: Settings, *, clock: Clock = utcnow) -> Context:
    quiet_request_logs(settings)
    return Context(settings=settings, store=build_store(settings), clock=clock)

"""A real JupyterHub on loopback, for the demo, the tests and the bench scripts.

    async with start_hub(tmp_path) as hub:
        async with hub.admin() as admin:          # admin-setup service: test set-up only
            await admin.post("/users/alice")
        client = HubClient(hub.api_url, hub.hubpilot_token)

It runs the venv's ``jupyterhub`` with configurable-http-proxy from the project's
``node_modules/.bin``, a sqlite database, ``DummyAuthenticator`` with a shared password and
``SimpleLocalProcessSpawner`` running real ``jupyterhub-singleuser`` servers; named servers are
allowed. Services: ``hubpilot`` holding exactly ``HUBPILOT_SCOPES`` and ``admin-setup`` holding
the hub's ``admin`` role (for tests only, never for hubpilot), plus any extra ``services``.
Everything (hub, proxy, single-user servers) is stopped on exit, also when start-up fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from hubpilot_hub.scopes import HUBPILOT_SCOPES

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# the proxy ./scripts/setup installs (npm ci, package-lock.json)
CHP = PROJECT_ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
# The hub (and the single-user servers it spawns) come from this environment's bin, or from the
# one HUBPILOT_HUB_VENV names: the tests run once more against the newest JupyterHub that way.
VENV_BIN = Path(os.environ["HUBPILOT_HUB_VENV"]) / "bin" if os.environ.get("HUBPILOT_HUB_VENV") \
    else Path(sys.executable).parent
PASSWORD = "hubpilot-demo-password"
PORT_ATTEMPTS = 3
PROXY_PID_FILE = "jupyterhub-proxy.pid"  # ConfigurableHTTPProxy.pid_file's default, in the hub's directory
# what the hub's log says when a port given to it or its proxy was taken before they bound it
# (the proxy then logs the error and keeps running without its API: the hub would give up ~30 s later)
PORT_LOST = (b"EADDRINUSE", b"Address already in use")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServiceSpec:
    """An extra hub service with its own role (``scopes``) and a generated token."""

    name: str
    scopes: Sequence[str]


@dataclass
class RealHub:
    url: str  # public URL (through the proxy), no trailing slash
    api_url: str  # the hub's REST API through the proxy, ends in /hub/api
    hubpilot_token: str
    admin_token: str
    tmp_path: Path
    tokens: dict[str, str] = field(default_factory=dict)  # service name → API token
    password: str = PASSWORD
    startup_seconds: float = 0.0
    process: subprocess.Popen[bytes] | None = None

    def client(self, token: str, **kw: Any) -> httpx.AsyncClient:
        """An httpx client on the REST API with ``token``."""
        return httpx.AsyncClient(
            base_url=self.api_url, headers={"Authorization": f"token {token}"}, timeout=30, **kw
        )

    def admin(self) -> httpx.AsyncClient:
        """The admin-setup service's client (tests set up state with it; hubpilot never does)."""
        return self.client(self.admin_token)

    async def login(self, username: str, password: str | None = None) -> httpx.Response:
        """A real form login through the proxy (with the ``_xsrf`` cookie); 302 means success."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as web:
            page = await web.get("/hub/login")
            page.raise_for_status()
            xsrf = web.cookies.get("_xsrf") or _xsrf_from_form(page.text)
            return await web.post(
                "/hub/login",
                data={"username": username, "password": password or self.password, "_xsrf": xsrf},
                follow_redirects=False,
            )

    async def spawn(
        self,
        user: str,
        server_name: str = "",
        user_options: Mapping[str, Any] | None = None,
        wait: bool = True,
        timeout: float = 60,
    ) -> httpx.Response:
        """Start a server via the admin API; with ``wait`` until it is ready. Returns the
        spawn request's response (201 started, 202 pending, or an error the caller checks)."""
        path = f"/users/{user}/servers/{server_name}" if server_name else f"/users/{user}/server"
        async with self.admin() as admin:
            r = await admin.post(path, json=dict(user_options or {}))
            if r.status_code not in (201, 202) or not wait:
                return r
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                u = (await admin.get(f"/users/{user}")).json()
                s = u.get("servers", {}).get(server_name)
                if s and s.get("ready"):
                    return r
                if not s or not s.get("pending"):
                    raise RuntimeError(f"server {user}/{server_name} failed to start: {u}")
                await asyncio.sleep(0.1)
            raise TimeoutError(f"server {user}/{server_name} not ready after {timeout}s")

    def log_tail(self, lines: int = 60) -> str:
        log = self.tmp_path / "jupyterhub.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _xsrf_from_form(html: str) -> str:
    m = re.search(r'name="_xsrf"\s+value="([^"]+)"', html)
    return m.group(1) if m else ""


def _config(
    tmp: Path,
    *,
    port: int,
    hub_port: int,
    proxy_api_port: int,
    services: Mapping[str, Sequence[str] | None],
    tokens: Mapping[str, str],
    extra_config: str,
) -> str:
    run_as_root = os.geteuid() == 0
    chp = CHP
    service_list = [{"name": n, "api_token": tokens[n]} for n in services]
    roles: list[dict[str, Any]] = [{"name": "admin", "services": ["admin-setup"]}]
    roles += [
        {"name": n, "scopes": list(scopes), "services": [n]}
        for n, scopes in services.items()
        if scopes is not None
    ]
    return f"""\
# generated by hubpilot.localhub
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{str(chp)!r}]
c.ConfigurableHTTPProxy.debug = False
c.JupyterHub.db_url = "sqlite:///" + {str(tmp / "jupyterhub.sqlite")!r}
c.JupyterHub.cookie_secret_file = {str(tmp / "jupyterhub_cookie_secret")!r}
c.JupyterHub.pid_file = {str(tmp / "jupyterhub.pid")!r}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = {str(tmp / "home" / "{username}")!r}
c.Spawner.cmd = ["jupyterhub-singleuser"]
c.Spawner.args = {["--allow-root"] if run_as_root else []!r}
c.Spawner.ip = "127.0.0.1"
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.Spawner.default_url = "/lab"
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 0
c.JupyterHub.cleanup_servers = True
c.JupyterHub.services = {service_list!r}
c.JupyterHub.load_roles = {roles!r}
c.JupyterHub.log_level = "INFO"
{extra_config}
"""


@contextlib.asynccontextmanager
async def start_hub(
    tmp_path: Path,
    *,
    extra_config: str = "",
    services: Iterable[ServiceSpec] = (),
    hubpilot_scopes: Sequence[str] = HUBPILOT_SCOPES,
    startup_timeout: float = 60,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> AsyncIterator[RealHub]:
    """Start a real JupyterHub in ``tmp_path``; stop it and all it started on exit.

    ``port``: the public (proxy) port on 127.0.0.1; a free one when None."""
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    all_services: dict[str, Sequence[str] | None] = {
        "hubpilot": list(hubpilot_scopes),
        "admin-setup": None,  # member of the hub's own admin role
    }
    for s in services:
        if s.name in all_services:
            raise ValueError(f"service {s.name!r} is defined twice")
        all_services[s.name] = list(s.scopes)
    tokens = {name: secrets.token_hex(24) for name in all_services}
    run_env = dict(os.environ)
    run_env["PATH"] = f"{VENV_BIN}{os.pathsep}{run_env.get('PATH', '')}"
    run_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), run_env.get("PYTHONPATH", "")) if p
    )
    run_env.update(env or {})
    t0 = time.monotonic()
    for attempt in range(1, PORT_ATTEMPTS + 1):
        # free_port() only finds a port free now: another process may take it before the hub or
        # its proxy binds it (tests and demos side by side); then the start is tried on new ports
        public, hub_port, proxy_api_port = port or free_port(), free_port(), free_port()
        cfg = tmp_path / "jupyterhub_config.py"
        cfg.write_text(
            _config(tmp_path, port=public, hub_port=hub_port, proxy_api_port=proxy_api_port,
                    services=all_services, tokens=tokens, extra_config=extra_config)
        )
        url = f"http://127.0.0.1:{public}"
        hub = RealHub(
            url=url,
            api_url=f"{url}/hub/api",
            hubpilot_token=tokens["hubpilot"],
            admin_token=tokens["admin-setup"],
            tmp_path=tmp_path,
            tokens=tokens,
        )
        with open(tmp_path / "jupyterhub.log", "ab") as log:
            since = log.tell()  # earlier attempts' lines are not this one's
            proc = subprocess.Popen(
                [str(VENV_BIN / "jupyterhub"), "-f", str(cfg)],
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=run_env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        hub.process = proc
        try:
            await _wait_ready(hub, proc, startup_timeout, since)
            break
        except PortLost:
            await _stop(proc, tmp_path)
            if attempt == PORT_ATTEMPTS:
                raise
        except BaseException:
            await _stop(proc, tmp_path)
            raise
    try:
        hub.startup_seconds = time.monotonic() - t0
        yield hub
    finally:
        await _stop(proc, tmp_path)


class PortLost(RuntimeError):
    """A port given to the hub or its proxy was taken before they bound it."""


def _die_with_parent() -> None:
    """Linux: the hub gets SIGTERM (and stops its proxy and servers) if the process that
    started it dies without cleaning up (a killed test run)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def _wait_ready(hub: RealHub, proc: subprocess.Popen[bytes], timeout: float, since: int = 0) -> None:
    """Until the hub answers; ``since``: where this start's lines begin in its log."""
    deadline = time.monotonic() + timeout
    log = hub.tmp_path / "jupyterhub.log"
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            with open(log, "rb") as f:
                f.seek(since)
                new = f.read()
            if any(m in new for m in PORT_LOST):
                raise PortLost(f"a port of the hub was taken meanwhile:\n{hub.log_tail()}")
            if proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited with {proc.returncode}:\n{hub.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                r = await http.get(
                    f"{hub.api_url}/", headers={"Authorization": f"token {hub.admin_token}"}
                )
                if r.status_code == 200 and "version" in r.json():
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"jupyterhub did not answer within {timeout}s:\n{hub.log_tail()}")


async def _stop(proc: subprocess.Popen[bytes], home: Path, grace: float = 10) -> None:
    """SIGTERM the hub (it stops its proxy and servers), then SIGKILL whatever is left."""
    procs: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(proc.pid)
        procs = [parent, *parent.children(recursive=True)]
    # the hub starts its proxy in a session of its own and stops it only when it stops cleanly: a
    # hub that failed at start (or was killed) leaves it running, holding its ports, no longer
    # its child; the hub wrote its pid in its directory
    proxy = _proxy_of(home)
    if proxy is not None and all(p.pid != proxy.pid for p in procs):
        procs.append(proxy)
    # single-user servers run in their own sessions: stop them with the hub's process group
    for p in procs:
        if p.pid != proc.pid:
            with contextlib.suppress(psutil.Error):
                p.terminate()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        await asyncio.sleep(0.05)
    for p in procs:
        if _alive(p):
            with contextlib.suppress(psutil.Error):
                p.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _proxy_of(home: Path) -> psutil.Process | None:
    """The configurable-http-proxy the hub in ``home`` started, if it still runs."""
    try:
        proxy = psutil.Process(int((home / PROXY_PID_FILE).read_text().strip()))
        return proxy if any("configurable-http-proxy" in a for a in proxy.cmdline()) else None
    except (OSError, ValueError, psutil.Error):
        return None


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def drop_one_services(scopes: Sequence[str] = HUBPILOT_SCOPES) -> list[ServiceSpec]:
    """One service per scope, holding ``scopes`` minus that one (for the least-privilege test)."""
    return [
        ServiceSpec(name=f"hubpilot-without-{s.replace(':', '-')}", scopes=[x for x in scopes if x != s])
        for s in scopes
    ]

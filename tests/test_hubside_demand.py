"""The GPU demand signal of the hub-side module (``hubpilot_hub.scale_demand``) in a REAL hub.

- a hung hubpilot (it accepts the connection and never answers) must not stall the hub: the
  hub's proxy calls and readiness checks go through tornado's shared ``AsyncHTTPClient`` (10
  connections at most, the rest queued), so the signals must not use it;
- a failing hubpilot is logged once, not once per spawn;
- which spawn is a GPU spawn, with KubeSpawner's ``profile_list`` forms: KubeSpawner applies the
  chosen profile's overrides inside ``start()``, after the pre-spawn hook, so the hook resolves
  the profile itself (default profile, slug from the display name, ``profile_options`` choices).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hubpilot_hub.hooks import LOGGER
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub


class _Hubpilot:
    """A loopback stand-in for hubpilot's ``POST /api/v1/scale/demand``: it records the bodies and
    answers 202, or (``hang``) reads the request and never answers."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.bodies: list[dict[str, Any]] = []
        self.open: list[asyncio.StreamWriter] = []  # connections accepted and not answered
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> _Hubpilot:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self.open:
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = await reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        if self.hang:
            self.open.append(writer)
            return  # never answers; the connection stays open until the test ends
        self.bodies.append(json.loads(body or b"{}"))
        writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()


async def _until(cond: Callable[[], bool], what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {limit}s: {what}")
        await asyncio.sleep(0.05)


async def _users(hub: RealHub, *names: str) -> None:
    async with hub.admin() as admin:
        for u in names:
            assert (await admin.post(f"/users/{u}")).status_code in (201, 409)


# GPU spawns fail right after the pre-spawn hook (no node in this test): no single-user server
# is started for them, only the demand signal goes out
_GPU_FAILS = """
from jupyterhub.spawner import SimpleLocalProcessSpawner

class GpuFails(SimpleLocalProcessSpawner):
    async def start(self):
        if (self.user_options or {}).get("profile") == "gpu":
            raise RuntimeError("no GPU node in this test")
        return await super().start()

c.JupyterHub.spawner_class = GpuFails
"""


@pytest.mark.hub
async def test_a_hung_hubpilot_does_not_stall_the_spawns_of_the_hub(
    hub_factory: Callable[..., Awaitable[RealHub]],
) -> None:
    async with _Hubpilot(hang=True) as hung:
        hub = await hub_factory(extra_config=_GPU_FAILS + f"""
from hubpilot_hub.scale_demand import configure_scale_demand
configure_scale_demand(c, url={hung.url!r}, token="t", gpu_profiles=["gpu"], gpu_start_timeout=None,
                       timeout=60)
""")
        gpu_users = [unique_name("gpu") for _ in range(12)]
        cpu_user = unique_name("cpu")
        await _users(hub, cpu_user, *gpu_users)
        for u in gpu_users:  # a class starting GPU servers while hubpilot hangs
            g = await hub.spawn(u, user_options={"profile": "gpu"}, wait=False)
            # the GPU spawn itself went on to start() (which fails here: no GPU node) while its
            # signal is still held: the POST answers start()'s failure, not the hub's 202 "pending"
            # of a spawn still waiting in its pre-spawn hook
            assert g.status_code == 500, (u, g.status_code, g.text)
        await _until(lambda: len(hung.open) >= 10, "ten signals held open by the hung hubpilot")

        r = await hub.spawn(cpu_user, user_options={"profile": "cpu"}, timeout=90)
        assert r.status_code in (201, 202), r.text
        # the CPU server is up (proxy route added, readiness checked) while the hung hubpilot
        # still holds every signal it accepted: no hub request waited for one of them to end
        assert len(hung.open) >= 10 and all(not w.is_closing() for w in hung.open)
        async with hub.admin() as admin:
            await admin.delete(f"/users/{cpu_user}/server")


@pytest.fixture
def demand_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return caplog


class _Spawner:
    def __init__(self, user: str, options: dict[str, Any] | None = None) -> None:
        self.user_options = options if options is not None else {"profile": "gpu"}
        self.name = ""
        self.user = type("U", (), {"name": user})()


async def test_a_failing_hubpilot_is_logged_once_until_it_answers_again(
    demand_log: pytest.LogCaptureFixture,
) -> None:
    from hubpilot_hub.scale_demand import ScaleDemand
    from tests.realhub import free_port

    port = free_port()  # nothing listens: every signal is refused
    part = ScaleDemand(f"http://127.0.0.1:{port}/api/v1", "t", gpu_profiles=["gpu"], timeout=2)
    for i in range(5):
        part(_Spawner(f"ana{i}"))
    await asyncio.gather(*part._tasks)
    warnings = [r for r in demand_log.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "ana" in warnings[0].getMessage() and "debug" in warnings[0].getMessage()
    assert len([r for r in demand_log.records if r.levelno == logging.DEBUG and "failed" in r.getMessage()]) == 4

    async with _Hubpilot() as hubpilot:  # hubpilot is back
        part.endpoint = hubpilot.url + "/scale/demand"
        part(_Spawner("bob"))
        await asyncio.gather(*part._tasks)
        assert [b["user"] for b in hubpilot.bodies] == ["bob"]
    back = [r.getMessage() for r in demand_log.records if r.levelno == logging.INFO]
    assert any("answers again" in m and "5 signal" in m for m in back), back
    demand_log.clear()
    port2 = free_port()
    part.endpoint = f"http://127.0.0.1:{port2}/api/v1/scale/demand"
    part(_Spawner("cy"))
    await asyncio.gather(*part._tasks)
    assert len([r for r in demand_log.records if r.levelno >= logging.WARNING]) == 1  # a new outage warns again


# A KubeSpawner stand-in: the profile_list trait, and start() applying the chosen profile's and
# choices' kubespawner_override first, as KubeSpawner 7's load_user_options / _load_profile do
# inside _start (a dict profile_list is its values sorted by key; a free-form "Other..." value
# arrives as user_options["<option>--unlisted-choice"] and wins over the option's choice) — then,
# as no GPU node exists here, recording what the spawn would run with and failing.
_KUBE_LIKE = """
import json, pathlib
from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Any, Dict

RECORD = pathlib.Path({record!r})

class KubeSpawner(SimpleLocalProcessSpawner):
    profile_list = Any(config=True)
    extra_resource_limits = Dict(config=True)
    extra_resource_guarantees = Dict(config=True)

    async def start(self):
        # JupyterHub read start_timeout before calling start(); record it
        seen = {{"start_timeout": self.start_timeout}}
        options = dict(self.user_options or {{}})
        slug = options.get("profile")
        profiles = self.profile_list
        if isinstance(profiles, dict):
            profiles = [profiles[k] for k in sorted(profiles)]
        for p in profiles:
            if "slug" not in p:
                p["slug"] = p["display_name"].lower().replace(" ", "-")
        profile = next(p for p in profiles if p["slug"] == slug) if slug else \\
            next((p for p in profiles if p.get("default")), profiles[0])
        for k, v in profile.get("kubespawner_override", {{}}).items():
            setattr(self, k, v)
        for name, option in profile.get("profile_options", {{}}).items():
            unlisted = options.get(name + "--unlisted-choice")
            chosen = options.get(name)
            if unlisted:
                over = {{k: {{r: a.format(value=unlisted) for r, a in v.items()}}
                        for k, v in option["unlisted_choice"]["kubespawner_override"].items()}}
            elif chosen:
                over = option["choices"][chosen].get("kubespawner_override", {{}})
            else:
                over = next((c for c in option["choices"].values() if c.get("default")),
                            next(iter(option["choices"].values()))).get("kubespawner_override", {{}})
            for k, v in over.items():
                setattr(self, k, v)
        seen["gpu"] = "nvidia.com/gpu" in {{**self.extra_resource_limits, **self.extra_resource_guarantees}}
        seen["slug"] = profile["slug"]
        records = json.loads(RECORD.read_text()) if RECORD.exists() else {{}}
        records[self.user.name] = seen
        RECORD.write_text(json.dumps(records))
        raise RuntimeError("no GPU node in this test")

c.JupyterHub.spawner_class = KubeSpawner
profiles = [
    {{"display_name": "CPU", "slug": "cpu"}},
    {{"display_name": "GPU T4", "default": True,   # no slug: KubeSpawner makes it "gpu-t4"
      "kubespawner_override": {{"extra_resource_limits": {{"nvidia.com/gpu": "1"}}}}}},
    {{"display_name": "ML", "slug": "ml", "profile_options": {{
        "accelerator": {{
            "display_name": "Accelerator",
            "choices": {{
                "none": {{"display_name": "None", "default": True}},
                "a100": {{"display_name": "A100",
                          "kubespawner_override": {{"extra_resource_limits": {{"nvidia.com/gpu": "1"}}}}}},
            }},
            "unlisted_choice": {{
                "enabled": True, "display_name": "GPUs",
                "kubespawner_override": {{"extra_resource_guarantees": {{"nvidia.com/gpu": "{{value}}"}}}},
            }},
        }},
    }}}},
]
# KubeSpawner takes a dict too: its values, sorted by key
c.KubeSpawner.profile_list = profiles if {form!r} == "list" else dict(zip(["a", "b", "c"], profiles))
from hubpilot_hub.scale_demand import configure_scale_demand
configure_scale_demand(c, url={url!r}, token="t", gpu_start_timeout=900, timeout=5)
"""


@pytest.mark.hub
@pytest.mark.parametrize("form", ["list", "dict"])
async def test_gpu_spawns_are_told_apart_in_every_profile_list_form(
    hub_factory: Callable[..., Awaitable[RealHub]], tmp_path: Path, form: str,
) -> None:
    record = tmp_path / "spawns.json"
    async with _Hubpilot() as hubpilot:
        hub = await hub_factory(extra_config=_KUBE_LIKE.format(record=str(record), url=hubpilot.url,
                                                               form=form))
        spawns = {
            unique_name("cpu"): {"profile": "cpu"},
            unique_name("mlnone"): {"profile": "ml"},  # the option's default choice: no GPU
            unique_name("dflt"): {},  # no profile picked: the default profile, a GPU one
            unique_name("a100"): {"profile": "ml", "accelerator": "a100"},
            # "Other...": KubeSpawner's form sends the free-form value alone, under
            # "<option>--unlisted-choice" (the option's default choice asks for no GPU)
            unique_name("other"): {"profile": "ml", "accelerator--unlisted-choice": "2"},
        }
        await _users(hub, *spawns)
        for user, options in spawns.items():
            await hub.spawn(user, user_options=options, wait=False)
        await _until(lambda: record.exists() and len(json.loads(record.read_text())) == len(spawns),
                     "every spawn reached start()")
        seen = json.loads(record.read_text())
        gpu = {u for u, s in seen.items() if s["gpu"]}
        assert len(gpu) == 3  # what the spawns really ask for, as KubeSpawner applies it
        await _until(lambda: len(hubpilot.bodies) >= len(gpu), "a demand for every GPU spawn")
        assert {b["user"] for b in hubpilot.bodies} == gpu
        assert {b["user"]: b["profile"] for b in hubpilot.bodies} == {u: seen[u]["slug"] for u in gpu}
        # and JupyterHub waits the GPU timeout for exactly those
        assert {u: s["start_timeout"] for u, s in seen.items()} == {
            u: (900 if u in gpu else 60) for u in spawns}


async def test_a_callable_profile_list_is_resolved_as_kubespawner_calls_it() -> None:
    from hubpilot_hub.scale_demand import gpu_spawn

    async def profiles(spawner: Any) -> list[dict[str, Any]]:
        big = {"extra_resource_guarantees": {"nvidia.com/gpu": 1}}
        return [{"display_name": "Small"}, {"display_name": "Big GPU", "kubespawner_override": big}]

    s = _Spawner("ana", {"profile": "big-gpu"})
    s.profile_list = profiles  # type: ignore[attr-defined]
    assert await gpu_spawn(s, frozenset()) == (True, "big-gpu")
    s.user_options = {}
    assert await gpu_spawn(s, frozenset()) == (False, "small")
    s.user_options = {"profile": "small"}
    assert await gpu_spawn(s, frozenset({"Small"})) == (True, "small")  # named by display name


def test_bad_demand_settings_are_refused_with_what_to_fix() -> None:
    from hubpilot_hub.scale_demand import ScaleDemand

    url = "http://127.0.0.1:9/api/v1"
    with pytest.raises(ValueError, match="token is empty"):
        ScaleDemand(url, "")  # every signal would be refused (401), spawn after spawn
    for timeout in (0, -1, 600):  # tornado takes 0 as "no timeout": a hung hubpilot holds it for ever
        with pytest.raises(ValueError, match="timeout"):
            ScaleDemand(url, "t", timeout=timeout)
    with pytest.raises(ValueError, match="max_in_flight"):
        ScaleDemand(url, "t", max_in_flight=0)
    # a Secret file's trailing newline, or a query the endpoint would be appended to: refused when the part is made
    for bad in (url + "\n", url + " ", " " + url, "http://127.0.0.1:9/api /v1"):
        with pytest.raises(ValueError, match=r"control character .* give the URL alone"):
            ScaleDemand(bad, "t")
    for bad in (url + "?code=x", url + "#top", url + "?"):
        with pytest.raises(ValueError, match="query or fragment"):
            ScaleDemand(bad, "t")
    assert ScaleDemand(url + "/", "t").endpoint == "http://127.0.0.1:9/api/v1/scale/demand"


async def test_a_spawner_it_cannot_read_is_logged_once(demand_log: pytest.LogCaptureFixture) -> None:
    from hubpilot_hub.scale_demand import ScaleDemand

    part = ScaleDemand("http://127.0.0.1:9/api/v1", "t", gpu_profiles=["gpu"], timeout=1)
    for _ in range(3):
        spawner = _Spawner("ana")
        spawner.user = None  # a spawner without its user: nothing to signal
        part(spawner)
    await asyncio.gather(*part._tasks)
    errors = [r for r in demand_log.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert part.sent == []


# a stand-in for KubeSpawner (the hub config's template: .format(record=...)) whose start()
# records the start timeout it got and fails
RECORDING_KUBESPAWNER = """
import asyncio, json, pathlib
from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Any

RECORD = pathlib.Path({record!r})

class KubeSpawner(SimpleLocalProcessSpawner):
    profile_list = Any(config=True)

    async def start(self):
        # KubeSpawner calls profile_list in start(), which JupyterHub bounds by start_timeout
        RECORD.write_text(json.dumps({{"start_timeout": self.start_timeout}}))
        raise RuntimeError("no GPU node in this test")
"""

_HANGING_PROFILE_LIST = RECORDING_KUBESPAWNER + """
async def _profiles(spawner):  # a profile service that does not answer
    await asyncio.sleep(3600)
    return []

c.JupyterHub.spawner_class = KubeSpawner
c.KubeSpawner.profile_list = _profiles
from hubpilot_hub.scale_demand import configure_gpu_start_timeout
part = configure_gpu_start_timeout(c, gpu_profiles=["gpu"], seconds=900)
part.resolve_timeout = 2
"""


@pytest.mark.hub
async def test_a_hanging_profile_list_does_not_hold_the_spawn_in_the_pre_spawn_hook(
    hub_factory: Callable[..., Awaitable[RealHub]], tmp_path: Path,
) -> None:
    # JupyterHub bounds start() by start_timeout, not the pre-spawn hook: a callable profile_list
    # awaited there without a bound held the spawn pending for ever
    record = tmp_path / "start.json"
    hub = await hub_factory(extra_config=_HANGING_PROFILE_LIST.format(record=str(record)))
    user = unique_name("slow")
    await _users(hub, user)
    await hub.spawn(user, wait=False)
    await _until(record.exists, "the spawn reached start()", limit=60)
    # the profile could not be read: taken as a GPU spawn (a longer wait, never a lost one)
    assert json.loads(record.read_text()) == {"start_timeout": 900}


async def test_a_redirect_is_a_failure_that_names_where_it_points(demand_log: pytest.LogCaptureFixture) -> None:
    """A demand URL that redirects (http:// to an https-only hubpilot, a sign-in page in front of
    it) was followed: a 302 became a GET of the page it points to, whose 200 counted as a signal
    delivered, nothing logged, while hubpilot never heard of the spawn (and the bearer token went
    along to the redirect's target with a tornado that keeps it). The redirect is a failure now,
    logged with where it points."""
    from hubpilot_hub.scale_demand import ScaleDemand

    seen: list[bytes] = []

    async def page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nsign in")
        await writer.drain()
        writer.close()

    login = await asyncio.start_server(page, "127.0.0.1", 0)
    target = f"http://127.0.0.1:{login.sockets[0].getsockname()[1]}/login"

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    front = await asyncio.start_server(redirect, "127.0.0.1", 0)
    try:
        part = ScaleDemand(f"http://127.0.0.1:{front.sockets[0].getsockname()[1]}/api/v1", "secret-token",
                           gpu_profiles=["gpu"], timeout=5)
        status = await part.send({"user": "ana", "server": "", "profile": "gpu"})
    finally:
        front.close()
        login.close()
    assert status == 302
    assert seen == []  # nothing went to the page the redirect points to
    warnings = [r.getMessage() for r in demand_log.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "302" in warnings[0] and target in warnings[0], warnings
    assert "secret-token" not in warnings[0]


async def test_a_failure_names_the_url_the_signal_went_to(demand_log: pytest.LogCaptureFixture) -> None:
    """A demand url without ``/api/v1`` (hubpilot's root) gets hubpilot's 404, and a wrong port a
    refused connection: the warning said "404 ..." or "599 Connection refused" without the URL,
    so nothing in the hub's log showed what to fix. It names the URL posted to (never the token)."""
    from hubpilot_hub.scale_demand import ScaleDemand

    async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"error": "not found"}'
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_found, "127.0.0.1", 0)
    root = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        part = ScaleDemand(root, "secret-token", gpu_profiles=["gpu"], timeout=5)
        assert await part.send({"user": "ana", "server": "", "profile": "gpu"}) == 404
    finally:
        server.close()
    # (a url holding user:password@ is refused when the part is made: tests/test_secrets.py)
    refused = ScaleDemand(root + "/api/v1", "secret-token", gpu_profiles=["gpu"], timeout=5)  # closed now
    assert await refused.send({"user": "bo", "server": "", "profile": "gpu"}) in (599, None)
    warnings = [r.getMessage() for r in demand_log.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "404" in warnings[0] and f"{root}/scale/demand" in warnings[0], warnings
    assert f"{root}/api/v1/scale/demand" in warnings[1], warnings
    assert not any("secret-token" in w for w in warnings)

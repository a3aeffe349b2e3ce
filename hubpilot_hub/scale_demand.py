"""The GPU demand signal: a pre-spawn part that tells hubpilot a GPU server is starting.

When a user starts a GPU profile, the part POSTs ``{user, server, profile}`` to hubpilot's
``/api/v1/scale/demand`` (role ``hub``) so the GPU pool grows within a second instead of at the
next scale timer. It never blocks the spawn: the request is sent in the background and any
failure is logged, nothing more. In ``jupyterhub_config.py``, after ``hubpilot_hub.configure``::

    from hubpilot_hub.scale_demand import configure_scale_demand
    configure_scale_demand(c, url="https://hubpilot.example.org/api/v1", token=os.environ["HUBPILOT_HUB_TOKEN"],
                           gpu_profiles=["gpu-t4"], gpu_start_timeout=900)

``gpu_start_timeout`` raises the start timeout of the GPU profiles above the node boot time, so
that a spawn waiting for a new GPU node does not time out (:func:`configure_gpu_start_timeout`,
which a deployment without the demand signal calls on its own). JupyterHub waits
``spawner.start_timeout`` as read right after the pre-spawn hook, before ``start()`` runs, while
KubeSpawner applies a profile's ``kubespawner_override`` inside ``start()``: an override alone
would only lengthen KubeSpawner's own wait for the pod. So a pre-spawn part sets the timeout on
the spawner of each GPU spawn (and puts the configured one back for the others), and the GPU
profiles' overrides are raised too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from hubpilot_hub import hooks

log = logging.getLogger("hubpilot_hub")

PART_NAME = "gpu-demand"
START_TIMEOUT_PART_NAME = "gpu-start-timeout"


def _profile_of(spawner: Any) -> str:
    options = getattr(spawner, "user_options", None) or {}
    return str(options.get("profile", "") or "")


def _is_gpu(spawner: Any, profiles: frozenset[str], resource: str) -> bool:
    if _profile_of(spawner) in profiles:
        return True
    for attr in ("extra_resource_limits", "extra_resource_guarantees"):
        if resource in (getattr(spawner, attr, None) or {}):
            return True
    return False


class ScaleDemand:
    """The pre-spawn part. ``url`` is hubpilot's API base (ending in ``/api/v1``)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        gpu_profiles: Sequence[str] = (),
        gpu_resource: str = "nvidia.com/gpu",
        timeout: float = 5.0,
        is_gpu: Callable[[Any], bool] | None = None,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"scale demand url {url!r} must be an http(s) URL of hubpilot's /api/v1")
        self.endpoint = url.rstrip("/") + "/scale/demand"
        self.token = token
        self.gpu_profiles = frozenset(gpu_profiles)
        self.gpu_resource = gpu_resource
        self.timeout = timeout
        self._is_gpu = is_gpu
        self._tasks: set[asyncio.Future[Any]] = set()
        self.sent: list[tuple[float, str, int | None]] = []  # (monotonic time, key, status)


    def is_gpu(self, spawner: Any) -> bool:
        if self._is_gpu is not None:
            return bool(self._is_gpu(spawner))
        return _is_gpu(spawner, self.gpu_profiles, self.gpu_resource)

    def __call__(self, spawner: Any) -> None:
        """Schedule the signal and return at once (the spawn never waits for hubpilot)."""
        try:
            if not self.is_gpu(spawner):
                return
            body = {"user": spawner.user.name, "server": getattr(spawner, "name", "") or "",
                    "profile": _profile_of(spawner)}
        except Exception:
            log.exception("hubpilot gpu-demand: cannot read the spawner; spawning anyway")
            return
        task = asyncio.ensure_future(self.send(body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(self, body: dict[str, str]) -> int | None:
        """POST the demand; returns the status (None on a connection error). Never raises."""
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

        key = f"{body['user']}~{body['server']}"
        request = HTTPRequest(
            self.endpoint, method="POST", body=json.dumps(body),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            connect_timeout=self.timeout, request_timeout=self.timeout,
        )
        status: int | None = None
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
            status = response.code
            if status >= 400 or status == 599:
                log.warning("hubpilot gpu-demand for %s: %s %s", key, status,
                            (response.body or b"")[:300].decode(errors="replace"))
        except HTTPClientError as exc:
            status = exc.code
            log.warning("hubpilot gpu-demand for %s failed: %s", key, exc)
        except Exception as exc:
            log.warning("hubpilot gpu-demand for %s failed: %s", key, exc)
        self.sent.append((time.monotonic(), key, status))
        return status


class GpuStartTimeout:
    """The pre-spawn part that gives a GPU spawn ``seconds`` of start timeout (at least), and
    every other spawn of the same spawner its configured timeout back."""

    def __init__(self, seconds: int, *, gpu_profiles: Sequence[str] = (),
                 gpu_resource: str = "nvidia.com/gpu") -> None:
        self.seconds = int(seconds)
        self.gpu_profiles = frozenset(gpu_profiles)
        self.gpu_resource = gpu_resource

    def __call__(self, spawner: Any) -> None:
        # the spawner object outlives a spawn: remember its configured timeout once
        base = getattr(spawner, "_hubpilot_base_start_timeout", None)
        if base is None:
            base = int(spawner.start_timeout)
            spawner._hubpilot_base_start_timeout = base
        gpu = _is_gpu(spawner, self.gpu_profiles, self.gpu_resource)
        spawner.start_timeout = max(base, self.seconds) if gpu else base


def configure_gpu_start_timeout(c: Any, *, gpu_profiles: Sequence[str] = (), seconds: int = 900) -> GpuStartTimeout:
    """Give GPU spawns a start timeout of at least ``seconds``: a pre-spawn part sets it on the
    spawner (what JupyterHub waits for), and the GPU profiles' ``kubespawner_override`` get it
    (what KubeSpawner waits for the pod). Without ``gpu_profiles`` every spawn may need a node."""
    part = GpuStartTimeout(seconds, gpu_profiles=gpu_profiles)
    hooks.register_pre_spawn(part, name=START_TIMEOUT_PART_NAME)
    _install_hook(c)
    _raise_start_timeout(c, frozenset(gpu_profiles), int(seconds))
    return part


def _install_hook(c: Any) -> None:
    current = c.Spawner.get("pre_spawn_hook")
    if current is not hooks.pre_spawn_hook:
        if current is not None:
            hooks.register_pre_spawn(current, name="configured:Spawner", essential=True, first=True)
        c.Spawner.pre_spawn_hook = hooks.pre_spawn_hook


def configure_scale_demand(
    c: Any,
    *,
    url: str,
    token: str,
    gpu_profiles: Sequence[str] = (),
    gpu_start_timeout: int | None = 900,
    timeout: float = 5.0,
) -> ScaleDemand:
    """Register the gpu-demand part of the composed pre-spawn hook; raise the GPU profiles'
    start timeout to ``gpu_start_timeout`` seconds (None leaves it)."""
    part = ScaleDemand(url, token, gpu_profiles=gpu_profiles, timeout=timeout)
    hooks.register_pre_spawn(part, name=PART_NAME)
    _install_hook(c)
    if gpu_start_timeout is not None:
        configure_gpu_start_timeout(c, gpu_profiles=gpu_profiles, seconds=gpu_start_timeout)
    return part


def _raise_start_timeout(c: Any, profiles: frozenset[str], seconds: int) -> None:
    profile_list = c.KubeSpawner.get("profile_list") if "KubeSpawner" in c else None
    if profiles:
        # a callable (or later configured) profile_list cannot be edited here: the pre-spawn
        # part alone gives its GPU spawns the timeout; the other servers keep theirs
        if isinstance(profile_list, list):
            for p in profile_list:
                if isinstance(p, dict) and p.get("slug") in profiles:
                    override = p.setdefault("kubespawner_override", {})
                    override["start_timeout"] = max(int(override.get("start_timeout") or 0), seconds)
        return
    # no profiles to pick from: every server may wait for a GPU node
    for section in ("KubeSpawner", "Spawner"):
        if section in c and "start_timeout" in c[section]:
            c[section].start_timeout = max(int(c[section].start_timeout), seconds)
            return
    c.Spawner.start_timeout = seconds

"""The GPU profiles' start timeout must be in force when JupyterHub starts waiting for the spawn.

JupyterHub (``User.spawn``) runs the pre-spawn hook, calls ``spawner.start()`` and waits
``spawner.start_timeout`` for it, reading the value at that moment. KubeSpawner applies a
profile's ``kubespawner_override`` inside ``start()`` (``_start`` → ``load_user_options``), so a
``start_timeout`` in the override comes too late for that wait (jupyterhub/kubespawner#339);
it only governs KubeSpawner's own wait for the pod. The GPU timeout is therefore set by a
pre-spawn part as well, on the spawner, for GPU spawns only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from traitlets.config import Config

from hubpilot_hub import hooks
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub


@pytest.fixture
def clean_parts() -> Any:
    saved = list(hooks._PARTS)
    yield
    hooks._PARTS[:] = saved


class _Spawner:
    def __init__(self, profile: str, start_timeout: int = 300) -> None:
        self.user_options = {"profile": profile}
        self.extra_resource_limits: dict[str, Any] = {}
        self.start_timeout = start_timeout
        self.name = ""
        self.user = type("U", (), {"name": "ana"})()


async def test_pre_spawn_sets_the_gpu_start_timeout_and_restores_it(clean_parts: None) -> None:
    from hubpilot_hub.scale_demand import configure_scale_demand

    c = Config()
    c.KubeSpawner.profile_list = [{"slug": "cpu", "display_name": "CPU"}, {"slug": "gpu", "display_name": "GPU"}]
    part = configure_scale_demand(c, url="http://127.0.0.1:9/api/v1", token="t", gpu_profiles=["gpu"],
                                  gpu_start_timeout=900, timeout=1)
    spawner = _Spawner("gpu")
    await hooks.pre_spawn_hook(spawner)
    assert spawner.start_timeout == 900
    spawner.user_options = {"profile": "cpu"}  # the same server, started again with the CPU profile
    await hooks.pre_spawn_hook(spawner)
    assert spawner.start_timeout == 300
    cpu_only = _Spawner("cpu", start_timeout=120)
    await hooks.pre_spawn_hook(cpu_only)
    assert cpu_only.start_timeout == 120
    for task in list(part._tasks):
        await task


def _kube_like_config(gpu_start_timeout: int) -> str:
    return f"""
import asyncio
from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import List

class KubeSpawner(SimpleLocalProcessSpawner):
    # KubeSpawner's order: start() wraps _start(), which applies the chosen profile's
    # kubespawner_override first (load_user_options), then waits for the pod (here: a node boot)
    profile_list = List(config=True)

    def start(self):
        return asyncio.ensure_future(self._start())

    async def _start(self):
        slug = (self.user_options or {{}}).get("profile")
        for profile in self.profile_list:
            if profile["slug"] == slug:
                for k, v in profile.get("kubespawner_override", {{}}).items():
                    setattr(self, k, v)
        await asyncio.sleep(4)  # the pod waits for a new GPU node
        return await super().start()

c.JupyterHub.spawner_class = KubeSpawner
c.Spawner.start_timeout = 2
c.KubeSpawner.profile_list = [{{"slug": "cpu", "display_name": "CPU"}}, {{"slug": "gpu", "display_name": "GPU"}}]

from hubpilot_hub.scale_demand import configure_scale_demand
configure_scale_demand(c, url="http://127.0.0.1:9/api/v1", token="t", gpu_profiles=["gpu"],
                       gpu_start_timeout={gpu_start_timeout}, timeout=1)
"""


@pytest.mark.hub
async def test_gpu_spawn_waiting_for_a_node_outlives_the_default_timeout_in_a_real_hub(
    hub_factory: Callable[..., Awaitable[RealHub]],
) -> None:
    hub = await hub_factory(extra_config=_kube_like_config(30))
    user = unique_name("gpuwait")
    async with hub.admin() as admin:
        assert (await admin.post(f"/users/{user}")).status_code in (201, 409)
    r = await hub.spawn(user, user_options={"profile": "gpu"}, timeout=60)
    assert r.status_code in (201, 202)


async def test_callable_profile_list_raises_only_gpu_spawns(clean_parts: None) -> None:
    from hubpilot_hub.scale_demand import configure_gpu_start_timeout

    c = Config()
    c.KubeSpawner.start_timeout = 300  # z2jh: singleuser.startTimeout
    c.KubeSpawner.profile_list = lambda spawner: [{"slug": "gpu", "display_name": "GPU"}]
    configure_gpu_start_timeout(c, gpu_profiles=["gpu"], seconds=900)
    assert c.KubeSpawner.start_timeout == 300  # CPU servers keep the chart's timeout
    gpu, cpu = _Spawner("gpu"), _Spawner("cpu")
    await hooks.pre_spawn_hook(gpu)
    await hooks.pre_spawn_hook(cpu)
    assert (gpu.start_timeout, cpu.start_timeout) == (900, 300)


async def test_gpu_choices_of_profile_options_get_the_timeout_in_kubespawners_own_wait(clean_parts: None) -> None:
    """KubeSpawner waits for the pod ``start_timeout`` as its overrides leave it: a profile that
    sets 300 and has a GPU choice would give up on the pod at 300 s while the node boots. The
    override that the GPU choice applies is raised; a CPU profile keeps the chart's timeout."""
    from hubpilot_hub.scale_demand import configure_gpu_start_timeout

    gpu = {"extra_resource_limits": {"nvidia.com/gpu": "1"}}
    c = Config()
    c.KubeSpawner.start_timeout = 300
    c.KubeSpawner.profile_list = [
        {"display_name": "CPU", "slug": "cpu", "kubespawner_override": {"start_timeout": 300}},
        {"display_name": "ML", "slug": "ml", "kubespawner_override": {"start_timeout": 300},
         "profile_options": {"acc": {"display_name": "Accelerator", "choices": {
             "none": {"display_name": "None"},
             "t4": {"display_name": "T4", "kubespawner_override": {**gpu, "start_timeout": 120}}}}}},
    ]
    configure_gpu_start_timeout(c, seconds=900)  # no profile named: found by the resource
    cpu, ml = c.KubeSpawner.profile_list
    assert cpu["kubespawner_override"]["start_timeout"] == 300
    assert ml["kubespawner_override"]["start_timeout"] == 900
    assert ml["profile_options"]["acc"]["choices"]["t4"]["kubespawner_override"]["start_timeout"] == 900
    assert c.KubeSpawner.start_timeout == 300  # CPU servers keep the chart's timeout

    spawner = _Spawner("ml", start_timeout=300)
    spawner.profile_list = c.KubeSpawner.profile_list  # type: ignore[attr-defined]
    spawner.user_options = {"profile": "ml", "acc": "t4"}
    await hooks.pre_spawn_hook(spawner)
    assert spawner.start_timeout == 900
    other = _Spawner("ml", start_timeout=300)
    other.profile_list = c.KubeSpawner.profile_list  # type: ignore[attr-defined]
    other.user_options = {"profile": "ml", "acc": "none"}
    await hooks.pre_spawn_hook(other)
    assert other.start_timeout == 300


def test_no_gpu_profile_named_nor_found_raises_every_servers_timeout(clean_parts: None) -> None:
    """A callable profile_list cannot be read at configuration time, and a GPU profile may pick
    its nodes by node selector alone: with no GPU profile named, every server may wait for a node."""
    from hubpilot_hub.scale_demand import configure_gpu_start_timeout

    c = Config()
    c.KubeSpawner.start_timeout = 300
    c.KubeSpawner.profile_list = lambda spawner: [{"display_name": "GPU", "kubespawner_override": {
        "node_selector": {"agentpool": "gpu"}}}]
    configure_gpu_start_timeout(c, seconds=900)
    assert c.KubeSpawner.start_timeout == 900


async def test_a_hook_on_the_spawner_class_section_does_not_shadow_the_parts(clean_parts: None) -> None:
    """Without hubpilot_hub.configure (the start timeout alone): a ``c.KubeSpawner.pre_spawn_hook``
    overrides ``c.Spawner.pre_spawn_hook`` on a KubeSpawner, so the parts would never run."""
    from hubpilot_hub.scale_demand import configure_gpu_start_timeout

    ran: list[str] = []
    c = Config()
    c.KubeSpawner.pre_spawn_hook = lambda spawner: ran.append("site")
    configure_gpu_start_timeout(c, gpu_profiles=["gpu"], seconds=900)
    assert c.KubeSpawner.pre_spawn_hook is hooks.pre_spawn_hook
    spawner = _Spawner("gpu")
    await c.KubeSpawner.pre_spawn_hook(spawner)
    assert ran == ["site"] and spawner.start_timeout == 900


@pytest.mark.parametrize(("kw", "match"), [
    ({"gpu_profiles": "gpu"}, "list of profile names"),  # a bare string: its letters would be the profiles
    ({"gpu_profiles": ["gpu", 3]}, "list of profile names"),
    ({"seconds": 0}, "whole number of seconds"),
    ({"seconds": -60}, "whole number of seconds"),
    ({"seconds": True}, "whole number of seconds"),
    ({"seconds": 900.5}, "whole number of seconds"),
    ({"seconds": "900"}, "whole number of seconds"),
])
def test_bad_gpu_start_timeout_arguments_are_refused_when_the_hub_loads_its_configuration(
        clean_parts: None, kw: dict[str, Any], match: str) -> None:
    """A bare string as ``gpu_profiles`` named no profile (its letters did), so no GPU spawn got
    the raised timeout and nothing said so; a timeout of 0 or below raised nothing either."""
    from hubpilot_hub.scale_demand import configure_gpu_start_timeout, configure_scale_demand

    c = Config()
    c.KubeSpawner.start_timeout = 300
    c.KubeSpawner.profile_list = [{"display_name": "GPU", "slug": "gpu"}]
    args = {"gpu_profiles": ["gpu"], "seconds": 900, **kw}
    before = list(hooks._PARTS)
    with pytest.raises(ValueError, match=match):
        configure_gpu_start_timeout(c, **args)
    with pytest.raises(ValueError, match=match):
        configure_scale_demand(c, url="http://127.0.0.1:9/api/v1", token="t", gpu_profiles=args["gpu_profiles"],
                               gpu_start_timeout=args["seconds"])
    assert c.KubeSpawner.profile_list[0].get("kubespawner_override") is None  # nothing half-applied
    assert hooks._PARTS == before


_ODD_PROFILES_CONFIG = """
import asyncio
from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import List

class KubeSpawner(SimpleLocalProcessSpawner):
    # KubeSpawner's order: start() applies the chosen profile's kubespawner_override (a callable
    # value is called with the spawner), then waits for the pod (here: a node boot)
    profile_list = List(config=True)

    async def start(self):
        slug = (self.user_options or {}).get("profile")
        for profile in self.profile_list:
            if profile["slug"] == slug:
                for k, v in (profile.get("kubespawner_override") or {}).items():
                    setattr(self, k, v(self) if callable(v) else v)
        self.log.info("pod wait for %s: %s s", slug, self.start_timeout)
        await asyncio.sleep(4)  # the pod waits for a new GPU node
        return await super().start()

c.JupyterHub.spawner_class = KubeSpawner
c.Spawner.start_timeout = 2
c.KubeSpawner.profile_list = [
    {"slug": "cpu", "display_name": "CPU", "kubespawner_override": None},
    {"slug": "gpu-named", "display_name": "GPU", "kubespawner_override": None},
    {"slug": "gpu-callable", "display_name": "GPU (callable)", "kubespawner_override": {
        "extra_resource_limits": {"nvidia.com/gpu": "1"}, "start_timeout": lambda spawner: 2}},
]

from hubpilot_hub.scale_demand import configure_gpu_start_timeout
configure_gpu_start_timeout(c, gpu_profiles=["gpu-named"], seconds=30)
"""


@pytest.mark.hub
async def test_odd_but_valid_gpu_profiles_neither_stop_the_hub_nor_lose_the_timeout(
    hub_factory: Callable[..., Awaitable[RealHub]],
) -> None:
    """A GPU profile with ``kubespawner_override: null`` (a YAML key left empty) made the
    configuration raise (AttributeError) and the hub did not start at all; a ``start_timeout``
    given as a callable (KubeSpawner calls override values that are callables) raised TypeError
    the same way. The hub starts, and both GPU profiles' spawns outlive the node boot."""
    hub = await hub_factory(extra_config=_ODD_PROFILES_CONFIG)
    async with hub.admin() as admin:
        for profile in ("gpu-named", "gpu-callable"):
            user = unique_name("odd")
            assert (await admin.post(f"/users/{user}")).status_code in (201, 409)
            r = await hub.spawn(user, user_options={"profile": profile}, timeout=60)
            assert r.status_code in (201, 202), (profile, r.text)
    log = (hub.tmp_path / "jupyterhub.log").read_text()
    assert "pod wait for gpu-named: 30 s" in log
    assert "pod wait for gpu-callable: 30 s" in log  # KubeSpawner's own wait is raised too


async def test_a_profile_list_that_raises_counts_as_a_gpu_spawn_and_says_so(
        clean_parts: None, caplog: pytest.LogCaptureFixture) -> None:
    """A callable profile_list that raises in the pre-spawn hook (an API it reads was down)
    failed the part: the spawn went on with the CPU timeout, though KubeSpawner, calling it again
    in start(), may well start a GPU server that then times out while its node boots. As for a
    callable that does not answer, the spawn counts as a GPU spawn (a longer wait, never a GPU
    spawn missed), logged with the error."""
    import logging

    from hubpilot_hub.scale_demand import configure_gpu_start_timeout

    def profiles(spawner: Any) -> list[dict[str, Any]]:
        raise ConnectionError("profile service unreachable")

    c = Config()
    c.KubeSpawner.start_timeout = 300
    c.KubeSpawner.profile_list = profiles
    configure_gpu_start_timeout(c, gpu_profiles=["gpu"], seconds=900)
    spawner = _Spawner("gpu")
    spawner.profile_list = profiles  # type: ignore[attr-defined]
    caplog.set_level(logging.INFO, logger=hooks.LOGGER)
    await hooks.pre_spawn_hook(spawner)
    assert spawner.start_timeout == 900
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "profile service unreachable" in warnings[0], warnings
    assert "taken as a GPU spawn" in warnings[0], warnings


async def test_one_spawn_calls_a_callable_profile_list_once_for_both_parts(clean_parts: None) -> None:
    """The start-timeout part and the demand signal each called a callable ``profile_list``: a
    synchronous one (a profile service read with a blocking client) held the hub's event loop
    twice per spawn on top of KubeSpawner's own call in start(). One pre-spawn run calls it once
    and both parts use its answer; the next spawn calls it again."""
    from hubpilot_hub.scale_demand import configure_scale_demand
    from tests.test_hubside_demand import _Hubpilot

    calls: list[str] = []

    def profiles(spawner: Any) -> list[dict[str, Any]]:
        calls.append(spawner.user_options.get("profile", ""))
        return [{"slug": "cpu", "display_name": "CPU"}, {"slug": "gpu", "display_name": "GPU"}]

    async with _Hubpilot() as hubpilot:
        c = Config()
        c.KubeSpawner.start_timeout = 300
        c.KubeSpawner.profile_list = profiles
        part = configure_scale_demand(c, url=hubpilot.url, token="t", gpu_profiles=["gpu"],
                                      gpu_start_timeout=900, timeout=5)
        spawner = _Spawner("gpu")
        spawner.profile_list = profiles  # type: ignore[attr-defined]
        await hooks.pre_spawn_hook(spawner)
        while part._tasks:
            await next(iter(part._tasks))
        assert calls == ["gpu"], calls
        assert spawner.start_timeout == 900
        assert [b["profile"] for b in hubpilot.bodies] == ["gpu"]
        spawner.user_options = {"profile": "cpu"}  # the next spawn reads the list anew
        await hooks.pre_spawn_hook(spawner)
        while part._tasks:
            await next(iter(part._tasks))
        assert calls == ["gpu", "cpu"], calls
        assert spawner.start_timeout == 300 and len(hubpilot.bodies) == 1

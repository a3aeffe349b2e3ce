"""Which spawn is a GPU spawn, in the cases KubeSpawner's ``profile_list`` resolution turns on
that the real-hub tests do not reach: the order of a dict's profiles when none is the default,
an option's default choice that is not its first, a free-form value beside a listed choice, a
slug no profile has, and a GPU the spawner's own configuration asks for. Also what the signal
and the start timeout carry: a named server's name, and a timeout the deployment set higher
than hubpilot's (never lowered); where the signal goes, and a refusal of it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from traitlets.config import Config

from hubpilot_hub import hooks
from hubpilot_hub.scale_demand import GpuStartTimeout, ScaleDemand, configure_gpu_start_timeout, gpu_spawn
from tests.test_hubside_demand import _Hubpilot

GPU = {"extra_resource_limits": {"nvidia.com/gpu": "1"}}


class _Spawner:
    """A KubeSpawner as the pre-spawn hook sees it: its traits, before start() applies a profile."""

    def __init__(
        self,
        options: dict[str, Any],
        profile_list: Any = None,
        limits: dict[str, Any] | None = None,
        start_timeout: int = 300,
        name: str = "",
    ) -> None:
        self.user_options = options
        self.profile_list = profile_list
        self.extra_resource_limits = limits or {}
        self.extra_resource_guarantees: dict[str, Any] = {}
        self.start_timeout = start_timeout
        self.name = name
        self.user = type("U", (), {"name": "ana"})()


@pytest.fixture
def clean_parts() -> Any:
    saved = list(hooks._PARTS)
    yield
    hooks._PARTS[:] = saved


async def test_a_dict_profile_list_without_a_default_starts_its_first_profile_by_key() -> None:
    # KubeSpawner takes a dict's values sorted by key, whatever order the dict was written in
    profiles = {"b-gpu": {"display_name": "GPU", "kubespawner_override": GPU}, "a-cpu": {"display_name": "CPU"}}
    assert await gpu_spawn(_Spawner({}, profiles), frozenset()) == (False, "cpu")
    flipped = {"a-gpu": profiles["b-gpu"], "b-cpu": profiles["a-cpu"]}
    assert await gpu_spawn(_Spawner({}, flipped), frozenset()) == (True, "gpu")


async def test_an_options_default_choice_is_the_one_marked_default_not_the_first() -> None:
    profiles = [
        {
            "display_name": "ML",
            "slug": "ml",
            "profile_options": {
                "acc": {
                    "display_name": "Accelerator",
                    "choices": {
                        "t4": {"display_name": "T4", "kubespawner_override": GPU},
                        "none": {"display_name": "None", "default": True},
                    },
                }
            },
        }
    ]
    assert await gpu_spawn(_Spawner({"profile": "ml"}, profiles), frozenset()) == (False, "ml")
    # without a default choice, the first one
    del profiles[0]["profile_options"]["acc"]["choices"]["none"]["default"]
    assert await gpu_spawn(_Spawner({"profile": "ml"}, profiles), frozenset()) == (True, "ml")


async def test_a_free_form_value_wins_over_a_listed_choice() -> None:
    # KubeSpawner applies the unlisted choice whenever "<option>--unlisted-choice" has a value
    profiles = [
        {
            "display_name": "ML",
            "slug": "ml",
            "profile_options": {
                "acc": {
                    "display_name": "Accelerator",
                    "choices": {"none": {"display_name": "None", "default": True}},
                    "unlisted_choice": {
                        "enabled": True,
                        "display_name": "GPUs",
                        "kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": "{value}"}},
                    },
                }
            },
        }
    ]
    spawner = _Spawner({"profile": "ml", "acc": "none", "acc--unlisted-choice": "2"}, profiles)
    assert await gpu_spawn(spawner, frozenset()) == (True, "ml")
    spawner.user_options = {"profile": "ml", "acc": "none", "acc--unlisted-choice": "0"}
    assert await gpu_spawn(spawner, frozenset()) == (False, "ml")


async def test_a_slug_no_profile_has_is_not_taken_for_the_default_profile() -> None:
    # KubeSpawner refuses the spawn: no GPU node is asked for on the default profile's behalf
    profiles = [
        {"display_name": "GPU", "slug": "gpu", "default": True, "kubespawner_override": GPU},
        {"display_name": "CPU", "slug": "cpu"},
    ]
    assert await gpu_spawn(_Spawner({"profile": "typo"}, profiles), frozenset()) == (False, "typo")
    assert await gpu_spawn(_Spawner({"profile": "typo"}, profiles), frozenset({"typo"})) == (True, "typo")


async def test_a_gpu_the_spawners_own_configuration_asks_for_counts() -> None:
    # z2jh's singleuser.extraResource.limits: every server asks for a GPU, with or without profiles
    hub_wide = {"nvidia.com/gpu": "1"}
    assert await gpu_spawn(_Spawner({}, None, limits=dict(hub_wide)), frozenset()) == (True, "")
    profiles = [{"display_name": "Default", "slug": "default"}, {"display_name": "Small", "slug": "small"}]
    assert await gpu_spawn(_Spawner({"profile": "small"}, profiles, limits=dict(hub_wide)), frozenset()) == (
        True,
        "small",
    )
    assert await gpu_spawn(_Spawner({"profile": "small"}, profiles), frozenset()) == (False, "small")


async def test_a_named_servers_signal_carries_its_name() -> None:
    async with _Hubpilot() as hubpilot:
        part = ScaleDemand(hubpilot.url, "t", gpu_profiles=["gpu"], timeout=5)
        part(_Spawner({"profile": "gpu"}, name="train"))
        part(_Spawner({"profile": "gpu"}))
        await asyncio.gather(*part._tasks)
    assert sorted(hubpilot.bodies, key=lambda b: b["server"]) == [
        {"user": "ana", "server": "", "profile": "gpu"},
        {"user": "ana", "server": "train", "profile": "gpu"},
    ]


async def test_a_start_timeout_set_higher_than_hubpilots_is_kept() -> None:
    part = GpuStartTimeout(900, gpu_profiles=["gpu"])
    spawner = _Spawner({"profile": "gpu"}, start_timeout=3600)
    await part(spawner)
    assert spawner.start_timeout == 3600


def test_a_gpu_profiles_own_start_timeout_above_hubpilots_is_kept(clean_parts: None) -> None:
    c = Config()
    c.KubeSpawner.profile_list = [
        {"display_name": "GPU", "slug": "gpu", "kubespawner_override": {"start_timeout": 3600}},
        {
            "display_name": "ML",
            "slug": "ml",
            "kubespawner_override": {"start_timeout": 2400},
            "profile_options": {
                "acc": {
                    "display_name": "Accelerator",
                    "choices": {"t4": {"display_name": "T4", "kubespawner_override": {**GPU, "start_timeout": 3000}}},
                }
            },
        },
    ]
    configure_gpu_start_timeout(c, gpu_profiles=["gpu"], seconds=900)
    gpu, ml = c.KubeSpawner.profile_list
    assert gpu["kubespawner_override"]["start_timeout"] == 3600
    assert ml["kubespawner_override"]["start_timeout"] == 2400
    assert ml["profile_options"]["acc"]["choices"]["t4"]["kubespawner_override"]["start_timeout"] == 3000


async def test_the_signal_goes_to_the_demand_endpoint_and_a_400_is_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    """A demand url given with a trailing slash posts to ``/api/v1/scale/demand`` (not
    ``/api/v1//scale/demand``); hubpilot refusing the signal (400) is a failure, logged."""
    caplog.set_level(logging.DEBUG, logger=hooks.LOGGER)
    seen: list[bytes] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0])
        body = b'{"error": "bad request"}'
        head = b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        writer.write(head + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    try:
        part = ScaleDemand(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api/v1/", "t", timeout=5)
        assert await part.send({"user": "ana", "server": "", "profile": "gpu"}) == 400
    finally:
        server.close()
    assert seen == [b"POST /api/v1/scale/demand HTTP/1.1"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "400" in warnings[0], warnings

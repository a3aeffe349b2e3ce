"""What the logs say: a quiet round writes at most one INFO line (App Insights bills every line of
a timer that fires 1,440 times a day), and a run that changes something, is refused or fails says
so with its run id and operation. Real parts: Azurite, kmock, the ARM double, a real hub."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hubpilot.adapters.aks import AksPool
from hubpilot.adapters.kube import KubeCluster
from hubpilot.api.scheduling import run_scheduled
from hubpilot.settings import load_settings
from hubpilot.wiring import Context, build_context
from hubpilot.wiring.scale import scale_adapters
from tests.azurite import Azurite
from tests.doubles.arm import ArmDouble, StaticToken
from tests.fixtures.kmock import NS, Emulator
from tests.realhub import RealHub


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno == logging.INFO]


@pytest.fixture
async def scale_ctx(azurite: Azurite, kube: Emulator) -> AsyncIterator[Context]:
    """The scale capability as the Functions app wires it (Azure state store), on a pool with
    nothing to do: one busy node, no pending pod."""
    kube.clear()
    arm = ArmDouble()
    await arm.start()
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    unique = uuid.uuid4().hex[:10]
    settings = load_settings(None, state={
        "kind": "azure", "azure_connection_string": azurite.connection_string,
        "azure_table_prefix": f"l{unique}", "azure_container": f"l{unique}"},
        scale={"subscription_id": arm.subscription, "resource_group": arm.resource_group,
               "cluster": arm.cluster, "enabled": True})
    ctx = build_context(settings)
    pool = AksPool(StaticToken(), subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool="gpu", base_url=arm.base_url, retry_total=1,
                   retry_backoff=0.01, polling_interval=0.01, lro_wait=5.0)
    scale_adapters(ctx, pool=pool, cluster=KubeCluster(namespace=NS, pool="gpu", api_url=kube.url))
    try:
        yield ctx
    finally:
        await ctx.close()
        await arm.stop()


@pytest.mark.azurite
async def test_a_quiet_scale_minute_writes_one_info_line(scale_ctx: Context,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The Functions host and serve log at INFO: the SDKs' per-request lines (azure-core's
    http_logging_policy: each request and response with its headers) are not written there."""
    first = await run_scheduled(scale_ctx, "scale")  # the first round records the pool's size
    assert first is not None and first.outcome == "applied"
    caplog.clear()
    caplog.set_level(logging.INFO)
    record = await run_scheduled(scale_ctx, "scale")
    assert record is not None and record.plan is not None and record.plan.empty
    lines = info_lines(caplog)
    assert len(lines) == 1 and record.run_id in lines[0], "\n".join(lines)


async def test_a_quiet_cull_round_writes_one_info_line(real_hub: RealHub, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """httpx logs every hub request at INFO: not on a round with nothing idle."""
    settings = load_settings(None, hub={"api_url": real_hub.api_url, "token": real_hub.hubpilot_token},
                             state={"sqlite_path": str(tmp_path / "s.db")})
    ctx = build_context(settings)
    try:
        await run_scheduled(ctx, "cull")  # the day's pruning of old run documents, once
        caplog.clear()
        caplog.set_level(logging.INFO)
        record = await run_scheduled(ctx, "cull")
        assert record is not None and record.plan is not None and record.plan.empty
        lines = info_lines(caplog)
        assert len(lines) == 1 and record.run_id in lines[0], "\n".join(lines)
    finally:
        await ctx.close()


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
from hubpilot.api.runs import RunRequest, execute_run
from hubpilot.api.scheduling import run_scheduled
from hubpilot.settings import load_settings
from hubpilot.wiring import Context, build_context
from hubpilot.wiring.scale import scale_adapters
from tests.azurite import Azurite
from tests.doubles.arm import ArmDouble, StaticToken
from tests.fixtures.kmock import NS, Emulator
from tests.realhub import RealHub, free_port


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



def run_lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= level]


async def test_a_failing_scheduled_round_writes_one_warning_with_its_run_id_and_cause(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The hub down every minute: one line per run, naming the run and what failed, no traceback."""
    settings = load_settings(None, hub={"api_url": f"http://127.0.0.1:{free_port()}/hub/api", "token": "t",
                                        "retries": 0},
                             state={"sqlite_path": str(tmp_path / "s.db")})
    ctx = build_context(settings)
    try:
        await run_scheduled(ctx, "cull")  # the day's pruning of old run documents, once
        caplog.clear()
        caplog.set_level(logging.INFO)
        record = await run_scheduled(ctx, "cull")
        assert record is not None and record.outcome == "failed"
        lines = run_lines(caplog)
        assert len(lines) == 1, caplog.text
        (line,) = lines
        assert line.levelno == logging.WARNING and not line.exc_info
        said = line.getMessage()
        assert record.run_id in said and "cull" in said and "hub unreachable" in said, said
    finally:
        await ctx.close()


async def test_a_run_started_over_http_says_how_it_ended(real_hub: RealHub, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A run the API queued (the run_queue function, serve's task) is logged like a timer's: its
    run id, operation and outcome; a failed one at WARNING with the cause."""
    settings = load_settings(None, hub={"api_url": real_hub.api_url, "token": real_hub.hubpilot_token},
                             state={"sqlite_path": str(tmp_path / "s.db")})
    ctx = build_context(settings)
    try:
        await run_scheduled(ctx, "cull")  # the day's pruning of old run documents, once
        caplog.clear()
        caplog.set_level(logging.INFO)
        req = RunRequest(uuid.uuid4().hex, "cull", "api", "token:admin")
        record = await execute_run(ctx, req)
        assert record is not None and record.outcome == "applied"
        lines = [r for r in run_lines(caplog) if req.run_id in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.INFO, caplog.text
        assert "cull" in lines[0].getMessage() and "applied" in lines[0].getMessage()
    finally:
        await ctx.close()

    down = load_settings(None, hub={"api_url": f"http://127.0.0.1:{free_port()}/hub/api", "token": "t",
                                    "retries": 0},
                         state={"sqlite_path": str(tmp_path / "s.db")})
    ctx = build_context(down)
    try:
        caplog.clear()
        req = RunRequest(uuid.uuid4().hex, "cull", "api", "token:admin")
        record = await execute_run(ctx, req)
        assert record is not None and record.outcome == "failed"
        lines = [r for r in run_lines(caplog, logging.WARNING) if req.run_id in r.getMessage()]
        assert len(lines) == 1 and "hub unreachable" in lines[0].getMessage(), caplog.text
    finally:
        await ctx.close()


async def test_serve_with_its_state_store_down_writes_one_line_a_round_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """A state store that does not answer fails every round of a minute schedule alike: each round
    says so in one line that names the failure, not an ERROR with a traceback 1,440 times a day."""
    from datetime import UTC, datetime, timedelta

    from hubpilot.adapters.store_azure import AzureStore
    from hubpilot.api.scheduling import Schedule
    from hubpilot.serve import Scheduler
    from tests.azurite import ACCOUNT_KEY, ACCOUNT_NAME

    dead = free_port()
    conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{dead}/{ACCOUNT_NAME};TableEndpoint=http://127.0.0.1:{dead}/{ACCOUNT_NAME};"
            f"QueueEndpoint=http://127.0.0.1:{dead}/{ACCOUNT_NAME}")
    store = AzureStore.from_settings(connection_string=conn, retry_total=0, timeout=2)
    now = {"t": datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)}

    async def sleep(seconds: float) -> None:
        now["t"] += timedelta(seconds=seconds)

    ctx = Context(settings=load_settings(None), store=store, clock=lambda: now["t"])
    try:
        sched = Scheduler(ctx, [Schedule("cull", "0 * * * * *", True, "cull.schedule")], sleep=sleep)
        await sched.tick(sched.schedules[0])  # the first round also says it cannot catch up
        caplog.clear()
        caplog.set_level(logging.INFO)
        for _ in range(3):
            assert await sched.tick(sched.schedules[0]) is None
        lines = [r for r in run_lines(caplog) if r.name.startswith("hubpilot")]
        assert len(lines) == 3 and not [r for r in lines if r.exc_info], caplog.text
        assert all("cull" in r.getMessage() and "state store" in r.getMessage() for r in lines), caplog.text
    finally:
        await ctx.close()

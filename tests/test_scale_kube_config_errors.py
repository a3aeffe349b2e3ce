"""Review: a Kubernetes setting of an enabled scale that cannot be used (a ``scale.kube_ca_file`` that
cannot be read, a ``scale.kubeconfig`` that does not exist, no credentials at all) was an error of
building the capability, not of the run: the scheduled round skipped scale as "not configured"
(logged once at INFO, then at DEBUG: the pool never scaled and nothing said so), or raised with a
traceback every round and recorded nothing; ``GET /plan/scale`` answered 500. Such a setting now
fails the run when it observes the cluster, as an LDAP CA file that cannot be read fails the sync:
a failed run, recorded (``GET /status``'s last run, the audit log), whose error names the setting.
Against the ARM double (the pool) and the real wiring; the Kubernetes client is the real one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.aks import AksPool
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.api.runs import drain_tasks
from hubpilot.api.scheduling import run_scheduled
from hubpilot.settings import Settings
from hubpilot.wiring import Context
from hubpilot.wiring.scale import build_scale
from tests.doubles.arm import ArmDouble, StaticToken
from tests.test_api_kit import HUB_TOKEN, asgi_client, auth, token_settings

ADMIN, READER, HUB = auth("admin"), auth("reader"), auth("hub")


@pytest.fixture
async def arm() -> AsyncIterator[ArmDouble]:
    double = ArmDouble()
    await double.start()
    double.add_pool("gpu", count=0, machines=[])
    try:
        yield double
    finally:
        await double.stop()


async def _context(arm: ArmDouble, tmp: Path, **scale: Any) -> tuple[Context, AksPool]:
    settings = Settings(hub={"api_url": "http://127.0.0.1:9/hub/api", "token": HUB_TOKEN},
                        api={"tokens": token_settings()},
                        scale={"enabled": True, "subscription_id": arm.subscription,
                               "resource_group": arm.resource_group, "cluster": arm.cluster, **scale})
    ctx = Context(settings=settings, store=SqliteStore(tmp / f"s-{uuid.uuid4().hex[:6]}.sqlite3"))
    pool = AksPool(StaticToken(), subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool="gpu", base_url=arm.base_url, retry_total=0, lro_wait=5.0)
    # the real build_cluster from the settings; the pool is the ARM double's
    ctx.factories["scale"] = lambda c: build_scale(c, pool=pool)
    return ctx, pool


async def _says_it_everywhere(ctx: Context, arm: ArmDouble, says: str) -> None:
    try:
        record = await run_scheduled(ctx, "scale")
        assert record is not None, "the scheduled round was skipped as if scale were not configured"
        assert str(record.outcome) == "failed" and says in (record.error or ""), record
        async with asgi_client(ctx) as client:
            last = (await client.get("/api/v1/status", headers=READER)).json()
            scale = next(o for o in last["operations"] if o["operation"] == "scale")
            assert scale["last_run"] and scale["last_run"]["outcome"] == "failed", last
            plan = await client.get("/api/v1/plan/scale", headers=READER)
            assert plan.status_code == 200, plan.text
            assert plan.json()["outcome"] == "failed" and says in plan.json()["error"], plan.json()
            r = await client.post("/api/v1/scale/demand", json={"user": "ana"}, headers=HUB)
            assert r.status_code == 202 and r.json()["run_id"], r.text
            await drain_tasks()
            run = (await client.get(f"/api/v1/runs/{r.json()['run_id']}", headers=READER)).json()
            assert run["outcome"] == "failed" and says in run["error"], run
        assert not arm.writes()
    finally:
        await drain_tasks()
        await ctx.close()


async def test_an_unreadable_kube_ca_file_fails_the_run_naming_it(arm: ArmDouble, tmp_path: Path) -> None:
    missing = tmp_path / "kube-ca.pem"
    ctx, pool = await _context(arm, tmp_path, kube_auth="entra", kube_api_url="https://127.0.0.1:9",
                               kube_ca_file=str(missing))
    try:
        await _says_it_everywhere(ctx, arm, f"scale.kube_ca_file: cannot read {missing}")
    finally:
        await pool.close()


async def test_a_missing_kubeconfig_fails_the_run_naming_it(arm: ArmDouble, tmp_path: Path) -> None:
    missing = tmp_path / "kube.yaml"
    ctx, pool = await _context(arm, tmp_path, kubeconfig=str(missing))
    try:
        await _says_it_everywhere(ctx, arm, f"scale.kubeconfig: no file {missing}")
    finally:
        await pool.close()


async def test_no_kubernetes_credentials_at_all_fail_the_run_naming_the_settings(
        arm: ArmDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in a cluster (no service account) and no ~/.kube/config: the client's "Invalid kube-config
    file. No configuration found." named no setting (and came as a traceback)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    ctx, pool = await _context(arm, tmp_path)
    try:
        await _says_it_everywhere(ctx, arm, "set scale.kubeconfig")
    finally:
        await pool.close()


async def test_a_kube_token_request_that_never_answers_says_the_timeout_and_its_setting(
        arm: ArmDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    """With kube_auth = entra the Kubernetes API's token comes from the pool's credential, whose
    token request has scale.arm_timeout_seconds a try (as docs/scale.md says): the managed-identity
    endpoint (the double's, behind a proxy) that accepts and never answers failed the read with
    azure-identity's text alone, naming neither the time nor the setting, as ARM's error does."""
    import asyncio
    from urllib.parse import urlsplit

    from hubpilot.config.scale import ScaleSettings
    from hubpilot.ports.cluster import ClusterError
    from hubpilot.wiring.scale import build_cluster, build_pool
    from tests.faultproxy import FaultProxy
    from tests.test_scale_aks import _managed_identity_of

    _managed_identity_of(arm, monkeypatch)
    where = urlsplit(arm.base_url)
    proxy = FaultProxy(where.hostname or "127.0.0.1", where.port or 80)
    await proxy.start()
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{proxy.port}/msi/token")
    proxy.rule(lambda method, path: path.startswith("/msi/token"), "hang")
    s = ScaleSettings(subscription_id=arm.subscription, resource_group=arm.resource_group, cluster=arm.cluster,
                      arm_endpoint=arm.base_url, retry_total=0, arm_timeout_seconds=1, kube_auth="entra",
                      kube_api_url="https://127.0.0.1:9")
    pool = build_pool(s)
    cluster = build_cluster(s, pool)
    try:
        # a bound for the test only, far above the tries' timeouts
        with pytest.raises(ClusterError) as err:
            await asyncio.wait_for(cluster.read(), 90)
        text = str(err.value)
        assert text.startswith("list GPU nodes: no token for the Kubernetes API"), text
        assert "the token endpoint gave no answer within 1 s a try (scale.arm_timeout_seconds)" in text, text
        assert proxy.seen and all(s.path.startswith("/msi/token") for s in proxy.seen)
    finally:
        await cluster.close()
        await pool.close()
        await proxy.stop()


async def test_a_kubeconfig_put_in_place_after_start_is_used_by_the_next_run(kube: Any, tmp_path: Path) -> None:
    """The runs failed naming the missing ``scale.kubeconfig``; the operator puts the file there (a
    secret mounted late, a path fixed on disk). The cluster client is built once per process, and
    it kept the first error: every later run still said "no file" for a file that was there, until
    a restart, while a ``kube_ca_file`` that cannot be read is read again by each run."""
    from hubpilot.adapters.kube import KubeCluster
    from hubpilot.ports.cluster import ClusterError
    from tests.fixtures.kmock import NS

    config = tmp_path / "kube.yaml"
    kube.clear()
    kube.node("aks-gpu-0")
    cluster = KubeCluster(namespace=NS, pool="gpu", kubeconfig=str(config))
    try:
        with pytest.raises(ClusterError, match=f"scale.kubeconfig: no file {config}"):
            await cluster.read()
        config.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"clusters: [{{name: c, cluster: {{server: '{kube.url}'}}}}]\n"
            "users: [{name: u, user: {token: t}}]\n"
            "contexts: [{name: c, context: {cluster: c, user: u}}]\n")
        view = await cluster.read()
        assert [n.name for n in view.nodes] == ["aks-gpu-0"], view
    finally:
        await cluster.close()
        kube.clear()


async def test_a_kubeconfig_that_is_no_yaml_fails_the_run_naming_it(arm: ArmDouble, tmp_path: Path) -> None:
    """A kubeconfig file YAML cannot read (a colon pasted into a value): the YAML error escaped the
    client's ConfigException handling, so the scheduled round raised a traceback, recorded no run
    and named no setting; it must fail the run naming scale.kubeconfig and the line, never quoting
    the file's text (its user token)."""
    kubeconfig = tmp_path / "kube.yaml"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n"
                          "    token: 0123456789abcdefKUBESECRET: x\n")
    ctx, pool = await _context(arm, tmp_path, kubeconfig=str(kubeconfig))
    try:
        record = await run_scheduled(ctx, "scale")
        assert record is not None and "KUBESECRET" not in (record.error or ""), record
        await _says_it_everywhere(ctx, arm, f"scale.kubeconfig: {kubeconfig} is no YAML: mapping values are not "
                                            "allowed here at line 6")
    finally:
        await pool.close()


async def test_a_default_kubeconfig_that_is_no_yaml_fails_the_run_naming_it(
        arm: ArmDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No scale.kubeconfig, not in a cluster, and a ~/.kube/config YAML cannot read: the same
    traceback and no run recorded; the run must fail saying which file, and the settings to set."""
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("users:\n- name: u\n  user:\n    token: 0123456789abcdefKUBESECRET: x\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    ctx, pool = await _context(arm, tmp_path)
    try:
        record = await run_scheduled(ctx, "scale")
        assert record is not None and "KUBESECRET" not in (record.error or ""), record
        await _says_it_everywhere(ctx, arm, f"{tmp_path / '.kube' / 'config'} is no YAML: mapping values are not "
                                            "allowed here at line 4")
    finally:
        await pool.close()


async def test_a_refused_connection_is_not_reported_as_a_timeout() -> None:
    """urllib3 makes its NewConnectionError a kind of ConnectTimeoutError: a Kubernetes API nobody
    listens on (a wrong port, the server down) was reported as 'no answer within 30 s', sending the
    admin to look for a slow server; the error now says the connection was refused."""
    import socket

    from hubpilot.adapters.kube import KubeCluster
    from hubpilot.ports.cluster import ClusterError

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = KubeCluster(namespace="jhub", pool="gpu", api_url=f"http://127.0.0.1:{port}", request_timeout=30)
    with pytest.raises(ClusterError) as err:
        await cluster.read()
    text = str(err.value)
    assert "no answer" not in text, text
    assert "refused" in text.lower() and str(port) in text, text

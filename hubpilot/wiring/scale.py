"""Wiring of the scale capability: settings → AKS pool, Kubernetes view, policy."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TextIO

from hubpilot.config.scale import ScaleSettings
from hubpilot.ports.cluster import Cluster, ClusterError
from hubpilot.ports.pool import Pool
from hubpilot.scale import CostReport, Policy, ScaleCapability, Schedule, forecast_policy_from
from hubpilot.scale import cost_report as _cost_report
from hubpilot.scale.cost import observation_gap
from hubpilot.schedule import longest_gap
from hubpilot.wiring import NO_POOL, NotConfigured, pool_named

if TYPE_CHECKING:
    from hubpilot.wiring import Context

_ADAPTERS_ATTR = "_scale_adapters"


@dataclass
class ScaleAdapters:
    pool: Pool
    cluster: Cluster

    async def close(self) -> None:
        await self.pool.close()
        await self.cluster.close()


def policy_from(s: ScaleSettings) -> Policy:
    return Policy(
        schedule=Schedule.of(s.warm, s.timezone, s.holidays),
        min_nodes=s.min_nodes,
        max_nodes=s.max_nodes,
        max_step_up=s.max_step_up,
        max_step_down=s.max_step_down,
        idle=timedelta(minutes=s.idle_minutes),
        delay_after_up=timedelta(minutes=s.scale_down_delay_after_up_minutes),
        down_cooldown=timedelta(minutes=s.scale_down_cooldown_minutes),
        demand_ttl=timedelta(minutes=s.demand_ttl_minutes),
        pods_per_node=s.pods_per_node,
        join_grace=timedelta(minutes=s.node_join_grace_minutes),
        forecast=forecast_policy_from(s),
        reclaim_after=timedelta(minutes=s.reclaim_idle_minutes) if s.reclaim_idle_minutes else None,
        max_reclaim=s.max_reclaim,
    )


def build_pool(s: ScaleSettings) -> Pool:
    from azure.identity.aio import DefaultAzureCredential

    from hubpilot.adapters.aks import AksPool

    if not pool_named(s):
        raise NotConfigured(NO_POOL)
    # each try of a token request has the ARM timeout (azure-core's default is 300 s a try: a token
    # endpoint that accepts and never answers held the run, and the scale lock, for minutes)
    credential = DefaultAzureCredential(authority=s.authority, connection_timeout=s.arm_timeout_seconds,
                                        read_timeout=s.arm_timeout_seconds)
    return AksPool(
        credential,
        subscription_id=s.subscription_id,
        resource_group=s.resource_group,
        cluster=s.cluster,
        pool=s.pool,
        base_url=s.arm_endpoint,
        credential_scopes=(s.effective_arm_audience,),
        api_version=s.api_version,
        retry_total=s.retry_total,
        retry_backoff=s.retry_backoff_seconds,
        lro_wait=s.lro_wait_seconds,
        timeout=s.arm_timeout_seconds,
    )


def build_cluster(s: ScaleSettings, pool: Pool | None = None) -> Cluster:
    """The Kubernetes view. With ``kube_auth = "entra"`` it authenticates with the AKS pool's
    credential (the app's identity) and takes the API server from ARM unless ``kube_api_url``
    names it."""
    from hubpilot.adapters.kube import EntraKubeAuth, KubeCluster, KubeEndpoint, endpoint_from_kubeconfig

    auth: EntraKubeAuth | None = None
    if s.kube_auth == "entra":
        from hubpilot.adapters.aks import AksPool

        if not isinstance(pool, AksPool):
            raise NotConfigured("scale.kube_auth = 'entra' uses the AKS pool's credential: configure "
                                "scale.subscription_id, scale.resource_group and scale.cluster")
        aks = pool
        if s.kube_api_url:
            url, ca_file = s.kube_api_url.rstrip("/"), s.kube_ca_file

            async def endpoint() -> KubeEndpoint:
                # read when the run first calls the API: a file that cannot be read fails the run
                # naming it (a configuration error at build time skipped the scheduled round)
                return KubeEndpoint(url, await asyncio.to_thread(_read_ca, ca_file) if ca_file else None)
        else:
            async def endpoint() -> KubeEndpoint:
                return endpoint_from_kubeconfig(await aks.user_kubeconfig(), f"ARM's user kubeconfig of cluster "
                                                f"{aks.cluster} (listClusterUserCredential)")
        auth = EntraKubeAuth(aks.credential, endpoint, server_id=s.kube_server_id,
                             token_timeout=s.arm_timeout_seconds)

    return KubeCluster(
        namespace=s.namespace,
        all_namespaces=s.user_namespaces,
        pool=s.pool,
        node_pool_label=s.node_pool_label,
        user_pod_selector=s.user_pod_selector,
        gpu_resource=s.gpu_resource,
        api_url=None if auth else s.kube_api_url,
        kubeconfig=s.kubeconfig,
        auth=auth,
        request_timeout=s.kube_timeout_seconds,
    )


def _read_ca(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ClusterError(f"scale.kube_ca_file: cannot read {os.path.abspath(path)}: {exc.strerror or exc}") from exc


def scale_adapters(ctx: Context, *, pool: Pool | None = None, cluster: Cluster | None = None) -> ScaleAdapters:
    """The pool and cluster clients of this context, built once (or the ones given, for tests)."""
    have: ScaleAdapters | None = getattr(ctx, _ADAPTERS_ATTR, None)
    if have is None or pool is not None or cluster is not None:
        s = ctx.settings.scale
        pool = pool or build_pool(s)
        have = ScaleAdapters(pool, cluster or build_cluster(s, pool))
        setattr(ctx, _ADAPTERS_ATTR, have)
        ctx._closers.append(have.close)
    return have


def build_scale(ctx: Context, *, pool: Pool | None = None, cluster: Cluster | None = None) -> ScaleCapability:
    s = ctx.settings.scale
    adapters = scale_adapters(ctx, pool=pool, cluster=cluster)
    hub: Any = ctx.hub if s.gpu_profiles or s.reclaim_idle_minutes else None
    return ScaleCapability(
        adapters.pool, adapters.cluster, ctx.store, policy_from(s), clock=ctx.clock, hub=hub,
        gpu_profiles=s.gpu_profiles, holder=ctx.holder, observed_gap=observed_gap(s),
        activity_lag=timedelta(seconds=ctx.settings.cull.activity_lag),
    )


def observed_gap(s: ScaleSettings) -> timedelta:
    """How long after one observation of the pool the next is due, by the scale schedule."""
    return observation_gap(_longest_gap(s.schedule))


_longest_gap = lru_cache(maxsize=8)(longest_gap)  # half a second for an every-minute schedule


async def report(ctx: Context, *, days: int, always_on_nodes: int | None = None) -> CostReport:
    """The cost report with the settings' price, currency, timezone and schedule."""
    s = ctx.settings.scale
    return await _cost_report(ctx.store, now=ctx.clock(), days=days, price=s.price_per_node_hour,
                              currency=s.currency, always_on_nodes=always_on_nodes, timezone=s.timezone,
                              gap=observed_gap(s), stopped_price=s.stopped_vm_price_per_hour)


async def cost_report(ctx: Context, *, days: int = 7, as_json: bool = False, out: TextIO,
                      always_on_nodes: int | None = None) -> int:
    """``hubpilot cost``: GPU node-hours and cost per day vs an always-on pool. Returns 0, or 2
    for a bad ``days``."""
    try:
        rep = await report(ctx, days=days, always_on_nodes=always_on_nodes)
    except ValueError as exc:
        out.write(f"hubpilot cost: {exc}\n")
        return 2
    if as_json:
        json.dump(rep.to_json(), out, indent=2)
        out.write("\n")
    else:
        out.write(rep.render() + "\n")
    return 0

"""The Kubernetes view the scale capability needs: GPU nodes, user pods, cordoning."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

CORDON_ANNOTATION = "hubpilot.io/cordoned-by"
"""Node annotation naming who cordoned it: hubpilot removes only nodes it cordoned itself."""


@dataclass(frozen=True)
class Taint:
    """A node taint (``spec.taints``)."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"  # NoSchedule, PreferNoSchedule or NoExecute


@dataclass(frozen=True)
class Toleration:
    """A pod toleration (``spec.tolerations``), matched as Kubernetes matches it."""

    key: str = ""  # "" with operator Exists: every key
    operator: str = "Equal"  # Equal or Exists
    value: str = ""
    effect: str = ""  # "": every effect
    seconds: int | None = None  # tolerationSeconds (NoExecute): evicted that long after the taint

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if not self.key:
            return self.operator == "Exists"
        if self.key != taint.key:
            return False
        return self.operator == "Exists" or self.value == taint.value

    def stays(self, taint: Taint) -> bool:
        """Whether a pod with this toleration can stay on a node with the taint: it tolerates it, and
        a NoExecute taint without tolerationSeconds (with them, the pod is scheduled there and
        evicted when they are up)."""
        return self.tolerates(taint) and not (taint.effect == "NoExecute" and self.seconds is not None)


@dataclass(frozen=True)
class NodeInfo:
    """A node of the GPU pool."""

    name: str
    ready: bool
    unschedulable: bool
    created: datetime | None
    machine: str  # the AKS machine name (the VMSS instance's node name)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    deleting: bool = False  # metadata.deletionTimestamp is set: the node object is being deleted
    resource_version: str = ""  # metadata.resourceVersion as observed ("" unknown)
    # status.allocatable of the GPU resource (None: the node does not list it). The device plugin
    # registers GPUs minutes after the node is Ready (the GPU operator installs the driver first),
    # and takes out of it for good a GPU it marks unhealthy (an Xid error): the node stays Ready
    gpus: int | None = None
    ready_since: datetime | None = None  # lastTransitionTime of the Ready condition (None: unknown)


AUTOSCALER_DELETING = "ToBeDeletedByClusterAutoscaler"  # the cluster autoscaler's removal mark


def marked_for_removal(node: NodeInfo) -> bool:
    """Whether someone else is removing the node: its object is being deleted (deletionTimestamp),
    or it carries the cluster autoscaler's removal mark, of any age. hubpilot never removes it."""
    return node.deleting or any(t.key == AUTOSCALER_DELETING for t in node.taints)


@dataclass(frozen=True)
class UserPod:
    """A user server pod in the hub namespace (``gpu``: it requests the GPU resource)."""

    name: str
    node: str | None  # None while unscheduled
    phase: str  # Pending, Running, ...
    unschedulable: bool  # PodScheduled=False, reason Unschedulable
    created: datetime | None
    user: str = ""
    server: str = ""
    gpu: bool = True
    tolerations: tuple[Toleration, ...] = ()
    # metadata.deletionTimestamp is set: on a node it holds the node until it is gone; unscheduled
    # (a spawn cancelled, a server stopped before it was placed) it waits for no node
    deleting: bool = False


@dataclass(frozen=True)
class ClusterView:
    nodes: tuple[NodeInfo, ...]
    pods: tuple[UserPod, ...]


class ClusterError(Exception):
    """The Kubernetes API could not be read or written."""


class Cluster(Protocol):
    async def read(self) -> ClusterView:
        """GPU pool nodes and user pods (selectors sent to the server and applied again here)."""
        ...

    async def pods_on(self, node: str) -> list[UserPod]:
        """User pods (GPU or not) currently bound to ``node``: the re-check before removal."""
        ...

    async def cordon(self, node: str, by: str, *, resource_version: str = "") -> bool:
        """Mark the node unschedulable (annotated as cordoned by ``by``); False, touching nothing,
        when it is gone, cordoned by someone else, or being deleted (deletionTimestamp, the
        cluster autoscaler's removal mark), or, with ``resource_version`` (as observed), when it
        has changed since (the API server refuses the write, 409)."""
        ...

    async def uncordon(self, node: str) -> bool:
        """Mark the node schedulable again and drop our annotation; False when it is gone."""
        ...

    async def close(self) -> None: ...


def parse_selector(selector: str) -> dict[str, str | None]:
    """``a=b,c`` → {"a": "b", "c": None} (equality and existence terms)."""
    out: dict[str, str | None] = {}
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        # "!key" (label absent) too: read as a key named "!key" it would match no pod at all;
        # set terms ("k in (a,b)", "k notin (a)") split at their commas and keep a parenthesis
        if "!" in term or "(" in term or ")" in term or re.search(r"\s(in|notin)\b", term):
            raise ValueError(f"selector term {term!r}: only 'key=value' and 'key' are supported")
        key, _, value = term.partition("=")
        out[key.strip().rstrip("=")] = value.strip().lstrip("=") if _ else None
    return out

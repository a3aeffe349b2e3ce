"""The Kubernetes view the scale capability needs: GPU nodes, user pods, cordoning."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

CORDON_ANNOTATION = "hubpilot.io/cordoned-by"
"""Node annotation naming who cordoned it: hubpilot removes only nodes it cordoned itself."""


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

    async def cordon(self, node: str, by: str) -> bool:
        """Mark the node unschedulable (annotated as cordoned by ``by``); False when it is gone."""
        ...

    async def uncordon(self, node: str) -> bool:
        """Mark the node schedulable again and drop our annotation; False when it is gone."""
        ...

    async def close(self) -> None: ...

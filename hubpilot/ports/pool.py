"""The AKS agent pool as the scale capability needs it."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

FAILED_STATES = ("Failed", "Canceled")  # ARM provisioning states of a pool whose last operation did not finish


@dataclass(frozen=True)
class PoolState:
    """One observation of the agent pool (``agent_pools.get``)."""

    name: str
    count: int
    min_count: int | None
    max_count: int | None
    autoscaling: bool
    power_state: str  # "Running" or "Stopped"
    provisioning_state: str  # "Succeeded", "Updating", "Scaling", "Failed", ...
    vm_size: str
    etag: str | None = None
    scale_down_mode: str | None = None  # "Delete" or "Deallocate"
    node_taints: tuple[str, ...] = ()  # the pool's own taints, "key=value:Effect" (nodeTaints)

    @property
    def busy(self) -> bool:
        """Another operation on the pool is under way: ARM would answer 409."""
        return self.provisioning_state != "Succeeded" and self.provisioning_state not in FAILED_STATES

    @property
    def failed(self) -> bool:
        """The pool's last operation failed or was canceled. ARM keeps that operation's count as the
        pool's (it is the goal from the moment the PUT is accepted), so machines of the count may
        never have been created."""
        return self.provisioning_state in FAILED_STATES


class PoolOutcome(enum.StrEnum):
    DONE = "done"  # the operation finished
    PENDING = "pending"  # accepted, still running when we stopped waiting
    CONFLICT = "conflict"  # 409: another operation on the pool is in progress; or 412: it changed since read
    NOOP = "noop"  # nothing to change


@dataclass(frozen=True)
class PoolResult:
    outcome: PoolOutcome
    detail: str = ""


class PoolError(Exception):
    """An ARM request failed after the client's own retries, or its operation failed."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Pool(Protocol):
    """The GPU agent pool. Writes are idempotent; a 409 is reported as CONFLICT, never retried."""

    async def get(self) -> PoolState: ...

    async def set_count(self, count: int, *, etag: str | None = None) -> PoolResult:
        """Direct mode (autoscaler off): the pool's node count."""
        ...

    async def set_min_count(self, min_count: int, *, etag: str | None = None) -> PoolResult:
        """Autoscaler-assist mode: the autoscaler's lower bound (count is never set)."""
        ...

    async def delete_machines(self, machines: Sequence[str]) -> PoolResult:
        """Remove these machines (nodes) from the pool, lowering its count by as many."""
        ...

    async def machines(self) -> list[str]:
        """The names of the machines the pool has now (``Machines_List``): after a removal that
        failed, which of its machines went. Raises :class:`PoolError` when they cannot be read."""
        ...

    async def close(self) -> None: ...

"""Sync: directory groups → hub users, admins and groups."""

from hubpilot.sync.capability import MANAGED_KEY, ManagedRecordError, SyncCapability, read_managed
from hubpilot.sync.plan import ManagedUser, SyncObserved, desired_state, guard_sync, plan_sync

__all__ = [
    "MANAGED_KEY",
    "ManagedRecordError",
    "ManagedUser",
    "SyncCapability",
    "SyncObserved",
    "desired_state",
    "guard_sync",
    "plan_sync",
    "read_managed",
]

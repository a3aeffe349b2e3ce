"""Sync: directory groups → hub users, admins and groups."""

from hubpilot.sync.capability import MANAGED_KEY, SyncCapability
from hubpilot.sync.plan import ManagedUser, SyncObserved, desired_state, guard_sync, plan_sync

__all__ = [
    "MANAGED_KEY",
    "ManagedUser",
    "SyncCapability",
    "SyncObserved",
    "desired_state",
    "guard_sync",
    "plan_sync",
]

"""Culling idle servers through the JupyterHub REST API (see docs/cull.md)."""

from hubpilot.cull.capability import CullCapability
from hubpilot.cull.plan import CullObserved, guard_cull, plan_cull
from hubpilot.cull.policy import Limits, limits_for, profile_of

__all__ = ["CullCapability", "CullObserved", "Limits", "guard_cull", "limits_for", "plan_cull", "profile_of"]

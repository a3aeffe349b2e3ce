"""Wiring of the cull capability."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubpilot.cull import CullCapability

if TYPE_CHECKING:
    from hubpilot.wiring import Context


def build_cull(ctx: Context) -> CullCapability:
    return CullCapability(ctx.hub, ctx.settings.cull, ctx.store, clock=ctx.clock)

from __future__ import annotations

from hubpilot.config.base import Section


class CullSettings(Section):
    """Settings of the cull work (its owner fills this in)."""

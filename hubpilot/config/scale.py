from __future__ import annotations

from hubpilot.config.base import Section


class ScaleSettings(Section):
    """Settings of the scale work (its owner fills this in)."""

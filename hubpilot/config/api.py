from __future__ import annotations

from hubpilot.config.base import Section


class ApiSettings(Section):
    """Settings of the api work (its owner fills this in)."""

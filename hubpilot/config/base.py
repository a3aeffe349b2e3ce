"""Shared pieces of the settings sections."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from hubpilot.schedule import validate_ncrontab


class Section(BaseModel):
    """A settings section: unknown keys are errors (a misspelt setting must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


NCronTab = Annotated[str, AfterValidator(validate_ncrontab)]
"""A six-field NCRONTAB expression, validated."""

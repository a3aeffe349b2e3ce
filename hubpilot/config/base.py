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


class PathSetting:
    """Marks a setting that names a file or directory: a relative path given in the settings file
    is read from that file's folder (``hubpilot.settings``); one from the environment stays
    relative to the working directory. ``several``: a list joined by ``os.pathsep`` (KUBECONFIG
    style); ``sqlite``: ``:memory:`` and ``file:`` URIs are left as they are."""

    def __init__(self, *, several: bool = False, sqlite: bool = False) -> None:
        self.several = several
        self.sqlite = sqlite


FROM_FILE_FOLDER = ("A relative path in the settings file is read from the file's folder; one in the "
                    "environment, from the working directory.")
"""The sentence each path setting's description ends with."""

"""docs/scale.md against the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

from hubpilot.config.scale import ScaleSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "scale.md"


def test_the_settings_section_names_every_scale_setting() -> None:
    """The "Settings" section lists the [scale] settings by group; one left out (the ARM and
    Kubernetes timeouts were) is a setting a reader of the page does not know exists."""
    text = DOC.read_text()
    section = text[text.index("## Settings"):].split("\n## ")[0]
    named = set(re.findall(r"`([a-z_]+)`", section))
    missing = sorted(set(ScaleSettings.model_fields) - named)
    assert not missing, f"docs/scale.md's Settings section does not name {missing}"

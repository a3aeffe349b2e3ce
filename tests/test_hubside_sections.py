"""configure() takes over a pre_spawn_hook configured on any spawner class section, whatever the
class is called (batchspawner's ``BatchSpawnerBase`` does not end in "Spawner"): a more specific
section left alone would override the composed hook and skip the access check at spawn."""

from __future__ import annotations

from traitlets.config import Config

import hubpilot_hub
from hubpilot_hub import hooks


def test_a_hook_on_any_spawner_section_is_composed() -> None:
    saved = list(hooks._PARTS)
    try:
        c = Config()

        def site(spawner: object) -> None: ...

        c.BatchSpawnerBase.pre_spawn_hook = site
        hubpilot_hub.configure(c, access_groups=["a"])
        assert c.BatchSpawnerBase.pre_spawn_hook is hooks.pre_spawn_hook
        assert ("configured:BatchSpawnerBase", True) in hooks.registered_parts()
    finally:
        hooks._PARTS[:] = saved

"""One composed ``Spawner.pre_spawn_hook``, built from parts registered in order.

JupyterHub takes a single ``pre_spawn_hook``; several hubpilot features need one (the access
check, the GPU-demand signal of ``hubpilot_hub.scale_demand``), and the deployment may have its
own. :func:`hubpilot_hub.configure` installs :func:`pre_spawn_hook` and registers, in order:

1. ``access`` — essential: refuses the spawn (403) for a user in none of the access groups;
2. ``configured`` — the ``pre_spawn_hook`` the configuration already had (essential: it keeps
   the meaning it had, a failure refuses the spawn); of hooks set on several spawner class
   sections, a spawner runs the one traitlets would give it (its most specific class's), as
   without hubpilot;
3. every other part, in registration order.

A feature adds its part with::

    from hubpilot_hub.hooks import register_pre_spawn

    def my_part(spawner):            # may be ``async``
        ...

    register_pre_spawn(my_part, name="gpu-demand")            # non-essential by default

A non-essential part that raises is logged and skipped: it never blocks the spawn. An essential
part's exception refuses the spawn (raise ``tornado.web.HTTPError`` to choose the status).
Registering a name again replaces that part in place (configure is safe to run twice).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: a child of JupyterHub's application logger ("JupyterHub"): the hub's handlers, format and
#: level apply (a logger of its own would reach no handler in the hub: its info lines were lost
#: and its warnings printed bare by logging's last resort)
LOGGER = "JupyterHub.hubpilot_hub"
log = logging.getLogger(LOGGER)

PreSpawnPart = Callable[[Any], Any]  # (spawner) -> None | Awaitable[None]


@dataclass
class _Part:
    name: str
    fn: PreSpawnPart
    essential: bool


_PARTS: list[_Part] = []
_ANNOUNCED: set[str] = set()  # late hooks already logged
#: the spawner whose composed hook (:func:`ensure_on`) is running in this task: a late hook that
#: calls the hook it found (``prev = c.Spawner.pre_spawn_hook`` then ``await prev(spawner)``)
#: calls :func:`pre_spawn_hook` inside it, whose parts this run already runs
_COMPOSED_RUN: contextvars.ContextVar[Any] = contextvars.ContextVar("hubpilot_composed_run", default=None)
#: what the parts of one run of the composed hook share (a task a part starts copies it along)
_RUN_SHARED: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar("hubpilot_run_shared",
                                                                                    default=None)


def register_pre_spawn(
    part: PreSpawnPart, *, name: str | None = None, essential: bool = False, first: bool = False,
    configured: bool = False,
) -> None:
    """Add ``part`` to the composed pre-spawn hook (replacing a part of the same name).

    ``first``: before every part (the access check). ``configured``: a hook the configuration
    had, kept as a part right after the access check and the configured hooks before it, ahead
    of the feature parts — never ahead of the access check."""
    if not callable(part):
        raise TypeError(f"pre-spawn part {name or part!r} is not callable")
    entry = _Part(name or str(getattr(part, "__qualname__", repr(part))), part, essential)
    for i, existing in enumerate(_PARTS):
        if existing.name == entry.name:
            _PARTS[i] = entry
            return
    if first:
        _PARTS.insert(0, entry)
    elif configured:
        _PARTS.insert(_after_configured(_PARTS), entry)
    else:
        _PARTS.append(entry)


def _after_configured(parts: list[_Part]) -> int:
    """The index right after the access check and the configured hooks."""
    at = 0
    for i, p in enumerate(parts):
        if p.name == "access" or p.name.startswith("configured:"):
            at = i + 1
    return at


def unregister_pre_spawn(name: str) -> None:
    _PARTS[:] = [p for p in _PARTS if p.name != name]


def registered_parts() -> list[tuple[str, bool]]:
    """(name, essential) of the parts, in the order they run."""
    return [(p.name, p.essential) for p in _PARTS]


async def pre_spawn_hook(spawner: Any) -> None:
    """The hook JupyterHub calls: runs every part in order (see the module docstring)."""
    if _COMPOSED_RUN.get() is spawner:
        return  # called by a late hook from within the composed run: each part runs once
    await _run(list(_PARTS), spawner)


def ensure_on(spawner: Any) -> None:
    """Make sure ``spawner`` runs the composed hook before it starts.

    Configuration that runs after :func:`hubpilot_hub.configure` (z2jh runs the
    ``hub.extraConfig`` snippets in the order of their keys) may set its own ``pre_spawn_hook``
    on ``Spawner`` or on the spawner's class, and a spawner class may define one in code: either
    replaces the composed hook, and the access check at spawn with it. Called for every spawn by
    the gated authenticator's ``pre_spawn_start`` (JupyterHub calls it just before the
    spawner's hook), this keeps that hook as a part — essential, right after the configured
    ones — of a composed hook on this spawner. A late hook that calls the hook it replaced
    (:func:`pre_spawn_hook`) gets nothing run by that call: the composed run runs every part once."""
    current = getattr(spawner, "pre_spawn_hook", None)
    if current is pre_spawn_hook or getattr(current, "_hubpilot_composed", False):
        return
    if current is None:
        spawner.pre_spawn_hook = pre_spawn_hook
        return
    late = _Part(f"configured-late:{getattr(current, '__qualname__', repr(current))}", current, True)
    if late.name not in _ANNOUNCED:  # once, not at every spawn
        _ANNOUNCED.add(late.name)
        log.info("hubpilot: the pre_spawn_hook %r of %s was set after hubpilot_hub.configure; it runs "
                 "as a part of hubpilot's composed hook", current, type(spawner).__name__)

    async def composed(spawner: Any) -> None:
        parts = list(_PARTS)
        at = _after_configured(parts)
        token = _COMPOSED_RUN.set(spawner)
        try:
            await _run([*parts[:at], late, *parts[at:]], spawner)
        finally:
            _COMPOSED_RUN.reset(token)

    composed._hubpilot_composed = True  # type: ignore[attr-defined]
    spawner.pre_spawn_hook = composed


def _for_spawner(parts: list[_Part], spawner: Any) -> list[_Part]:
    """The parts without the configured hooks (``configured:<section>``) traitlets would not
    have given this spawner: a spawner gets the ``pre_spawn_hook`` of the most specific section
    of its class (``c.KubeSpawner`` over ``c.Spawner``), and none of a class it is not. A spawner
    that is no traitlets ``Configurable`` (configuration never reaches it) keeps them all."""
    from traitlets.config import Configurable

    if not isinstance(spawner, Configurable):
        return parts
    sections = {p.name.partition(":")[2] for p in parts if p.name.startswith("configured:")}
    chosen = next((k.__name__ for k in type(spawner).__mro__ if k.__name__ in sections), None)
    return [p for p in parts if not p.name.startswith("configured:") or p.name == f"configured:{chosen}"]


def run_shared() -> dict[Any, Any] | None:
    """A dict the parts of the running composed hook share (e.g. one answer of a callable
    ``profile_list`` for all of them), fresh for each spawn; None outside a run of the hook."""
    return _RUN_SHARED.get()


async def _run(parts: list[_Part], spawner: Any) -> None:
    token = _RUN_SHARED.set({})
    try:
        await _run_parts(parts, spawner)
    finally:
        _RUN_SHARED.reset(token)


async def _run_parts(parts: list[_Part], spawner: Any) -> None:
    for part in _for_spawner(parts, spawner):
        try:
            result = part.fn(spawner)
            if inspect.isawaitable(result):
                await result
        except Exception:
            if part.essential:
                raise
            log.exception(
                "hubpilot pre-spawn part %r failed for %s; spawning anyway",
                part.name, getattr(spawner, "_log_name", spawner),
            )

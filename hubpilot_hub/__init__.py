"""hubpilot_hub: the part of hubpilot that runs inside JupyterHub (stdlib + jupyterhub only).

In ``jupyterhub_config.py`` (z2jh: ``hub.extraConfig``, which runs after the chart's own
configuration)::

    import hubpilot_hub
    hubpilot_hub.configure(c, access_groups=["dir-analysts"], admin_groups=["dir-hub-admins"])

What it sets:

- ``Authenticator.manage_groups = False``: hubpilot is the one group manager; an authenticator
  managing groups would overwrite them at every login.
- no ``Authenticator.admin_users`` (refused if set): admins are the members of ``admin_groups``,
  hub groups bound to JupyterHub's ``admin`` role here (``load_roles``), which hubpilot fills from
  the directory. JupyterHub lets only an admin set a user's ``admin`` flag, so a least-privilege
  service cannot; group membership it can manage.
- ``Authenticator.allow_all = True`` unless the configuration sets ``allow_all`` itself: in
  JupyterHub 5 an authenticator without allow configuration lets nobody in; the access gate is
  the allow rule instead.
- the access gate: a ``post_auth_hook`` and a part of the composed ``pre_spawn_hook``
  (:mod:`hubpilot_hub.hooks`) refuse anyone in none of ``access_groups`` (or ``admin_groups``),
  at every login and spawn, against the hub's own groups; hooks already configured are kept and
  run too (each for the spawners traitlets gives it to: the most specific class section's), and
  so is a hook configured later (z2jh runs the ``hub.extraConfig`` snippets in the
  order of their keys) or defined by a spawner class: the gated authenticator's
  ``pre_spawn_start`` makes it a part of the composed hook at every spawn
  (:func:`hubpilot_hub.hooks.ensure_on`), so it cannot replace the access check; a
  ``post_auth_hook`` configured later runs, and the login gate after it.
  ``JupyterHub.authenticator_class`` becomes a subclass of the configured one whose
  ``refresh_user`` also refuses them, so an open session ends too (within
  ``Authenticator.auth_refresh_age``; ``0``, which turns the refresh off, is refused when the
  hub starts). Configure the authenticator class before calling this: one
  named later replaces the gated class, which the access check reports as an error in the hub's
  log at the first login or spawn.

Other hub-side features register their pre-spawn parts with
:func:`hubpilot_hub.hooks.register_pre_spawn` (e.g. ``hubpilot_hub.scale_demand``), or pass them
as ``pre_spawn_parts=[(name, fn), ...]`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from traitlets.config import Config
from traitlets.config.loader import LazyConfigValue

from hubpilot_hub import hooks
from hubpilot_hub.gate import AccessGate
from hubpilot_hub.scopes import FEATURE_SCOPES, HUBPILOT_SCOPES

__all__ = ["FEATURE_SCOPES", "HUBPILOT_SCOPES", "AccessGate", "configure", "hooks"]


class ConfigurationError(ValueError):
    """The hub configuration conflicts with hubpilot's; the message says what to change."""


def configure(
    c: Any,
    *,
    access_groups: Sequence[str],
    admin_groups: Sequence[str] = (),
    admin_groups_managed: bool = True,
    allow_all: bool | None = None,
    pre_spawn_parts: Sequence[tuple[str, Callable[[Any], Any]]] = (),
) -> AccessGate:
    """Apply hubpilot's hub-side configuration to the traitlets config ``c``.

    ``access_groups``: hub groups whose members may log in and spawn (those hubpilot mirrors).
    ``admin_groups``: hub groups bound to the ``admin`` role; their members may log in too.
    ``admin_groups_managed``: admins come from hubpilot (refuse ``Authenticator.admin_users``).
    ``allow_all``: None = set ``Authenticator.allow_all = True`` unless configured already.
    """
    if isinstance(access_groups, str) or isinstance(admin_groups, str):
        raise ConfigurationError("access_groups and admin_groups are lists of group names")
    gate = AccessGate([*access_groups, *admin_groups])

    auth = c.Authenticator
    auth.manage_groups = False
    admin_users = _configured(auth, "admin_users", set())
    if admin_groups_managed and admin_users:
        raise ConfigurationError(
            "hubpilot manages admins through admin_groups: remove Authenticator.admin_users "
            f"({sorted(admin_users)}) from the hub configuration"
        )
    if allow_all is not None:
        auth.allow_all = allow_all
    elif "allow_all" not in auth:
        auth.allow_all = True

    if admin_groups:
        _bind_admin_role(c, list(admin_groups))

    c.JupyterHub.authenticator_class = gate.authenticator_class(_authenticator_class(c))

    previous_auth_hook = auth.get("post_auth_hook")
    if getattr(previous_auth_hook, "_hubpilot", False):
        previous_auth_hook = previous_auth_hook._hubpilot_previous
    auth_hook = gate.post_auth_hook(previous_auth_hook)
    auth_hook._hubpilot = True  # type: ignore[attr-defined]
    auth_hook._hubpilot_previous = previous_auth_hook  # type: ignore[attr-defined]
    auth.post_auth_hook = auth_hook

    hooks.register_pre_spawn(gate.pre_spawn_part, name="access", essential=True, first=True)
    # keep the pre_spawn_hook(s) already configured, on Spawner or on a spawner subclass
    for section in _spawner_sections(c):
        existing = c[section].get("pre_spawn_hook")
        if existing is not None and existing is not hooks.pre_spawn_hook:
            hooks.register_pre_spawn(existing, name=f"configured:{section}", essential=True, configured=True)
            c[section].pre_spawn_hook = hooks.pre_spawn_hook
    c.Spawner.pre_spawn_hook = hooks.pre_spawn_hook
    for name, part in pre_spawn_parts:
        hooks.register_pre_spawn(part, name=name)
    return gate


def _authenticator_class(c: Any) -> type:
    """The authenticator class the configuration names (a class, an entry point name such as
    ``"github"``, an import string), or JupyterHub's default."""
    from jupyterhub.app import JupyterHub

    trait = JupyterHub.class_traits()["authenticator_class"]
    value = c.JupyterHub.authenticator_class if "authenticator_class" in c.JupyterHub \
        else trait.default_value
    cls: type = trait.validate(None, value)
    return cls


def _configured(section: Any, name: str, default: Any) -> Any:
    """The value the configuration gives ``name``, ``default`` when it gives none. One extended in
    place rather than assigned (``c.JupyterHub.load_roles.append(...)``, ``load_groups.update``,
    ``admin_users.add``) is a traitlets LazyConfigValue, which the hub applies to the setting's
    default: so is it here."""
    if name not in section:
        return default
    value = section[name]
    return value.get_value(default) if isinstance(value, LazyConfigValue) else value


def _spawner_sections(c: Any) -> list[str]:
    # only spawner classes have pre_spawn_hook; their names need not end in "Spawner"
    return [k for k in c if k[:1].isupper() and isinstance(c[k], Config) and "pre_spawn_hook" in c[k]]


def _bind_admin_role(c: Any, groups: list[str]) -> None:
    roles = list(_configured(c.JupyterHub, "load_roles", []))
    for role in roles:
        if role.get("name") == "admin":
            role["groups"] = sorted({*role.get("groups", []), *groups})
            break
    else:
        roles.append({"name": "admin", "groups": sorted(groups)})
    c.JupyterHub.load_roles = roles
    # create the groups first (load_groups without 'users' leaves membership alone): JupyterHub
    # 5.5 fails at start-up when a role names a group that does not exist yet
    load_groups = dict(_configured(c.JupyterHub, "load_groups", {}))
    for g in groups:
        load_groups.setdefault(g, {})
    c.JupyterHub.load_groups = load_groups

"""The access gate: only members of hubpilot's access groups may log in and spawn.

Checked against the hub's own database (the groups hubpilot mirrors from the directory), so a
removal takes effect at the next login or spawn whatever authenticator is used, and in a session
already open at the hub's next ``refresh_user`` (every ``Authenticator.auth_refresh_age``
seconds, 300 by default): the session and the user's own tokens stop working and the person must
log in again, which the gate refuses.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from traitlets import TraitError, validate

from hubpilot_hub import hooks

log = logging.getLogger(hooks.LOGGER)


class AccessGate:
    def __init__(self, groups: Iterable[str]) -> None:
        self.groups = frozenset(groups)
        if not self.groups:
            raise ValueError("hubpilot_hub: access_groups is empty: nobody could log in or spawn")
        self._ungated_reported = False

    def check_gated(self, authenticator: Any) -> None:
        """Report (once) an authenticator that is not of the gated class: a later configuration
        named ``JupyterHub.authenticator_class`` again, after :func:`hubpilot_hub.configure`."""
        if authenticator is None or self._ungated_reported:
            return
        if getattr(type(authenticator), "_hubpilot_base", None) is not None:
            return
        self._ungated_reported = True
        log.error(
            "hubpilot: JupyterHub.authenticator_class (%s) was set after hubpilot_hub.configure: "
            "open sessions of people removed from the access groups are not ended, and a "
            "pre_spawn_hook or post_auth_hook set later replaces the access check. Set the "
            "authenticator class before calling hubpilot_hub.configure",
            type(authenticator).__name__,
        )

    def allows(self, group_names: Iterable[str]) -> bool:
        return not self.groups.isdisjoint(group_names)

    def post_auth_hook(
        self, previous: Callable[..., Any] | None = None
    ) -> Callable[[Any, Any, dict[str, Any]], Awaitable[dict[str, Any] | None]]:
        """An ``Authenticator.post_auth_hook`` that refuses people outside the access groups
        (after ``previous``, the hook configured before, if any)."""

        async def hook(authenticator: Any, handler: Any, authentication: dict[str, Any]) -> Any:
            self.check_gated(authenticator)
            if previous is not None:
                result = previous(authenticator, handler, authentication)
                if hasattr(result, "__await__"):
                    result = await result
                if result is None:
                    return None
                authentication = result
            from jupyterhub import orm

            name = authentication["name"]
            user = orm.User.find(handler.db, name)
            groups = [g.name for g in user.groups] if user is not None else []
            if user is None:
                # no hub user of this name: sync made none, so the person is in no synced group, or
                # the authenticator names them otherwise than sync (a person who is a member)
                log.warning(
                    "hubpilot: login refused for %r: the hub has no user %r, so it is in none of the "
                    "access groups %s. hubpilot creates the members of the synced directory groups under "
                    "the names sync.naming makes of directory.*.username_attribute: if this person is a "
                    "member, the authenticator names them otherwise; align its username (OAuthenticator's "
                    "username_claim, e.g. AzureAdOAuthenticator's default 'name' is the display name; "
                    "LDAPAuthenticator's lookup_dn_user_dn_attribute; a username_map) with those settings",
                    name, name, sorted(self.groups),
                )
                return None
            if not self.allows(groups):
                log.warning(
                    "hubpilot: login refused for %r: in none of the access groups %s",
                    name, sorted(self.groups),
                )
                return None
            return authentication

        return hook

    def authenticator_class(self, base: type) -> type:
        """A subclass of the authenticator class ``base`` whose ``refresh_user`` (JupyterHub calls
        it for an open session or a user's token every ``auth_refresh_age`` seconds) also says
        "log in again" for a user in none of the access groups."""
        base = getattr(base, "_hubpilot_base", base)
        parent: Any = base
        gate = self

        async def refresh_user(authenticator: Any, user: Any, handler: Any = None) -> Any:
            result = parent.refresh_user(authenticator, user, handler)
            if inspect.isawaitable(result):
                result = await result
            if result and not gate.allows(g.name for g in user.groups):
                log.warning("hubpilot: session of %r ended: in none of the access groups %s",
                            user.name, sorted(gate.groups))
                return False
            return result

        async def pre_spawn_start(authenticator: Any, user: Any, spawner: Any) -> None:
            # runs just before the spawner's pre_spawn_hook, whatever configuration came after
            # hubpilot_hub.configure: the access check and the other parts always run
            result = parent.pre_spawn_start(authenticator, user, spawner)
            if inspect.isawaitable(result):
                await result
            hooks.ensure_on(spawner)

        gate_hook = self.post_auth_hook(None)

        async def run_post_auth_hook(authenticator: Any, handler: Any, auth_model: Any) -> Any:
            # a post_auth_hook configured after hubpilot_hub.configure replaced the gate's: the
            # gate still refuses, after that hook
            result = await parent.run_post_auth_hook(authenticator, handler, auth_model)
            if getattr(authenticator.post_auth_hook, "_hubpilot", False) or result is None:
                return result
            return await gate_hook(authenticator, handler, result)

        def _refresh_age(authenticator: Any, proposal: Any) -> Any:
            # 0 turns refresh_user off: a removed person's open session (and the tokens they
            # can still make in it) would last until the cookie expires
            if not proposal["value"]:
                raise TraitError(
                    "hubpilot_hub: Authenticator.auth_refresh_age = 0 turns JupyterHub's refresh_user "
                    "off, so a person removed from the access groups keeps an open hub session: remove "
                    "the setting (default 300 s) or set the seconds after which a removal ends a session"
                )
            return proposal["value"]

        gated = type(base.__name__, (base,), {
            "refresh_user": refresh_user, "pre_spawn_start": pre_spawn_start,
            "run_post_auth_hook": run_post_auth_hook,
            "_hubpilot_refresh_age": validate("auth_refresh_age")(_refresh_age),
            "_hubpilot_base": base, "__module__": __name__, "__doc__": base.__doc__,
        })
        return gated

    def pre_spawn_part(self, spawner: Any) -> None:
        """Refuses (403) a spawn for a user outside the access groups."""
        self.check_gated(getattr(spawner, "authenticator", None))
        groups = [g.name for g in spawner.user.groups]
        if not self.allows(groups):
            from tornado import web

            log.warning(
                "hubpilot: spawn refused for %r: in none of the access groups %s",
                spawner.user.name, sorted(self.groups),
            )
            raise web.HTTPError(
                403, f"{spawner.user.name} is not in any of the groups allowed to use this hub"
            )

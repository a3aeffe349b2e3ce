"""The JupyterHub scopes hubpilot's service role needs (JupyterHub 5.5), feature by feature.

``FEATURE_SCOPES`` says what each hubpilot feature needs, in the hub's own terms (the decorator
``needs_scope`` on each REST handler). ``HUBPILOT_SCOPES`` is the role to grant: the sorted union
of all features, without any scope that another scope of the union already implies (JupyterHub
expands ``admin:users`` into ``users``, ``read:users``, ``list:users``, ``delete:users``…), so that
every scope in the role is needed: drop any one and some hubpilot operation is refused with 403.
See docs/hub-scopes.md for the reasons, scope by scope.

Note: JupyterHub has no scope that creates users or sets their admin flag without also allowing
deletion (``admin:users`` implies ``delete:users``); hubpilot itself only deletes users when
deletion is explicitly enabled in its configuration.
"""

from __future__ import annotations

#: feature → scopes it needs (each exists in JupyterHub 5.5 and is valid in a role)
FEATURE_SCOPES: dict[str, list[str]] = {
    # list users/groups, create users, set the admin flag, create groups, change membership,
    # stop the servers of removed people, revoke their API tokens
    "sync": [
        "admin:users",  # POST /users, PATCH /users/{name} {"admin": ...}; implies list/read:users
        "admin:groups",  # POST /groups/{name}; implies groups (membership), list/read:groups
        "read:servers",  # the servers in the user model (to know what to stop)
        "delete:servers",  # DELETE /users/{name}/server(s/{server})
        "tokens",  # GET + DELETE /users/{name}/tokens
    ],
    # list ready servers with their activity, stop servers, remove named servers (a server's
    # last_activity comes with read:servers; the users' own, for cull.cull_users, with read:users,
    # which judging users needs anyway for their created time: docs/hub-scopes.md)
    "cull": [
        "list:users",  # GET /users?state=active (its ready servers)
        "read:servers",  # servers with started/last_activity/pending
        "delete:servers",  # stop (and remove) servers
    ],
    # read pending spawns and their user_options (the profile asked for); with reclaim on, the
    # servers' activity and stopping an idle GPU server for a waiting one
    "scale": [
        "list:users",
        "read:servers",  # servers' pending + user_options + last_activity
        "delete:servers",  # reclaim: DELETE /users/{name}/server(s/{server})
    ],
    # user deletion, only when enabled in hubpilot's configuration (sync's role has it through
    # admin:users; a cull-only role adds delete:users, not admin:users, which also creates users)
    "delete_users": [
        "delete:users",  # DELETE /users/{name}
    ],
}

#: scope → the scopes it implies (subset of JupyterHub 5.5's scope_definitions, transitively
#: closed, for the scopes above; tests check this table against jupyterhub.scopes)
IMPLIED_SCOPES: dict[str, frozenset[str]] = {
    "admin:users": frozenset({
        "admin:auth_state", "users", "read:roles:users", "delete:users", "read:users",
        "list:users", "users:activity", "read:users:name", "read:users:groups",
        "read:users:activity",
    }),
    "admin:groups": frozenset({
        "groups", "read:roles:groups", "delete:groups", "read:groups", "list:groups",
        "read:groups:name",
    }),
    "read:servers": frozenset({"read:users:name"}),
    "delete:servers": frozenset(),
    "tokens": frozenset({"read:tokens"}),
    "list:users": frozenset({"read:users:name"}),
    "read:users:activity": frozenset(),
}


def minimal_role(scopes: set[str] | frozenset[str] | list[str]) -> list[str]:
    """The sorted scopes, without those another one of them already implies."""
    given = set(scopes)
    return sorted(
        s for s in given
        if not any(s in IMPLIED_SCOPES.get(other, frozenset()) for other in given if other != s)
    )


#: the role hubpilot's service gets: every feature, each scope needed
HUBPILOT_SCOPES: list[str] = minimal_role({s for scopes in FEATURE_SCOPES.values() for s in scopes})

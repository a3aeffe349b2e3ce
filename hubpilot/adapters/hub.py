"""``HubClient``: the JupyterHub REST API (5.x) as :class:`hubpilot.ports.hub.Hub`.

- Listing uses the hub's pagination (``Accept: application/jupyterhub-pagination+json``,
  ``offset``/``limit``) and follows ``_pagination.next`` until it is null; an answer without that
  envelope (a plain list: the Accept header did not reach the hub) ends at the hub's page limit and
  raises :class:`HubInvalidResponse`, never read as the whole list. A listing that shifted
  while it was read (a deletion on an earlier page) is read again after a growing pause with
  jitter (the backoff), four readings in all.
- Connection errors, timeouts and 5xx answers are retried ``retries`` times with exponential
  backoff and jitter; 4xx answers are not retried. At most ``concurrency`` requests are in flight.
- Within a round (:func:`hubpilot.ports.hub.hub_round`: one run of a capability), once a request
  got no answer within its timeout through those retries, the round's requests not yet sent fail
  at once (:class:`HubNotAttempted`) and none is retried; those already sent keep their answers.
- A request times out after ``timeout``; a server stop (and a user deletion, which stops a
  running server) after ``stop_timeout``: the hub answers a slow stop (202) only once its
  ``slow_stop_timeout`` (10 s by default) has passed. A bulk user creation waits
  ``stop_timeout`` too: the hub adds the users one after the other (``authenticator.add_user``),
  and a creation sent again while the first one goes on would find the users there (409).
- Every write is idempotent: repeating it is a no-op (409 "exists", 404 "no such server" and the
  like are the outcome already reached, not errors). The hub's 404 "No access to resources or
  resources not found" is not one of them: the token's scope is filtered to other users, so the
  state is unknown; it raises :class:`HubError` (403) naming the scope.
- An answer that is not what the API documents raises :class:`HubInvalidResponse` naming the
  request and the field; other failures raise :class:`HubError` with the HTTP status.
- ``stats`` counts requests (reads, writes, retries, by method and path template).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from hubpilot.ports.hub import (
    HubError,
    HubGroup,
    HubInvalidResponse,
    HubNotAttempted,
    HubRound,
    HubServer,
    HubUnreachable,
    HubUser,
    StopResult,
    UsersNotCreated,
    current_round,
    token_fits_a_header,
)

PAGINATION = "application/jupyterhub-pagination+json"
_READ_METHODS = frozenset({"GET", "HEAD"})
_API_URL_HINT = ("is hub.api_url ({}) the hub's REST API, ending in /hub/api "
                 "(e.g. https://hub.example.org/hub/api)?")
# JupyterHub's 403 to a request whose token it does not know (wrong, expired or revoked), on any route
_NO_CREDENTIALS = "Missing or invalid credentials."
_TOKEN_HINT = ("the hub does not know hubpilot's token: set hub.token (HUBPILOT_HUB__TOKEN) to the API token "
               "of the hubpilot service the hub was configured with (docs/hub-scopes.md)")
_PAGED_ATTEMPTS = 4  # readings of a listing that keeps shifting before giving up
# POST /users's answer when the authenticator refuses a name (JupyterHub 5 and 6)
_INVALID_NAME = re.compile(r"hub answered 400: Invalid usernames?: ")
# the hub's 400 when its authenticator's add_user raised for one name of a POST /users: the names
# before it in the request are created, it and those after it are not
_FAILED_CREATE = re.compile(r"hub answered 400: Failed to create user (\S+?): (.*)", re.S)
# the hub's 404 when the token holds the scope a handler needs only for other users or groups (a
# filter such as "tokens!group=x"); it says the same for a user that does not exist
_NO_ACCESS = "No access to resources or resources not found"
# the token model's oauth_client of the hub's own tokens (client "jupyterhub"): the hub deletes them
# one by one, and every token of any other OAuth client with one of them (DELETE /users/{name}/tokens/{id})
_HUB_OAUTH_CLIENT = "JupyterHub"
# route → the scope hubpilot's role must hold for every user (named in a filtered-scope error)
_ROUTE_SCOPES = {
    "GET /users/{name}": "read:users and read:servers",
    "PATCH /users/{name}": "admin:users",
    "DELETE /users/{name}": "admin:users (delete:users)",
    "DELETE /users/{name}/server": "delete:servers",
    "DELETE /users/{name}/servers/{server}": "delete:servers",
    "GET /users/{name}/tokens": "tokens",
    "DELETE /users/{name}/tokens/{token_id}": "tokens",
    "POST /groups/{name}": "admin:groups",
    "POST /groups/{name}/users": "admin:groups (groups)",
    "DELETE /groups/{name}/users": "admin:groups (groups)",
}


class HubClient:
    """Async client of a JupyterHub's REST API, authenticated with a service token."""

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        timeout: float = 10,
        stop_timeout: float = 60,
        retries: int = 3,
        concurrency: int = 10,
        page_size: int = 200,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff: float = 0.25,
        backoff_max: float = 8.0,
        create_chunk: int = 100,
    ) -> None:
        if not token:
            raise ValueError("hub token is empty: set hub.token (HUBPILOT_HUB__TOKEN) to the API token of the "
                             "hubpilot service the hub was configured with (docs/hub-scopes.md)")
        if not token_fits_a_header(token):
            # the HTTP library would refuse the header (a space at its end too) and quote it, token
            # and all, in its error
            raise ValueError("hub token holds a line break, another control character or a non-ASCII character, "
                             "or starts or ends with a space, which no HTTP header can carry (often a trailing "
                             "newline or space kept from the file, secret or page it was copied from): set hub.token "
                             "(HUBPILOT_HUB__TOKEN) to the token alone (the value is not shown)")
        if page_size < 2 or concurrency < 1 or retries < 0 or create_chunk < 1:
            # each page after the first starts with the last item read, which tells a shifted list
            raise ValueError("page_size must be ≥ 2, concurrency and create_chunk ≥ 1, retries ≥ 0")
        self.api_url = api_url.rstrip("/")
        self._retries = retries
        self._page_size = page_size
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._create_chunk = create_chunk
        self._timeout = timeout
        self._stop_timeout = max(timeout, stop_timeout)
        self._sem = asyncio.Semaphore(concurrency)
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"token {token}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        self._counts: Counter[str] = Counter()
        self._routes: Counter[str] = Counter()

    # ------------------------------------------------------------------ plumbing

    @property
    def stats(self) -> dict[str, Any]:
        """Requests sent so far: ``requests``, ``reads``, ``writes``, ``retries``, ``errors``
        and ``by_route`` (``"GET /users"`` → count; paths as templates, names left out)."""
        return {
            "requests": self._counts["reads"] + self._counts["writes"],
            "reads": self._counts["reads"],
            "writes": self._counts["writes"],
            "retries": self._counts["retries"],
            "errors": self._counts["errors"],
            "by_route": dict(self._routes),
        }

    def reset_stats(self) -> None:
        self._counts.clear()
        self._routes.clear()

    async def _request(
        self,
        method: str,
        template: str,
        *,
        path_args: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        ok: Sequence[int] = (200, 201, 202, 204),
        accept: Sequence[int] = (),
        request_timeout: float | None = None,
        attempts: list[int] | None = None,
    ) -> httpx.Response:
        """Send one request with retries. Returns the response when its status is in ``ok`` or
        ``accept`` (an expected 'already so' answer); raises HubError otherwise. ``request_timeout``:
        this request's timeout, instead of the client's. ``attempts``: gets the number of times the
        answered request was sent (more than one: an earlier sending may have acted unanswered)."""
        for k, v in (path_args or {}).items():
            if v in (".", ".."):  # a path step to httpx and proxies: "/users/u/servers/.." is DELETE /users/u
                self._counts["errors"] += 1
                raise HubError(f"{method} {template}: not sent: the {k} {v!r} would be read as a path step "
                               "and the request would reach another resource; handle it in the hub by hand")
        path = template.format(**{k: quote(v, safe="") for k, v in (path_args or {}).items()})
        route = f"{method} {template}"
        what = f"{method} {path}"
        attempt = 0
        rnd = current_round()
        waited = self._timeout if request_timeout is None else request_timeout
        while True:
            try:
                async with self._sem:
                    # the round's hub left a request unanswered: this one is not sent (checked
                    # once a slot is free: a request queued for one was not sent either)
                    if rnd is not None and rnd.silent is not None and not attempt:
                        raise HubNotAttempted(f"{what}: not attempted: {rnd.silent}")
                    self._counts["reads" if method in _READ_METHODS else "writes"] += 1
                    self._routes[route] += 1
                    resp = await self._http.request(
                        method, path, params=params, json=json_body, headers=headers,
                        timeout=httpx.USE_CLIENT_DEFAULT if request_timeout is None else request_timeout,
                    )
            except httpx.TransportError as e:  # connection refused/reset, timeouts
                timed_out = isinstance(e, httpx.TimeoutException)
                if attempt < self._retries and await self._retry(attempt, rnd):
                    attempt += 1
                    continue
                self._counts["errors"] += 1
                failure = HubUnreachable(
                    f"{what}: hub unreachable at {self.api_url} after {attempt + 1} attempts: "
                    + _transport_failure(e, waited) + _not_retried(attempt, self._retries, rnd),
                    timed_out=timed_out,
                )
                if rnd is not None and timed_out:
                    rnd.fall_silent(f"the hub did not answer {what} within {waited:g} s "
                                    f"({attempt + 1} attempts) in this run; the next run tries again")
                raise failure from e
            if resp.status_code >= 500 and attempt < self._retries and await self._retry(attempt, rnd):
                attempt += 1
                continue
            if 300 <= resp.status_code < 500 and not _is_json(resp):
                # the REST API answers its errors in JSON; a redirect or an HTML page (the hub's
                # 404 page, a login page) is not the API, and its 404 never means "no such user"
                self._counts["errors"] += 1
                location = resp.headers.get("location")
                raise HubError(
                    f"{what}: hub answered {resp.status_code} with "
                    f"{resp.headers.get('content-type') or 'no content type'}"
                    + (f" (redirect to {location})" if location else "")
                    + f", not the REST API's JSON: {_API_URL_HINT.format(self.api_url)}",
                    status=resp.status_code,
                )
            if resp.status_code == 404 and _message(resp) == _NO_ACCESS:
                # not "no such user/server": the token may not act on this one, so whether it
                # exists, runs a server or holds tokens is unknown
                self._counts["errors"] += 1
                scope = _ROUTE_SCOPES.get(route, "the scope this request needs")
                raise HubError(
                    f"{what}: hub answered 404 {_NO_ACCESS!r}: hubpilot's token holds {scope} "
                    "only for some users or groups (a filtered scope, e.g. "
                    f"{scope.split()[0]}!group=...); grant it unfiltered (docs/hub-scopes.md)",
                    status=403,
                )
            if resp.status_code in ok or resp.status_code in accept:
                if attempts is not None:
                    attempts.append(attempt + 1)
                return resp
            self._counts["errors"] += 1
            proxied = resp.status_code >= 500 and _content_type(resp) == "text/html"
            message = _message(resp)
            raise HubError(
                f"{what}: hub answered {resp.status_code}: {message}"
                + (f" (after {attempt + 1} attempts)" if attempt else "")
                + (_not_retried(attempt, self._retries, rnd) if resp.status_code >= 500 else "")
                + (f"; {_TOKEN_HINT}" if resp.status_code == 403 and message == _NO_CREDENTIALS else "")
                + ("; a proxy in front of the hub answered, not its REST API: is the hub up, and "
                   + _API_URL_HINT.format(self.api_url) if proxied else ""),
                status=resp.status_code,
            )

    async def _retry(self, attempt: int, rnd: HubRound | None) -> bool:
        """Wait the backoff before attempt ``attempt + 2``; False (no retry) when the round's hub
        fell silent, before the backoff or during it."""
        if rnd is not None and rnd.silent is not None:
            return False
        await asyncio.sleep(self._delay(attempt + 1))
        if rnd is not None and rnd.silent is not None:
            return False
        self._counts["retries"] += 1
        return True

    def _delay(self, attempt: int) -> float:
        base = min(self._backoff_max, self._backoff * float(2 ** (attempt - 1)))
        return base * (0.5 + random.random() / 2)  # full-ish jitter

    async def _json(self, resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HubInvalidResponse(
                f"{resp.request.method} {resp.request.url}: answer is not JSON "
                f"(content-type {resp.headers.get('content-type')!r}): {resp.text[:200]!r}; "
                + _API_URL_HINT.format(self.api_url),
                status=resp.status_code,
            ) from e

    async def _paged(self, template: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Every item of a paged listing. The hub pages by offset in id order, so a deletion on
        an earlier page (or, with a state filter, a server stopping or starting) shifts the later
        items and one would be skipped or read twice. Each page after the first therefore starts
        one item early; when that item is not the last one read, the list shifted and the reading
        starts over, after a pause that grows each time (the client's backoff, with jitter: about
        0.25, 0.5 and 1 s by default), so that another actor deleting users for a moment does not
        meet every reading."""
        for attempt in range(_PAGED_ATTEMPTS):
            if attempt:
                await asyncio.sleep(self._delay(attempt))
            items = await self._paged_once(template, params)
            if items is not None:
                return items
        self._counts["errors"] += 1
        raise HubError(
            f"GET {template}: the list changed while it was read, {_PAGED_ATTEMPTS} times in a "
            "row; try again")

    async def _paged_once(self, template: str, params: Mapping[str, Any] | None) -> list[Any] | None:
        """One reading of a listing; None when it shifted under the reading."""
        items: list[Any] = []
        offset, limit = 0, self._page_size
        while True:
            overlap = bool(items) and limit > 1
            start = offset - 1 if overlap else offset
            resp = await self._request(
                "GET", template, params={**(params or {}), "offset": start, "limit": limit},
                headers={"Accept": PAGINATION},
            )
            body = await self._json(resp)
            what = f"GET {template} (offset={start})"
            if isinstance(body, list):
                # what JupyterHub (5, 6) answers a request whose Accept header does not name the
                # pagination media type: the same page, offset and limit applied, without the envelope
                raise HubInvalidResponse(
                    f"{what}: the hub answered a plain list, not its pagination envelope ('items', "
                    f"'_pagination'): the request's 'Accept: {PAGINATION}' did not reach it (a proxy or "
                    "gateway in front of the hub that drops or rewrites the Accept header?); such a list "
                    "ends at the hub's page limit, so it is not read as the whole list")
            if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                raise HubInvalidResponse(f"{what}: expected an object with an 'items' list")
            page = body["items"]
            if overlap:
                if not page or _item_name(page[0]) != _item_name(items[-1]):
                    return None
                page = page[1:]
            items.extend(page)
            pag = body.get("_pagination")
            if not isinstance(pag, dict):
                raise HubInvalidResponse(f"{what}: '_pagination' missing or not an object")
            nxt = pag.get("next")
            if nxt is None:
                return items
            if not isinstance(nxt, dict) or not isinstance(nxt.get("offset"), int):
                raise HubInvalidResponse(f"{what}: '_pagination.next.offset' is not an integer")
            if nxt["offset"] <= start:
                raise HubInvalidResponse(f"{what}: '_pagination.next.offset' does not advance")
            offset = nxt["offset"]
            if isinstance(nxt.get("limit"), int) and nxt["limit"] > 0:
                limit = nxt["limit"]

    # ------------------------------------------------------------------ reads

    async def list_users(self, *, state: str | None = None) -> list[HubUser]:
        if state not in (None, "ready", "active", "inactive"):
            raise ValueError(f"state must be ready, active or inactive, not {state!r}")
        # ?state=ready is ?state=active with the users whose servers are not ready taken out of
        # each page after paging: a page may lack its last row, which _paged's overlap needs.
        # So read the active users and leave out the not-ready ones here.
        params = {"state": "active" if state == "ready" else state} if state else {}
        users = [_with_servers(_user(u, "GET /users"), u, "GET /users")
                 for u in await self._paged("/users", params)]
        if state == "ready":
            return [u for u in users if any(s.ready for s in u.servers.values())]
        return users

    async def list_groups(self) -> list[HubGroup]:
        return [_group(g, "GET /groups") for g in await self._paged("/groups")]

    async def get_user(self, name: str) -> HubUser | None:
        """One user with servers; None when the hub does not know them."""
        resp = await self._request("GET", "/users/{name}", path_args={"name": name}, accept=(404,))
        if resp.status_code == 404:
            return None
        body = await self._json(resp)
        return _with_servers(_user(body, f"GET /users/{name}"), body, f"GET /users/{name}")

    # ------------------------------------------------------------------ writes

    async def create_users(self, names: Sequence[str]) -> list[str]:
        wanted = list(dict.fromkeys(names))
        created: list[str] = []
        failed: dict[str, str] = {}  # name → the hub's reason (its authenticator's add_user raised)
        for i in range(0, len(wanted), self._create_chunk):
            chunk = wanted[i : i + self._create_chunk]
            try:
                created.extend(await self._create_chunk_of(chunk))
            except HubError as e:
                # the hub refuses the whole batch, creating nobody, when its authenticator
                # refuses one name; when its add_user fails for one, it keeps the names before it
                # and creates none after it (every run again, when that name always fails): create
                # the others one by one, leave the refused out (the caller sees they were not
                # created) and report the failed with the hub's reason
                failing = _FAILED_CREATE.search(str(e))
                if e.status != 400 or not (_INVALID_NAME.search(str(e)) or failing):
                    raise
                made_before = chunk[:chunk.index(failing.group(1))] if failing and failing.group(1) in chunk else []
                for name in chunk:
                    try:
                        one_made = await self._create_chunk_of([name])
                    except HubError as one:
                        why = _FAILED_CREATE.search(str(one))
                        if one.status != 400 or not (_INVALID_NAME.search(str(one)) or why):
                            raise
                        if why:
                            failed[name] = why.group(2).strip()
                        continue
                    # 409 (exists): made by the batch request above, when it came before the failed name
                    created.extend(one_made or [n for n in [name] if n in made_before])
        if failed:
            raise UsersNotCreated(created, failed)
        return created

    async def _create_chunk_of(self, names: Sequence[str]) -> list[str]:
        resp = await self._request("POST", "/users", json_body={"usernames": list(names)}, accept=(409,),
                                   request_timeout=self._stop_timeout)
        if resp.status_code == 409:  # all of them exist already
            return []
        body = await self._json(resp)
        if not isinstance(body, list):
            raise HubInvalidResponse("POST /users: expected a list of created users")
        return [_user(u, "POST /users").name for u in body]

    async def set_admin(self, name: str, admin: bool) -> None:
        await self._request(
            "PATCH", "/users/{name}", path_args={"name": name}, json_body={"admin": bool(admin)}
        )

    async def rename_user(self, name: str, new_name: str) -> bool:
        what = f"PATCH /users/{name}"
        if new_name == name:
            # never sent: JupyterHub (5.5, 6.1) sets the name of a user PATCHed with their own
            # name to null, which breaks every later GET /users
            if await self.get_user(name) is None:
                raise HubError(f"{what}: {name} does not exist in the hub")
            return False
        resp = await self._request("PATCH", "/users/{name}", path_args={"name": name},
                                   json_body={"name": new_name}, accept=(404,))
        if resp.status_code == 404:
            if await self.get_user(new_name) is not None:
                return False
            raise HubError(f"{what}: neither {name} nor {new_name} exists in the hub")
        got = _user(await self._json(resp), what).name
        if got != new_name:
            raise HubInvalidResponse(
                f"{what}: the hub named the user {got!r}, not {new_name!r} (its normalize_username "
                "differs from sync.naming); align sync.naming with the authenticator")
        return True

    async def create_group(self, name: str) -> bool:
        resp = await self._request("POST", "/groups/{name}", path_args={"name": name}, accept=(409,))
        return resp.status_code != 409

    async def add_group_members(self, group: str, names: Sequence[str]) -> dict[str, str]:
        """Put ``names`` in ``group``. The hub refuses the whole request, and adds nobody, at the
        first name it does not have (400 "No such user": deleted since the caller read it, by a
        cull round, say): that name is left out and the others are added; those left out are
        returned (name → why)."""
        left = list(dict.fromkeys(names))
        gone: dict[str, str] = {}
        while left:
            resp = await self._request(
                "POST", "/groups/{name}/users", path_args={"name": group},
                json_body={"users": left}, accept=(400,),
            )
            if resp.status_code < 400:
                break
            message = _message(resp)
            missing = message.removeprefix("No such user: ")
            if missing == message or missing not in left:
                self._counts["errors"] += 1
                raise HubError(f"POST {resp.request.url.path}: hub answered 400: {message}", status=400)
            left.remove(missing)
            gone[missing] = f"the hub has no user {missing} (deleted since it was read)"
        return gone

    async def remove_group_members(self, group: str, names: Sequence[str]) -> dict[str, str]:
        """Take ``names`` out of ``group``. A user deleted meanwhile is in no group, and a group
        deleted meanwhile has no members: already so. (The hub refuses the whole request, and
        removes nobody, at the first name it does not know.) The hub looks each name up in its
        authenticator's form (normalize_username): a user whose name is not in that form cannot be
        taken out through the API; the others are, and those are returned (name → why)."""
        left = list(dict.fromkeys(names))
        odd: dict[str, str] = {}
        one_by_one = False
        while left:
            batch = left[:1] if one_by_one else left
            resp = await self._request(
                "DELETE", "/groups/{name}/users", path_args={"name": group},
                json_body={"users": batch}, accept=(400, 404),
            )
            message = _message(resp)
            if resp.status_code == 404 and message == f"No such group: {group}":
                return odd
            gone = message.removeprefix("No such user: ")
            if resp.status_code < 400:
                del left[:len(batch)]
                continue
            if resp.status_code == 400 and gone != message and gone in batch:
                left.remove(gone)
                continue
            if resp.status_code == 400 and gone != message and not one_by_one:
                one_by_one = True  # a name the hub looked up in another form: which one, name by name
                continue
            if resp.status_code == 400 and gone != message:
                name = left.pop(0)
                odd[name] = (f"the hub looks {name!r} up as {gone!r} (its authenticator's normalize_username), "
                             f"a user it does not have, so its API cannot take {name} out of group {group}: "
                             f"a hub admin renames hub user {name} to {gone} (PATCH /users/{name}) or deletes it")
                continue
            self._counts["errors"] += 1
            raise HubError(f"DELETE {resp.request.url.path}: hub answered {resp.status_code}: {message}",
                           status=resp.status_code)
        return odd

    async def stop_server(self, user: str, server: str = "") -> StopResult:
        return await self._stop(user, server, remove=False)

    async def delete_server(self, user: str, server: str) -> StopResult:
        if not server:
            raise ValueError("the default server cannot be removed; only named servers")
        return await self._stop(user, server, remove=True)

    async def _stop(self, user: str, server: str, *, remove: bool) -> StopResult:
        if server:
            template, args = "/users/{name}/servers/{server}", {"name": user, "server": server}
        else:
            template, args = "/users/{name}/server", {"name": user}
        resp = await self._request(
            "DELETE", template, path_args=args, json_body={"remove": True} if remove else None,
            accept=(400, 404), request_timeout=self._stop_timeout,
        )
        if resp.status_code == 204:
            return StopResult.STOPPED
        if resp.status_code == 202:
            return StopResult.PENDING
        if resp.status_code == 404 or "not running" in _message(resp).lower():
            return StopResult.NOT_RUNNING
        self._counts["errors"] += 1
        raise HubError(
            f"DELETE {resp.request.url.path}: hub answered 400: {_message(resp)}", status=400
        )

    async def revoke_tokens(self, user: str) -> int:
        resp = await self._request(
            "GET", "/users/{name}/tokens", path_args={"name": user}, accept=(404,)
        )
        if resp.status_code == 404:
            return 0
        body = await self._json(resp)
        what = f"GET /users/{user}/tokens"
        if not isinstance(body, dict) or not isinstance(body.get("api_tokens"), list):
            raise HubInvalidResponse(f"{what}: expected an object with an 'api_tokens' list")
        ids: list[str] = []
        clients: list[str | None] = []
        for t in body["api_tokens"]:
            if not isinstance(t, dict) or not isinstance(t.get("id"), str):
                raise HubInvalidResponse(f"{what}: a token without a string 'id'")
            ids.append(t["id"])
            client = t.get("oauth_client")
            clients.append(client if isinstance(client, str) and client != _HUB_OAUTH_CLIENT else None)

        async def revoke(token_id: str) -> bool | None:
            sent: list[int] = []
            r = await self._request(
                "DELETE", "/users/{name}/tokens/{token_id}",
                path_args={"name": user, "token_id": token_id}, accept=(404,), attempts=sent,
            )
            # a 404 to a retry: the token was listed just now and an earlier sending of this
            # DELETE, left unanswered (or answered 5xx), most likely revoked it: counted revoked,
            # as the hub shows it gone. A 404 to the first sending (None): revoked by someone
            # else, or by this call along with another token of its OAuth client (below)
            return True if r.status_code != 404 or sent[-1] > 1 else None

        done = await asyncio.gather(*(revoke(i) for i in ids))
        # the hub deletes every token of an OAuth client (a server's, a service's: one per
        # browser session that logged in to it) with any one of them: those this call revoked
        # took the other tokens of their client with them
        took = {c for c, d in zip(clients, done, strict=True) if d and c is not None}
        return sum(1 for c, d in zip(clients, done, strict=True) if d or (c is not None and c in took))

    async def delete_user(self, name: str) -> bool:
        """The hub's DELETE /users/{name} stops the default server only, and fails (500 "Spawner
        ... is active and cannot be deleted") for a user with a running named server: every
        server of the user is stopped first. One that is still stopping (202) keeps the user
        until a later call."""
        user = await self.get_user(name)
        if user is None:
            return False
        stopping = [server or "default" for server in sorted(user.servers)
                    if await self._stop(name, server, remove=False) is StopResult.PENDING]
        if stopping:
            self._counts["errors"] += 1
            raise HubError(f"DELETE /users/{name}: not deleted yet: server(s) {', '.join(stopping)} "
                           "still stopping; the deletion goes through once they have stopped")
        resp = await self._request("DELETE", "/users/{name}", path_args={"name": name}, accept=(404,),
                                   request_timeout=self._stop_timeout)
        return resp.status_code != 404

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ---------------------------------------------------------------------- parsing


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        if _content_type(resp) == "text/html":  # a proxy's error page: its title, not its markup
            title = re.search(r"<title>([^<]*)</title>", resp.text, re.IGNORECASE)
            return "a text/html page" + (f" titled {title.group(1).strip()!r}" if title else "")
        return resp.text[:200] or resp.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return resp.text[:200]


def _not_retried(attempt: int, retries: int, rnd: HubRound | None) -> str:
    """Why a request the client would have retried was not (its round's hub fell silent)."""
    if attempt < retries and rnd is not None and rnd.silent is not None:
        return f"; not retried: {rnd.silent}"
    return ""


def _transport_failure(exc: httpx.TransportError, timeout: float) -> str:
    """What went wrong, also for httpx's timeouts, whose text is often empty."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {timeout:g} s ({type(exc).__name__})"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g} s ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _content_type(resp: httpx.Response) -> str:
    return str(resp.headers.get("content-type", "")).split(";")[0].strip().lower()


def _is_json(resp: httpx.Response) -> bool:
    ctype = _content_type(resp)
    return ctype == "application/json" or ctype.endswith("+json")


def _item_name(item: Any) -> Any:
    return item.get("name") if isinstance(item, dict) else item


def _field(obj: Mapping[str, Any], key: str, types: type | tuple[type, ...], what: str,
           *, required: bool = False, default: Any = None) -> Any:
    if key not in obj or (obj[key] is None and not required):
        if required:
            raise HubInvalidResponse(f"{what}: field {key!r} missing")
        return default
    value = obj[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        names = "/".join(t.__name__ for t in _as_tuple(types))
        raise HubInvalidResponse(f"{what}: field {key!r} should be {names}, got {value!r}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _time(obj: Mapping[str, Any], key: str, what: str) -> datetime | None:
    raw = _field(obj, key, str, what)
    if raw is None:
        return None
    try:
        t = datetime.fromisoformat(raw)
    except ValueError as e:
        raise HubInvalidResponse(f"{what}: field {key!r} is not an ISO time: {raw!r}") from e
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _user(obj: Any, request: str) -> HubUser:
    if not isinstance(obj, dict):
        raise HubInvalidResponse(f"{request}: a user is not an object: {obj!r:.100}")
    name = _field(obj, "name", str, f"{request}: user", required=True)
    what = f"{request}: user {name!r}"
    groups = _field(obj, "groups", list, what, default=[])
    if not all(isinstance(g, str) for g in groups):
        raise HubInvalidResponse(f"{what}: field 'groups' should hold names")
    servers_raw = _field(obj, "servers", dict, what, default={})
    servers = {
        sname: _server(name, sname, s, what) for sname, s in servers_raw.items()
    }
    return HubUser(
        name=name,
        admin=_field(obj, "admin", bool, what, default=False),
        groups=frozenset(groups),
        kind=_field(obj, "kind", str, what, default="user"),
        created=_time(obj, "created", what),
        last_activity=_time(obj, "last_activity", what),
        servers=servers,
        groups_read="groups" in obj,
        created_read="created" in obj,
    )


def _with_servers(user: HubUser, raw: Any, request: str) -> HubUser:
    """The hub leaves out the fields a token may not read: a user model without ``servers``
    means the token lacks ``read:servers`` — a permission failure, never 'no servers'."""
    if "servers" not in raw:
        raise HubError(
            f"{request}: user {user.name!r} comes without 'servers': the hub token lacks the "
            "read:servers scope (see docs/hub-scopes.md)",
            status=403,
        )
    return user


def _server(user: str, name: str, obj: Any, request: str) -> HubServer:
    what = f"{request}: server {name!r}"
    if not isinstance(obj, dict):
        raise HubInvalidResponse(f"{what}: not an object")
    sname = _field(obj, "name", str, what, default=name)
    if sname != name:
        raise HubInvalidResponse(f"{what}: field 'name' is {sname!r}, not its key")
    pending = _field(obj, "pending", str, what)
    return HubServer(
        user=user,
        name=name,
        ready=_field(obj, "ready", bool, what, default=False),
        pending=pending,
        started=_time(obj, "started", what),
        last_activity=_time(obj, "last_activity", what),
        url=_field(obj, "url", str, what),
        user_options=_field(obj, "user_options", dict, what, default={}),
        state=_field(obj, "state", dict, what, default={}),
    )


def _group(obj: Any, request: str) -> HubGroup:
    if not isinstance(obj, dict):
        raise HubInvalidResponse(f"{request}: a group is not an object: {obj!r:.100}")
    name = _field(obj, "name", str, f"{request}: group", required=True)
    what = f"{request}: group {name!r}"
    users = _field(obj, "users", list, what, default=[])
    if not all(isinstance(u, str) for u in users):
        raise HubInvalidResponse(f"{what}: field 'users' should hold names")
    return HubGroup(
        name=name,
        users=frozenset(users),
        properties=_field(obj, "properties", dict, what, default={}),
    )

"""An HTTP-level Microsoft Graph double that speaks the documented wire format.

What it serves (v1.0 paths under its base URL):

* ``GET /groups/delta`` (and the SDK's ``/groups/delta()``) with ``$filter=id eq '..' or ..``
  and ``$select=members``: a first round pages through every member (a large group repeats on
  several pages), each page with ``@odata.nextLink``, the last with ``@odata.deltaLink``; a
  round from a deltaLink returns the net changes since (with ``lag()``, only those made before it,
  until ``catch_up()``: Graph's replication delay, "Known issues": a change can reach the delta
  query minutes after its change notification was sent), with ``members@delta`` entries carrying
  ``@removed`` for removals and ``@odata.type`` ``#microsoft.graph.user``/``group``; a deleted
  group comes back as ``{"id":..,"@removed":{"reason":"deleted"}}``. An expired deltaLink is
  answered as Graph documents it: 400 ``syncStateNotFound`` (the 7-day lifetime of directory
  delta tokens, Microsoft 365 Developer Blog, 2020-07-03) or, with ``expire_tokens(410)``,
  410 Gone with a ``Location`` header holding a fresh query with an empty ``$deltatoken``, which
  the double serves as the initial query (delta-query-overview, "Synchronization reset").
* ``GET /users?$filter=id in ('..',..)&$select=..`` (at most 15 values, as Graph's default) and
  ``GET /groups/{id}/members/microsoft.graph.user?$select=..&$top=..`` (paged). A user holds
  ``accountEnabled`` (true unless a test sets it false, as disabling the account does); as Graph
  does, a property not in ``$select`` is absent from the answer, a selected one the user lacks is null.
* ``GET /directory/deletedItems/{id}``: a soft-deleted user (``soft_delete_user``), 404 for any
  other id. As delta-query-groups documents, a soft-deleted user keeps its group memberships: the
  groups' delta does not mention it, ``/users`` and the group's user listing no longer return it.
* ``/subscriptions``: POST (after the validation handshake against ``notificationUrl`` and
  ``lifecycleNotificationUrl``, as Graph does), GET, PATCH, DELETE (404 for unknown ids).
* ``GET /msi/token``: the App Service managed-identity endpoint (``IDENTITY_ENDPOINT`` with
  ``IDENTITY_HEADER``), so azure-identity's own ManagedIdentityCredential gets the token.
* Faults: 429/503 with ``Retry-After`` for the next n requests; a request carried out and then
  answered with an error (``fail_after``: a 504 from a gateway while Graph acted); a request refused
  and not carried out (``refuse``: e.g. 403 on POST /subscriptions); scripted pages (the fixtures in
  ``../shared/fixtures/msgraph/delta`` replayed with their links pointed at the double; a
  scripted ``{"status": .., "headers": {..}, "error": {..}}`` is answered as that error).

Every request is logged (method, path, query, headers) so tests count and inspect them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TOKEN = "graph-double-token"
MSI_SECRET = "graph-double-identity-header"
USER = "#microsoft.graph.user"
GROUP = "#microsoft.graph.group"


def _enc(doc: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def _dec(text: str) -> dict[str, Any]:
    pad = "=" * (-len(text) % 4)
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text + pad))
    return result


@dataclass
class Logged:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 0


@dataclass
class GraphDouble:
    base_url: str = ""
    page_size: int = 100
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # gid -> {"users","groups","others"}
    deleted: set[str] = field(default_factory=set)
    changes: list[tuple[int, str, str, str, bool]] = field(default_factory=list)  # seq, gid, kind, mid, removed
    seq: int = 0
    expired_before: int = -1  # deltatokens issued at or before this seq are gone
    expired_status: int = 400  # how Graph answers them: 400 syncStateNotFound or 410 Gone + Location
    expired_code: str = "resyncRequired"  # the error code of a 410 (a client must not need to know it)
    replicated: int | None = None  # set (lag): a delta round shows changes up to this seq only
    faults: list[tuple[int, int]] = field(default_factory=list)  # (status, retry_after) for the next requests
    log: list[Logged] = field(default_factory=list)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions_page_size: int | None = None  # set: GET /subscriptions answers in pages of this size
    script: list[dict[str, Any]] = field(default_factory=list)
    validations: list[str] = field(default_factory=list)
    vanish_on_patch: set[str] = field(default_factory=set)  # removed by Graph just before a renewal
    token_requests: list[dict[str, str]] = field(default_factory=list)
    # set: the managed-identity endpoint's token is good only when asked for this audience
    # (``resource``); one for another audience is refused, as Graph does ("Invalid audience")
    audience: str | None = None
    fail_paths: dict[str, int] = field(default_factory=dict)  # path prefix → status, until cleared
    deleted_users: dict[str, dict[str, Any]] = field(default_factory=dict)  # soft-deleted (deleted items)
    # (method, path, status): the next such request is carried out, then answered with ``status``
    # instead (a gateway that timed out while Graph acted: 504)
    fail_after: list[tuple[str, str, int]] = field(default_factory=list)
    # (method, path, status): the next such request is refused with ``status``, not carried out
    refuse: list[tuple[str, str, int]] = field(default_factory=list)

    # --- the directory the tests shape -------------------------------------------------------
    def add_user(self, uid: str | None = None, upn: str | None = None, display: str = "", **attrs: Any) -> str:
        uid = uid or str(uuid.uuid4())
        self.users[uid] = {"id": uid, "userPrincipalName": upn or f"{uid[:8]}@example.org",
                           "displayName": display or (upn or uid), "accountEnabled": True, **attrs}
        return uid

    def add_group(self, gid: str | None = None) -> str:
        gid = gid or str(uuid.uuid4())
        self.groups.setdefault(gid, {"users": set(), "groups": set(), "others": set()})
        self.deleted.discard(gid)
        return gid

    def _change(self, gid: str, kind: str, mid: str, removed: bool) -> None:
        self.seq += 1
        self.changes.append((self.seq, gid, kind, mid, removed))

    def add_member(self, gid: str, mid: str, kind: str = "users") -> None:
        self.groups[gid][kind].add(mid)
        self._change(gid, kind, mid, False)

    def add_members(self, gid: str, mids: Iterable[str], kind: str = "users") -> None:
        for m in mids:
            self.add_member(gid, m, kind)

    def remove_member(self, gid: str, mid: str, kind: str = "users") -> None:
        self.groups[gid][kind].discard(mid)
        self._change(gid, kind, mid, True)

    def delete_group(self, gid: str) -> None:
        self.deleted.add(gid)
        self._change(gid, "group", gid, True)

    def soft_delete_user(self, uid: str) -> None:
        """Delete a user the way the Entra admin centre does: into deleted items (restorable for 30
        days), its group memberships kept and no change in any group's delta."""
        user = self.users.pop(uid)
        self.deleted_users[uid] = {**user, "deletedDateTime": datetime.now(UTC).isoformat()}

    def restore_user(self, uid: str) -> None:
        user = self.deleted_users.pop(uid)
        user.pop("deletedDateTime", None)
        self.users[uid] = user

    def expire_tokens(self, status: int = 400, code: str = "resyncRequired") -> None:
        self.expired_before = self.seq
        self.seq += 1  # a token issued from now on (a resync's) is valid, as a new one from Graph is
        self.expired_status = status
        self.expired_code = code

    def lag(self) -> None:
        """Changes made from now on reach the delta query only at :meth:`catch_up`."""
        self.replicated = self.seq

    def catch_up(self) -> None:
        self.replicated = None

    def throttle(self, count: int, status: int = 429, retry_after: int = 1) -> None:
        self.faults.extend([(status, retry_after)] * count)

    def reset_log(self) -> None:
        self.log.clear()

    def requests(self, path_part: str = "", method: str | None = None) -> list[Logged]:
        return [r for r in self.log if path_part in r.path and (method is None or r.method == method)]

    # --- HTTP ---------------------------------------------------------------------------------
    def app(self) -> Starlette:
        async def dispatch(request: Request) -> Response:
            path = "/" + request.path_params.get("rest", "")
            entry = Logged(request.method, path, dict(request.query_params), dict(request.headers))
            self.log.append(entry)
            resp = await self._handle(request, path)
            hit = next((f for f in self.fail_after if f[:2] == (request.method, path)), None)
            if hit is not None:
                self.fail_after.remove(hit)
                resp = self._error(hit[2], "GatewayTimeout" if hit[2] == 504 else "ServiceUnavailable",
                                   "The operation timed out.")
            entry.status = resp.status_code
            return resp

        async def msi_token(request: Request) -> Response:
            """The App Service managed-identity endpoint (IDENTITY_ENDPOINT) azure-identity calls."""
            self.token_requests.append(dict(request.query_params))
            if request.headers.get("x-identity-header") != MSI_SECRET:
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            expires = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
            resource = request.query_params.get("resource", "")
            good = self.audience is None or resource.rstrip("/") == self.audience.rstrip("/")
            return JSONResponse({"access_token": TOKEN if good else f"aud={resource}",
                                 "expires_on": str(expires), "token_type": "Bearer",
                                 "resource": request.query_params.get("resource", "")})

        return Starlette(routes=[Route("/v1.0/{rest:path}", dispatch, methods=["GET", "POST", "PATCH", "DELETE"]),
                                 Route("/msi/token", msi_token, methods=["GET"])])

    def _error(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
        return JSONResponse({"error": {"code": code, "message": message,
                                       "innerError": {"request-id": str(uuid.uuid4())}}},
                            status_code=status, headers=dict(headers or {}))

    async def _handle(self, request: Request, path: str) -> Response:
        if request.headers.get("authorization", "").startswith("Bearer aud="):
            return self._error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return self._error(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
        for prefix, status in self.fail_paths.items():
            if path.startswith(prefix):
                return self._error(status, "Authorization_RequestDenied" if status == 403 else "InternalServerError",
                                   "Insufficient privileges to complete the operation." if status == 403
                                   else "internal error")
        refused = next((f for f in self.refuse if f[:2] == (request.method, path)), None)
        if refused is not None:
            self.refuse.remove(refused)
            denied = refused[2] == 403
            if refused[2] == 401:  # the token refused (expired, revoked, for another audience)
                return self._error(401, "InvalidAuthenticationToken", "Access token validation failure.")
            return self._error(refused[2], "Authorization_RequestDenied" if denied else "InternalServerError",
                               "Insufficient privileges to complete the operation." if denied else "internal error")
        if self.faults:
            status, after = self.faults.pop(0)
            return self._error(status, "TooManyRequests" if status == 429 else "ServiceUnavailable",
                               "Too many requests", {"Retry-After": str(after)})
        q = request.query_params
        if path in ("/groups/delta", "/groups/delta()") and request.method == "GET":
            return self._delta(q)
        if path == "/users" and request.method == "GET":
            return self._users(q)
        m = re.fullmatch(r"/directory/deletedItems/([^/]+)", path)
        if m and request.method == "GET":
            gone = self.deleted_users.get(m.group(1))
            if gone is None:
                return self._error(404, "Request_ResourceNotFound",
                                   f"Resource '{m.group(1)}' does not exist or one of its queried reference-property "
                                   "objects are not present.")
            # as the API page prints it: a directoryObject entity, no @odata.type
            return JSONResponse({"@odata.context": f"{self.base_url}/$metadata#directoryObjects/$entity", **gone})
        m = re.fullmatch(r"/groups/([^/]+)/members/(?:microsoft\.)?graph\.user", path)
        if m and request.method == "GET":
            return self._group_users(m.group(1), q)
        if path == "/subscriptions":
            if request.method == "POST":
                return await self._create_sub(await request.json())
            return self._list_subs(q)
        m = re.fullmatch(r"/subscriptions/([^/]+)", path)
        if m:
            sid = m.group(1)
            if request.method == "PATCH" and sid in self.vanish_on_patch:
                self.subscriptions.pop(sid, None)
            if sid not in self.subscriptions:
                return self._error(404, "ResourceNotFound", f"The object was not found: {sid}")
            if request.method == "DELETE":
                del self.subscriptions[sid]
                return Response(status_code=204)
            if request.method == "PATCH":
                body = await request.json()
                self.subscriptions[sid]["expirationDateTime"] = body["expirationDateTime"]
                return JSONResponse(self.subscriptions[sid])
            return JSONResponse(self.subscriptions[sid])
        return self._error(400, "BadRequest", f"the double does not serve {request.method} {path}")

    # --- delta ---------------------------------------------------------------------------------
    def _link(self, kind: str, state: Mapping[str, Any]) -> str:
        return f"{self.base_url}/groups/delta?${kind}={_enc(state)}"

    def _page(self, value: list[dict[str, Any]], *, next_state: Mapping[str, Any] | None,
              delta_state: Mapping[str, Any] | None) -> Response:
        body: dict[str, Any] = {"@odata.context": f"{self.base_url}/$metadata#groups"}
        if next_state is not None:
            body["@odata.nextLink"] = self._link("skiptoken", next_state)
        if delta_state is not None:
            body["@odata.deltaLink"] = self._link("deltatoken", delta_state)
        body["value"] = value
        return JSONResponse(body)

    def _delta(self, q: Mapping[str, str]) -> Response:
        if "$skiptoken" in q and self.script_active(q["$skiptoken"]):
            return self._scripted(_dec(q["$skiptoken"])["script"])
        if q.get("$deltatoken"):  # empty: the initial query (a 410's Location, delta-query-overview)
            state = _dec(q["$deltatoken"])
            if state.get("script") is not None:
                return self._scripted(int(state["script"]))
            if state["seq"] <= self.expired_before:
                if self.expired_status == 410:
                    fresh = "id eq '" + "' or id eq '".join(state["groups"]) + "'"
                    return self._error(410, self.expired_code, "The delta token is no longer valid.",
                                       {"Location": f"{self.base_url}/groups/delta?$filter={quote(fresh)}"
                                                    "&$select=members&$deltatoken="})
                return self._error(400, "syncStateNotFound",
                                   "The sync state generation is not found. The delta token is expired and data "
                                   "must be synchronized again.")
            return self._changes(state["groups"], state["seq"], 0)
        if "$skiptoken" in q:
            state = _dec(q["$skiptoken"])
            if state["phase"] == "full":
                return self._full(state["groups"], state["offset"], state["seq"])
            return self._changes(state["groups"], state["since"], state["offset"], until=state["seq"])
        if self.script:
            return self._scripted(0)
        flt = q.get("$filter", "")
        ids = re.findall(r"id eq '([0-9a-fA-F-]+)'", flt)
        if not ids or len(ids) > 50:
            return self._error(400, "Request_UnsupportedQuery", "filter on 1 to 50 ids")
        if q.get("$select") != "members":
            return self._error(400, "Request_UnsupportedQuery", "the double expects $select=members")
        return self._full(sorted(i.lower() for i in ids), 0, self.seq)

    def _members_of(self, gid: str) -> list[dict[str, Any]]:
        g = self.groups[gid]
        return ([{"@odata.type": USER, "id": u} for u in sorted(g["users"])]
                + [{"@odata.type": GROUP, "id": s} for s in sorted(g["groups"])]
                + [{"@odata.type": "#microsoft.graph.device", "id": o} for o in sorted(g["others"])])

    def _full(self, groups: list[str], offset: int, seq: int) -> Response:
        # flatten (group, member) so a large group spreads over several pages
        items: list[tuple[str, dict[str, Any] | None]] = []
        for gid in groups:
            if gid not in self.groups or gid in self.deleted:
                continue
            members = self._members_of(gid)
            items += [(gid, m) for m in members] or [(gid, None)]
        chunk = items[offset:offset + self.page_size]
        value: list[dict[str, Any]] = []
        for gid, m in chunk:
            if value and value[-1]["id"] == gid:
                if m is not None:
                    value[-1]["members@delta"].append(m)
            elif m is None:  # an empty group comes without members@delta (sg-HR in delta-query-groups)
                value.append({"displayName": f"group {gid[:8]}", "description": None, "id": gid})
            else:
                value.append({"displayName": f"group {gid[:8]}", "description": None, "id": gid,
                              "members@delta": [m]})
        done = offset + self.page_size >= len(items)
        return self._page(value,
                          next_state=None if done else {"phase": "full", "groups": groups,
                                                        "offset": offset + self.page_size, "seq": seq},
                          delta_state={"groups": groups, "seq": seq} if done else None)

    def _changes(self, groups: list[str], since: int, offset: int, until: int | None = None) -> Response:
        if until is None:  # a new round: what has replicated so far (a next page keeps its round's)
            until = self.seq if self.replicated is None else min(self.seq, self.replicated)
        net: dict[tuple[str, str, str], bool] = {}
        removed_groups: set[str] = set()
        for seq, gid, kind, mid, removed in self.changes:
            if since < seq <= until and gid in groups:
                if kind == "group" and mid == gid and removed:
                    removed_groups.add(gid)
                else:
                    net[(gid, kind, mid)] = removed
        items: list[tuple[str, dict[str, Any] | None]] = [(g, None) for g in sorted(removed_groups)]
        for (gid, kind, mid), removed in sorted(net.items()):
            if gid in removed_groups:
                continue
            m: dict[str, Any] = {"@odata.type": USER if kind == "users" else GROUP if kind == "groups"
                                 else "#microsoft.graph.device", "id": mid}
            if removed:
                m["@removed"] = {"reason": "deleted"}
            items.append((gid, m))
        chunk = items[offset:offset + self.page_size]
        value: list[dict[str, Any]] = []
        for gid, m in chunk:
            if m is None:
                value.append({"id": gid, "@removed": {"reason": "deleted"}})
            elif value and value[-1]["id"] == gid and "members@delta" in value[-1]:
                value[-1]["members@delta"].append(m)
            else:
                value.append({"displayName": f"group {gid[:8]}", "id": gid, "members@delta": [m]})
        done = offset + self.page_size >= len(items)
        return self._page(value,
                          next_state=None if done else {"phase": "changes", "groups": groups, "since": since,
                                                        "offset": offset + self.page_size, "seq": until},
                          delta_state={"groups": groups, "seq": until} if done else None)

    # --- scripted pages (fixtures) ------------------------------------------------------------
    def script_active(self, token: str) -> bool:
        try:
            return "script" in _dec(token)
        except (ValueError, json.JSONDecodeError):
            return False

    def _scripted(self, index: int) -> Response:
        page = json.loads(json.dumps(self.script[index]))
        if "status" in page and "error" in page:
            return self._error(int(page["status"]), str(page["error"].get("code", "")),
                               str(page["error"].get("message", "")), page.get("headers"))
        nxt = index + 1
        if "@odata.nextLink" in page:
            page["@odata.nextLink"] = self._link("skiptoken", {"script": nxt})
        if "@odata.deltaLink" in page:
            page["@odata.deltaLink"] = self._link("deltatoken", {"script": nxt})
        page["@odata.context"] = f"{self.base_url}/$metadata#groups"
        return JSONResponse(page)

    # --- users ----------------------------------------------------------------------------------
    def _select(self, user: Mapping[str, Any], select: str) -> dict[str, Any]:
        fields = [f for f in select.split(",") if f] or ["id", "displayName", "userPrincipalName"]
        return {f: user.get(f) for f in fields}

    def _users(self, q: Mapping[str, str]) -> Response:
        flt = q.get("$filter", "")
        m = re.fullmatch(r"id in \(((?:'[^']*',?)+)\)", flt)
        if not m:
            return self._error(400, "Request_UnsupportedQuery", f"unsupported filter {flt!r}")
        ids = re.findall(r"'([^']*)'", m.group(1))
        if len(ids) > 15:
            return self._error(400, "Request_UnsupportedQuery",
                               "Too many child clauses specified in search filter expression containing 'OR' "
                               "operators: 16. Max allowed: 15.")
        found = [self._select(self.users[i], q.get("$select", "")) for i in ids if i in self.users]
        return JSONResponse({"@odata.context": f"{self.base_url}/$metadata#users", "value": found})

    def _group_users(self, gid: str, q: Mapping[str, str]) -> Response:
        if gid not in self.groups:
            return self._error(404, "Request_ResourceNotFound", f"Resource '{gid}' does not exist")
        top = int(q.get("$top", "100"))
        skip = int(q.get("$skiptoken", "0"))
        ids = sorted(self.groups[gid]["users"])
        chunk = ids[skip:skip + top]
        body: dict[str, Any] = {"@odata.context": f"{self.base_url}/$metadata#users",
                                "value": [self._select(self.users[u], q.get("$select", ""))
                                          for u in chunk if u in self.users]}
        if skip + top < len(ids):
            body["@odata.nextLink"] = (f"{self.base_url}/groups/{gid}/members/graph.user?"
                                       f"$select={quote(q.get('$select', ''))}&$top={top}&$skiptoken={skip + top}")
        return JSONResponse(body)

    # --- subscriptions --------------------------------------------------------------------------
    def _list_subs(self, q: Mapping[str, str]) -> Response:
        """GET /subscriptions: all in one page, or (``subscriptions_page_size``) in pages linked by
        @odata.nextLink (subscription-list: "this API supports paging")."""
        subs = list(self.subscriptions.values())
        offset = int(_dec(q["$skiptoken"])["offset"]) if "$skiptoken" in q else 0
        size = self.subscriptions_page_size or max(len(subs), 1)
        body: dict[str, Any] = {"@odata.context": f"{self.base_url}/$metadata#subscriptions",
                                "value": subs[offset:offset + size]}
        if offset + size < len(subs):
            body["@odata.nextLink"] = f"{self.base_url}/subscriptions?$skiptoken={_enc({'offset': offset + size})}"
        return JSONResponse(body)

    async def _validate(self, url: str) -> bool:
        token = f"Validation: Testing client application reachability {uuid.uuid4()}"
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(url, params={"validationToken": token}, content=b"")
        except httpx.HTTPError:
            return False
        self.validations.append(url)
        return (r.status_code == 200 and r.text == token
                and r.headers.get("content-type", "").startswith("text/plain"))

    async def _create_sub(self, body: Mapping[str, Any]) -> Response:
        for key in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not body.get(key):
                return self._error(400, "InvalidRequest", f"{key} is required")
        exp = datetime.fromisoformat(str(body["expirationDateTime"]).replace("Z", "+00:00"))
        if str(body["resource"]).lower().startswith("groups") and exp > datetime.now(UTC) + timedelta(minutes=41760):
            return self._error(400, "InvalidRequest",
                               "Subscription expiration can only be 41760 minutes in the future.")
        if not await self._validate(str(body["notificationUrl"])):
            return self._error(400, "ValidationError",
                               "Subscription validation request failed. Notification endpoint must respond with "
                               "200 OK to validation request.")
        if body.get("lifecycleNotificationUrl") and not await self._validate(str(body["lifecycleNotificationUrl"])):
            return self._error(400, "ValidationError", "lifecycle notification endpoint validation failed")
        sid = str(uuid.uuid4())
        sub = {"id": sid, "resource": body["resource"], "applicationId": "24d3b144-21ae-4080-943f-7067b395b913",
               "changeType": body["changeType"], "clientState": body.get("clientState"),
               "notificationUrl": body["notificationUrl"],
               "lifecycleNotificationUrl": body.get("lifecycleNotificationUrl"),
               "expirationDateTime": body["expirationDateTime"],
               "creatorId": "8ee44408-0679-472c-bc2a-692812af3437", "latestSupportedTlsVersion": "v1_2",
               "notificationContentType": "application/json"}
        self.subscriptions[sid] = sub
        return JSONResponse({"@odata.context": f"{self.base_url}/$metadata#subscriptions/$entity", **sub},
                            status_code=201)

    # --- what Graph sends ----------------------------------------------------------------------
    def notification(self, gid: str, *, client_state: str | None = None, tenant: str | None = None,
                     change_type: str = "updated") -> dict[str, Any]:
        sub = next((s for s in self.subscriptions.values() if s["resource"].lower() == f"groups/{gid}"), None)
        return {"value": [{
            "subscriptionId": sub["id"] if sub else str(uuid.uuid4()),
            "subscriptionExpirationDateTime": sub["expirationDateTime"] if sub else "2030-01-01T00:00:00Z",
            "clientState": client_state if client_state is not None else (sub or {}).get("clientState"),
            "changeType": change_type,
            "resource": f"Groups/{gid}",
            "tenantId": tenant or "84bd8158-6d4d-4958-8b9f-9d6445542f95",
            "resourceData": {"@odata.type": "#Microsoft.Graph.Group", "@odata.id": f"Groups/{gid}", "id": gid,
                             "organizationId": tenant or "84bd8158-6d4d-4958-8b9f-9d6445542f95"},
        }]}

    def lifecycle(self, sid: str, event: str, *, client_state: str | None = None) -> dict[str, Any]:
        sub = self.subscriptions.get(sid, {})
        return {"value": [{
            "lifecycleEvent": event, "subscriptionId": sid,
            "subscriptionExpirationDateTime": sub.get("expirationDateTime", "2030-01-01T00:00:00Z"),
            "clientState": client_state if client_state is not None else sub.get("clientState"),
            "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        }]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    """An ASGI app served by uvicorn on 127.0.0.1 in the running event loop."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Served:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task


async def start_graph_double(**kwargs: Any) -> tuple[GraphDouble, Served]:
    double = GraphDouble(**kwargs)
    served = await Served(double.app()).start()
    double.base_url = served.url + "/v1.0"
    return double, served

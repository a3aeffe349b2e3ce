"""What the audit log says about one hub user: "what happened to bob, and why".

An audit entry (``Runner``'s record of a run) names a user in its actions (sync's user actions,
group changes, cull's stops and deletions, scale's reclaims) and in its plan's notes (a user kept,
held, or waiting). :func:`read_audit_about` pages through the log newest first and returns the
entries that name the user, each whole, as ``GET /audit`` returns them. The log holds every run
(a scale run a minute): a request reads at most ``scan`` entries, and its cursor goes on from the
entry after the last one it read, so nothing is skipped or given twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from hubpilot.ports.store import BadCursor, StateStore

PAGE = 200  # entries read from the store at once
SCAN = 2000  # entries read for one request at most
# sync's actions whose target is a hub group; every other sync action's target is a user
_GROUP_KINDS = frozenset({"create_group", "add_to_group", "remove_from_group"})
_CURSOR = re.compile(r"^u(\d{1,4})\.(.*)$")
_NAME_CHARS = r"\w@+"  # (with "-", put last in each class below)


def _actions(entry: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], str | None, str]]:
    """The entry's actions with their result (status, detail), or planned only (None)."""
    done = set()
    for r in entry.get("results") or []:
        a = r.get("action") if isinstance(r, Mapping) else None
        if isinstance(a, Mapping):
            done.add(_identity(a))
            yield a, str(r.get("status")), str(r.get("detail") or "")
    plan = entry.get("plan")
    for a in (plan.get("actions") or []) if isinstance(plan, Mapping) else []:
        if isinstance(a, Mapping) and _identity(a) not in done:
            yield a, None, ""


def _identity(a: Mapping[str, Any]) -> tuple[str, str, str]:
    return str(a.get("kind")), str(a.get("target")), repr(sorted((a.get("params") or {}).items()))


def _names(entry: Mapping[str, Any], a: Mapping[str, Any], user: str) -> bool:
    params = a.get("params") if isinstance(a.get("params"), Mapping) else {}
    assert isinstance(params, Mapping)
    if params.get("user") == user or (a.get("kind") == "rename_user" and params.get("to") == user):
        return True
    return entry.get("operation") == "sync" and a.get("kind") not in _GROUP_KINDS and a.get("target") == user


def _word(user: str) -> re.Pattern[str]:
    # the name as a word of its own: not part of a longer name ("ann" is not in "anna", "ann.lee"),
    # a full stop after it ending the sentence
    return re.compile(rf"(?<![{_NAME_CHARS}.-]){re.escape(user)}(?![{_NAME_CHARS}-]|\.[{_NAME_CHARS}-])")


def about(entry: Mapping[str, Any], user: str) -> list[str]:
    """What ``entry`` says about ``user``: one line per action naming them (with its outcome:
    a result's status, else ``planned``, ``refused`` for a refused run's plan, ``not applied`` for
    a paused one's, ``not recorded`` for a run that failed before recording it) and per plan note
    naming them; [] when it does not name them."""
    lines = []
    # an action without a result: refused with its plan, not applied while paused, and in a run
    # that failed as it applied (cancelled: its results are not listed) perhaps done
    unapplied = {"refused": "refused", "paused": "not applied (the operation was paused)",
                 "failed": "not recorded (the run failed before recording what it did)"}.get(
                     str(entry.get("outcome")), "planned")
    for a, status, detail in _actions(entry):
        if _names(entry, a, user):
            params = a.get("params") if isinstance(a.get("params"), Mapping) else {}
            assert isinstance(params, Mapping)
            shown = " ".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "user")
            state = status or unapplied
            lines.append(f"{a.get('kind')} {a.get('target')}" + (f" ({shown})" if shown else "")
                         + f": {state}" + (f", {detail}" if detail else "")
                         + (f" ({a.get('reason')})" if a.get("reason") else ""))
    plan = entry.get("plan")
    word = _word(user)
    for note in (plan.get("notes") or []) if isinstance(plan, Mapping) else []:
        if isinstance(note, str) and word.search(note):
            lines.append(f"note: {note}")
    return lines


def _cursor(store_cursor: str | None, skip: int) -> str:
    return f"u{skip}.{store_cursor or ''}"


def parse_cursor(cursor: str | None) -> tuple[str | None, int]:
    """(the store's page cursor, entries of that page already read); BadCursor if it is not a
    cursor :func:`read_audit_about` returned."""
    if cursor is None:
        return None, 0
    m = _CURSOR.match(cursor)
    if not m or int(m.group(1)) >= PAGE:
        raise BadCursor("not a cursor of an audit search by user")
    return m.group(2) or None, int(m.group(1))


async def _after_newest(store: StateStore, last: Mapping[str, Any], i: int, since: datetime | None,
                        operation: str | None) -> str | None:
    """The cursor after ``last``, the ``i``-th of the log's newest entries. Runs appended before the
    next request put it further down (a scale run a minute), so a count of entries from the top
    would give entries twice: the store's own cursor after it is read again, the entry found by its
    id (a run appended meanwhile moves it down; the read is made again up to it)."""
    n = i + 1
    for _ in range(5):
        again, nxt = await store.read_audit(since=since, operation=operation, limit=n)
        ids = [e.get("id") for e in again]
        if ids and ids[-1] == last.get("id"):
            return _cursor(nxt, 0) if nxt else None
        n = ids.index(last.get("id")) + 1 if last.get("id") in ids else n + PAGE
    return _cursor(None, i + 1)  # not found again (the log moved too fast): from the top, as read


async def read_audit_about(store: StateStore, user: str, *, since: datetime | None = None,
                           operation: str | None = None, limit: int = 100, cursor: str | None = None,
                           scan: int = SCAN) -> tuple[list[dict[str, Any]], str | None, int]:
    """The entries naming ``user``, newest first: at most ``limit``, from at most ``scan`` entries
    read. Returns (entries, the cursor to go on from, or None at the log's end, entries read)."""
    if not user:
        raise ValueError("user must not be empty")
    page_cursor, skip = parse_cursor(cursor)
    found: list[dict[str, Any]] = []
    read = 0
    while True:
        page, nxt = await store.read_audit(since=since, operation=operation, limit=PAGE, cursor=page_cursor)
        for i in range(skip, len(page)):
            read += 1
            if about(page[i], user):
                found.append(page[i])
            if len(found) >= limit or read >= scan:
                if i + 1 < len(page) and page_cursor is None:
                    return found, await _after_newest(store, page[i], i, since, operation), read
                if i + 1 < len(page):
                    return found, _cursor(page_cursor, i + 1), read
                return found, (_cursor(nxt, 0) if nxt else None), read
        if nxt is None:
            return found, None, read
        page_cursor, skip = nxt, 0

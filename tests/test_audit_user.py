"""What the audit log says about one hub user (``GET /audit?user=``, ``hubpilot audit --user``):
the entries that name them, read page by page without skipping or repeating one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.audit import PAGE, about, parse_cursor, read_audit_about
from hubpilot.loop import Action, ActionResult, Outcome, Plan, RunRecord, Status
from hubpilot.ports.store import BadCursor
from tests.test_api import ADMIN, READER, Api, api  # noqa: F401 - the fixture

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def entry(operation: str, actions: list[Action], *, statuses: list[Status] | None = None,
          notes: tuple[str, ...] = (), outcome: Outcome = Outcome.APPLIED, at: datetime = T0) -> dict[str, Any]:
    """An audit entry as the Runner writes it (RunRecord.to_json, plus at and kind)."""
    plan = Plan.build(operation, actions, notes=notes)
    results = [ActionResult(a, s) for a, s in zip(actions, statuses or [], strict=False)]
    record = RunRecord(run_id="r" * 32, operation=operation, trigger="timer", actor="timer", started=at,
                       finished=at, outcome=outcome, plan=plan, results=results)
    return {**record.to_json(), "at": at.isoformat(), "kind": "run"}


def test_sync_actions_on_the_user_and_their_group_changes_name_them() -> None:
    e = entry("sync", [
        Action("stop_servers", "bob", 3, {"servers": [""]}, "no longer in any synced directory group"),
        Action("deprovision", "bob", 5, {}, "no longer in any synced directory group"),
        Action("remove_from_group", "dir-analysts", 4, {"user": "bob"}, "bob is no longer a member"),
        Action("add_to_group", "dir-analysts", 2, {"user": "ann"}, "ann is a member of the directory group"),
        Action("create_group", "bob", 1, {}, "mirrors a synced directory group"),  # a group called bob
    ], statuses=[Status.DONE, Status.DONE, Status.FAILED])
    lines = about(e, "bob")
    assert [line.split(":")[0] for line in lines] == [
        "stop_servers bob (servers=[''])", "deprovision bob", "remove_from_group dir-analysts"]
    assert "deprovision bob: done (no longer in any synced directory group)" in lines
    assert lines[2].startswith("remove_from_group dir-analysts: failed")
    assert about(e, "ann") == ["add_to_group dir-analysts: planned (ann is a member of the directory group)"]


def test_a_rename_names_both_names_and_a_refused_plan_says_refused() -> None:
    e = entry("sync", [Action("rename_user", "ann", 0, {"to": "anna"}, "renamed in the directory"),
                       Action("deprovision", "carl", 5, {}, "no longer in any synced directory group")],
              outcome=Outcome.REFUSED)
    assert about(e, "ann") == about(e, "anna") == ["rename_user ann (to=anna): refused (renamed in the directory)"]
    assert about(e, "carl") == ["deprovision carl: refused (no longer in any synced directory group)"]


def test_cull_and_scale_name_the_user_by_their_params_not_a_pool_or_node_of_the_same_name() -> None:
    cull = entry("cull", [Action("stop_server", "gpu/", 0, {"user": "gpu", "server": ""}, "idle for 61 min")],
                 statuses=[Status.DONE])
    scale = entry("scale", [Action("set_count", "gpu", 0, {"count": 2, "from": 1}, "a GPU server waits"),
                            Action("reclaim", "ann/", 0, {"user": "ann", "server": "", "node": "gpu"}, "idle")])
    assert about(cull, "gpu") == ["stop_server gpu/ (server=): done (idle for 61 min)"]
    assert about(scale, "gpu") == []  # the pool and the node are called gpu: no user action
    assert about(scale, "ann") == ["reclaim ann/ (node=gpu server=): planned (idle)"]


@pytest.mark.parametrize("note, names", [
    ("ann is kept as they are: their directory entry is still a member", True),
    ("kept ann/gpu: used 3 min ago", True),
    ("hub name 'ann' is claimed by several directory entries", True),
    ("the group's last member was ann.", True),
    ("anna is kept as they are", False),  # another user whose name starts with ann
    ("kept ann.lee/: used 3 min ago", False),
    ("dir-ann is empty in the directory", False),
])
def test_a_plan_note_names_the_user_only_as_a_word_of_its_own(note: str, names: bool) -> None:
    e = entry("sync", [], notes=(note,))
    assert bool(about(e, "ann")) is names
    assert not names or about(e, "ann") == [f"note: {note}"]


async def fill(store: SqliteStore, n: int, naming: set[int]) -> None:
    """``n`` entries, oldest first; those in ``naming`` stop bob's server, the others ann's."""
    for i in range(n):
        who = "bob" if i in naming else "ann"
        await store.append_audit(entry("cull", [Action("stop_server", f"{who}/", 0, {"user": who, "server": ""},
                                                       f"idle #{i}")], at=T0 + timedelta(minutes=i)))


async def test_paging_through_a_search_skips_and_repeats_nothing(tmp_path: Path) -> None:
    """Matches inside a store page, at its edges and across pages; small limits and a small scan
    budget: the pages together hold every entry naming bob once, newest first."""
    store = SqliteStore(tmp_path / "state.sqlite3")
    try:
        naming = {0, 1, 5, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE - 1, 2 * PAGE + 7, 2 * PAGE + 49}
        await fill(store, 2 * PAGE + 50, naming)
        want = [f"idle #{i}" for i in sorted(naming, reverse=True)]
        for limit, scan in [(1, 2000), (2, 2000), (3, 150), (100, 2000), (4, 1)]:
            got: list[str] = []
            cursor = None
            for _ in range(2000):
                page, cursor, read = await read_audit_about(store, "bob", limit=limit, cursor=cursor, scan=scan)
                assert len(page) <= limit and read <= scan
                got += [e["plan"]["actions"][0]["reason"] for e in page]
                if cursor is None:
                    break
            assert got == want, (limit, scan)
        alone, cursor, read = await read_audit_about(store, "bob", limit=100, scan=PAGE + 10)
        assert len(alone) == 3 and read == PAGE + 10 and cursor is not None  # the rest needs the next page
        assert parse_cursor(cursor)[1] == 10
        with pytest.raises(BadCursor):
            await read_audit_about(store, "bob", cursor="not-ours")
        with pytest.raises(BadCursor):
            parse_cursor(f"u{PAGE}.x")
    finally:
        await store.close()


async def test_the_api_and_the_cli_answer_what_happened_to_a_user(api: Api) -> None:  # noqa: F811
    from hubpilot import cli

    api.worlds["sync"].desired |= {"sync-c", "sync-cd"}
    assert (await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)).status_code == 200
    api.worlds["sync"].desired -= {"sync-c"}
    assert (await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)).status_code == 200
    r = await api.client.get("/api/v1/audit?user=sync-c", headers=READER)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [[a["kind"] for a in e["plan"]["actions"] if a["target"] == "sync-c"] for e in body["entries"]] == [
        ["remove"], ["add"]]
    assert body["next_cursor"] is None and body["scanned"] == 2
    one = (await api.client.get("/api/v1/audit?user=sync-c&limit=1", headers=READER)).json()
    assert len(one["entries"]) == 1 and one["next_cursor"]
    rest = (await api.client.get(f"/api/v1/audit?user=sync-c&limit=1&cursor={one['next_cursor']}",
                                 headers=READER)).json()
    assert [e["id"] for e in rest["entries"]] == [body["entries"][1]["id"]]
    bad = await api.client.get("/api/v1/audit?user=sync-c&cursor=zzz", headers=READER)
    assert bad.status_code == 400 and "cursor" in bad.text
    assert (await api.client.get("/api/v1/audit?user=a%20b", headers=READER)).status_code == 422
    import io
    out = io.StringIO()
    assert await cli._audit(api.ctx, 20, None, None, False, out, user="sync-c") == 0
    text = out.getvalue()
    assert "    remove sync-c: done (present but not wanted)" in text
    assert "    add sync-c: done (wanted but missing)" in text and "sync-cd" not in text
    none = io.StringIO()
    assert await cli._audit(api.ctx, 20, None, None, False, none, user="nobody") == 0
    assert none.getvalue() == "no entry names nobody among the 2 read\n"
    upper = io.StringIO()
    assert await cli._audit(api.ctx, 20, None, None, False, upper, user="Sync-C") == 0
    assert upper.getvalue() == ("no entry names Sync-C among the 2 read (hub names are matched exactly, and are "
                                "usually lowercase: sync-c?)\n")

"""The pure parts of the Entra work: delta rounds, expansion, notification checks, subscription
plans, settings. Delta pages and notifications are the public examples in
``../shared/fixtures/msgraph`` (quirks included)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hubpilot.config.entra import EntraSettings
from hubpilot.entra.delta import ChunkState, GroupState, apply_round, closure, expand, new_chunks, normalise_id
from hubpilot.entra.notifications import (
    Hint,
    NotificationError,
    Verdict,
    check,
    coalesce,
    hints_for,
    parse_body,
)
from hubpilot.entra.subscriptions import (
    ObservedSubscriptions,
    SubscriptionPolicy,
    plan_subscriptions,
    secret_fingerprint,
)

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "msgraph"
NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def fixture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return doc


def entries(page: dict[str, Any]) -> list[dict[str, Any]]:
    """A page's groups as the adapter hands them over (members@delta and @removed extracted)."""
    return [{"id": g.get("id"), "removed": "@removed" in g, "members": g.get("members@delta") or []}
            for g in page["value"]]


MARK8 = "2e5807ce-58f3-4a94-9b37-ffff2e085957"
SALES = "421e797f-9406-4934-b778-4908421e3505"
ALLCO = "c2f798fd-f95d-4623-8824-63aec21fffff"
HR = "ec22655c-8eb2-432a-b4ea-8b8a254bffff"


def test_normalise_id_accepts_uuid_objects_and_text_and_refuses_the_35_character_id() -> None:
    u = uuid.UUID("632f6bb2-3ec8-4c1f-9073-0027a8c68593")
    assert normalise_id(u) == "632f6bb2-3ec8-4c1f-9073-0027a8c68593"
    assert normalise_id("632F6BB2-3EC8-4C1F-9073-0027A8C68593") == "632f6bb2-3ec8-4c1f-9073-0027a8c68593"
    assert normalise_id("632f6bb2-3ec8-4c1f-9073-0027a8c6859") is None
    assert normalise_id("632f6bb2-3ec8-4c1f-9073-0027a8c685930") is None  # one digit too many
    assert normalise_id(None) is None and normalise_id(42) is None


def test_first_round_over_the_documented_pages_then_a_round_with_a_malformed_removal() -> None:
    chunk = ChunkState((ALLCO, HR, MARK8, SALES))
    pages = [fixture(f"delta/delta-query-groups.0{i}-{n}.json") for i, n in
             ((1, "initial-response"), (2, "nextlink-response"), (3, "final-nextlink-response"))]
    link = pages[-1]["@odata.deltaLink"]
    out = apply_round(chunk, [e for p in pages for e in entries(p)], link, fresh=True)
    m = out.chunk.members
    assert set(m[ALLCO].users) == {"693acd06-2877-4339-8ade-b704261fe7a0", "49320844-be99-4164-8167-87ff5d047ace"}
    assert set(m[MARK8].users) == {"632f6bb2-3ec8-4c1f-9073-0027a8c68593"}
    assert set(m[SALES].users) == {"3c8ac7c4-d365-4df9-abfa-356a9dd7763c", "49320844-be99-4164-8167-87ff5d047ace"}
    assert m[HR].users == {}
    assert out.seen == {ALLCO, HR, MARK8, SALES}
    assert out.chunk.delta_link == link and not out.malformed
    assert out.added_users >= {"693acd06-2877-4339-8ade-b704261fe7a0"}

    # page 05: the doc's @removed entry carries a 35-character id: never a removal of a guess
    changes = fixture("delta/delta-query-groups.05-deltalink-changes-response.json")
    nxt = apply_round(out.chunk, entries(changes), changes["@odata.deltaLink"], fresh=False)
    assert set(nxt.chunk.members[MARK8].users) == {
        "632f6bb2-3ec8-4c1f-9073-0027a8c68593", "37de1ae3-408f-4702-8636-20824abda004"}
    assert nxt.malformed and nxt.chunk.delta_link is None  # the next read is a full one
    assert any("malformed id" in n and "0027a8c6859'" in n for n in nxt.notes)
    # the input chunk is left as it was (a refused or failed read commits nothing)
    assert set(out.chunk.members[MARK8].users) == {"632f6bb2-3ec8-4c1f-9073-0027a8c68593"}


def test_a_large_group_repeated_across_pages_merges_in_order() -> None:
    chunk = ChunkState((MARK8,), "old-link", {MARK8: GroupState(users={
        "c08a463b-7b8a-40a4-aa31-f9bf690b9551": ["x@example.org", "X"]})})
    p1 = fixture("delta/delta-query-groups.06-large-group-page1.placeholders-removed.json")
    p2 = fixture("delta/delta-query-groups.07-large-group-page2.placeholders-removed.json")
    out = apply_round(chunk, entries(p1) + entries(p2), "new-link", fresh=False)
    assert set(out.chunk.members[MARK8].users) == {
        "37de1ae3-408f-4702-8636-20824abda004", "23423fa6-821e-44b2-aae4-d039d33884c2"}
    # applying the same pages again changes nothing (idempotent merge)
    again = apply_round(out.chunk, entries(p1) + entries(p2), "new-link", fresh=False)
    assert again.chunk.members[MARK8].users == out.chunk.members[MARK8].users


def test_group_objects_without_id_are_never_attributed() -> None:
    chunk = ChunkState((ALLCO,))
    doc = fixture("delta/group-delta.response1.json")  # "All Company" without an id, with members
    out = apply_round(chunk, entries(doc), "link", fresh=True)
    assert out.chunk.members[ALLCO].users == {} and out.malformed
    assert out.incomplete  # a full round: members of an unknown group are unknown, not absent
    assert not apply_round(chunk, entries(doc), "link", fresh=False).incomplete  # a change: ignored
    for name in ("group-delta.response2-select.json", "group-delta.response3-minimal.json"):
        quiet = apply_round(chunk, entries(fixture(f"delta/{name}")), "link", fresh=True)
        assert not quiet.malformed  # no members: nothing lost, nothing to report


def test_removed_group_entry_and_non_user_members() -> None:
    g = str(uuid.uuid4())
    chunk = ChunkState((g,), "l", {g: GroupState(users={"u": ["a", "A"]})})
    out = apply_round(chunk, [{"id": g, "removed": True, "members": []}], "l2", fresh=False)
    assert out.removed_groups == {g} and out.chunk.members[g].users == {}
    dev = str(uuid.uuid4())
    out = apply_round(chunk, [{"id": g, "members": [{"@odata.type": "#microsoft.graph.device", "id": dev}]}],
                      "l3", fresh=False)
    assert out.chunk.members[g].others == {dev}
    _, notes = expand([g], out.chunk.members, nested=False, max_depth=3)
    assert any("neither users nor groups" in n for n in notes)


def test_expand_nested_with_cycle_and_depth() -> None:
    a, b, c, d = (str(uuid.uuid4()) for _ in range(4))
    members = {
        a: GroupState(users={"u1": ["one", "One"]}, groups={b}),
        b: GroupState(users={"u2": ["two", "Two"]}, groups={c, a}),
        c: GroupState(users={"u3": ["three", "Three"]}, groups={d}),
        d: GroupState(users={"u4": ["four", "Four"]}),
    }
    got, notes = expand([a], members, nested=True, max_depth=8)
    assert {m.username for m in got[a]} == {"one", "two", "three", "four"}
    assert any("cycle" in n for n in notes)
    shallow, notes = expand([a], members, nested=True, max_depth=1)
    assert {m.username for m in shallow[a]} == {"one", "two"}
    assert any("deeper than nested_max_depth" in n for n in notes)
    flat, notes = expand([a], members, nested=False, max_depth=8)
    assert {m.username for m in flat[a]} == {"one"} and any("nesting is off" in n for n in notes)
    assert closure([a], members, nested=True, max_depth=8) == {a, b, c, d}
    assert closure([a], members, nested=False, max_depth=8) == {a}


def test_a_group_reached_first_by_a_longer_path_is_expanded_from_its_shortest_one() -> None:
    # top → g → h is within nested_max_depth=2; top → z → g is a longer way to the same g. The
    # depth of h is that of its shortest path: alice is a member whichever way is walked first
    # (the two orders of the ids make either subgroup of top come first).
    top, h = str(uuid.uuid4()), str(uuid.uuid4())
    low, high = "10000000-0000-0000-0000-000000000000", "f0000000-0000-0000-0000-000000000000"
    for g, z in ((low, high), (high, low)):
        members = {
            top: GroupState(groups={g, z}),
            z: GroupState(groups={g}),
            g: GroupState(groups={h}),
            h: GroupState(users={"u1": ["alice", "Alice"]}),
        }
        got, notes = expand([top], members, nested=True, max_depth=2)
        assert {m.username for m in got[top]} == {"alice"}, notes
        assert not any("deeper than" in n for n in notes), notes
        assert h in closure([top], members, nested=True, max_depth=2)
        # a group really deeper than the limit is still skipped and named
        got, notes = expand([top], members, nested=True, max_depth=1)
        assert got[top] == frozenset() and any(f"group {h} under {g} is deeper" in n for n in notes), notes

def test_chunks_hold_at_most_fifty_groups() -> None:
    ids = [str(uuid.uuid4()) for _ in range(120)]
    chunks = new_chunks(ids)
    assert [len(c.groups) for c in chunks] == [50, 50, 20]
    assert ChunkState.from_json(chunks[0].to_json()).key == chunks[0].key


# --- notifications --------------------------------------------------------------------------------

def test_parse_body_says_what_is_wrong() -> None:
    for raw, words in ((b"not json", "not JSON"), (b"[]", '{"value"'), (b'{"value": []}', "no notification"),
                       (b'{"value": [1]}', "value[0]")):
        with pytest.raises(NotificationError, match=re.escape(words)):
            parse_body(raw)


def test_documented_envelopes_pass_only_with_the_right_client_state() -> None:
    msg = fixture("notifications/webhook-change-notification.message.json")["value"]
    ok = check(msg, client_state="secretClientValue")
    assert len(ok.accepted) == 1 and ok.status == 202
    forged = check(msg, client_state="another-secret")
    assert not forged.accepted and forged.status == 403 and "clientState" in forged.rejected[0]
    # no configured secret accepts nothing, not even a notification that carries none either
    assert check([{**msg[0], "clientState": ""}], client_state="").status == 403
    wrong_tenant = check(msg, client_state="secretClientValue", tenant_id=str(uuid.uuid4()))
    assert wrong_tenant.status == 403 and "tenant" in wrong_tenant.rejected[0]
    # the group notification inside the Event Grid envelope names the group by resource
    grid = fixture("notifications/eventgrid-entra.GroupUpdated.json")["data"]
    one = check([grid], client_state="<guid>")
    assert one.accepted[0].group_id == "<group-id>"


def test_lifecycle_events_and_their_hints() -> None:
    reauth = fixture("lifecycle/lifecycle.reauthorizationRequired.json")["value"]
    v = check(reauth, client_state="{secret client state}", lifecycle=True)
    assert v.accepted[0].lifecycle_event == "reauthorizationRequired"
    hints = hints_for(v, NOW)
    assert hints == [Hint("subscriptions", renew=("e3898f08-5cd0-4a6a-80fc-6addbfb73b7b",), received=NOW.isoformat())]
    missed = check(fixture("lifecycle/lifecycle.missed.json")["value"], client_state="<secretClientState>",
                   lifecycle=True)
    assert [h.kind for h in hints_for(missed, NOW)] == ["sync"]
    # a lifecycle event on the notification URL is one too (Graph allows the two URLs to be the same)
    assert hints_for(check(reauth, client_state="{secret client state}"), NOW) == hints
    # an event unknown here (the documented structure's placeholder names none we know) is
    # verified, so acknowledged (a refusal is retried for hours), and asks for a manager round
    odd = check(fixture("lifecycle/lifecycle.structure-current.json")["value"],
                client_state="<secretClientState>", lifecycle=True)
    assert odd.status == 202
    assert hints_for(odd, NOW) == [Hint("subscriptions", received=NOW.isoformat())]
    nameless = [{**reauth[0], "lifecycleEvent": None}]
    assert check(nameless, client_state="{secret client state}", lifecycle=True).status == 403


def test_a_burst_of_hints_coalesces_to_one_sync() -> None:
    hints = [Hint("sync", (f"g{i % 3}",), received=(NOW + timedelta(seconds=i)).isoformat()) for i in range(10)]
    hints.append(Hint("subscriptions", renew=("s1",), received=NOW.isoformat()))
    out = coalesce(hints)
    assert [h.kind for h in out] == ["subscriptions", "sync"]
    assert out[1].groups == ("g0", "g1", "g2") and out[1].received == (NOW + timedelta(seconds=9)).isoformat()
    assert Hint.from_json(out[1].to_json()) == out[1]
    # a notification that arrives with a re-check is no re-check: its sync may queue its own
    recheck = Hint("sync", ("g0",), received=NOW.isoformat(), recheck=True)
    assert not coalesce([recheck, Hint("sync", ("g1",), received=NOW.isoformat())])[0].recheck
    assert coalesce([recheck, recheck])[0].recheck
    with pytest.raises(NotificationError):
        Hint.from_json({"kind": "delete-everything"})
    assert Verdict().status == 202


# --- subscriptions --------------------------------------------------------------------------------

def policy(*groups: str) -> SubscriptionPolicy:
    return SubscriptionPolicy(groups=groups, notification_url="https://hub.example.org/api/v1/graph/notifications",
                              lifecycle_url="https://hub.example.org/api/v1/graph/lifecycle", client_state="s",
                              lifetime=timedelta(minutes=41760), renew_before=timedelta(days=2))


def sub(gid: str, expires: datetime, sid: str | None = None, url: str | None = None) -> dict[str, Any]:
    return {"id": sid or str(uuid.uuid4()), "resource": f"groups/{gid}",
            "notificationUrl": url or "https://hub.example.org/api/v1/graph/notifications",
            "lifecycleNotificationUrl": "https://hub.example.org/api/v1/graph/lifecycle",
            "expirationDateTime": expires.strftime("%Y-%m-%dT%H:%M:%S.1234567Z")}


def test_subscription_plan_creates_renews_deletes_and_leaves_others_alone() -> None:
    a, b, c, gone = (str(uuid.uuid4()) for _ in range(4))
    fresh = sub(b, NOW + timedelta(days=20))
    due = sub(c, NOW + timedelta(hours=5), sid="due")
    dup = sub(c, NOW + timedelta(hours=1), sid="dup")
    old = sub(gone, NOW + timedelta(days=3), sid="old")
    foreign = sub(a, NOW + timedelta(hours=1), sid="foreign", url="https://elsewhere.example.org/hook")
    plan = plan_subscriptions(policy(a, b, c), ObservedSubscriptions((fresh, due, dup, old, foreign)), NOW)
    got = {(x.kind, x.target) for x in plan.actions}
    assert got == {("create", f"groups/{a}"), ("renew", "due"), ("delete", "dup"), ("delete", "old")}
    renew = next(x for x in plan.actions if x.kind == "renew")
    assert datetime.fromisoformat(renew.params["expiration"]) <= NOW + timedelta(minutes=41760)
    # once renewed, the same state plans nothing: idempotent
    settled = (fresh, sub(c, NOW + timedelta(days=28), sid="due"), sub(a, NOW + timedelta(days=28)))
    assert plan_subscriptions(policy(a, b, c), ObservedSubscriptions(settled), NOW).empty
    forced = plan_subscriptions(policy(a, b, c), ObservedSubscriptions(settled, frozenset({"due"})), NOW)
    assert [(x.kind, x.target) for x in forced.actions] == [("renew", "due")]


def test_a_subscription_made_with_an_earlier_client_state_is_replaced() -> None:
    """A renewal keeps a subscription's clientState: after the secret changes, the ones made with the
    old secret are deleted and made anew; those without a fingerprint count as made with this one."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    subs = (sub(a, NOW + timedelta(days=20), sid="old"), sub(b, NOW + timedelta(days=20), sid="unknown"))
    same = ObservedSubscriptions(subs, secrets={"old": secret_fingerprint("s")})
    assert plan_subscriptions(policy(a, b), same, NOW).empty
    rotated = ObservedSubscriptions(subs, secrets={"old": secret_fingerprint("the earlier secret")})
    plan = plan_subscriptions(policy(a, b), rotated, NOW)
    assert [(x.kind, x.target, x.phase) for x in plan.actions] == [("delete", "old", 0), ("create", f"groups/{a}", 1)]
    assert "earlier clientState" in plan.actions[0].reason
    # a lifecycleNotificationUrl is set only at creation: one without ours is made anew too
    bare = ObservedSubscriptions(({**subs[0], "lifecycleNotificationUrl": None}, subs[1]))
    plan = plan_subscriptions(policy(a, b), bare, NOW)
    assert [(x.kind, x.target) for x in plan.actions] == [("delete", "old"), ("create", f"groups/{a}")]
    assert secret_fingerprint("s") != secret_fingerprint("s ")
    assert "a-long-secret" not in secret_fingerprint("a-long-secret")


def test_a_subscription_is_renewed_from_renew_before_ahead_of_its_expiry_and_never_left_to_lapse() -> None:
    """renew_before is the window before the expiry: a subscription expiring within it (its edge
    included) or already past is renewed, one expiring later is left alone; an expiry that cannot
    be read is renewed (a renewal sets a known one) rather than left to run out unnoticed."""
    a = str(uuid.uuid4())

    def planned(expires: object) -> list[tuple[str, str]]:
        s = {**sub(a, NOW, sid="s"), "expirationDateTime": expires}
        return [(x.kind, x.target) for x in plan_subscriptions(policy(a), ObservedSubscriptions((s,)), NOW).actions]

    window = policy(a).renew_before
    assert planned((NOW + window + timedelta(minutes=1)).isoformat()) == []
    assert planned((NOW + window).isoformat()) == [("renew", "s")]
    assert planned((NOW + window - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.1234567Z")) == [("renew", "s")]
    assert planned((NOW - timedelta(minutes=5)).isoformat()) == [("renew", "s")]
    for unreadable in (None, "", "soon", "2026-13-40T00:00:00Z"):
        assert planned(unreadable) == [("renew", "s")], unreadable


def test_a_group_subscription_is_known_by_its_resource_in_any_case_and_never_by_a_sub_resource() -> None:
    """Graph lists a subscription's resource as it was created: one made for the group's id in
    capitals (or with a leading '/') is the group's and is kept; one for ``groups/<id>/members``
    is not the group's own subscription (hubpilot makes none such) and leaves the group without one."""
    a = str(uuid.uuid4())
    upper = {**sub(a, NOW + timedelta(days=20), sid="upper"), "resource": f"/Groups/{a.upper()}"}
    assert plan_subscriptions(policy(a), ObservedSubscriptions((upper,)), NOW).empty
    members = {**sub(a, NOW + timedelta(days=20), sid="members"), "resource": f"groups/{a}/members"}
    plan = plan_subscriptions(policy(a), ObservedSubscriptions((members,)), NOW)
    assert [(x.kind, x.target) for x in plan.actions] == [("create", f"groups/{a}")]


def test_entra_settings_say_what_to_fix() -> None:
    s = EntraSettings()
    assert s.effective_scope == "https://graph.microsoft.com/.default" and not s.notifications
    with pytest.raises(ValidationError, match="notification_url and client_state"):
        EntraSettings(notifications=True)
    with pytest.raises(ValidationError, match="must use https"):
        EntraSettings(graph_base_url="http://graph.example.org/v1.0")
    with pytest.raises(ValidationError, match="128"):
        EntraSettings(client_state="x" * 129)
    with pytest.raises(ValidationError, match="tenant's GUID"):
        EntraSettings(tenant_id="contoso.onmicrosoft.com")
    with pytest.raises(ValidationError, match="user property name"):
        EntraSettings(username_attribute="user principal")
    ok = EntraSettings(notifications=True, client_state="s3cret",
                       notification_url="https://hub.example.org/api/v1/graph/notifications")
    assert ok.effective_lifecycle_url == "https://hub.example.org/api/v1/graph/lifecycle"
    assert EntraSettings(graph_base_url="https://graph.microsoft.us/v1.0/").effective_scope == \
        "https://graph.microsoft.us/.default"


def test_a_hint_is_covered_only_by_a_finished_sync_that_started_after_it() -> None:
    from datetime import UTC, datetime, timedelta

    from hubpilot.entra.notifications import Hint, covered_by

    received = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    hint = Hint("sync", received=received.isoformat())
    assert covered_by(hint, "applied", received + timedelta(seconds=6))
    assert covered_by(hint, "refused", received + timedelta(seconds=6))  # a refused plan re-appears next run
    assert covered_by(hint, "paused", received + timedelta(seconds=6))  # read as a dry-run: the resumed sync reads it
    assert not covered_by(hint, "applied", received - timedelta(seconds=1))  # started before the change
    assert not covered_by(hint, "failed", received + timedelta(seconds=6))  # a failed read saw nothing
    assert not covered_by(hint, "applied", None)
    assert not covered_by(Hint("sync"), "applied", received)  # no receipt time: run again


def test_a_sync_started_just_after_a_hint_by_another_hosts_clock_does_not_cover_it() -> None:
    """``received`` is the webhook instance's clock, the sync's start the running instance's: a sync
    host a second ahead would count a sync that started (and read the delta) just before the
    notification as covering it, and the change would wait for the scheduled sync. Only a sync
    that started COVER_MARGIN after the receipt covers it: a borderline hint costs one more sync."""
    from datetime import UTC, datetime, timedelta

    from hubpilot.entra.notifications import COVER_MARGIN, Hint, covered_by

    received = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    hint = Hint("sync", received=received.isoformat())
    assert COVER_MARGIN >= timedelta(seconds=2)
    assert not covered_by(hint, "applied", received)
    assert not covered_by(hint, "applied", received + timedelta(seconds=1))  # a clock a second ahead
    assert not covered_by(hint, "applied", received + COVER_MARGIN - timedelta(microseconds=1))
    assert covered_by(hint, "applied", received + COVER_MARGIN)


def test_a_hint_is_rechecked_for_the_notified_groups_the_delta_read_did_not_show() -> None:
    """unseen_groups: the re-check follows what the delta read showed of the notified groups, not
    whether the plan has actions; a plan recorded without the fact (an earlier release) falls back
    to 'no action'; a re-check, or a hint naming no group, asks for none."""
    from hubpilot.entra.notifications import Hint, unseen_groups
    from hubpilot.loop import Action, Plan

    a, b = "0f8fad5b-d9cb-469f-a165-70867728950e", "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    act = [Action("add_user", "ana", 1)]
    hint = Hint("sync", (a, b), received="2026-11-25T09:00:00+00:00")
    assert unseen_groups(hint, Plan.build("sync", act, facts={"changed_groups": [b]})) == (a,)
    assert unseen_groups(hint, Plan.build("sync", [], facts={"changed_groups": [a.upper(), b]})) == ()
    assert unseen_groups(hint, Plan.build("sync", act, facts={"changed_groups": []})) == (a, b)
    assert unseen_groups(hint, Plan.build("sync", [])) == (a, b)  # no fact: the plan's actions decide
    assert unseen_groups(hint, Plan.build("sync", act)) == ()
    assert unseen_groups(Hint("sync", (a,), recheck=True), Plan.build("sync", [], facts={"changed_groups": []})) == ()
    assert unseen_groups(Hint("sync"), Plan.build("sync", [], facts={"changed_groups": []})) == ()


def test_a_round_that_replaced_a_dropped_subscription_asks_for_a_sync() -> None:
    """missed_changes: a creation while a subscription hubpilot made has vanished, or a renewal
    that found its subscription gone (404), means unnotified changes; a first creation, a plain
    renewal or a failed replacement do not."""
    from hubpilot.entra.subscriptions import RECREATED, missed_changes
    from hubpilot.loop import Action, ActionResult, Plan, Status

    create = Action("create", "groups/g1", 1, {"expiration": "2026-12-01T00:00:00+00:00"})
    renew = Action("renew", "s1", 1, {"group": "g1", "expiration": "2026-12-01T00:00:00+00:00"})
    vanished = Plan.build("graph-subscriptions", [create], [], {"vanished": ["s0"]})
    first = Plan.build("graph-subscriptions", [create], [], {})
    assert missed_changes(vanished, [ActionResult(create, Status.DONE, "subscription s2")])
    assert not missed_changes(vanished, [ActionResult(create, Status.FAILED, "403")])
    assert not missed_changes(first, [ActionResult(create, Status.DONE, "subscription s2")])
    assert missed_changes(first, [ActionResult(renew, Status.DONE, f"{RECREATED} s3")])
    assert not missed_changes(first, [ActionResult(renew, Status.DONE)])

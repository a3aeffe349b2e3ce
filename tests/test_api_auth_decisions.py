"""Review (authorization decisions): credentials that come close to a valid one, and principals
holding several roles, get the answer their role gives and no other.

Through the ASGI app; the real app, the real Runner and a SQLite state store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hubpilot.api.runs import drain_tasks
from tests.test_api_kit import TOKENS, asgi_client, make_context, make_settings, principal_header, token_settings

LOOKALIKE = "tok-lookalike-91e0c2"
_digest = hashlib.sha256(LOOKALIKE.encode()).hexdigest()
# configured: a hash that is LOOKALIKE's in all but its last digit (no token has it)
NEAR_HASH = _digest[:-1] + ("0" if _digest[-1] != "0" else "1")


async def test_a_token_that_comes_close_to_a_configured_one_is_not_valid(tmp_path: Path) -> None:
    """Only the whole token, exactly as issued, authenticates: not another letter case, not one with
    a word added, nor one whose hash shares all but a digit with a configured hash. Each is
    answered 401 without naming the configured tokens."""
    tokens = [*token_settings(), {"name": "near-hash", "role": "admin", "sha256": NEAR_HASH}]
    ctx, _ = make_context(tmp_path, make_settings(tokens=tokens))
    admin = TOKENS["admin"]
    try:
        async with asgi_client(ctx) as client:
            for sent in (LOOKALIKE, admin.upper(), f"{admin} extra", admin[:-1], admin + "0"):
                r = await client.get("/api/v1/status", headers={"Authorization": f"Bearer {sent}"})
                assert r.status_code == 401, (sent, r.text)
                assert r.json()["detail"] == "the API token is not valid", sent
                assert "caller" not in r.text and "near-hash" not in r.text
            ok = await client.get("/api/v1/status", headers={"Authorization": f"Bearer {admin}"})
            assert ok.status_code == 200, ok.text
    finally:
        await ctx.close()


async def test_an_empty_bearer_is_refused_even_where_a_hash_of_nothing_is_configured(tmp_path: Path) -> None:
    """A token entry whose sha256 is that of the empty string (a hash made of an empty variable)
    opens nothing: an Authorization header without a token is refused as malformed. (The settings
    refuse such an entry; the entry here is put past them, as a defence in depth.)"""
    from hubpilot.config.api import ApiToken

    empty = ApiToken.model_construct(name="empty", role="admin", sha256=hashlib.sha256(b"").hexdigest())
    settings = make_settings()
    settings = settings.model_copy(update={"api": settings.api.model_copy(
        update={"tokens": [*settings.api.tokens, empty]})})
    ctx, worlds = make_context(tmp_path, settings)
    try:
        async with asgi_client(ctx) as client:
            for value in ("Bearer", "Bearer ", "Bearer    "):
                r = await client.post("/api/v1/sync", headers={"Authorization": value})
                assert r.status_code == 401, (value, r.text)
                assert r.json()["detail"] == "the Authorization header must be 'Bearer <api token>'"
        await drain_tasks()
        assert worlds["sync"].applies == 0
    finally:
        await ctx.close()


async def test_a_principal_with_the_reader_and_hub_roles_may_do_what_either_allows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An app granted both app roles hubpilot.reader and hubpilot.hub (the hub's identity that
    also reads the status) holds both: it reads and it signals demand; it still cannot act as admin."""
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    ctx, worlds = make_context(tmp_path, make_settings(app_service_auth=True))
    both = {"X-MS-CLIENT-PRINCIPAL": principal_header(["hubpilot.reader", "hubpilot.hub"], "hub-app")}
    try:
        async with asgi_client(ctx) as client:
            assert (await client.get("/api/v1/status", headers=both)).status_code == 200
            r = await client.post("/api/v1/scale/demand", json={"user": "ana"}, headers=both)
            assert r.status_code == 202, r.text
            r = await client.post("/api/v1/sync", headers=both)
            assert r.status_code == 403 and "needs the role admin" in r.json()["detail"], r.text
        await drain_tasks()
        assert worlds["sync"].applies == 0
    finally:
        await drain_tasks()
        await ctx.close()


@pytest.mark.parametrize("origin", ["http://hubpilot.test.evil.example", "http://hubpilot.testevil.example"])
async def test_an_origin_that_only_begins_with_this_host_is_another_site(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, origin: str) -> None:
    """A page of a site whose name begins with this app's host (a browser that sends Origin but no
    Sec-Fetch-Site) cannot act with the admin's App Service session: 403, nothing paused."""
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    ctx, _ = make_context(tmp_path, make_settings(app_service_auth=True))
    session = {"X-MS-CLIENT-PRINCIPAL": principal_header(["hubpilot.admin"], "bo@example.org")}
    try:
        async with asgi_client(ctx) as client:
            r = await client.post("/api/v1/operations/sync/pause", headers={**session, "Origin": origin})
            assert r.status_code == 403 and "cross-site" in r.json()["detail"], r.text
            assert not await ctx.runner.is_paused("sync")
    finally:
        await ctx.close()


def test_a_token_hash_of_nothing_is_refused_naming_the_setting() -> None:
    """An api.tokens entry made from an empty variable (``sha256sum`` of nothing) can never
    authenticate (an empty bearer is refused), so the entry's holder is locked out with no word
    why: the settings refuse it, saying what to do."""
    from hubpilot.settings import SettingsError, load_settings

    empty = hashlib.sha256(b"").hexdigest()
    with pytest.raises(SettingsError) as err:
        load_settings(api={"tokens": [{"name": "ops", "role": "admin", "sha256": empty.upper()}]})
    text = str(err.value)
    assert "api.tokens.0.sha256" in text and "empty token" in text
    assert load_settings(api={"tokens": [{"name": "ops", "role": "admin",
                                          "sha256": hashlib.sha256(b"t").hexdigest()}]}).api.tokens

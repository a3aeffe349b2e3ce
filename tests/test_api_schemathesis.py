"""Property-based tests of the admin API against its own OpenAPI document (schemathesis).

With admin credentials: at least 1 000 generated cases (valid and invalid inputs), no 5xx, and
every response conforms to the document (status code, content type, body schema). Without
credentials: nothing but /healthz (and the webhooks, which verify by content) answers but 401.
The share of cases that reached a handler is printed (run with ``-s`` to see it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hubpilot.api.app import create_app
from tests.realhub import RealHub
from tests.test_api_kit import auth, make_context, make_settings

ADMIN = auth("admin")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
PUBLIC = ("/api/v1/healthz",)
WEBHOOKS = ("/api/v1/graph/",)
EXAMPLES = 60  # per operation and generation mode; small parameter spaces end sooner


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, real_hub: RealHub) -> Iterator[tuple[Any, Any]]:
    """The API with test capabilities, whose /readyz checks the session's real JupyterHub."""
    settings = make_settings(hub_url=real_hub.api_url, hub_token=real_hub.hubpilot_token)
    ctx, _ = make_context(tmp_path_factory.mktemp("st"), settings)
    app = create_app(ctx)
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app, headers=ADMIN)
    # Negative cases vary parameters, not the credentials: every case carries the admin token.
    schema.config.generation.update(with_security_parameters=False)
    with asgi.get_client(app) as client:  # one client: runs started in the background finish in its loop
        yield schema, client


def _drive(schema: Any, client: Any, headers: dict[str, str], observe: Any, modes: list[GenerationMode],
           *, skip: tuple[str, ...] = ()) -> int:
    total = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path.startswith(skip):
            continue
        for mode in modes:
            strategy = op.as_strategy(generation_mode=mode)

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def one(case: Any) -> None:
                nonlocal total
                for k in ("Authorization", "authorization"):
                    (case.headers or {}).pop(k, None)
                response = case.call(session=client, headers=headers)
                total += 1
                observe(case, response)

            try:
                one()
            except Unsatisfiable:  # no invalid input exists (e.g. an operation without parameters)
                assert mode is GenerationMode.NEGATIVE
    return total


@pytest.mark.hub
def test_generated_cases_with_admin_credentials_conform_and_never_5xx(target: tuple[Any, Any]) -> None:
    schema, client = target
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    def observe(case: Any, response: Any) -> None:
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # collect them all, then fail with the list
            failures.append(f"{case.method} {case.formatted_path}: {str(exc)[:300]}")

    # The Graph webhooks take no admin credentials (they verify by content): not part of this pass.
    total = _drive(schema, client, ADMIN, observe, [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                   skip=WEBHOOKS)
    reached = sum(n for s, n in statuses.items() if 200 <= s < 300 or (400 <= s < 500 and s not in (401, 403)))
    handled = sum(n for s, n in statuses.items() if s < 400 or s in (400, 404, 409))
    print(f"\nschemathesis (admin): {total} cases; statuses {dict(sorted(statuses.items()))}; "
          f"2xx/4xx-not-401/403: {reached / total:.1%}; past validation into a handler: {handled / total:.1%}")
    assert total >= 1000
    assert not failures, "\n".join(failures[:20])
    assert not any(s >= 500 for s in statuses)
    assert statuses[401] == 0 and statuses[403] == 0
    assert handled / total > 0.3


@pytest.mark.hub
def test_generated_cases_without_credentials_all_get_401(target: tuple[Any, Any]) -> None:
    schema, client = target
    wrong: list[str] = []
    statuses: Counter[int] = Counter()

    def observe(case: Any, response: Any) -> None:
        statuses[response.status_code] += 1
        path = case.operation.path
        if path in PUBLIC or path.startswith(WEBHOOKS):
            return
        if response.status_code != 401:
            wrong.append(f"{case.method} {case.formatted_path}: {response.status_code}")

    total = _drive(schema, client, {}, observe, [GenerationMode.POSITIVE])
    print(f"\nschemathesis (no credentials): {total} cases; statuses {dict(sorted(statuses.items()))}")
    assert statuses[401] > 0
    assert not wrong, "\n".join(wrong[:20])


@pytest.mark.hub
def test_schema_is_served_only_with_credentials(target: tuple[Any, Any]) -> None:
    _, client = target
    assert client.get("/api/v1/openapi.json").status_code == 401
    assert client.get("/api/v1/openapi.json", headers=ADMIN).status_code == 200

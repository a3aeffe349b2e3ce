"""What the docs tell an operator to type or call exists: every ``hubpilot <command> --flag`` the
docs show is a command with that option, every admin API route they name is a route of the app
with that method, and every setting they name (``section.key`` or ``HUBPILOT_SECTION__KEY``) is one
hubpilot reads. The README's CLI block, its settings reference and the docs' examples with values
have their own tests (test_cli_help.py, test_settings.py); these cover the names in the prose."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "infra" / "bicep" / "README.md"]
PREFIX = "/api/v1"


def _line(text: str, at: int) -> int:
    return text[:at].count("\n") + 1


def _where(doc: Path, text: str, at: int) -> str:
    return f"{doc.relative_to(ROOT)}:{_line(text, at)}"


# --- CLI ------------------------------------------------------------------------------------------

def _commands() -> tuple[dict[str, set[str]], set[str]]:
    from hubpilot.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}
    return commands, {o for a in parser._actions for o in a.option_strings}


def _cli_claims(text: str) -> list[tuple[int, str]]:
    """``hubpilot ...`` in backticks, and lines of a code block that start with it."""
    claims = [(m.start(), m.group(1)) for m in re.finditer(r"`(hubpilot [^`\n]+)`", text)]
    for block in re.finditer(r"```[a-z]*\n(.*?)```", text, re.S):
        at = block.start(1)
        for line in block.group(1).splitlines(keepends=True):
            if line.lstrip("$ ").startswith("hubpilot "):
                claims.append((at, line.lstrip("$ ").split("#")[0].strip()))
            at += len(line)
    return claims


def _check_cli(doc: Path, text: str) -> list[str]:
    commands, global_options = _commands()
    wrong = []
    # ``hubpilot status [--json] | audit [...]``: a second command of the same line
    claims = [(at, part if i == 0 else f"hubpilot {part}")
              for at, line in _cli_claims(text) for i, part in enumerate(re.split(r"\s\|\s", line))]
    for at, claim in claims:
        words = claim.split()[1:]
        while words and (words[0].startswith("-") or words[0] in ("[--config", "FILE]")):
            words = words[1 + (words[0] in ("--config",)):]
        if not words:
            continue
        names = words[0].split("|")
        unknown = [n for n in names if n not in commands]
        if unknown:
            wrong.append(f"{_where(doc, text, at)}: `{claim}`: no command {unknown}")
            continue
        for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", " ".join(words[1:])):
            if not any(option in commands[n] | global_options for n in names):
                wrong.append(f"{_where(doc, text, at)}: `{claim}`: {'/'.join(names)} has no {option}")
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_option_the_docs_show_exists(doc: Path) -> None:
    assert _check_cli(doc, doc.read_text()) == []


# --- admin API routes -----------------------------------------------------------------------------

def _routes() -> list[Any]:
    from fastapi.routing import iter_route_contexts

    from hubpilot.api.app import create_app

    return list(iter_route_contexts(create_app(lambda: None).routes))  # type: ignore[arg-type, return-value]


def _expand(path: str) -> list[str]:
    """``/sync|/cull`` and ``/operations/{op}/pause|resume``: each path the shorthand names."""
    first, *others = path.split("|")
    return [first, *(o if o.startswith("/") else first.rsplit("/", 1)[0] + "/" + o for o in others)]


def _served(routes: list[Any], method: str, path: str) -> bool:
    # a placeholder ({id}, <plan-id>) stands for a value the route takes: a run id is 32 hex
    # digits, a plan id 16, an operation's name a word
    for value in ("0123456789abcdef" * 2, "0123456789abcdef", "sync"):
        concrete = re.sub(r"\{[^}]*\}|<[^>]*>", value, path)
        for route in routes:
            methods = route.methods or set()
            if route.path_regex.match(concrete) and (method in methods or (method == "HEAD" and "GET" in methods)):
                return True
    return False


def _route_claims(text: str) -> list[tuple[int, str, str]]:
    path = r"(/[\w.{}<>|/-]*[\w}>])"
    claims = [(m.start(), m.group(1), m.group(2))
              for m in re.finditer(rf"\b(GET|POST|PUT|PATCH|DELETE|HEAD)\s+`?({PREFIX}{path}|/healthz|/readyz)", text)]
    # the README's API section names its routes below /api/v1
    section = re.search(r"### Admin HTTP API \(`/api/v1`.*?\n(.*?)\n### ", text, re.S)
    if section:
        for m in re.finditer(rf"`(GET|POST|PUT|PATCH|DELETE|HEAD)\s+{path}", section.group(1)):
            if not m.group(2).startswith(PREFIX) and m.group(2) not in ("/healthz", "/readyz"):
                claims.append((section.start(1) + m.start(), m.group(1),
                               "|".join(PREFIX + p for p in _expand(m.group(2)))))
    return claims


def _check_routes(doc: Path, text: str) -> list[str]:
    routes = _routes()
    wrong = []
    for at, method, claim in _route_claims(text):
        for path in _expand(claim):
            if not _served(routes, method, path):
                wrong.append(f"{_where(doc, text, at)}: the app serves no {method} {path}")
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_admin_api_route_the_docs_name_is_served_with_that_method(doc: Path) -> None:
    assert _check_routes(doc, doc.read_text()) == []


def test_the_readme_names_every_route_of_the_app() -> None:
    """And the other way: a route the README's API section does not name is one an operator
    does not know exists."""
    text = (ROOT / "README.md").read_text()
    named = {(m, p) for _, m, claim in _route_claims(text) for p in _expand(claim)}
    missing = []
    for route in _routes():
        if route.path in (f"{PREFIX}/openapi.json", f"{PREFIX}/docs", f"{PREFIX}/healthz", f"{PREFIX}/readyz"):
            continue  # the heading names the OpenAPI document; health is named without the prefix
        for method in route.methods or ():
            if not any(m == method and route.path_regex.match(re.sub(r"\{[^}]*\}", v, p))
                       for m, p in named for v in ("0123456789abcdef" * 2, "0123456789abcdef", "sync")):
                missing.append(f"{method} {route.path}")
    assert missing == []


# --- settings -------------------------------------------------------------------------------------

#: names in the docs that look like hubpilot settings and are not: z2jh's own values, which
#: docs/cull.md maps to hubpilot's
NOT_HUBPILOTS = {"cull.timeout", "cull.users"}


def _setting_problem(dotted: str, as_variable: bool) -> str | None:
    from hubpilot.settings import Settings, _model_in

    model: Any = Settings
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            if i == len(parts) - 1 and not as_variable and isinstance(getattr(model, part, None), property):
                return None  # a value the settings derive (cull.activity_lag), which the docs explain
            return f"there is no setting {'.'.join(parts[:i + 1])}"
        if as_variable and i < len(parts) - 1 and getattr(field.annotation, "__origin__", None) is list:
            return f"{'.'.join(parts[:i + 1])} is a list: it is set whole, as JSON"
        model = _model_in(field.annotation)
    return None


def _check_settings(doc: Path, text: str) -> list[str]:
    from hubpilot.settings import ENV_PREFIX, Settings

    wrong = []
    for m in re.finditer(r"`([a-z_]+(?:\.[a-z0-9_]+)+)(?:\s*=[^`]*)?`", text):
        name = m.group(1)
        if name.split(".")[0] in Settings.model_fields and name not in NOT_HUBPILOTS:
            problem = _setting_problem(name, as_variable=False)
            if problem:
                wrong.append(f"{_where(doc, text, m.start())}: `{name}`: {problem}")
    for m in re.finditer(rf"\b{ENV_PREFIX}([A-Z0-9_]*__[A-Z0-9_]*[A-Z0-9])\b", text):
        problem = _setting_problem(m.group(1).lower().replace("__", "."), as_variable=True)
        if problem:
            wrong.append(f"{_where(doc, text, m.start())}: {m.group(0)}: {problem}")
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_setting_the_docs_name_is_one_hubpilot_reads(doc: Path) -> None:
    assert _check_settings(doc, doc.read_text()) == []


# --- the checks can fail --------------------------------------------------------------------------

def test_the_checks_find_a_wrong_claim() -> None:
    doc = ROOT / "README.md"
    assert _check_cli(doc, "Run `hubpilot sync --dry-run --wait` now.")
    assert _check_cli(doc, "Run `hubpilot synch` now.")
    assert _check_cli(doc, "```\nhubpilot pause|resum OPERATION\n```\n")
    assert not _check_cli(doc, "```\nhubpilot [--config FILE] sync|cull|scale [--dry-run] [--json]\n```\n")
    assert _check_cli(doc, "```\nhubpilot status [--json] | audit [--limit N] [--days N]\n```\n")
    assert _check_routes(doc, "Send `GET /api/v1/scale` to start one.")
    assert _check_routes(doc, "Send `POST /api/v1/plans/{id}/approved`.")
    assert not _check_routes(doc, "Send `HEAD /api/v1/runs/{id}` or `POST /api/v1/plans/<plan-id>/approve`.")
    section = "### Admin HTTP API (`/api/v1`, x)\n`POST /sync|/cull`, `POST /operations/{op}/pause|stop`\n### Next\n"
    assert _check_routes(doc, section)
    assert not _check_routes(doc, section.replace("stop", "resume"))
    assert _check_routes(doc, section.replace("stop", "resume").replace("/cull", "/cul"))
    assert _check_settings(doc, "Set `sync.max_removal` to 3.")
    assert _check_settings(doc, "Set `HUBPILOT_SCALE__WARM__SPARE`.")
    assert _check_settings(doc, "Set `HUBPILOT_SYNC__MAX_REMOVAL`.")
    assert not _check_settings(doc, "Set `sync.max_removals = 3` or `HUBPILOT_SCALE__WARM`.")

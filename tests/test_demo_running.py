"""``hubpilot demo`` while it runs, as a new user meets it: every command it tells the user to try
works against it (the CLI on the demo's own settings, curl on its admin API, and with ``--ldap``
ldapmodify on its slapd), what they do shows in its terminal, its cull stops the server it leaves
idle, and a second demo started from the same directory is refused instead of wiping the running
demo's hub database, state store and directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.test_demo import left_running

ROOT = str(Path(__file__).resolve().parents[1])  # this checkout's hubpilot, in every process below
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")},
       "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    out: str  # up to "Ctrl-C stops ..."
    where: Path
    ldap: bool
    lines: list[str]  # everything it has printed so far, read by a thread

    def shows(self, text: str, timeout: float = 30) -> bool:
        """Whether the demo prints ``text`` (within ``timeout``: it looks at the audit log each second)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in list(self.lines)):
                return True
            time.sleep(0.2)
        return False

    def commands(self) -> list[str]:
        return [line[4:] for line in self.out.splitlines() if line.startswith("  $ ")]

    def line(self, label: str) -> str:
        return next(line for line in self.out.splitlines() if line.startswith(label))


@pytest.fixture(scope="module", params=["file", "ldap"])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    where = tmp_path_factory.mktemp(f"demo-{request.param}")
    ldap = request.param == "ldap"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubpilot.cli", "demo", "--port", "0", *(["--ldap"] if ldap else [])],
        cwd=where, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None:
        if any(line.startswith("Ctrl-C stops") for line in list(lines)):
            break
        time.sleep(0.1)
    out = "".join(list(lines))
    try:
        assert proc.poll() is None and "Ctrl-C stops" in out, out
        yield Demo(proc, out, where, ldap, lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for _ in range(100):  # the hub stops its proxy and servers on its own way out
            if not left_running("", where):
                break
            time.sleep(0.1)


def _sh(demo: Demo, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=demo.where, env=ENV, capture_output=True, text=True,
                          timeout=60)


def _cli(demo: Demo) -> str:
    """The demo's CLI prefix (``... --config .../hubpilot.toml``), as its status command shows it."""
    status = next(c for c in demo.commands() if c.endswith(" status"))
    return status.removesuffix(" status")


def test_every_command_the_demo_prints_acts_on_the_running_demo(demo: Demo) -> None:
    commands = demo.commands()
    kinds = {"status": " status", "sync": " sync --dry-run", "audit": " audit", "curl": "curl "}
    found = {k: [c for c in commands if s in c] for k, s in kinds.items()}
    assert all(found.values()), f"the demo tells the user to try none of {[k for k, v in found.items() if not v]}:\n" \
                                + demo.out
    for command in commands:
        if "ldapmodify" in command:
            continue  # a change to the directory: below
        done = _sh(demo, command)
        assert done.returncode == 0, f"$ {command}\n{done.stdout}{done.stderr}"
        if " status" in command:  # the demo's state store, not an empty one beside it
            sync = next(line for line in done.stdout.splitlines() if line.startswith("sync"))
            assert "last run" in sync and "applied" in sync, done.stdout
        elif " sync --dry-run" in command or " cull --dry-run" in command:
            assert "planned (dry-run)" in done.stdout, done.stdout
        elif " audit --user" in command:  # what happened to the leaver: taken out, not deleted
            assert "sync applied trigger=demo" in done.stdout and ": done (no longer in any synced directory group)" \
                in done.stdout and "    deprovision " in done.stdout, done.stdout
        elif " audit" in command:
            assert "sync applied trigger=demo" in done.stdout, done.stdout
        elif command.startswith("curl "):
            assert json.loads(done.stdout)["outcome"] == "planned", done.stdout

    # the directory change the demo describes reaches the hub: erin leaves gpu-users
    if demo.ldap:
        change = [c for c in commands if "ldapmodify" in c]
        assert change, "the LDAP demo shows no command that changes its directory:\n" + demo.out
        done = _sh(demo, change[0])
        assert done.returncode == 0, f"$ {change[0]}\n{done.stdout}{done.stderr}"
    else:
        path = Path(demo.line("directory file:").split()[2])
        doc = yaml.safe_load(path.read_text())
        doc["groups"]["gpu-users"]["members"].remove("erin")
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cli = _cli(demo)
    for _ in range(20):  # the demo's own 30-second sync may hold the lock (exit code 4) a moment
        done = _sh(demo, f"{cli} sync")
        if done.returncode != 4:
            break
        time.sleep(0.5)
    assert done.returncode == 0, done.stdout + done.stderr
    audit = json.loads(_sh(demo, f"{cli} audit --operation sync --limit 10 --json").stdout)
    assert any(a["kind"] == "deprovision" and a["target"] == "erin"
               for e in audit["entries"] for a in (e.get("plan") or {}).get("actions", [])), audit
    # and the demo's own terminal shows what happened, whichever run (its schedule, the CLI) did it
    assert demo.shows("done: deprovision erin"), "".join(demo.lines)


def test_the_demo_culls_the_server_it_leaves_idle(demo: Demo) -> None:
    """The demo's cull: alice's server, started and left idle, is stopped by a scheduled round once
    it has been idle for a minute, and the demo's terminal shows it."""
    assert "alice's server is kept" in demo.out, demo.out
    if demo.ldap:
        pytest.skip("the cull does not depend on the directory: the file demo waits for it, once")
    assert demo.shows("done: stop_server alice", timeout=150), "".join(demo.lines)


def test_a_second_demo_from_the_same_directory_leaves_the_running_one_alone(demo: Demo) -> None:
    done = subprocess.run([sys.executable, "-m", "hubpilot.cli", "demo", "--no-wait", "--port", "0"],
                          cwd=demo.where, env=ENV, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "another hubpilot demo" in done.stderr and str(demo.proc.pid) in done.stderr, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    # the running demo's hub still knows hubpilot's token, and its state store still has its runs
    api, token = _api(demo)
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        ready = http.get("/readyz").json()
        assert ready["ready"], ready
        status: dict[str, Any] = http.get("/status").json()
        sync = next(o for o in status["operations"] if o["operation"] == "sync")
        assert sync["last_run"] is not None, status


def _api(demo: Demo) -> tuple[str, str]:
    words = demo.line("admin API:").split()
    return words[2], words[-1].rstrip(")")


def test_a_plan_the_demo_refuses_names_an_approval_that_reaches_the_demo(demo: Demo) -> None:
    """Most people leave the directory at once: the demo's scheduled sync refuses the plan and its
    terminal shows "an admin can approve it: hubpilot approve <id>". That command named no
    --config (the demo's settings were not read from its file), so it reached the defaults' empty
    state store beside it and answered "no refused plan with id ...". It names the demo's
    settings file, and, run with the demo's hubpilot, it approves the plan."""
    if demo.ldap:
        pytest.skip("the approval does not depend on the directory: the file demo shows it, once")
    path = Path(demo.line("directory file:").split()[2])
    doc = yaml.safe_load(path.read_text())
    for group in doc["groups"].values():
        group["members"] = [m for m in group.get("members", []) if m == "alice"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert demo.shows("an admin can approve it: ", timeout=60), "".join(demo.lines)
    hint = next(line for line in list(demo.lines) if "an admin can approve it: " in line)
    command = hint.split("an admin can approve it: ", 1)[1].split(", or POST ")[0]
    config = _cli(demo).split(" --config ", 1)[1]
    assert command.startswith(f"hubpilot --config {config} approve "), hint
    exe = _cli(demo).split(" --config ", 1)[0]  # the demo's hubpilot: `hubpilot` need not be on PATH
    for _ in range(20):  # the demo's own 30-second sync may hold the lock (exit code 4) a moment
        done = _sh(demo, exe + command.removeprefix("hubpilot"))
        if done.returncode != 4:
            break
        time.sleep(0.5)
    assert done.returncode == 0 and ": applied" in done.stdout, done.stdout + done.stderr
    assert "done: deprovision carol" in done.stdout, done.stdout

"""``./scripts/demo`` on a machine whose Python and Node environments are up to date: its setup installs
nothing the demo does not use. The infra tools (.venv-infra: checkov, pycep-parser, hundreds of MB
from PyPI) serve tests/test_infra.py only, and a new user's first demo waited for them.

The project's scripts run in a copy with stand-in environments (marked up to date the way the setup
checks them), and a Python that fails if anything tries to create an environment: nothing is
downloaded and no real environment is touched."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _exe(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for tool in ("slapd", "ldapsearch", "openssl", "node", "npm", "sha256sum"):
        if not (shutil.which(tool) or (tool == "slapd" and Path("/usr/sbin/slapd").exists())):
            pytest.skip(f"{tool} is not installed: the setup would call apt-get")
    work = tmp_path / "project"
    shutil.copytree(ROOT / "scripts", work / "scripts")
    for name in ("requirements.txt", "requirements-dev.txt", "constraints.txt", "pyproject.toml",
                 "package-lock.json", "requirements-infra.txt"):
        shutil.copy(ROOT / name, work / name)
    # .venv and node_modules up to date, as the setup's stamps say
    _exe(work / ".venv" / "bin" / "python", "exit 0\n")
    _exe(work / ".venv" / "bin" / "hubpilot", 'echo "hubpilot $*"\n')
    want = hashlib.sha256(b"".join((work / n).read_bytes() for n in (
        "requirements.txt", "requirements-dev.txt", "constraints.txt", "pyproject.toml"))).hexdigest()
    (work / ".venv" / ".hubpilot-requirements").write_text(want + "\n")
    _exe(work / "node_modules" / ".bin" / "configurable-http-proxy", "exit 0\n")
    (work / "node_modules" / ".hubpilot-lock").write_text(
        hashlib.sha256((work / "package-lock.json").read_bytes()).hexdigest() + "\n")
    _exe(tmp_path / "no-python", 'echo "no-python: asked to $*" >&2; exit 1\n')
    return work


def _env(copy: Path) -> dict[str, str]:
    return {**os.environ, "PYTHON": str(copy.parent / "no-python")}


def test_the_demo_command_installs_no_test_only_tools(copy: Path) -> None:
    done = subprocess.run(["bash", "scripts/demo", "--ldap"], cwd=copy, env=_env(copy), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("hubpilot demo --ldap"), done.stdout
    assert not (copy / ".venv-infra").exists()


def test_the_full_setup_still_installs_the_infra_tools(copy: Path) -> None:
    """The test command's setup (no --demo) goes on to .venv-infra: here the stand-in Python refuses."""
    done = subprocess.run(["bash", "scripts/setup"], cwd=copy, env=_env(copy), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "infra tools (.venv-infra)" in done.stdout, done.stdout + done.stderr
    assert "no-python: asked to -m venv .venv-infra" in done.stderr, done.stderr


def test_a_python_older_than_311_is_named_before_anything_is_installed(copy: Path) -> None:
    """On Ubuntu 22.04 (Python 3.10) the setup made .venv, installed the requirements, and only
    then failed on pip's "requires a different Python": it says so first, and how to go on."""
    shutil.rmtree(copy / ".venv")
    _exe(copy.parent / "python-3.10",
         'case "$*" in *version_info*) echo 3.10;; *) echo "asked $*" >&2; exit 1;; esac\n')
    done = subprocess.run(["bash", "scripts/demo"], cwd=copy, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": str(copy.parent / "python-3.10")})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Python 3.10" in done.stderr and "3.11 or newer" in done.stderr and "PYTHON=" in done.stderr, done.stderr
    assert "asked" not in done.stderr and not (copy / ".venv").exists(), done.stderr


def _sandbox(copy: Path, *, uid: int, sudo: bool, node: bool = True) -> tuple[dict[str, str], Path]:
    """A PATH holding only what the setup uses, where ldap-utils and openssl are missing (so it
    goes to apt-get), ``id -u`` says ``uid``, and, with ``sudo``, a sudo that resets the
    environment as sudo's default env_reset does. apt-get records what it is asked and with which
    DEBIAN_FRONTEND. Returns the environment and apt-get's record."""
    bin_dir = copy.parent / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "sha256sum", "cut", "dirname", "env", "chmod", "sed"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    record = copy.parent / "apt-get.log"
    _exe(bin_dir / "apt-get", f'echo "DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}} $*" >> {record}\n')
    _exe(bin_dir / "id", f"echo {uid}\n")
    if node:
        _exe(bin_dir / "node", "echo 20\n")
        _exe(bin_dir / "npm", "exit 0\n")
    if sudo:  # env_reset: the command gets a fresh environment, not the caller's variables
        _exe(bin_dir / "sudo", f'exec {shutil.which("env")} -i PATH="$PATH" "$@"\n')
    return {"PATH": str(bin_dir), "HOME": str(copy.parent), "PYTHON": str(copy.parent / "no-python")}, record


def test_apt_via_sudo_installs_without_questions(copy: Path) -> None:
    """sudo resets the environment: DEBIAN_FRONTEND=noninteractive set before ``sudo`` never
    reached apt-get, and slapd's install asked for an admin password on a terminal whose output
    the setup sends to /dev/null (a setup that hangs, silent)."""
    env, record = _sandbox(copy, uid=1000, sudo=True)
    done = subprocess.run(["bash", "scripts/setup", "--demo"], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    installs = [line for line in record.read_text().splitlines() if " install " in line]
    assert installs and all(line.startswith("DEBIAN_FRONTEND=noninteractive ") for line in installs), installs
    assert "ldap-utils" in installs[0] and "openssl" in installs[0], installs


def test_apt_as_root_installs_without_questions(copy: Path) -> None:
    env, record = _sandbox(copy, uid=0, sudo=False)
    done = subprocess.run(["bash", "scripts/setup", "--demo"], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    installs = [line for line in record.read_text().splitlines() if " install " in line]
    assert installs and all(line.startswith("DEBIAN_FRONTEND=noninteractive ") for line in installs), installs


def test_apt_without_root_or_sudo_says_what_to_install(copy: Path) -> None:
    """Neither root nor sudo: the setup said ``sudo: command not found``. It names the packages,
    the command that installs them, and that it needs root or sudo; it calls no apt-get."""
    env, record = _sandbox(copy, uid=1000, sudo=False)
    done = subprocess.run(["bash", "scripts/setup", "--demo"], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "apt-get install" in done.stderr and "ldap-utils openssl" in done.stderr, done.stderr
    assert "root" in done.stderr and "sudo" in done.stderr and "command not found" not in done.stderr, done.stderr
    assert not record.exists()


def test_no_apt_get_says_what_to_install(copy: Path) -> None:
    """Not Debian/Ubuntu (no apt-get): the packages it needs, named, not ``apt-get: command not found``."""
    env, _record = _sandbox(copy, uid=0, sudo=False)
    (Path(env["PATH"]) / "apt-get").unlink()
    done = subprocess.run(["bash", "scripts/setup", "--demo"], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ldap-utils" in done.stderr and "openssl" in done.stderr, done.stderr
    assert "command not found" not in done.stderr, done.stderr


def test_a_venv_without_pip_is_made_anew(copy: Path) -> None:
    """``python3 -m venv .venv`` on Debian without python3-venv (or a setup stopped while making
    it) leaves a .venv whose Python has no pip: the setup skipped making it and failed on
    ``No module named pip`` at every run, also after python3-venv was installed. It makes it anew."""
    (copy / ".venv" / ".hubpilot-requirements").unlink()  # never finished
    _exe(copy / ".venv" / "bin" / "python",
         'case "$*" in *pip*) echo "python: No module named pip" >&2; exit 1;; esac\n')
    _exe(copy.parent / "python-3.11",
         'case "$*" in *version_info*) echo 3.11;; *"import ensurepip"*) exit 0;;'
         ' *) echo "python-3.11: asked to $*" >&2; exit 1;; esac\n')
    done = subprocess.run(["bash", "scripts/setup", "--demo"], cwd=copy, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": str(copy.parent / "python-3.11")})
    assert "python-3.11: asked to -m venv .venv" in done.stderr, done.stdout + done.stderr
    assert "No module named pip" not in done.stderr, done.stderr


def _apt_offers_nodejs(env: dict[str, str], record: Path, candidate: str) -> None:
    """apt-cache says which nodejs apt would install; apt-get installing nodejs puts node on PATH
    with its npm, as NodeSource's nodejs package does (it conflicts with Debian's npm package)."""
    bin_dir = Path(env["PATH"])
    _exe(bin_dir / "apt-cache", f'echo "nodejs:"; echo "  Installed: (none)"; echo "  Candidate: {candidate}"\n')
    _exe(bin_dir / "apt-get", f'echo "DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}} $*" >> {record}\n'
         f'case " $* " in *" nodejs "*) printf "#!/usr/bin/env bash\\necho 20\\n" > {bin_dir}/node;'
         f' printf "#!/usr/bin/env bash\\nexit 0\\n" > {bin_dir}/npm; chmod +x {bin_dir}/node {bin_dir}/npm;; esac\n')


def test_an_apt_nodejs_older_than_20_is_said_before_anything_is_installed(copy: Path) -> None:
    """Debian 12 without Node.js: the setup installed its nodejs 18 and npm (hundreds of packages,
    libnode-dev among them, in the way of the newer nodejs package the message then asks for), and
    only then said Node.js 18 is too old. It says so after apt-get update, having installed nothing."""
    env, record = _sandbox(copy, uid=0, sudo=False, node=False)
    _apt_offers_nodejs(env, record, "18.19.0+dfsg-6~deb12u2")
    done = subprocess.run(["bash", "scripts/setup", "--demo"], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "20 or newer" in done.stderr and "18.19.0" in done.stderr, done.stderr
    assert "command not found" not in done.stderr, done.stderr
    assert [line for line in record.read_text().splitlines() if " install " in line] == [], record.read_text()


def test_a_nodejs_that_brings_npm_is_installed_without_debians_npm(copy: Path) -> None:
    """A nodejs package of 20 or newer (NodeSource's) carries npm and conflicts with Debian's npm
    package: ``apt-get install nodejs npm`` failed on unmet dependencies. npm is installed only
    when nodejs did not bring it."""
    env, record = _sandbox(copy, uid=0, sudo=False, node=False)
    _apt_offers_nodejs(env, record, "20.19.2-1nodesource1")
    done = subprocess.run(["bash", "scripts/setup", "--demo"], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    installs = [line.split() for line in record.read_text().splitlines() if " install " in line]
    assert any("nodejs" in words for words in installs), installs
    assert not any("npm" in words for words in installs), installs

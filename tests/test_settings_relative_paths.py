"""A relative path in the settings file is read from the file's folder, from any working directory;
one given in the environment stays relative to the working directory. The CLI runs as an admin runs
it: ``hubpilot --config /etc/hubpilot/hubpilot.toml ...`` from another directory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubpilot.settings import Settings, load_settings
from hubpilot.wiring import build_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("HUBPILOT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def _dirs(tmp: Path) -> tuple[Path, Path]:
    conf, elsewhere = tmp / "etc" / "hubpilot", tmp / "elsewhere"
    conf.mkdir(parents=True)
    elsewhere.mkdir()
    return conf, elsewhere


def _cli(cwd: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
    return subprocess.run([sys.executable, "-m", "hubpilot.cli", *args], cwd=cwd,
                          env={**env, "PYTHONPATH": str(ROOT), **env_extra}, capture_output=True, text=True,
                          timeout=60)


HUB = '[hub]\napi_url = "http://127.0.0.1:9/hub/api"\ntoken = "t"\n'


def test_the_state_file_named_relatively_in_the_settings_file_is_beside_it(tmp_path: Path) -> None:
    conf, elsewhere = _dirs(tmp_path)
    (conf / "hubpilot.toml").write_text(HUB + '[state]\nsqlite_path = "state/hubpilot.sqlite3"\n')
    paused = _cli(elsewhere, "--config", str(conf / "hubpilot.toml"), "pause", "cull")
    assert paused.returncode == 0, paused.stderr
    assert (conf / "state" / "hubpilot.sqlite3").is_file()
    assert not (elsewhere / "state").exists()
    # another working directory, a relative --config: the same state
    status = _cli(tmp_path, "--config", "etc/hubpilot/hubpilot.toml", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert '"paused"' in status.stdout and "cull" in status.stdout, status.stdout
    assert not (tmp_path / "state").exists()


def test_the_directory_file_named_relatively_in_the_settings_file_is_read_from_its_folder(tmp_path: Path) -> None:
    conf, elsewhere = _dirs(tmp_path)
    (conf / "hubpilot.toml").write_text(
        HUB + f'[state]\nsqlite_path = "{(tmp_path / "s.sqlite3").as_posix()}"\n'
        '[sync]\nusers_groups = ["analysts"]\n[directory]\nkind = "file"\n[directory.file]\npath = "people.yaml"\n')
    (conf / "people.yaml").write_text("people: [\n")  # the one read: its syntax error names it
    (elsewhere / "people.yaml").write_text("people: {}\ngroups: {analysts: {members: []}}\n")
    done = _cli(elsewhere, "--config", str(conf / "hubpilot.toml"), "sync", "--dry-run")
    assert f"directory file {conf / 'people.yaml'}: YAML syntax error" in done.stdout + done.stderr, \
        (done.stdout, done.stderr)


def test_a_relative_path_in_the_environment_stays_relative_to_the_working_directory(tmp_path: Path) -> None:
    conf, elsewhere = _dirs(tmp_path)
    (conf / "hubpilot.toml").write_text(
        HUB + '[state]\nsqlite_path = "state.sqlite3"\n'
        '[sync]\nusers_groups = ["analysts"]\n[directory]\nkind = "file"\n[directory.file]\npath = "people.yaml"\n')
    done = _cli(elsewhere, "--config", str(conf / "hubpilot.toml"), "sync", "--dry-run",
                HUBPILOT_DIRECTORY__FILE__PATH="other.yaml", HUBPILOT_STATE__SQLITE_PATH="here.sqlite3")
    # a missing file's error shows the absolute path looked at
    assert f"({elsewhere / 'other.yaml'}): cannot be read" in done.stdout + done.stderr, (done.stdout, done.stderr)
    assert (elsewhere / "here.sqlite3").is_file() and not (conf / "state.sqlite3").exists()


def test_a_state_file_named_relatively_in_the_environment_that_cannot_be_opened_is_shown_absolute(
        tmp_path: Path) -> None:
    conf, elsewhere = _dirs(tmp_path)
    (conf / "hubpilot.toml").write_text(HUB)
    (elsewhere / "afile").write_text("x")
    done = _cli(elsewhere, "--config", str(conf / "hubpilot.toml"), "status",
                HUBPILOT_STATE__SQLITE_PATH="afile/state.sqlite3")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"cannot open the state file 'afile/state.sqlite3' ({elsewhere / 'afile' / 'state.sqlite3'})" \
        in done.stderr, done.stderr


def test_every_path_setting_of_the_file_is_read_from_its_folder_absolute_ones_unchanged_home_ones_from_home(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf, elsewhere = _dirs(tmp_path)
    (conf / "hubpilot.toml").write_text(
        '[state]\nsqlite_path = "../state/s.sqlite3"\n'
        '[directory]\nkind = "ldap"\n[directory.ldap]\nurl = "ldaps://127.0.0.1:9"\nbase_dn = "dc=x"\n'
        'ca_file = "ca.pem"\n'
        f'[scale]\nkubeconfig = "kube/one{os.pathsep}/abs/two{os.pathsep}~/three"\n')
    (conf / "entra.toml").write_text(
        '[scale]\nkube_auth = "entra"\nkube_api_url = "https://127.0.0.1:9"\nkube_ca_file = "ca/kube.pem"\n')
    monkeypatch.chdir(elsewhere)
    s = load_settings("../etc/hubpilot/hubpilot.toml")
    assert s.state.sqlite_path == str(tmp_path / "etc" / "state" / "s.sqlite3")
    assert s.directory is not None and s.directory.ldap is not None
    assert s.directory.ldap.ca_file == str(conf / "ca.pem")
    assert s.scale.kubeconfig == os.pathsep.join([str(conf / "kube" / "one"), "/abs/two",
                                                  os.path.expanduser("~/three")])
    assert load_settings("../etc/hubpilot/entra.toml").scale.kube_ca_file == str(conf / "ca" / "kube.pem")
    monkeypatch.setenv("HUBPILOT_STATE__SQLITE_PATH", ":memory:")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__CA_FILE", "ca.pem")
    s = load_settings("../etc/hubpilot/hubpilot.toml")
    assert s.state.sqlite_path == ":memory:"
    assert s.directory is not None and s.directory.ldap is not None and s.directory.ldap.ca_file == "ca.pem"


def test_sqlite_uris_in_the_file_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[state]\nsqlite_path = ":memory:"\n')
    (tmp_path / "b.toml").write_text('[state]\nsqlite_path = "file:s.db?mode=memory"\n')
    assert load_settings(tmp_path / "a.toml").state.sqlite_path == ":memory:"
    assert load_settings(tmp_path / "b.toml").state.sqlite_path == "file:s.db?mode=memory"


def test_a_missing_kubeconfig_is_an_error_naming_it_never_the_one_in_home(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kubernetes client skips a kubeconfig that does not exist; hubpilot then fell back to
    ~/.kube/config, which may reach another cluster."""
    from hubpilot.adapters.kube import KubeCluster

    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    import asyncio

    from hubpilot.ports.cluster import ClusterError

    cluster = KubeCluster(namespace="jhub", pool="gpu", kubeconfig="kube.yaml")
    assert cluster.api is None  # never the client of ~/.kube/config
    with pytest.raises(ClusterError, match=f"scale.kubeconfig: no file {tmp_path / 'kube.yaml'}"):
        asyncio.run(cluster.read())


def test_a_missing_ldap_ca_file_is_named_with_its_absolute_path(tmp_path: Path) -> None:
    import asyncio

    from hubpilot.adapters.ldap import LdapDirectory
    from hubpilot.ports.directory import DirectoryError

    directory = LdapDirectory(url="ldaps://127.0.0.1:9", base_dn="dc=example,dc=org", ca_file="ca.pem",
                              timeout=2)
    with pytest.raises(DirectoryError, match=f"'ca.pem' \\({tmp_path / 'ca.pem'}\\) cannot be used"):
        asyncio.run(directory.read(["analysts"]))


def test_a_state_file_left_in_the_working_directory_by_an_earlier_release_is_not_replaced_by_an_empty_one(
        tmp_path: Path) -> None:
    """Upgrading: an earlier release read a relative state path from the working directory. Found
    there and not beside the settings file, hubpilot refuses to start on an empty state store
    (it would forget whom it manages, the removal window and the approvals) and says what to do."""
    conf, elsewhere = _dirs(tmp_path)
    (conf / "hubpilot.toml").write_text(HUB + '[state]\nsqlite_path = "hubpilot.sqlite3"\n')
    old = _cli(elsewhere, "pause", "cull", HUBPILOT_STATE__SQLITE_PATH="hubpilot.sqlite3")  # as before
    assert old.returncode == 0, old.stderr
    assert (elsewhere / "hubpilot.sqlite3").is_file()
    refused = _cli(elsewhere, "--config", str(conf / "hubpilot.toml"), "status")
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert str(elsewhere / "hubpilot.sqlite3") in refused.stderr and str(conf / "hubpilot.sqlite3") in refused.stderr
    assert "move that file beside the settings file" in refused.stderr
    assert not (conf / "hubpilot.sqlite3").exists()
    # moved as told: its state is read
    (elsewhere / "hubpilot.sqlite3").rename(conf / "hubpilot.sqlite3")
    status = _cli(elsewhere, "--config", str(conf / "hubpilot.toml"), "status", "--json")
    assert status.returncode == 0, status.stderr
    assert '"paused"' in status.stdout and "cull" in status.stdout, status.stdout


def test_the_default_state_file_beside_the_settings_file_is_not_replaced_by_an_empty_one_elsewhere(
        tmp_path: Path) -> None:
    """state.sqlite_path left unset is hubpilot-state.sqlite3 of the working directory. An admin who
    ran hubpilot in the settings file's folder and then from another one (a service manager starts
    it in /) got a second, empty store: every run "never run", the managed users, the removal
    window and the approvals forgotten, and no lock shared with the first. That is refused now,
    as it is for a relative state.sqlite_path written in the file."""
    conf, elsewhere = _dirs(tmp_path)
    (conf / "hubpilot.toml").write_text(HUB)
    paused = _cli(conf, "--config", "hubpilot.toml", "pause", "cull")
    assert paused.returncode == 0, paused.stderr
    assert (conf / "hubpilot-state.sqlite3").is_file()
    status = _cli(elsewhere, "--config", str(conf / "hubpilot.toml"), "status")
    assert status.returncode == 2, (status.stdout, status.stderr)
    assert (f"state.sqlite_path is not set: the state file is hubpilot-state.sqlite3 of the working directory "
            f"({elsewhere / 'hubpilot-state.sqlite3'}), which has none, but the settings file's folder has one "
            f"({conf / 'hubpilot-state.sqlite3'})") in status.stderr, status.stderr
    assert not (elsewhere / "hubpilot-state.sqlite3").exists()
    # set in the file, relative: read from the file's folder, from any working directory
    (conf / "hubpilot.toml").write_text(HUB + '[state]\nsqlite_path = "hubpilot-state.sqlite3"\n')
    status = _cli(elsewhere, "--config", str(conf / "hubpilot.toml"), "status")
    assert status.returncode == 0 and "cull   PAUSED" in status.stdout, (status.stdout, status.stderr)
    # in the environment, or an explicit choice of the working directory's: as given
    (conf / "hubpilot.toml").write_text(HUB)
    here = _cli(elsewhere, "--config", str(conf / "hubpilot.toml"), "status",
                HUBPILOT_STATE__SQLITE_PATH="hubpilot-state.sqlite3")
    assert here.returncode == 0 and "PAUSED" not in here.stdout, (here.stdout, here.stderr)
    # a store in the working directory too: that one is used, as before
    again = _cli(elsewhere, "--config", str(conf / "hubpilot.toml"), "status")
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("source", ["file", "env"])
def test_a_path_from_the_home_folder_is_read_there_not_under_the_working_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str) -> None:
    # SQLite took "~/hubpilot/state.sqlite3" as a folder named "~" under the working directory: a
    # new, empty state store wherever hubpilot was started
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    config = tmp_path / "etc" / "hubpilot.toml"
    config.parent.mkdir()
    values = {"state": ("sqlite_path", "~/hubpilot/state.sqlite3"), "scale": ("kubeconfig", "~/a.yaml:~/b.yaml")}
    if source == "file":
        config.write_text("".join(f'[{section}]\n{key} = "{value}"\n' for section, (key, value) in values.items()))
    else:
        config.write_text("")
        for section, (key, value) in values.items():
            monkeypatch.setenv(f"HUBPILOT_{section.upper()}__{key.upper()}", value)
    s = load_settings(config)
    assert s.state.sqlite_path == str(home / "hubpilot" / "state.sqlite3")
    assert s.scale.kubeconfig == f"{home / 'a.yaml'}{os.pathsep}{home / 'b.yaml'}"
    asyncio.run(_write_a_lock(s))
    assert (home / "hubpilot" / "state.sqlite3").is_file()
    assert not (work / "~").exists()


async def _write_a_lock(settings: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    store = build_store(settings)
    try:
        assert await store.acquire_lock("sync", "test", timedelta(minutes=1), datetime.now(UTC)) is not None
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            await close()


def test_each_relative_kubeconfig_of_a_list_is_read_from_the_files_folder(tmp_path: Path) -> None:
    # KUBECONFIG style: not only the first of the list
    (tmp_path / "hubpilot.toml").write_text(f'[scale]\nkubeconfig = "/abs/one{os.pathsep}kube/two"\n')
    s = load_settings(tmp_path / "hubpilot.toml")
    assert s.scale.kubeconfig == f"/abs/one{os.pathsep}{tmp_path / 'kube' / 'two'}"

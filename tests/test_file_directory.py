"""FileDirectory: YAML and TOML directories, and every kind of bad file with its message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hubpilot.adapters.filedir import FileDirectory
from hubpilot.ports.directory import DirectoryError, DirectorySnapshot, Member

DEMO = Path(__file__).resolve().parents[1] / "deploy" / "demo" / "directory.yaml"

YAML = """\
people:
  alice: {username: alice, name: Alice Liddell}
  bob: {username: Bob}
  carol: {name: Carol No-Login}
groups:
  analysts: {members: [alice, bob], groups: [interns]}
  interns: {members: [carol], groups: [analysts]}
  admins: {members: [alice]}
  empty: {}
"""

TOML = """\
[people.alice]
username = "alice"
name = "Alice Liddell"

[people.bob]
username = "Bob"

[people.carol]
name = "Carol No-Login"

[groups.analysts]
members = ["alice", "bob"]
groups = ["interns"]

[groups.interns]
members = ["carol"]
groups = ["analysts"]

[groups.admins]
members = ["alice"]

[groups.empty]
"""

ALICE = Member(id="alice", username="alice", display="Alice Liddell")
BOB = Member(id="bob", username="Bob", display="")
CAROL = Member(id="carol", username=None, display="Carol No-Login")


def write(tmp_path: Path, text: str, name: str = "dir.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def check_good(snap: DirectorySnapshot) -> None:
    assert snap.groups == {
        "analysts": frozenset({ALICE, BOB, CAROL}),  # carol through the nested interns
        "interns": frozenset({CAROL, ALICE, BOB}),  # and back: a cycle, followed once
        "admins": frozenset({ALICE}),
        "empty": frozenset(),
    }
    assert snap.notes == (
        "analysts: nesting cycle analysts -> interns -> analysts; not followed again",
        "interns: nesting cycle interns -> analysts -> interns; not followed again",
    )


@pytest.mark.parametrize("name", ["dir.yaml", "dir.yml"])
async def test_yaml(tmp_path: Path, name: str) -> None:
    d = FileDirectory(write(tmp_path, YAML, name))
    snap = await d.read(["analysts", "interns", "admins", "empty"])
    check_good(snap)
    assert snap.source == f"file {tmp_path / name}"


async def test_toml(tmp_path: Path) -> None:
    snap = await FileDirectory(write(tmp_path, TOML, "dir.toml")).read(["analysts", "interns", "admins", "empty"])
    check_good(snap)


async def test_the_file_is_read_again_on_every_read(tmp_path: Path) -> None:
    p = write(tmp_path, YAML)
    d = FileDirectory(p)
    assert (await d.read(["admins"])).groups["admins"] == {ALICE}
    p.write_text(YAML.replace("admins: {members: [alice]}", "admins: {members: [bob]}"))
    assert (await d.read(["admins"])).groups["admins"] == {BOB}


async def test_the_demo_directory(tmp_path: Path) -> None:
    snap = await FileDirectory(DEMO).read(["analysts", "gpu-users", "hub-admins"])
    names = {g: {m.username for m in ms} for g, ms in snap.groups.items()}
    assert names == {"analysts": {"alice", "bob", "carol", "dan"}, "gpu-users": {"alice", "erin"},
                     "hub-admins": {"frank"}}
    assert snap.notes == ()


BAD = [
    # (file name, content, expected message after "directory file <path>: ")
    ("dir.yaml", YAML.replace("[alice, bob]", "[alice, bob, carol, dave]"),
     "groups.analysts.members[3]: 'dave' is not in people"),
    ("dir.yaml", YAML.replace("groups: [interns]", "groups: [nobody]"),
     "groups.analysts.groups[0]: 'nobody' is not in groups"),
    ("dir.yaml", YAML.replace("bob: {username: Bob}", "bob: {username: 42}"),
     "people.bob.username: must be a non-empty string, not a number (42)"),
    ("dir.yaml", YAML.replace("bob: {username: Bob}", "bob: {usrname: Bob}"),
     "people.bob.usrname: unknown key (expected 'username', 'name')"),
    ("dir.yaml", YAML.replace("admins: {members: [alice]}", "admins: {members: alice}"),
     "groups.admins.members: must be a list, not a string"),
    ("dir.yaml", YAML.replace("admins: {members: [alice]}", "admins: {members: [alice, [bob]]}"),
     "groups.admins.members[1]: must be a string, not a list"),
    ("dir.yaml", YAML.replace("admins: {members: [alice]}", "admins: [alice]"),
     "groups.admins: must be a mapping with 'members' and 'groups', not a list"),
    ("dir.yaml", "- alice\n- bob\n",
     "the top level must be a mapping with 'people' and 'groups', not a list"),
    ("dir.yaml", YAML + "users: {}\n", "users: unknown key (expected 'people' and 'groups')"),
    ("dir.yaml", YAML.replace("people:\n", "people:\n  bob: {username: bob}\n", 1),
     "YAML syntax error at line 4, column 3: duplicate key 'bob'"),
    ("dir.yaml", YAML.replace("[alice, bob]", "[alice, bob"),
     "YAML syntax error at line 6, column"),
    ("dir.toml", TOML.replace('members = ["alice", "bob"]', 'members = ["alice", "bob", "erin"]'),
     "groups.analysts.members[2]: 'erin' is not in people"),
    ("dir.toml", TOML.replace('username = "alice"', 'username = alice'),
     "TOML syntax error: Invalid value (at line 2, column 12)"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD, ids=[m for _, _, m in BAD])
async def test_bad_files_name_the_file_and_the_place(tmp_path: Path, name: str, text: str, message: str) -> None:
    p = write(tmp_path, text, name)
    with pytest.raises(DirectoryError) as info:
        await FileDirectory(p).read(["analysts"])
    assert str(info.value).startswith(f"directory file {p}: {message}"), str(info.value)


async def test_a_group_not_in_the_file(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError, match=re.escape(
            "groups: 'gpu-users' is not defined (defined: admins, analysts, empty, interns)")):
        await FileDirectory(write(tmp_path, YAML)).read(["analysts", "gpu-users"])


async def test_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError, match=r"dir\.yaml: cannot be read: No such file or directory"):
        await FileDirectory(tmp_path / "dir.yaml").read(["analysts"])
    p = write(tmp_path, "x", "bin.yaml")
    p.write_bytes(b"people: {\xff: 1}\n")
    with pytest.raises(DirectoryError, match="is not UTF-8 text"):
        await FileDirectory(p).read(["analysts"])


def test_an_unknown_file_kind_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected a \.yaml, \.yml or \.toml file"):
        FileDirectory(tmp_path / "dir.json")


async def test_a_missing_file_given_relative_is_named_where_it_was_looked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """directory.file.path is read from the process's working directory (not the settings file's):
    a relative path that is not found is named as the absolute path looked at, so an operator
    running hubpilot serve or the CLI from another directory sees why."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DirectoryError) as info:
        await FileDirectory("peple.yaml").read(["analysts"])
    assert f"directory file peple.yaml ({tmp_path / 'peple.yaml'}): cannot be read" in str(info.value), info.value

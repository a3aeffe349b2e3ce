"""Directory adapter for a YAML (.yaml/.yml) or TOML (.toml) file of people and groups.

    people:
      alice: {username: alice, name: Alice Liddell}
      bob: {username: bob}
    groups:
      analysts: {members: [alice], groups: [interns]}   # groups: nested groups, expanded
      interns: {members: [bob]}

The file is read and checked whole on every ``read()`` (it may change between runs). Any problem
(missing file, bad syntax, an unknown person or group, a wrong type, a duplicate key) raises
DirectoryError naming the file and the exact place, e.g.
``groups.analysts.members[2]: 'carol' is not in people``. A nesting cycle is a note.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hubpilot.ports.directory import DirectoryError, DirectorySnapshot, Member

PERSON_KEYS = ("username", "name")
GROUP_KEYS = ("members", "groups")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark)
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Bad(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


class FileDirectory:
    """The ``Directory`` port over a file. ``path`` is the ``[directory.file] path`` setting."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in (".yaml", ".yml", ".toml"):
            raise ValueError(f"directory.file.path {str(self.path)!r}: expected a .yaml, .yml or .toml file")

    async def read(self, groups: Sequence[str]) -> DirectorySnapshot:
        return await asyncio.to_thread(self.read_sync, list(groups))

    async def close(self) -> None:
        return None

    # -- implementation ------------------------------------------------------------------------

    def read_sync(self, groups: Sequence[str]) -> DirectorySnapshot:
        data = self._load()
        try:
            people, tree = self._check(data)
            notes: list[str] = []
            result: dict[str, frozenset[Member]] = {}
            for name in groups:
                if name not in tree:
                    known = ", ".join(sorted(tree)) or "none"
                    raise _Bad("groups", f"{name!r} is not defined (defined: {known})")
                result[name] = frozenset(self._expand(name, people, tree, notes))
        except _Bad as exc:
            raise DirectoryError(f"directory file {self.path}: {exc}") from None
        return DirectorySnapshot(source=f"file {self.path}", groups=result, notes=tuple(notes))

    def _load(self) -> object:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            looked = "" if self.path.is_absolute() else f" ({self.path.absolute()})"  # from the working directory
            raise DirectoryError(f"directory file {self.path}{looked}: cannot be read: {exc.strerror or exc}") from exc
        try:
            if self.path.suffix.lower() == ".toml":
                return tomllib.loads(raw.decode("utf-8"))
            return yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
        except UnicodeDecodeError as exc:
            raise DirectoryError(f"directory file {self.path}: is not UTF-8 text ({exc.reason} at byte "
                                 f"{exc.start})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise DirectoryError(f"directory file {self.path}: TOML syntax error: {exc}") from exc
        except yaml.YAMLError as exc:
            where = ""
            mark = getattr(exc, "problem_mark", None)
            if mark is not None:
                where = f" at line {mark.line + 1}, column {mark.column + 1}"
            problem = getattr(exc, "problem", None) or str(exc)
            raise DirectoryError(f"directory file {self.path}: YAML syntax error{where}: {problem}") from exc

    def _check(self, data: object) -> tuple[dict[str, Member], dict[str, tuple[list[str], list[str]]]]:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise _Bad("", f"the top level must be a mapping with 'people' and 'groups', not {_kind(data)}")
        for key in data:
            if key not in ("people", "groups"):
                raise _Bad(str(key), "unknown key (expected 'people' and 'groups')")
        people_raw = data.get("people", {})
        groups_raw = data.get("groups", {})
        if not isinstance(people_raw, dict):
            raise _Bad("people", f"must be a mapping of person id to {{username, name}}, not {_kind(people_raw)}")
        if not isinstance(groups_raw, dict):
            raise _Bad("groups", f"must be a mapping of group name to {{members, groups}}, not {_kind(groups_raw)}")

        people: dict[str, Member] = {}
        for pid, entry in people_raw.items():
            where = f"people.{pid}"
            if not isinstance(pid, str):
                raise _Bad(where, f"a person id must be a string, not {_kind(pid)}")
            if entry is None:
                entry = {}
            if not isinstance(entry, dict):
                raise _Bad(where, f"must be a mapping with 'username' and 'name', not {_kind(entry)}")
            for key in entry:
                if key not in PERSON_KEYS:
                    raise _Bad(f"{where}.{key}", "unknown key (expected 'username', 'name')")
            username = entry.get("username")
            if username is not None and (not isinstance(username, str) or not username.strip()):
                raise _Bad(f"{where}.username", f"must be a non-empty string, not {_kind(username)}"
                           + (f" ({username!r})" if isinstance(username, (int, float, bool, str)) else ""))
            display = entry.get("name", "")
            if display is None:
                display = ""
            if not isinstance(display, str):
                raise _Bad(f"{where}.name", f"must be a string, not {_kind(display)}")
            people[pid] = Member(id=pid, username=username, display=display)

        tree: dict[str, tuple[list[str], list[str]]] = {}
        for gname, entry in groups_raw.items():
            where = f"groups.{gname}"
            if not isinstance(gname, str):
                raise _Bad(where, f"a group name must be a string, not {_kind(gname)}")
            if entry is None:
                entry = {}
            if not isinstance(entry, dict):
                raise _Bad(where, f"must be a mapping with 'members' and 'groups', not {_kind(entry)}")
            for key in entry:
                if key not in GROUP_KEYS:
                    raise _Bad(f"{where}.{key}", "unknown key (expected 'members', 'groups')")
            lists: list[list[str]] = []
            for key in GROUP_KEYS:
                values = entry.get(key) or []
                if not isinstance(values, list):
                    raise _Bad(f"{where}.{key}", f"must be a list, not {_kind(values)}")
                for i, v in enumerate(values):
                    if not isinstance(v, str):
                        raise _Bad(f"{where}.{key}[{i}]", f"must be a string, not {_kind(v)}")
                lists.append(values)
            tree[gname] = (lists[0], lists[1])
        for gname, (members, nested) in tree.items():
            for i, pid in enumerate(members):
                if pid not in people:
                    raise _Bad(f"groups.{gname}.members[{i}]", f"{pid!r} is not in people")
            for i, sub in enumerate(nested):
                if sub not in tree:
                    raise _Bad(f"groups.{gname}.groups[{i}]", f"{sub!r} is not in groups")
        return people, tree

    @staticmethod
    def _expand(name: str, people: Mapping[str, Member], tree: Mapping[str, tuple[list[str], list[str]]],
                notes: list[str]) -> set[Member]:
        out: set[Member] = set()
        done: set[str] = set()

        def walk(group: str, path: tuple[str, ...]) -> None:
            done.add(group)
            members, nested = tree[group]
            out.update(people[pid] for pid in members)
            for sub in nested:
                if sub in path:
                    notes.append(f"{name}: nesting cycle {' -> '.join((*path, sub))}; not followed again")
                elif sub not in done:
                    walk(sub, (*path, sub))

        walk(name, (name,))
        return out

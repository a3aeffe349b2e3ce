"""Review: server limits (slapd.conf ``sizelimit`` and ``limits``) against a private slapd: a
read the server cuts short is unknown, never a smaller group, and the error says what to change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hubpilot.adapters.ldap import LdapDirectory
from hubpilot.ports.directory import DirectoryError
from tests.slapd import SLAPD, Slapd, people_ldif, slapd_server

pytestmark = pytest.mark.ldap

COM = "dc=example,dc=com"
PASSWORD = "reader-secret"
# bind DN → its limits (slapd.conf ``limits``); everyone else, anonymous too, has sizelimit 20
READERS = {
    "small-pages": "size.soft=unlimited size.hard=unlimited size.pr=5 size.prtotal=unlimited",
    "no-paging": "size.soft=20 size.hard=20 size.prtotal=disabled",
    "paged-capped": "size.soft=20 size.hard=20 size.pr=noEstimate",  # the paged total is the hard limit
    "paged-unlimited": "size.soft=20 size.hard=20 size.prtotal=unlimited",  # paging lifts the limit
}


def reader(name: str) -> str:
    return f"uid={name},{COM}"


@pytest.fixture(scope="module")
def limited_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    if not Path(SLAPD).exists():
        pytest.fail(f"{SLAPD} is missing: apt-get install -y slapd ldap-utils")
    with slapd_server(tmp_path_factory.mktemp("slapd-limits"), ldif=[people_ldif(30, ou="p", group="all30")]) as s:
        for name in READERS:
            s.add(reader(name), {"objectClass": ["account", "simpleSecurityObject"], "uid": name,
                                 "userPassword": PASSWORD})
        s.stop()
        conf = s.workdir / "slapd.conf"
        limits = "\n".join(f'limits dn.exact="{reader(n)}" {lim}' for n, lim in READERS.items())
        conf.write_text(conf.read_text().replace("sizelimit unlimited", "sizelimit 20")
                        .replace("index objectClass eq", f"index objectClass eq\n{limits}"))
        s.start()
        yield s


def directory(slapd: Slapd, who: str | None, **kw: object) -> LdapDirectory:
    args: dict[str, object] = dict(url=slapd.url, bind_dn=reader(who) if who else None,
                                   bind_password=PASSWORD if who else None, base_dn=COM, timeout=5.0)
    args.update(kw)
    return LdapDirectory(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("page_size", [7, 20, 500])
async def test_a_size_limit_below_the_people_count_is_unknown_at_any_page_size(limited_slapd: Slapd,
                                                                                page_size: int) -> None:
    # 30 people and a group under the base: the server stops after 20 entries, paged or not
    for who in (None, "paged-capped"):
        d = directory(limited_slapd, who, page_size=page_size)
        with pytest.raises(DirectoryError, match=r"sizeLimitExceeded \(4\).*nothing is changed"):
            await d.read(["all30"])
    # where paged searches may go past the limit, the answer is whole
    full = await directory(limited_slapd, "paged-unlimited", page_size=page_size).read(["all30"])
    assert len(full.groups["all30"]) == 30


async def test_a_page_size_above_the_servers_says_to_lower_page_size(limited_slapd: Slapd) -> None:
    with pytest.raises(DirectoryError, match=r"adminLimitExceeded.*illegal pagedResults page size.*"
                                             r"lower directory\.ldap\.page_size"):
        await directory(limited_slapd, "small-pages", page_size=6).read(["all30"])
    snap = await directory(limited_slapd, "small-pages", page_size=5).read(["all30"])
    assert len(snap.groups["all30"]) == 30


async def test_paging_refused_for_the_bind_dn_says_so(limited_slapd: Slapd) -> None:
    with pytest.raises(DirectoryError, match=r"pagedResults control not allowed.*paged searches"):
        await directory(limited_slapd, "no-paging").read(["all30"])

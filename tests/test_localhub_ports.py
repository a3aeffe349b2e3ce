"""The local hub (tests and the demo) takes its ports by asking the system for a free one, which
another process may take before the hub or its proxy binds it: the start is then tried again on
new ports instead of failing the run."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from hubpilot import localhub
from tests.realhub import start_hub

pytestmark = pytest.mark.hub


async def test_a_port_taken_before_the_proxy_binds_it_is_replaced(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # another process's listener
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real = localhub.free_port

    def ports() -> Iterator[int]:
        yield real()  # public
        yield real()  # hub
        yield taken.getsockname()[1]  # the proxy's API port: taken meanwhile
        while True:
            yield real()

    given = ports()
    monkeypatch.setattr(localhub, "free_port", lambda: next(given))
    try:
        async with start_hub(tmp_path) as hub:
            async with httpx.AsyncClient() as http:
                r = await http.get(f"{hub.api_url}/", headers={"Authorization": f"token {hub.admin_token}"})
            assert r.status_code == 200 and "version" in r.json()
            log = (tmp_path / "jupyterhub.log").read_text()
            assert f"EADDRINUSE: address already in use 127.0.0.1:{taken.getsockname()[1]}" in log  # the first start
    finally:
        taken.close()


async def test_a_hub_that_fails_at_start_leaves_no_proxy_running(tmp_path: Path) -> None:
    """The hub starts its proxy in a session of its own and stops it only on a clean stop: a hub
    that failed after starting it (here: a service it cannot start) left it running, ports and all."""
    broken = 'c.JupyterHub.services.append({"name": "broken", "command": ["/nonexistent/hubpilot-service"]})'
    with pytest.raises(RuntimeError, match="jupyterhub exited"):
        async with start_hub(tmp_path, extra_config=broken):
            pass
    pid = int((tmp_path / "jupyterhub-proxy.pid").read_text())  # the hub had started its proxy
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, \
        f"proxy {pid} still runs: {psutil.Process(pid).cmdline()}"

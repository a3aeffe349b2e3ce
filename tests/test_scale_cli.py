"""``hubpilot scale [--dry-run] [--json]`` as an operator runs it: a fresh interpreter configured
only by settings, the real wiring (DefaultAzureCredential through the App Service managed-identity
endpoint, the real ContainerServiceClient against the ARM double, the real ``kubernetes`` client
against kmock)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import NS, Emulator
from tests.test_run_queue_identity import IDENTITY_HEADER, ROOT, IdentityEndpoint, identity  # noqa: F401

CLI = "import sys; from hubpilot.cli import main; sys.exit(main(sys.argv[1:]))"


async def hubpilot(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLI, *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_the_cli_plans_without_touching_the_pool_then_scales_it(
        kube: Emulator, identity: IdentityEndpoint, tmp_path: Path) -> None:  # noqa: F811
    kube.clear()
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0", user="alice")
    kube.pod("bob", None, user="bob")  # waits for a GPU node
    arm = ArmDouble()
    await arm.start()
    try:
        arm.add_pool("gpu", count=1, machines=["gpu-0"])
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("HUBPILOT_", "AZURE_", "IDENTITY_", "MSI_"))}
        env.update({
            "IDENTITY_ENDPOINT": identity.url, "IDENTITY_HEADER": IDENTITY_HEADER,
            "HUBPILOT_HUB__API_URL": "http://127.0.0.1:9/hub/api", "HUBPILOT_HUB__TOKEN": "t",
            "HUBPILOT_STATE__SQLITE_PATH": str(tmp_path / "state.sqlite3"),
            "HUBPILOT_SCALE__SUBSCRIPTION_ID": arm.subscription,
            "HUBPILOT_SCALE__RESOURCE_GROUP": arm.resource_group,
            "HUBPILOT_SCALE__CLUSTER": arm.cluster, "HUBPILOT_SCALE__POOL": "gpu",
            "HUBPILOT_SCALE__ARM_ENDPOINT": arm.base_url,
            "HUBPILOT_SCALE__KUBE_API_URL": kube.url, "HUBPILOT_SCALE__NAMESPACE": NS,
            "HUBPILOT_SCALE__LRO_WAIT_SECONDS": "30",
        })
        code, out, err = await hubpilot(env, "scale", "--dry-run", "--json")
        assert code == 0, err[-3000:]
        plan: dict[str, Any] = json.loads(out)
        text = json.dumps(plan)
        assert '"set_count"' in text and '"count": 2' in text, out
        assert not arm.writes() and arm.pools["gpu"]["count"] == 1  # a dry run changes nothing
        # the audience follows scale.arm_endpoint (scale.arm_audience unset): the ARM double's own
        assert [r["query"]["resource"] for r in identity.requests][:1] == [arm.base_url]

        code, out, err = await hubpilot(env, "scale", "--json")
        assert code == 0, err[-3000:]
        json.loads(out)
        puts = [c for c in arm.calls if c.method == "PUT"]
        assert [c.body["properties"]["count"] for c in puts] == [2] and arm.pools["gpu"]["count"] == 2
    finally:
        await arm.stop()

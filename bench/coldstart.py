"""Cold start of the Functions app: import cost and first-request latency.

Prints, over N fresh interpreters each:
- the median wall time of ``import azure.functions`` alone and of ``import function_app``,
  and their ratio (goal: at most 3x — heavy SDKs and the admin app load lazily, on first use);
- the latency of ``GET /healthz`` right after import (answered by the front, no FastAPI);
- the latency of the first authenticated request after import (``GET /api/v1/status``, which
  builds the admin app and the settings), and of a second one.

Run from the project root: ``python bench/coldstart.py [N]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-not-a-secret"

IMPORT_ONLY = """
import time
t = time.perf_counter()
import {module}
print(time.perf_counter() - t)
"""

REQUESTS = """
import asyncio, time
t = time.perf_counter()
import function_app
imported = time.perf_counter() - t
import azure.functions as func
fn = {{f.get_function_name(): f for f in function_app.app.get_functions()}}["admin_api"].get_user_function()

async def call(path, headers):
    t = time.perf_counter()
    r = await fn(func.HttpRequest("GET", "http://localhost" + path, headers=headers, body=b""), None)
    assert r.status_code == 200, (path, r.status_code, r.get_body())
    return time.perf_counter() - t

async def main():
    auth = {{"Authorization": "Bearer {token}"}}
    h = await call("/healthz", {{}})
    first = await call("/api/v1/status", auth)
    second = await call("/api/v1/status", auth)
    print(imported, h, first, second)

asyncio.run(main())
"""


def run(code: str, env: dict[str, str], cwd: str) -> list[float]:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"a fresh interpreter failed (exit {done.returncode}):\n{done.stderr}")
    return [float(x) for x in done.stdout.split()]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
        env.update({
            "PYTHONPATH": str(ROOT),
            "HUBPILOT_STATE__SQLITE_PATH": str(Path(tmp) / "state.sqlite3"),
            # the Functions app refuses "inprocess" (503); the deployment (infra/bicep) sets "queue"
            "HUBPILOT_API__RUN_MODE": "queue",
            "HUBPILOT_API__TOKENS": json.dumps([{"name": "bench", "role": "admin",
                                                 "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]),
        })
        cwd = str(ROOT)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for _ in range(2):  # warm the bytecode and file caches
            run(REQUESTS.format(token=TOKEN), env, cwd)
        bare: list[float] = []
        app: list[float] = []
        reqs: list[list[float]] = []
        for _ in range(n):  # interleaved, so drift in machine load hits both alike
            bare.append(run(IMPORT_ONLY.format(module="azure.functions"), env, cwd)[0])
            app.append(run(IMPORT_ONLY.format(module="function_app"), env, cwd)[0])
            reqs.append(run(REQUESTS.format(token=TOKEN), env, cwd))
    mb, ma = statistics.median(bare), statistics.median(app)
    ms = 1000.0
    print(f"runs: {n} fresh interpreters each")
    print(f"import azure.functions        median {mb * ms:7.1f} ms")
    print(f"import function_app           median {ma * ms:7.1f} ms")
    print(f"ratio                                {ma / mb:7.2f}x  (goal <= 3x)")
    print(f"GET /healthz after import     median {statistics.median(r[1] for r in reqs) * ms:7.2f} ms")
    print(f"first GET /api/v1/status      median {statistics.median(r[2] for r in reqs) * ms:7.1f} ms"
          "  (builds settings, store and the admin app)")
    print(f"second GET /api/v1/status     median {statistics.median(r[3] for r in reqs) * ms:7.2f} ms")


if __name__ == "__main__":
    main()

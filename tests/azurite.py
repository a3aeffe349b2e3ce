"""Start Azurite (the Azure Storage emulator: Blobs, Queues, Tables) on free loopback ports.

Plain module, usable from pytest fixtures, bench scripts and by hand::

    with Azurite.start() as azurite:
        print(azurite.connection_string)

``python -m tests.azurite`` starts one and prints its connection string until interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
AZURITE = ROOT / "node_modules" / ".bin" / "azurite"

ACCOUNT_NAME = "devstoreaccount1"
# Azurite's well-known development account key (public, documented; it protects nothing).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Azurite:
    blob_port: int
    queue_port: int
    table_port: int
    process: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    _log: Path | None = field(default=None, repr=False)

    account_name: str = ACCOUNT_NAME
    account_key: str = ACCOUNT_KEY
    tls: tuple[Path, Path] | None = None  # (certificate, key): HTTPS
    oauth: bool = False  # accept Entra bearer tokens (Azurite's basic OAuth; needs HTTPS)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def blob_endpoint(self) -> str:
        return f"{self.scheme}://{HOST}:{self.blob_port}/{self.account_name}"

    @property
    def queue_endpoint(self) -> str:
        return f"{self.scheme}://{HOST}:{self.queue_port}/{self.account_name}"

    @property
    def table_endpoint(self) -> str:
        return f"{self.scheme}://{HOST}:{self.table_port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};"
            f"AccountName={self.account_name};AccountKey={self.account_key};"
            f"BlobEndpoint={self.blob_endpoint};"
            f"QueueEndpoint={self.queue_endpoint};"
            f"TableEndpoint={self.table_endpoint};"
        )

    @classmethod
    def start(cls, *, timeout: float = 30.0, attempts: int = 3, tls: tuple[Path, Path] | None = None,
              oauth: bool = False) -> Azurite:
        """Start Azurite in memory and wait until all three services accept connections; with
        ``tls`` it serves HTTPS, with ``oauth`` it also takes bearer tokens."""
        if not AZURITE.exists():
            raise RuntimeError(f"Azurite is not installed at {AZURITE} (run npm install in the project root)")
        last_error = ""
        for _ in range(attempts):  # a port picked as free may be taken before Azurite binds it
            azurite = cls(free_port(), free_port(), free_port(), tls=tls, oauth=oauth)
            try:
                azurite._launch(timeout)
                return azurite
            except RuntimeError as exc:
                last_error = str(exc)
                azurite.stop()
        raise RuntimeError(f"Azurite did not start: {last_error}")

    def _launch(self, timeout: float) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="azurite-"))
        self._log = self.workdir / "azurite.log"
        args = [
            str(AZURITE),
            "--inMemoryPersistence", "--skipApiVersionCheck", "--silent", "--loose", "--disableTelemetry",
            "--blobHost", HOST, "--blobPort", str(self.blob_port),
            "--queueHost", HOST, "--queuePort", str(self.queue_port),
            "--tableHost", HOST, "--tablePort", str(self.table_port),
        ]
        if self.tls:
            args += ["--cert", str(self.tls[0]), "--key", str(self.tls[1])]
        if self.oauth:
            args += ["--oauth", "basic"]
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(args, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        ports = [self.blob_port, self.queue_port, self.table_port]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Azurite exited with {self.process.returncode}: {self.log_tail()}")
            if all(_answers(p) for p in ports):
                return
            time.sleep(0.05)
        raise RuntimeError(f"Azurite did not answer on {ports} within {timeout}s: {self.log_tail()}")

    def log_tail(self, size: int = 2000) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace")[-size:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Azurite:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main() -> int:
    with Azurite.start() as azurite:
        print(azurite.connection_string, flush=True)
        try:
            while azurite.process is not None and azurite.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Starts a real voxloop server in a subprocess on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def eventually(check: Callable[[], object], timeout_s: float, what: str) -> None:
    """Polls ``check`` until it holds (a positive signal); fails with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    api_key: str
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def conversations(self) -> int:
        """Conversations open on this server, as its readiness endpoint counts them."""
        return httpx.get(f"{self.http}/readyz").json()["conversations"]

    def wait_healthy(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.http}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout_s} s:\n{self.log()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(
    log_dir: Path, api_key: str = "test-key", env: dict[str, str] | None = None, timeout_s: float = 300
) -> RunningServer:
    server = launch_server(log_dir, api_key, env)
    server.wait_healthy(timeout_s)
    return server


def launch_server(
    log_dir: Path, api_key: str = "test-key", env: dict[str, str] | None = None
) -> RunningServer:
    """Starts a server without waiting for it (start several, then ``wait_healthy`` on each)."""
    port = free_port()
    log_path = log_dir / f"voxloop-{port}.log"
    environment = {
        **os.environ,
        "VOXLOOP_API_KEYS": api_key,
        "VOXLOOP_DATA_DIR": str(log_dir),  # its own key store and history
        # Unlimited: tests hold several sessions on one server and benches measure one at a time;
        # the machine's limit (default 2) is tested where it is set (test_admission, test_haproxy).
        "VOXLOOP_MAX_CONVERSATIONS": "0",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "voxloop.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env=environment,
        cwd=REPO,
    )
    return RunningServer(process, port, api_key, log_path)

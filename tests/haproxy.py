"""A real HAProxy in front of given backends, for tests and deploy/cluster.py: deploy/haproxy.cfg,
the one source of the configuration, with its own free port, stats socket and servers.

    with haproxy([("127.0.0.1", 8081), ("127.0.0.1", 8082)]) as balancer:
        balancer.url, balancer.states()  # {"node1": "UP", "node2": "DOWN", ...}
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.server import free_port

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


def missing() -> str | None:
    return None if shutil.which("haproxy") else "haproxy is not installed (scripts/install-system.sh)"


def render(backends: list[tuple[str, int]], port: int, stats_socket: Path) -> str:
    """deploy/haproxy.cfg with this port, this stats socket and one `server` line per backend."""
    text = CONFIG.read_text()
    text = re.sub(r"(?m)^(\s+bind )\S+", rf"\g<1>127.0.0.1:{port}", text, count=1)
    text = re.sub(r"(?m)^(\s+stats socket )\S+", rf"\g<1>{stats_socket}", text, count=1)
    indent = re.search(r"(?m)^(\s+)server ", text)
    assert indent, "deploy/haproxy.cfg lists no server"
    servers = "".join(f"{indent[1]}server node{i} {host}:{p}\n" for i, (host, p) in enumerate(backends, 1))
    text = re.sub(r"(?m)^\s+server .*\n", "", text)
    return text.rstrip("\n") + "\n" + servers


@dataclass
class Balancer:
    port: int
    stats_socket: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def command(self, line: str) -> str:
        """One command on the admin socket (``show stat``, ``show servers state``, ...)."""
        with socket.socket(socket.AF_UNIX) as admin:
            admin.connect(str(self.stats_socket))
            admin.sendall(line.encode() + b"\n")
            return b"".join(iter(lambda: admin.recv(65536), b"")).decode()

    def states(self) -> dict[str, str]:
        """Each server's health as HAProxy sees it now: UP, DOWN, or a transition (``DOWN 1/2``)."""
        header, *rows = self.command("show stat").lstrip("# ").splitlines()
        columns = header.split(",")
        stats = [dict(zip(columns, row.split(","), strict=False)) for row in rows if row]
        return {s["svname"]: s["status"] for s in stats if s["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_state(self, server: str, state: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while (now := self.states().get(server)) != state:
            assert time.monotonic() < deadline, f"{server} is {now}, not {state}: {self.states()}"
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def haproxy(backends: list[tuple[str, int]], port: int | None = None) -> Iterator[Balancer]:
    with tempfile.TemporaryDirectory(prefix="voxloop-haproxy-") as folder:
        config, log = Path(folder) / "haproxy.cfg", Path(folder) / "haproxy.log"
        port = port or free_port()
        config.write_text(render(backends, port, Path(folder) / "admin.sock"))
        checked = subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode:
            raise RuntimeError(f"haproxy rejects its configuration:\n{checked.stdout}{checked.stderr}")
        # -db: stays in the foreground, so terminating it stops it.
        process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config)], stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        balancer = Balancer(port, Path(folder) / "admin.sock", process, log)
        try:
            deadline = time.monotonic() + 10
            while not balancer.stats_socket.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"haproxy did not start:\n{balancer.log()}")
                time.sleep(0.05)
            yield balancer
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

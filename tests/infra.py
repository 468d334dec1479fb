"""Real Redis and PostgreSQL 15 on loopback for tests and benches: each in a temp dir, on a free
port, stopped (and its files removed) on exit. PostgreSQL refuses to run as root, so when the tests
run as root it runs as ``nobody`` in a directory handed to that user.

    with redis_server() as redis_url, postgres_server() as database_url:
        ...  # VOXLOOP_REDIS_URL=redis_url, VOXLOOP_DATABASE_URL=database_url

``cluster(...)`` starts both and N voxloop nodes sharing them (tests/test_shared_state.py).
``missing()`` names what is not installed, for a ``pytest.skip`` with a clear reason.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.server import RunningServer, free_port, launch_server

PG_BIN = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT_S = 30


def missing() -> str | None:
    """Why the shared-state tests cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (scripts/install-system.sh)"
    if not (PG_BIN / "postgres").exists():
        return "PostgreSQL 15 is not installed (scripts/install-system.sh)"
    return None


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited early:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{process.args[0]} did not listen on {port}:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes], how: signal.Signals = signal.SIGTERM) -> None:
    process.send_signal(how)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throw-away redis-server (no persistence); yields its URL."""
    with tempfile.TemporaryDirectory(prefix="voxloop-redis-") as folder:
        port, log = free_port(), Path(folder) / "redis.log"
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        process = subprocess.Popen(
            ["redis-server", *args, "--dir", folder, "--logfile", str(log)], stdout=subprocess.DEVNULL
        )
        try:
            wait_for_port(port, process, log)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop(process)


def _postgres_user() -> str | None:
    """PostgreSQL refuses to run as root: then it runs as nobody (no wrapper process, so signals
    reach it)."""
    return "nobody" if os.geteuid() == 0 else None


@contextlib.contextmanager
def postgres_server(password: str = "test-secret", fsync: bool = False) -> Iterator[str]:
    """A throw-away PostgreSQL 15 cluster (fsync off unless asked: tests); yields its URL."""
    with tempfile.TemporaryDirectory(prefix="voxloop-pg-") as folder:
        root = Path(folder)
        data, log, secret = root / "data", root / "postgres.log", root / "password"
        secret.write_text(password)
        if os.geteuid() == 0:
            shutil.chown(root, "nobody")
            shutil.chown(secret, "nobody")
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "voxloop", "--auth=scram-sha-256"]
        subprocess.run(
            [*initdb, f"--pwfile={secret}", "--no-sync"],
            check=True,
            capture_output=True,
            user=_postgres_user(),
        )
        port = free_port()
        settings = [
            "-c",
            f"fsync={'on' if fsync else 'off'}",
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={root}",
        ]
        process = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), *settings],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            user=_postgres_user(),
        )
        try:
            wait_for_port(port, process, log)
            _wait_accepting(port, process, log)
            yield f"postgresql://voxloop:{password}@127.0.0.1:{port}/postgres"
        finally:
            stop(process, signal.SIGINT)  # "fast" shutdown: SIGTERM would wait for open connections


def _wait_accepting(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """The port opens before the cluster accepts logins ("the database system is starting up")."""
    deadline = time.monotonic() + START_TIMEOUT_S
    ready = [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
    while subprocess.run(ready, check=False).returncode != 0:
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"PostgreSQL not accepting connections:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


@dataclass
class Cluster:
    redis_url: str
    database_url: str
    nodes: list[RunningServer]

    @property
    def env(self) -> dict[str, str]:
        return {"VOXLOOP_REDIS_URL": self.redis_url, "VOXLOOP_DATABASE_URL": self.database_url}

    def keys_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``voxloop keys`` against the cluster's stores (no node involved)."""
        return run_cli(["keys", *args], self.env)

    def create_key(self, *args: str) -> str:
        made = self.keys_cli("create", "--name", "shared", *args)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxloop.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
    )


@contextlib.contextmanager
def cluster(
    log_dir: Callable[[str], Path], nodes: int = 2, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """Redis, PostgreSQL and ``nodes`` voxloop nodes sharing them, started in parallel (each node
    with its own data dir from ``log_dir(name)``). The nodes skip warming their models (they load
    on first use); pass ``env={"VOXLOOP_WARMUP": "true"}`` to have them ready up front."""
    with redis_server() as redis_url, postgres_server() as database_url:
        shared = {
            "VOXLOOP_REDIS_URL": redis_url,
            "VOXLOOP_DATABASE_URL": database_url,
            "VOXLOOP_WARMUP": "false",
        }
        started = [
            launch_server(log_dir(f"node{index}"), env={**shared, **(env or {})}) for index in range(nodes)
        ]
        try:
            for node in started:
                node.wait_healthy()
            yield Cluster(redis_url, database_url, started)
        finally:
            for node in started:
                if node.process.poll() is None:
                    node.stop()

"""A whole voxloop cluster on this machine, from Debian packages: redis-server, PostgreSQL 15,
N voxloop nodes and HAProxy (deploy/haproxy.cfg) in front of them, all on loopback, each in a
temp dir that is removed when it stops.

    python deploy/cluster.py --nodes 2 --port 8080 [--llm-url http://a:8000/v1,http://b:8000/v1]

Runs until Ctrl-C or SIGTERM, then stops everything. It is the tests' own machinery
(tests/infra.py, tests/server.py, tests/haproxy.py), so what it starts is what the tests check.
A production cluster runs the same parts under systemd on many machines: docs/scaling.md.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.haproxy import haproxy
from tests.infra import postgres_server, redis_server
from tests.server import start_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--port", type=int, default=8080, help="HAProxy's port on 127.0.0.1")
    parser.add_argument("--key", default="cluster-key", help="an operator API key every node accepts")
    parser.add_argument("--llm-url", default="", help="OpenAI-compatible LLM servers, comma-separated")
    parser.add_argument("--drain-grace-s", default="300", help="VOXLOOP_DRAIN_GRACE_S of the nodes")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that everything below is stopped

    with contextlib.ExitStack() as cluster:
        redis_url = cluster.enter_context(redis_server())
        database_url = cluster.enter_context(postgres_server())
        env = {
            "VOXLOOP_REDIS_URL": redis_url,
            "VOXLOOP_DATABASE_URL": database_url,
            "VOXLOOP_DRAIN_GRACE_S": args.drain_grace_s,
        }
        if args.llm_url:
            env |= {"VOXLOOP_LLM_BACKEND": "openai", "VOXLOOP_LLM_BASE_URL": args.llm_url}
        folder = Path(cluster.enter_context(tempfile.TemporaryDirectory(prefix="voxloop-cluster-")))
        folders = [folder / f"node{i}" for i in range(1, args.nodes + 1)]
        for node_folder in folders:
            node_folder.mkdir()
        with ThreadPoolExecutor(args.nodes) as pool:  # they load their models at the same time
            starting = [pool.submit(start_server, f, args.key, env) for f in folders]
            nodes = []
            for future in starting:
                nodes.append(node := future.result())
                cluster.callback(node.stop)
        balancer = cluster.enter_context(haproxy([("127.0.0.1", node.port) for node in nodes], args.port))
        print(f"redis      {redis_url}\npostgresql {database_url}")
        for i, node in enumerate(nodes, 1):
            print(f"node{i}      {node.http}  (log {node.log_path})")
        print(f"haproxy    {balancer.url}  (API key {args.key!r}; Ctrl-C stops the cluster)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(node.process.poll() is None for node in nodes):
                time.sleep(1)
            print("a node exited; stopping the cluster", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What shared state costs a conversation, measured on the stores themselves (the voice-to-voice
bench, bench_soca.py --compare, drowns a few milliseconds in model time on a busy machine).

One conversation's store work, as a node does it: the key check (uncached), the session id claim,
the lease, the Soca resume lookup, then per turn the history commit (user + assistant) and the
resume save, then the close. Embedded (SQLite, in-process) against Redis + PostgreSQL on loopback
(tests/infra.py starts them; PostgreSQL with fsync on, as SQLite's synchronous=FULL).

Run: .venv/bin/python bench/bench_shared_state.py [--conversations 200] [--turns 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.stats import summary
from tests import infra
from voxloop.config import Settings
from voxloop.service.auth import KeyCheck
from voxloop.service.cluster import build_stores
from voxloop.service.history_store import Turn
from voxloop.service.keys import KeyLimits
from voxloop.service.limits import Limiter
from voxloop.service.resume import ResumeStore, Saved, owner_of


async def conversations(settings: Settings, count: int, turns: int) -> tuple[list[float], list[float]]:
    stores = build_stores(settings, KeyLimits())
    await stores.open()
    keys, limiter = KeyCheck([], stores.keys), Limiter(stores.keys, book=stores.book)
    resume = stores.resume or ResumeStore(120, 1000)
    await limiter.start()
    key, _ = await stores.keys.create("bench", max_sessions=10)
    opens, per_turn = [], []
    try:
        for _ in range(count):
            session_id = f"bench_{uuid.uuid4().hex}"
            began = time.perf_counter()
            keys.forget()  # every conversation pays the lookup (the cache is per node, 2 s)
            info = await keys.identify(key)
            assert info is not None
            claim = await limiter.claim(session_id, info.id)
            lease = await limiter.open_session(info)
            await resume.take(session_id, owner_of(key))
            opens.append(time.perf_counter() - began)
            for turn in range(turns):
                began = time.perf_counter()
                pair = [
                    Turn("user", f"question {turn}", time.time()),
                    Turn("assistant", "answer", time.time()),
                ]
                await asyncio.wrap_future(stores.history.submit(session_id, pair, info.id))  # either kind
                await resume.save(session_id, Saved(owner_of(key), seq=turn))
                per_turn.append(time.perf_counter() - began)
            lease.close()
            claim.release()
    finally:
        await limiter.stop()
        await stores.close()
    return opens, per_turn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data, contextlib.ExitStack() as stack:
        embedded = Settings(data_dir=Path(data), redis_url="", database_url="")
        shared = embedded.model_copy(
            update={
                "redis_url": stack.enter_context(infra.redis_server()),
                "database_url": stack.enter_context(infra.postgres_server(fsync=True)),
            }
        )
        for label, settings in (("embedded", embedded), ("Redis+PostgreSQL", shared)):
            opens, per_turn = asyncio.run(conversations(settings, args.conversations, args.turns))
            print(summary(f"conversation open: key check, claim, lease, resume lookup [{label}]", opens))
            print(summary(f"  per turn: history commit (2 turns) + resume save [{label}]", per_turn))


if __name__ == "__main__":
    main()

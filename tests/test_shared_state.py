"""Shared state across nodes: two real voxloop nodes sharing a real Redis and PostgreSQL 15 (started
on loopback by tests/infra.py), and the Redis scripts and PostgreSQL stores on their own.

The nodes start without warming their models (``VOXLOOP_WARMUP=false``): what is under test here
is the shared state, and only the Soca conversation loads real models, on first use."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests import infra
from tests.haproxy import haproxy
from tests.haproxy import missing as haproxy_missing
from tests.infra import Cluster, run_cli
from tests.server import RunningServer, eventually, free_port
from tests.soca_client import SocaClient
from tests.speech import espeak_16k
from tests.test_keys import prompt_answered
from voxloop.cli import change_keys
from voxloop.config import Settings
from voxloop.service.cluster import open_for_cli
from voxloop.service.resume import Saved

if reason := infra.missing():
    pytest.skip(reason, allow_module_level=True)

REVOKE_WITHIN_S = 2.0
SHORT = "You are a helpful assistant. Answer in one short sentence."


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with infra.cluster(lambda name: tmp_path_factory.mktemp(name)) as running:
        yield running


def agent_url(node: RunningServer, key: str) -> str:
    return f"{node.ws}/ws/agent?api_key={key}"


def test_a_key_created_for_the_cluster_works_on_every_node(cluster: Cluster) -> None:
    key = cluster.create_key()
    for node in cluster.nodes:
        assert httpx.get(f"{node.http}/voices", headers={"X-API-Key": key}).status_code == 200
        with connect(agent_url(node, key)) as ws:
            assert prompt_answered(ws)
    listed = cluster.keys_cli("list")
    assert listed.returncode == 0 and key.split("_")[1] in listed.stdout and key not in listed.stdout
    wrong = httpx.get(f"{cluster.nodes[1].http}/voices", headers={"X-API-Key": key[:-1]})
    assert wrong.status_code == 401
    revoked = cluster.keys_cli("revoke", key.split("_")[1])
    assert revoked.returncode == 0, revoked.stderr
    eventually(  # refused everywhere (the broadcast clears the nodes' key caches)
        lambda: all(
            httpx.get(f"{node.http}/voices", headers={"X-API-Key": key}).status_code == 401
            for node in cluster.nodes
        ),
        REVOKE_WITHIN_S,
        "the revoked key is still accepted",
    )


def test_the_per_key_session_limit_holds_across_nodes(cluster: Cluster) -> None:
    key = cluster.create_key("--max-sessions", "2")
    first, second = cluster.nodes
    with connect(agent_url(first, key)) as one, connect(agent_url(second, key)) as two:
        assert prompt_answered(one) and prompt_answered(two)
        for node in cluster.nodes:  # the third is refused on either node, in Lokutor's shape
            with pytest.raises(InvalidStatus) as refused:
                connect(agent_url(node, key))
            assert refused.value.response.status_code == 429
            error = json.loads(refused.value.response.body)["error"]
            assert error["type"] == "rate_limited" and "2 open sessions" in error["message"]
    deadline = time.monotonic() + 10  # both closed: the places come back (released in the background)
    while True:
        try:
            with connect(agent_url(second, key)) as again, connect(agent_url(first, key)) as more:
                assert prompt_answered(again) and prompt_answered(more)
                break
        except InvalidStatus:
            assert time.monotonic() < deadline, "the closed sessions' places did not come back"
            time.sleep(0.1)


def test_a_key_revoked_anywhere_ends_its_sessions_on_every_node_within_2_s(cluster: Cluster) -> None:
    key, other = cluster.create_key(), cluster.create_key()
    first, second = cluster.nodes
    with (
        connect(agent_url(first, key)) as on_first,
        connect(agent_url(second, key)) as on_second,
        connect(agent_url(second, other)) as bystander,
    ):
        assert prompt_answered(on_first) and prompt_answered(on_second)
        since_revoked = asyncio.run(revoke_as_the_cli_does(cluster, key.split("_")[1]))
        for ws in (on_first, on_second):
            assert json.loads(ws.recv(timeout=10)) == {"type": "error", "data": "API key revoked"}
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        took = time.monotonic() - since_revoked
        print(f"revocation ended the sessions on both nodes within {took * 1000:.0f} ms")
        assert took < REVOKE_WITHIN_S
        assert prompt_answered(bystander)  # another key's session goes on
    for node in cluster.nodes:
        with pytest.raises(InvalidStatus) as refused:
            connect(agent_url(node, key))
        assert refused.value.response.status_code == 401


def test_every_node_lists_the_cluster_with_its_load(cluster: Cluster) -> None:
    key = cluster.create_key()
    first, second = cluster.nodes

    def listed() -> dict[str, dict]:
        answer = httpx.get(f"{first.http}/v1/cluster/nodes", headers={"X-API-Key": key}, timeout=5)
        assert answer.status_code == 200, answer.text
        return {node["address"]: node for node in answer.json()["nodes"]}

    nodes = listed()
    assert set(nodes) == {f"127.0.0.1:{node.port}" for node in cluster.nodes}
    assert all(node["ready"] and not node["draining"] for node in nodes.values())
    with connect(agent_url(second, key)) as ws:
        assert prompt_answered(ws)
        deadline = time.monotonic() + 10  # heartbeats every 2 s
        while listed()[f"127.0.0.1:{second.port}"]["sessions"] != 1:
            assert time.monotonic() < deadline, listed()
            time.sleep(0.2)
    assert httpx.get(f"{first.http}/v1/cluster/nodes").status_code == 401


async def revoke_as_the_cli_does(cluster: Cluster, key_id: str) -> float:
    """``voxloop keys revoke`` without the process start-up; returns when the revocation began."""
    settings = Settings(redis_url=cluster.redis_url, database_url=cluster.database_url)
    stores = await open_for_cli(settings)
    try:
        began = time.monotonic()
        await change_keys(argparse.Namespace(action="revoke", id=key_id), stores)
        return began
    finally:
        await stores.close()


def history(node: RunningServer, session_id: str, key: str) -> httpx.Response:
    return httpx.get(f"{node.http}/v1/sessions/{session_id}", headers={"X-API-Key": key}, timeout=10)


def saved_for_resume(cluster: Cluster, session_id: str) -> list[str]:
    """The roles of the spoken turns Redis keeps for resuming ``session_id``."""
    raw = redis.Redis.from_url(cluster.redis_url).get(f"voxloop:resume:{session_id}")
    return [m.role for m in Saved.from_json(raw).messages if m.role != "system"] if raw else []


def test_a_soca_session_id_connecting_on_another_node_takes_the_session_over(cluster: Cluster) -> None:
    """A client whose network path changed reconnects through another node while its old socket is
    still open: the old node is told at once, ends that socket ("moved"), and saves the
    conversation before the new node reads it, so it resumes and nothing is saved over it later."""
    key = cluster.create_key()
    start = {"type": "start", "token": key, "session_id": f"sess_{uuid.uuid4().hex[:12]}", "sr": 16000}
    first_node, second_node = cluster.nodes
    old = SocaClient(f"{first_node.ws}/v1/voice-ws", start)
    try:
        assert old.ready["type"] == "ready" and old.ready["resumed"] is False, old.ready
        new = SocaClient(f"{second_node.ws}/v1/voice-ws", start)
        try:
            assert new.ready["type"] == "ready" and new.ready["resumed"] is True, new.ready
            moved = old.wait_for(lambda m: m["type"] == "error", timeout=10)
            assert "newer connection" in moved["message"] and old.wait_closed() == 1000
            assert (first_node.conversations(), second_node.conversations()) == (0, 1)
            assert saved_for_resume(cluster, start["session_id"]) == []  # taken by the new node
        finally:
            new.close()
    finally:
        old.close()


def test_soca_resumes_through_haproxy_after_its_node_is_killed_and_history_reads_from_either(
    cluster: Cluster,
) -> None:
    """Runs last of the node tests: it kills the node the conversation landed on (SIGKILL: nothing
    saved at close). The client reconnects through deploy/haproxy.cfg, which sends it to the live
    node, and resumes there with its history and seq."""
    if reason := haproxy_missing():
        pytest.skip(reason)
    key, stranger = cluster.create_key(), cluster.create_key()
    session_id = f"sess_{uuid.uuid4().hex[:12]}"
    start = {
        "type": "start",
        "token": key,
        "session_id": session_id,
        "lang": "en",
        "sr": 16000,
        "prompt": SHORT,
    }
    with haproxy([("127.0.0.1", node.port) for node in cluster.nodes]) as balancer:
        names = {f"node{index}": node for index, node in enumerate(cluster.nodes, 1)}
        for name in names:
            balancer.wait_state(name, "UP")
        client = SocaClient(f"{balancer.ws}/v1/voice-ws", start)
        try:
            assert client.ready["type"] == "ready" and client.ready["resumed"] is False, client.ready
            landed = next(name for name, node in names.items() if node.conversations() == 1)
            first, second = names[landed], next(node for name, node in names.items() if name != landed)
            ended = client.say(espeak_16k("Please remember this: my name is Alice."))
            client.final_answer(since=ended - 10, timeout=180)
            last_seq = client.current_seq
            eventually(  # the committed turn is stored, and saved for resuming
                lambda: (
                    len(history(second, session_id, key).json().get("turns", [])) >= 2
                    and len(saved_for_resume(cluster, session_id)) >= 2
                ),
                15,
                "the committed turn was not stored",
            )
            turns = [history(node, session_id, key) for node in cluster.nodes]
            assert turns[0].json() == turns[1].json()
            assert [turn["role"] for turn in turns[0].json()["turns"]] == ["user", "assistant"]
            assert "alice" in turns[0].json()["turns"][0]["text"].lower()
            for node in cluster.nodes:  # another key reads nothing there, on any node
                assert history(node, session_id, stranger).status_code == 404
            first.process.kill()  # mid-conversation: the node saves nothing more
            first.process.wait()
        finally:
            client.close()

        balancer.wait_state(landed, "DOWN")  # a client's reconnect comes after the health check
        again = SocaClient(f"{balancer.ws}/chat/agent/voice-ws", start)
        try:
            assert again.ready["resumed"] is True and again.ready["seq"] == last_seq, again.ready
            assert second.conversations() == 1
            ended = again.say(espeak_16k("What is my name?"))
            answer = again.final_answer(since=ended - 10, timeout=180)
            assert "alice" in answer["text"].lower(), answer
            assert answer["seq"] > last_seq
        finally:
            again.close()
    stored = lambda: len(history(second, session_id, key).json()["turns"]) >= 4  # noqa: E731
    eventually(stored, 15, "the new turns were not stored")


@pytest.mark.parametrize("which", ["redis", "postgres"])
def test_an_unreachable_store_at_start_is_a_one_line_error(which: str) -> None:
    port = free_port()  # nothing listens there
    url = (
        f"redis://:hunter2@127.0.0.1:{port}/0"
        if which == "redis"
        else f"postgresql://voxloop:hunter2@127.0.0.1:{port}/voxloop"
    )
    env = {"VOXLOOP_REDIS_URL" if which == "redis" else "VOXLOOP_DATABASE_URL": url}
    for args in (["serve", "--port", str(free_port())], ["keys", "list"]):
        done = run_cli(args, env, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("voxloop: cannot reach") and f"127.0.0.1:{port}" in lines[0]
        assert "hunter2" not in done.stderr and ":***@" in lines[0]


# ---- the Redis scripts and the PostgreSQL stores on their own -------------------------------


@pytest.fixture(scope="module")
def redis_url(cluster: Cluster) -> str:
    return cluster.redis_url


async def test_a_lease_expires_unless_its_holder_refreshes_it(redis_url: str) -> None:
    from voxloop.service.cluster import redis_client
    from voxloop.service.cluster.redis_state import RedisBook
    from voxloop.service.limits import Limiter

    redis = redis_client(redis_url)
    dead, alive, other = (RedisBook(redis, "test", ttl_s=0.3) for _ in range(3))
    key_id = f"lease-{uuid.uuid4().hex}"
    assert await dead.open(key_id, "a", limit=2) and await alive.open(key_id, "b", limit=2)
    assert not await other.open(key_id, "c", limit=2)  # two places, both taken (atomically)
    limiter = Limiter(book=alive)
    await alive.start(limiter)  # refreshes every 0.1 s; `dead` never does: a node that died
    try:
        deadline = time.monotonic() + 5
        while not await other.open(key_id, "c", limit=2):  # a's place frees itself after its ttl
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        other.close(key_id, "c")
        await asyncio.sleep(0.6)  # twice the ttl: b is still held, refreshed by its holder
        assert await other.open(key_id, "c", limit=2)
        assert not await other.open(key_id, "d", limit=2)  # b and c
    finally:
        await alive.stop()
        await redis.aclose()


async def test_a_session_id_is_held_by_one_key_and_freed_on_release(redis_url: str) -> None:
    from voxloop.service.cluster import redis_client
    from voxloop.service.cluster.redis_state import RedisBook

    redis = redis_client(redis_url)
    node1, node2 = RedisBook(redis, "test", ttl_s=10), RedisBook(redis, "test", ttl_s=10)
    session_id = f"sess-{uuid.uuid4().hex}"
    try:
        assert await node1.claim(session_id, "alice", "h1")
        assert not await node2.claim(session_id, "mallory", "h2")  # another key: refused on any node
        assert await node2.claim(session_id, "alice", "h3")  # the same key reconnecting: taken over
        node1.unclaim(session_id, "h1")
        node2.unclaim(session_id, "h3")
        deadline = time.monotonic() + 5
        while not await node2.claim(session_id, "mallory", "h4"):  # free once no one holds it
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def test_a_shared_budget_never_grants_more_than_it_holds(redis_url: str) -> None:
    from voxloop.service.cluster import redis_client
    from voxloop.service.cluster.redis_state import RedisBook

    redis = redis_client(redis_url)
    name = f"budget-{uuid.uuid4().hex}"
    buckets = [
        RedisBook(redis, "test", ttl_s=10).bucket(name, rate_per_s=0.001, capacity=10) for _ in range(3)
    ]
    try:
        for bucket in buckets:
            await bucket.ready()
        taken = 0
        for _ in range(20):  # three nodes spending one message at a time, topping up as they go
            for bucket in buckets:
                taken += bucket.take(1)
                await bucket.ready()
        assert taken == 10  # the key's ten, all spent, none twice
    finally:
        await redis.aclose()


async def test_redis_gone_ends_leases_with_a_clear_reason_and_refuses_new_ones() -> None:
    from voxloop.service.cluster import redis_client
    from voxloop.service.cluster.redis_state import RedisBook
    from voxloop.service.keys import KeyInfo, KeyLimits
    from voxloop.service.limits import Limiter, StoreUnavailable

    with infra.redis_server() as url:
        redis = redis_client(url)
        book = RedisBook(redis, "redis://127.0.0.1:x/0", ttl_s=0.5)
        limiter = Limiter(book=book)
        await limiter.start()
        lease = await limiter.open_session(KeyInfo("k", "k", KeyLimits(max_sessions=1)))
    # The Redis server is stopped now.
    try:
        await asyncio.wait_for(lease.ended.wait(), 5)
        assert "shared state unavailable" in lease.end_reason and lease.close_code == 1011
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="does not answer"):
            await limiter.open_session(KeyInfo("k", "k", KeyLimits()))
        assert time.monotonic() - started < 5  # a clear refusal, not a hang
    finally:
        lease.close()
        await limiter.stop()
        await redis.aclose()


async def test_postgres_keys_and_history_keep_tenants_apart(cluster: Cluster) -> None:
    from voxloop.service.cluster.postgres import Database, PostgresHistory, PostgresKeys
    from voxloop.service.history_store import Turn

    database = Database(cluster.database_url, "test")
    await database.open()
    await database.open()  # the schema set-up is idempotent
    keys, store = PostgresKeys(database), PostgresHistory(database)
    await store.open()
    try:
        key, info = await keys.create("tenant", max_sessions=3)
        assert await keys.identify(key) == info and info.limits.max_sessions == 3
        session_id = f"sess-{uuid.uuid4().hex}"
        await store.submit(
            session_id, [Turn("user", "one", 1.0, "m1"), Turn("assistant", "two", 2.0, "m2")], "a"
        )
        await store.submit(session_id, [Turn("user", "theirs", 3.0)], "b")
        await store.edit(session_id, "m2", "tw")
        assert [t.text for t in await store.read_turns(session_id, "a")] == ["one", "tw"]
        assert [t.text for t in await store.read_turns(session_id, None)] == ["one", "tw", "theirs"]
        assert await store.read_owners(session_id) == {"a", "b"}
        await keys.revoke(info.id)
        assert await keys.identify(key) is None and info.id in await keys.revoked_ids()
    finally:
        await store.aclose()
        await database.close()


async def test_postgres_gone_fails_writes_and_key_checks_clearly() -> None:
    from voxloop.service.auth import KeyCheck
    from voxloop.service.cluster.postgres import Database, PostgresHistory, PostgresKeys
    from voxloop.service.history_store import HistoryError, Turn
    from voxloop.service.limits import StoreUnavailable

    with infra.postgres_server() as url:
        database = Database(url, "postgresql://voxloop:***@127.0.0.1/postgres")
        await database.open()
        store = PostgresHistory(database)
        await store.open()
        key, _ = await PostgresKeys(database).create("gone")
    # PostgreSQL is stopped now.
    try:
        started = time.monotonic()
        with pytest.raises(HistoryError, match="conversation history not saved: PostgreSQL at"):
            await store.submit("s", [Turn("user", "lost", 1.0)], "k")
        with pytest.raises(StoreUnavailable, match="key store does not answer"):
            await KeyCheck([], PostgresKeys(database)).identify(key)
        assert time.monotonic() - started < 15  # clear errors, not hangs
    finally:
        await store.aclose()
        await database.close()

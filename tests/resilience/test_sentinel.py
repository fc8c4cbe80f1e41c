"""Redis Sentinel: receiver and worker find the primary through a real Sentinel and follow a failover.

A test-local primary (with a password) and replica, and one Sentinel watching them, all
`redis-server` processes on spare ports. ORDERFLOW_REDIS_URL is a `redis+sentinel://` URL.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import subprocess
import time

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from shared.devservices import free_port
from shared.redis_client import connect_redis
from shared.settings import Settings
from tests.conftest import order_body
from tests.resilience.harness import (
    ENQUEUE,
    HOST,
    Attempt,
    Children,
    Load,
    Receiver,
    RedisServer,
    Worker,
    assert_exactly_once,
    make_key,
    orderflow_env,
    tail,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
PASSWORD = "s3nt1nel-test"
SERVICE = "orders"


def start_sentinel(children: Children, dir, primary_port: int) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    dir.mkdir(parents=True, exist_ok=True)
    conf = dir / "sentinel.conf"  # Sentinel rewrites its config file: it must be writable
    conf.write_text(
        f"bind {HOST}\nport {port}\ndir {dir}\n"
        f"sentinel monitor {SERVICE} {HOST} {primary_port} 1\n"
        f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
        f"sentinel down-after-milliseconds {SERVICE} 2000\n"
        f"sentinel failover-timeout {SERVICE} 10000\n")
    binary = shutil.which("redis-sentinel") or shutil.which("redis-server")
    assert binary, "neither redis-sentinel nor redis-server is on PATH"
    log = open(dir / "sentinel.log", "ab")  # noqa: SIM115 - the child keeps it open
    proc = children.add(subprocess.Popen([binary, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL))
    log.close()
    return port, proc


async def test_receiver_and_worker_through_sentinel_across_a_failover(
        tmp_path, children: Children, database_url: str, redis_prefix: str, pool: asyncpg.Pool,
        client: aiohttp.ClientSession) -> None:
    auth = ("--requirepass", PASSWORD, "--masterauth", PASSWORD)
    primary = RedisServer(children, tmp_path / "primary", *auth)
    primary.start()
    replica = RedisServer(children, tmp_path / "replica", *auth, "--replicaof", HOST, str(primary.port))
    replica.start()
    sentinel_port, sentinel_proc = start_sentinel(children, tmp_path / "sentinel", primary.port)
    sentinel = aioredis.Redis(host=HOST, port=sentinel_port)
    url = f"redis+sentinel://:{PASSWORD}@{HOST}:{sentinel_port},{HOST}:{free_port()}/{SERVICE}/0"
    settings = Settings(database_url=database_url, redis_url=url, redis_prefix=redis_prefix)
    direct: dict[int, aioredis.Redis] = {
        p: aioredis.Redis(host=HOST, port=p, password=PASSWORD) for p in (primary.port, replica.port)}
    ours = connect_redis(settings)
    try:
        async def watching() -> bool:
            if sentinel_proc.poll() is not None:
                raise RuntimeError(tail(tmp_path / "sentinel" / "sentinel.log"))
            try:
                replicas = await sentinel.sentinel_slaves(SERVICE)
            except aioredis.ConnectionError:
                return False
            return any(r["port"] == replica.port and not r["is_sdown"] for r in replicas)

        await wait_until(watching, 30, "the Sentinel watches the primary and knows the replica")
        # one Sentinel address of the URL is dead: clients must skip it
        assert await ours.ping()
        assert (await ours.info("server"))["tcp_port"] == primary.port

        headers = await make_key(database_url)
        env = orderflow_env(database_url, url, redis_prefix, ORDERFLOW_LEASE_S="5")
        receiver = Receiver(children, env, tmp_path / "receiver.log").start()
        worker = Worker(children, env, tmp_path / "worker.log").start()
        await receiver.ready(client)
        await worker.ready()
        first = Load(client, [receiver.url], headers, concurrency=8, prefix="A")
        async with first.start(limit=200):
            await first.finished(60)
        assert {a.status for a in first.attempts} == {202}
        await wait_drained(direct[primary.port], redis_prefix, pool, 200, timeout=30)
        await wait_until(lambda: _beats(direct[primary.port], redis_prefix), 15, "worker heartbeats on the primary")

        # a failover: the replica becomes the primary, the old primary its replica
        await sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)

        async def switched() -> bool:
            addr = await sentinel.sentinel_get_master_addr_by_name(SERVICE)
            if addr is None or int(addr[1]) != replica.port:
                return False
            role = await direct[replica.port].execute_command("ROLE")
            return bool(role[0] == b"master")

        await wait_until(switched, 30, "the Sentinel promoted the replica")
        failed_over_at = time.monotonic()
        # the receiver may answer 503 while it finds the new primary; such orders are posted again
        second = Load(client, [receiver.url], headers, concurrency=8, prefix="B")
        async with second.start(limit=200):
            await second.finished(60)
        assert {a.status for a in second.attempts} <= {202, 503}
        refused = [a for a in second.attempts if a.status == 503]
        reposted: dict[str, Attempt] = {}
        for a in refused:
            async with client.post(receiver.url + ENQUEUE, json=order_body(a.reference, priority=a.priority),
                                   headers=headers) as resp:
                assert resp.status == 202, await resp.text()
                rid = (await resp.json())["data"]["receipt_id"]
                reposted[rid] = dataclasses.replace(a, status=202, receipt_id=rid)
        await wait_drained(direct[replica.port], redis_prefix, pool, 400, timeout=60)
        followed_in = time.monotonic() - failed_over_at
        assert worker.alive(), tail(worker.log)
        all_accepted = {**first.accepted(), **second.accepted(), **reposted}
        tally = await assert_exactly_once(pool, all_accepted, allow_extra={a.reference for a in refused})
        assert tally.orders == 400
        worker.signal(signal.SIGTERM)
        assert await worker.exited(30) == 0
    finally:
        await ours.aclose()
        await sentinel.aclose()
        for c in direct.values():
            await c.aclose()
    print(f"\nSentinel: 200 orders via the first primary; after the failover {len(refused)} posts answered 503 "
          f"while the receiver found the new primary; all 400 stored once, {followed_in:.1f} s after the failover")


async def _beats(redis: aioredis.Redis, prefix: str) -> bool:
    return bool([k async for k in redis.scan_iter(match="{" + prefix + "}:heartbeat:*")])

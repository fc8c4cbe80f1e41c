"""Real processes: the CLI, a revoked key, and a worker SIGKILLed while it holds claimed batches."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared.settings import Settings
from tests.conftest import Tenant, order_body, serve_receiver

ORDERFLOW = str(Path(sys.executable).parent / "orderflow")
ENQUEUE = "/api/v1/order/enqueue"


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env.update(ORDERFLOW_DATABASE_URL=settings.database_url, ORDERFLOW_REDIS_URL=settings.redis_url,
               ORDERFLOW_REDIS_PREFIX=settings.redis_prefix, ORDERFLOW_LOG_FORMAT="json", **extra)
    return env


def cli(settings: Settings, *args: str) -> dict[str, Any]:
    out = subprocess.run([ORDERFLOW, *args, "--json"], env=cli_env(settings), capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("command", [
    [], ["migrate"], ["serve"], ["worker"], ["dev"], ["entity"], ["entity", "create"],
    ["key"], ["key", "create"], ["key", "list"], ["key", "revoke"],
])
def test_every_command_has_help(command: list[str]) -> None:
    out = subprocess.run([ORDERFLOW, *command, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Usage: orderflow" in out.stdout


async def test_cli_entity_and_keys(settings: Settings, pool) -> None:
    from shared.db import migration_files

    assert cli(settings, "migrate") == {"applied": [], "version": migration_files()[-1][0]}
    entity = cli(settings, "entity", "create", "Shoe shop", "--timezone", "Europe/Amsterdam")
    created = cli(settings, "key", "create", "--entity", entity["entity_id"], "--rights", "orders:write,admin",
                  "--sources", "mage2,amazon")
    assert created["access_key"].startswith("ak_" + created["key_id"] + "_")
    listed = cli(settings, "key", "list", "--entity", entity["entity_id"])
    assert [k["key_id"] for k in listed["keys"]] == [created["key_id"]]
    assert created["access_key"] not in json.dumps(listed)  # shown once, never again
    row = await pool.fetchrow("SELECT key_hash, rights, source_ids FROM access_keys")
    assert created["access_key"].encode() not in bytes(row["key_hash"])
    assert (row["rights"], row["source_ids"]) == (["orders:write", "admin"], ["mage2", "amazon"])
    assert cli(settings, "key", "revoke", created["key_id"]) == {"key_id": created["key_id"], "revoked": True}
    bad = subprocess.run([ORDERFLOW, "key", "create", "--entity", entity["entity_id"], "--rights", "root"],
                         env=cli_env(settings), capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown right" in bad.stderr


@pytest.mark.parametrize("announced", [True, False], ids=["cli-announces", "cache-ttl-only"])
async def test_revoked_key_is_refused_within_5_seconds(settings, pool, http, template_db, announced) -> None:
    settings = msgspec.structs.replace(settings, key_cache_ttl_s=Settings().key_cache_ttl_s)
    async with serve_receiver(settings) as receiver:
        url = receiver.url + ENQUEUE
        entity = cli(settings, "entity", "create", "Shop")
        key = cli(settings, "key", "create", "--entity", entity["entity_id"])
        headers = {"CG-Access-Key": key["access_key"], "CG-Entity-ID": entity["entity_id"]}
        async with http.post(url, json=order_body("K1"), headers=headers) as resp:
            assert resp.status == 202
        if announced:
            cli(settings, "key", "revoke", key["key_id"])
        else:  # as if the announcement were lost: only the cache TTL makes it bite
            await pool.execute("UPDATE access_keys SET revoked_at = now() WHERE key_id = $1", key["key_id"])
        revoked_at = time.monotonic()

        async def refused() -> float:
            while True:
                async with http.post(url, json=order_body("K2"), headers=headers) as resp:
                    if resp.status == 401:
                        return time.monotonic() - revoked_at
                    assert resp.status == 202
                await asyncio.sleep(0.05)

        took = await asyncio.wait_for(refused(), timeout=5.0)
        print(f"revoked key refused after {took:.2f} s ({'announced' if announced else 'TTL only'})")


def start_worker(settings: Settings, *args: str, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([ORDERFLOW, "worker", *args], env=cli_env(settings, **extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_for(predicate: Any, timeout: float, step: float = 0.005) -> None:
    async def loop() -> None:
        while not await predicate():
            await asyncio.sleep(step)

    await asyncio.wait_for(loop(), timeout)


async def test_sigkilled_worker_loses_nothing_and_doubles_nothing(settings, server, http, tenant: Tenant,
                                                                    pool, redis) -> None:
    n = 1200
    headers = await tenant.headers()
    gate = asyncio.Semaphore(50)

    async def post(i: int) -> str:
        async with gate, http.post(server.url + ENQUEUE, json=order_body(f"K{i:05d}", priority=i % 7),
                                   headers=headers) as resp:
            assert resp.status == 202
            return str((await resp.json())["data"]["receipt_id"])

    receipts = await asyncio.gather(*(post(i) for i in range(n)))
    queue_keys = server.app[__import__("ingest.keys", fromlist=["QUEUE"]).QUEUE].keys
    assert await redis.zcard(queue_keys.ready) == n

    worker_env = {"ORDERFLOW_LEASE_S": "2", "ORDERFLOW_CLAIM_BATCH": "50"}
    first = start_worker(settings, **worker_env)
    try:
        # kill it while it holds claimed batches, some orders already stored
        async def holding() -> bool:
            return bool(await redis.zcard(queue_keys.leased)) and bool(
                await pool.fetchval("SELECT count(*) > 0 FROM receipts"))

        await wait_for(holding, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    held = await redis.zcard(queue_keys.leased)
    stored_before = await pool.fetchval("SELECT count(*) FROM receipts")
    assert held > 0 and stored_before < n

    second = start_worker(settings, **worker_env)
    try:
        async def drained() -> bool:
            return await redis.zcard(queue_keys.ready) == 0 and await redis.zcard(queue_keys.leased) == 0

        await wait_for(drained, timeout=90, step=0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    print(f"killed while holding {held} claimed payloads, {stored_before}/{n} stored before the kill")
    rows = await pool.fetch("SELECT receipt_id, state FROM receipts")
    assert sorted(r["receipt_id"] for r in rows) == sorted(receipts)
    assert {r["state"] for r in rows} == {"stored"}
    assert await pool.fetchval("SELECT count(*) FROM orders") == n
    assert await pool.fetchval("SELECT count(DISTINCT reference) FROM orders") == n
    # exactly once: no order was applied twice
    assert await pool.fetchval("SELECT count(*) FROM order_versions") == n
    assert await pool.fetchval("SELECT max(version) FROM orders") == 1


async def test_worker_check_sees_a_worker_on_this_host(settings) -> None:
    def check() -> int:
        return subprocess.run([ORDERFLOW, "worker", "--check"], env=cli_env(settings), capture_output=True,
                              timeout=30, check=False).returncode

    assert check() == 1
    worker = start_worker(settings)
    try:
        async def alive() -> bool:
            return await asyncio.to_thread(check) == 0

        await wait_for(alive, timeout=30, step=0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

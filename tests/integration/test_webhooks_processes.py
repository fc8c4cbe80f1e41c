"""No loss: real `orderflow worker` processes SIGKILLed between an order's commit and its webhook."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared.settings import Settings
from tests.conftest import Tenant, order_body
from tests.integration.test_webhooks import ALLOW, ENQUEUE, Clock, Sink, running_sink, subscribe

ORDERFLOW = str(Path(sys.executable).parent / "orderflow")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, webhook_allow_nets=ALLOW)


@pytest.fixture
async def sink(clock: Clock) -> AsyncIterator[Sink]:
    async with running_sink(clock) as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Workers:
    """Worker processes started by a test; whatever is still running at the end is killed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, **extra: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
        env.update(ORDERFLOW_DATABASE_URL=self.settings.database_url,
                   ORDERFLOW_REDIS_URL=self.settings.redis_url,
                   ORDERFLOW_REDIS_PREFIX=self.settings.redis_prefix, ORDERFLOW_LOG_FORMAT="json",
                   ORDERFLOW_WEBHOOK_ALLOW_NETS=ALLOW, ORDERFLOW_WEBHOOK_POLL_S="0.05",
                   ORDERFLOW_WEBHOOK_TIMEOUT_S="2", ORDERFLOW_WEBHOOK_LEASE_S="2.5", **extra)
        proc = subprocess.Popen([ORDERFLOW, "worker"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture
def workers(settings: Settings) -> Iterator[Workers]:
    w = Workers(settings)
    yield w
    w.stop_all()


async def until(predicate: Any, timeout: float = 15) -> None:
    """Poll a database or Redis condition (bounded); nothing here waits for a fixed time."""

    async def loop() -> None:
        while not await predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


async def post(http: Any, server: Any, headers: dict[str, str], reference: str) -> None:
    async with http.post(server.url + ENQUEUE, json=order_body(reference), headers=headers) as resp:
        assert resp.status == 202, await resp.text()


async def test_killed_after_commit_before_send_the_delivery_arrives_after_restart(
        settings, server, http, tenant: Tenant, pool, sink: Sink, workers: Workers) -> None:
    sub = await subscribe(pool, settings, tenant, sink, "k1")
    # this worker stores the order and fans it out, but has no sender: it dies before any send
    first = workers.start(ORDERFLOW_WEBHOOK_SENDERS="0")
    await post(http, server, await tenant.headers(), "KILL1")

    async def fanned_out() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM webhook_deliveries"))

    await until(fanned_out)
    workers.kill(first)
    row = await pool.fetchrow("SELECT webhook_id, state FROM webhook_deliveries")
    assert row["state"] == "pending" and sink.got == []
    assert await pool.fetchval("SELECT state FROM receipts") == "stored"

    workers.start()
    await sink.wait_for(lambda: len(sink.got) >= 1, timeout=15)
    [got] = sink.got
    assert got.webhook_id == row["webhook_id"] and got.verified_by == [0]
    assert got.body["type"] == "order.created" and got.body["data"]["reference"] == "KILL1"

    async def delivered() -> bool:
        return await pool.fetchval("SELECT state FROM webhook_deliveries") == "delivered"

    await until(delivered)
    assert await pool.fetchval("SELECT subscription_id FROM webhook_deliveries") == sub.subscription_id


async def test_killed_during_the_send_it_is_sent_again_with_the_same_webhook_id(
        settings, server, http, tenant: Tenant, pool, sink: Sink, workers: Workers) -> None:
    await subscribe(pool, settings, tenant, sink, "k2", "hold")
    first = workers.start()
    await post(http, server, await tenant.headers(), "KILL2")
    await sink.wait_for(lambda: sink.holding == 1, timeout=15)  # the request is out, no answer yet
    workers.kill(first)
    first_id = sink.got[0].webhook_id
    sink.release.set()  # from now on the sink answers at once

    workers.start()
    await sink.wait_for(lambda: len(sink.got) >= 2, timeout=15)  # after the lease ran out
    assert [r.webhook_id for r in sink.got] == [first_id, first_id]
    assert all(r.verified_by == [0] for r in sink.got)

    async def delivered() -> bool:
        return await pool.fetchval("SELECT state FROM webhook_deliveries") == "delivered"

    await until(delivered)
    log = await pool.fetch("SELECT attempt, status, error FROM webhook_attempts ORDER BY attempt")
    assert [tuple(r) for r in log] == [
        (1, None, "no result: the worker stopped during the attempt"), (2, 200, None)]

"""Priority under a flood, and the sequence guard under any interleaving of updates."""

from __future__ import annotations

import datetime as dt
import json
import random
import secrets
import signal
import time
import uuid

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.queue import make_envelope
from shared.schemas import Header, json_encoder
from tests.conftest import Tenant, order_body
from tests.integration.test_processes import start_worker, wait_for
from worker.store import store_batch

BATCH = "/api/v1/order/enqueue/batch"


def count_inversions(batches: list[list[int]]) -> int:
    """Pairs (x stored in an earlier batch than y) with priority(x) < priority(y)."""
    later = [0] * 21  # priorities -10..10 seen in later batches
    inversions = 0
    for batch in reversed(batches):
        for p in batch:
            inversions += sum(later[p + 11:])
        for p in batch:
            later[p + 10] += 1
    return inversions


def test_inversion_counter():
    assert count_inversions([[5, 5], [3], [-1]]) == 0
    assert count_inversions([[3], [5, 5]]) == 2
    assert count_inversions([[3, 10], [5]]) == 1


async def test_flood_is_stored_in_priority_order(settings, server, http, tenant: Tenant, pool, redis):
    rng = random.Random(7)
    n = 5000
    priorities = [rng.randint(-10, 10) for _ in range(n)]
    headers = await tenant.headers()
    for start in range(0, n, 500):
        orders = [order_body(f"F{i:05d}", priority=priorities[i])["payload"] for i in range(start, start + 500)]
        async with http.post(server.url + BATCH, json={"orders": orders}, headers=headers) as resp:
            assert resp.status == 207 and (await resp.json())["data"]["accepted"] == 500
    # one consumer: batches commit in the order they were claimed (two consumers may swap
    # neighbouring batches; tests/resilience measures that with several workers)
    worker = start_worker(settings, "--concurrency", "1", ORDERFLOW_CLAIM_BATCH="200")
    try:
        async def stored_all() -> bool:
            return await pool.fetchval("SELECT count(*) FROM receipts") == n

        await wait_for(stored_all, timeout=120, step=0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    rows = await pool.fetch("SELECT r.stored_at, r.seq, o.priority FROM receipts r "
                            "JOIN orders o USING (order_id) ORDER BY r.stored_at, r.seq")
    batches: dict[dt.datetime, list[int]] = {}
    for r in rows:
        batches.setdefault(r["stored_at"], []).append(r["priority"])
    ordered = list(batches.values())
    inversions = count_inversions(ordered)
    print(f"{n} orders in {len(ordered)} batches, cross-batch priority inversions: {inversions}")
    assert len(ordered) >= n // 200
    assert inversions == 0
    # FIFO inside a priority: sequence numbers rise batch after batch for each priority
    last_seq: dict[int, int] = {}
    for r in rows:
        assert r["seq"] > last_seq.get(r["priority"], 0)
        last_seq[r["priority"]] = r["seq"]


def envelope(tenant: Tenant, reference: str, city: str) -> bytes:
    header = Header(token=secrets.token_hex(6), entity_id=tenant.entity_id, key_id="key_test", can_create_products=True,
                    timezone="UTC", received_at=time.time(), priority=0, reference=reference)
    payload = order_body(reference, shipping_city=city)["payload"]
    return make_envelope(json_encoder.encode(header), json.dumps(payload).encode())


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), count=st.integers(min_value=2, max_value=6))
async def test_any_interleaving_leaves_the_highest_sequence(data, count, tenant, pool):
    reference = "H" + uuid.uuid4().hex[:10]
    updates = [(seq, envelope(tenant, reference, f"City{seq}")) for seq in range(1, count + 1)]
    order = data.draw(st.permutations(updates))
    # split the arrival order into batches (several updates may share one batch)
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=count - 1))))
    batches = [order[a:b] for a, b in zip([0, *cuts], [*cuts, count], strict=True)]
    async with pool.acquire() as conn:
        for batch in batches:
            await store_batch(conn, batch, dt.datetime.now(dt.UTC))
    row = await pool.fetchrow("SELECT order_id, seq FROM orders WHERE reference = $1", reference)
    assert row["seq"] == count
    city = await pool.fetchval("SELECT city FROM addresses WHERE order_id = $1 AND kind = 'shipping'",
                               row["order_id"])
    assert city == f"City{count}"
    states = await pool.fetch("SELECT state FROM receipts WHERE reference = $1", reference)
    assert len(states) == count and {"stored"} <= {s["state"] for s in states} <= {"stored", "superseded"}

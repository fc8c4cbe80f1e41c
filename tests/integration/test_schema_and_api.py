"""The migrated schema is what the code expects; OpenAPI, docs, health and the hand-off coalescing."""

from __future__ import annotations

import asyncio
import re

import msgspec

from ingest.handoff import HandoffCoalescer
from shared.db import connect, migrate, migration_files
from shared.queue import IngestQueue
from tests.conftest import serve_receiver
from worker.store import ADDRESS_COLUMNS, LINE_COLUMNS

# table -> {column: data_type}; what the code reads and writes
EXPECTED = {
    "entities": {"entity_id": "text", "name": "text", "timezone": "text",
                 "created_at": "timestamp with time zone"},
    "access_keys": {"key_id": "text", "entity_id": "text", "key_hash": "bytea", "rights": "ARRAY",
                    "source_ids": "ARRAY", "created_at": "timestamp with time zone",
                    "revoked_at": "timestamp with time zone"},
    "products": {"entity_id": "text", "sku": "text", "description": "text", "weight": "numeric",
                 "created_at": "timestamp with time zone", "created_by": "text"},
    "orders": {
        "order_id": "bigint", "entity_id": "text", "reference": "text", "source_id": "text",
        "seq": "bigint", "state": "text", "status": "smallint", "type": "smallint",
        "priority": "integer", "flag_partial": "smallint", "cod_amount": "numeric", "currency": "text",
        "shipping_method": "text", "customer_id": "text", "options": "jsonb",
        "created_at": "timestamp with time zone", "delivery_at": "timestamp with time zone",
        "release_at": "timestamp with time zone", "released_at": "timestamp with time zone",
        "stored_at": "timestamp with time zone", "updated_at": "timestamp with time zone",
        "version": "integer", "content_hash": "bytea", "document": "json", "raw": "json",
        "partial_shipments": "integer", "shipped_at": "timestamp with time zone"},
    "order_lines": {"order_id": "bigint", "line_no": "integer", "sku": "text", "qty": "integer",
                    "description": "text", "weight": "numeric", "reference": "text",
                    "unit_price": "numeric", "is_kit": "boolean", "allocation_type": "smallint",
                    "cost": "numeric", "custom_options": "jsonb", "packing": "jsonb",
                    "qty_shipped": "integer"},
    "shipments": {"shipment_id": "bigint", "order_id": "bigint", "external_id": "text", "partial": "boolean",
                  "shipped_at": "timestamp with time zone"},
    "shipment_lines": {"shipment_id": "bigint", "line_no": "integer", "qty": "integer"},
    "addresses": {"order_id": "bigint", "kind": "text", **{c: "text" for c in ADDRESS_COLUMNS},
                  "country": "character"},
    "receipts": {"receipt_id": "text", "entity_id": "text", "seq": "bigint", "reference": "text",
                 "source_id": "text", "state": "text", "code": "integer", "reason": "text",
                 "warnings": "jsonb", "received_at": "timestamp with time zone",
                 "stored_at": "timestamp with time zone", "order_id": "bigint"},
    "order_versions": {"order_id": "bigint", "version": "integer", "seq": "bigint",
                       "at": "timestamp with time zone", "receipt_id": "text", "changes": "jsonb"},
    "order_events": {"event_id": "bigint", "entity_id": "text", "order_id": "bigint", "reference": "text",
                     "source_id": "text", "type": "text", "version": "integer", "priority": "integer",
                     "data": "json", "created_at": "timestamp with time zone",
                     "dispatched_at": "timestamp with time zone"},
    "schema_migrations": {"version": "integer", "name": "text", "applied_at": "timestamp with time zone"},
}


async def test_migrated_schema_is_what_the_code_expects(pool):
    rows = await pool.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public'")
    actual: dict[str, dict[str, str]] = {}
    for r in rows:
        actual.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
    assert {t: actual.get(t) for t in EXPECTED} == EXPECTED
    assert set(LINE_COLUMNS) <= set(actual["order_lines"])
    assert {c for c in actual["orders"] if "_at" in c} <= {
        c for c, t in actual["orders"].items() if t == "timestamp with time zone"}
    index = await pool.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'orders_release_due'")
    assert "WHERE (state = 'scheduled'::text)" in index


async def test_migrations_are_numbered_and_idempotent(database_url):
    versions = [v for v, _, _ in migration_files()]
    assert versions == list(range(1, len(versions) + 1))
    conn = await connect(database_url)
    try:
        assert await migrate(conn) == {"applied": [], "version": versions[-1]}
    finally:
        await conn.close()


async def test_openapi_is_generated_from_the_schemas(http, server):
    async with http.get(server.url + "/api/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    routes = {r.resource.canonical for r in server.app.router.routes() if r.resource is not None}
    api_routes = {r for r in routes if r.startswith("/api/v1/")}
    assert api_routes <= set(doc["paths"]), api_routes - set(doc["paths"])
    payload = doc["components"]["schemas"]["PayloadIn"]["properties"]
    assert "billing_street_full" in payload and "items" in payload
    assert "versions" in doc["components"]["schemas"]["OrderOut"]["properties"]


async def test_docs_page_loads_nothing_from_the_internet(http, server):
    async with http.get(server.url + "/api/docs") as resp:
        assert resp.status == 200
        html = await resp.text()
    assert "/api/openapi.json" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html


async def test_health_and_readiness(http, server, settings):
    async with http.get(server.url + "/healthz") as resp:
        assert resp.status == 200
    async with http.get(server.url + "/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["data"] == {"redis": "up", "postgresql": "up"}


async def test_readiness_names_the_database_when_it_is_down(http, settings):
    down = msgspec.structs.replace(settings, database_url="postgresql://postgres@127.0.0.1:1/x")
    async with serve_receiver(down) as receiver:
        async with http.get(receiver.url + "/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["data"] == {"redis": "up", "postgresql": "down"}
        # the load balancer's probe: a receiver still takes orders into Redis
        async with http.get(receiver.url + "/readyz?require=redis") as resp:
            assert resp.status == 200
            assert (await resp.json())["data"]["postgresql"] == "down"


class CountingQueue(IngestQueue):
    """Counts Redis round trips of the hand-off; everything else is the real queue."""

    calls = 0

    async def enqueue_many(self, items, **kw):  # type: ignore[no-untyped-def]
        self.calls += 1
        return await super().enqueue_many(items, **kw)


async def test_concurrent_handoffs_share_one_round_trip(redis, settings):
    queue = CountingQueue(redis, settings.redis_prefix)
    coalescer = HandoffCoalescer(queue, per_key=0, per_address=0)
    seqs = await asyncio.gather(*(coalescer.submit(i % 3, "k", "a", b"{}\n{}") for i in range(100)))
    assert queue.calls == 1
    assert sorted(seqs) == list(range(1, 101))
    assert (await queue.depth())["ready"] == 100
    # a later tick is a new round trip
    await coalescer.submit(0, "k", "a", b"{}\n{}")
    assert queue.calls == 2


async def test_receipt_and_order_are_scoped_to_the_entity(http, server, pool, settings, consumer):
    from tests.conftest import make_tenant, order_body

    mine, theirs = await make_tenant(pool, settings), await make_tenant(pool, settings)
    headers = await mine.headers()
    async with http.post(server.url + "/api/v1/order/enqueue", json=order_body("S1"), headers=headers) as resp:
        rid = (await resp.json())["data"]["receipt_id"]
    other = await theirs.headers()
    for path in (f"/api/v1/order/receipts/{rid}", "/api/v1/order/S1"):
        if path.endswith("S1"):
            await consumer.drain()
        async with http.get(server.url + path, headers=other) as resp:
            assert resp.status == 404
        async with http.get(server.url + path, headers=headers) as resp:
            assert resp.status == 200
    async with http.get(server.url + "/api/v1/order/S1") as resp:
        assert resp.status == 401

"""Every fixture of ../shared/fixtures through the real receiver and worker into PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from tests.conftest import Tenant, fixture_path, make_tenant

ENQUEUE = "/api/v1/order/enqueue"


async def post_fixture(http, server, tenant: Tenant, name: str) -> tuple[int, dict]:
    body = json.loads(fixture_path(name).read_text())
    _, access_key = await tenant.key()
    body["access_key"], body["entity_id"] = access_key, tenant.entity_id
    async with http.post(server.url + ENQUEUE, json=body) as resp:
        return resp.status, await resp.json()


async def get(http, server, tenant: Tenant, path: str) -> tuple[int, dict]:
    async with http.get(server.url + path, headers=await tenant.headers()) as resp:
        return resp.status, await resp.json()


async def test_order_valid(http, server, tenant, consumer, pool):
    status, answer = await post_fixture(http, server, tenant, "order-valid.json")
    assert status == 202, answer
    assert set(answer["data"]) == {"receipt_id", "reference", "entity_id", "source_id", "status_url"}
    status, receipt = await get(http, server, tenant, answer["data"]["status_url"])
    assert receipt["data"]["state"] == "queued"
    assert await consumer.drain() == 1
    status, receipt = await get(http, server, tenant, answer["data"]["status_url"])
    assert (status, receipt["data"]["state"]) == (200, "stored")
    row = await pool.fetchrow("SELECT * FROM orders WHERE reference = '000000032'")
    assert row["entity_id"] == tenant.entity_id and row["source_id"] == "mage2"
    assert (row["status"], row["state"], row["type"], row["priority"]) == (0, "new", 0, 0)
    assert row["flag_partial"] == 0  # "" means ship complete
    assert row["cod_amount"] == Decimal(0) and row["currency"] == "USD"
    assert row["created_at"] == dt.datetime(2019, 4, 18, 8, 47, 25, tzinfo=dt.UTC)
    assert row["delivery_at"] is None and row["release_at"] is None
    addresses = {r["kind"]: r for r in await pool.fetch("SELECT * FROM addresses WHERE order_id = $1", row["order_id"])}
    billing = addresses["billing"]
    assert (billing["firstname"], billing["lastname"], billing["company"]) == ("David", "Copperfield", "Shoe Shop NY")
    assert (billing["street"], billing["housenumber"], billing["housenumber_ext"]) == ("Wallstreet", "450", "")
    assert (billing["postcode"], billing["city"], billing["region"], billing["country"]) == ("74983", "New York", "NY", "US")
    assert addresses["shipping"]["firstname"] == "Arnold"
    lines = await pool.fetch("SELECT * FROM order_lines WHERE order_id = $1 ORDER BY line_no", row["order_id"])
    assert [(r["sku"], r["qty"], r["unit_price"], r["allocation_type"], r["cost"]) for r in lines] == [
        ("DWS-43", 1, Decimal("50.00"), 2, Decimal("40.12")),
        ("DWS-44", 2, Decimal("52.00"), 1, None),
    ]
    assert lines[0]["weight"] is None and lines[1]["weight"] == Decimal("1.2")
    assert lines[0]["custom_options"] == {"option_data": [{"label": "Color", "value": "Orange"}]}
    products = await pool.fetch("SELECT sku, description, weight FROM products ORDER BY sku")
    assert [(p["sku"], p["description"], p["weight"]) for p in products] == [
        ("DWS-43", "Dutch Wooden Shoes Size 43", None), ("DWS-44", "Dutch Wooden Shoes Size 44", Decimal("1.2"))]


async def test_order_nested_items(http, server, tenant, consumer, pool):
    status, answer = await post_fixture(http, server, tenant, "order-nested-items.json")
    assert status == 202, answer
    await consumer.drain()
    status, order = await get(http, server, tenant, "/api/v1/order/000000033")
    assert status == 200
    items = order["data"]["items"]
    assert [(i["line_no"], i["sku"], i["qty"]) for i in items] == [(1, "DWS-43", 1), (2, "DWS-44", 2)]
    assert items[0]["packing"]["additional_labels"][0]["country_of_origin"] == "The Netherlands"
    assert order["data"]["options"]["packing"] == {"ogc": True, "instruction": "fragile"}


async def test_order_split_address_cod_dated(http, server, pool, settings, consumer):
    tenant = await make_tenant(pool, settings, timezone="Europe/Amsterdam")
    status, answer = await post_fixture(http, server, tenant, "order-split-address-cod-dated.json")
    assert status == 202, answer
    assert [w["loc"] for w in answer["warnings"]] == ["$.payload.flag_partial"]
    await consumer.drain()
    status, order = await get(http, server, tenant, "/api/v1/order/000000034")
    data = order["data"]
    assert data["flag_partial"] == 0  # forced: COD forbids partial shipments
    assert data["cod_amount"] == "12.50"
    assert (data["status"], data["state"], data["priority"]) == (1, "scheduled", 5)
    # 2030-01-02 09:00 in Amsterdam (CET, UTC+1)
    assert data["release_at"] == data["delivery_at"] == "2030-01-02T08:00:00Z"
    assert data["created_at"] == "2019-04-18T06:47:25Z"  # CEST, UTC+2
    for kind in ("billing", "shipping"):
        a = data[kind]
        assert (a["street"], a["housenumber"], a["housenumber_ext"]) == ("Wallstreet", "450", "B")
    receipt = await pool.fetchrow("SELECT state, warnings FROM receipts")
    assert receipt["state"] == "stored"
    assert receipt["warnings"][0]["loc"] == "$.payload.flag_partial"


async def test_published_example_is_refused_with_offset(http, server, tenant, pool):
    raw = fixture_path("order-seed-example-as-published.json").read_bytes()
    async with http.post(server.url + ENQUEUE, data=raw, headers=await tenant.headers()) as resp:
        assert resp.status == 400
        answer = await resp.json()
    offset = answer["data"]["byte_offset"]
    # the first non-breaking space (U+00A0, bytes C2 A0) is where the JSON breaks
    assert offset == raw.index(b"\xc2\xa0")
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0


async def test_pretty_printed_body_is_stored_with_its_payload_as_sent(http, server, tenant, consumer, pool):
    """The fast path keeps the payload's own text; one spread over lines is compacted for the envelope."""
    body = json.loads(fixture_path("order-valid.json").read_text())
    _, access_key = await tenant.key()
    body["access_key"], body["entity_id"] = access_key, tenant.entity_id
    for reference, indent in (("PRETTY-1", 2), ("SPACED-1", None)):
        body["payload"]["reference"] = reference
        text = json.dumps(body, indent=indent)
        async with http.post(server.url + ENQUEUE, data=text,
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 202, await resp.text()
            assert "warnings" not in await resp.json()
    assert await consumer.drain() == 2
    rows = {r["reference"]: r for r in await pool.fetch(
        "SELECT reference, raw::text AS raw, document::text AS document FROM orders")}
    assert json.loads(rows["PRETTY-1"]["raw"])["reference"] == "PRETTY-1"
    assert "\n" not in rows["PRETTY-1"]["raw"]
    assert rows["SPACED-1"]["raw"] == json.dumps(body["payload"])  # as sent, spaces and all
    assert json.loads(rows["SPACED-1"]["document"])["billing"]["city"] == "New York"

"""The dashboard over HTTP against real PostgreSQL and Redis: login, CSRF, live data, actions, /metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest

from ingest.dashboard.data import RedisView
from ingest.dashboard.passwords import PasswordTooWeak, hash_password, verify_password
from ingest.keys import QUEUE as QUEUE_KEY
from shared.webhooks import SubscriptionIn, create_subscription
from tests.browser.support import PASSWORD, Dashboard, Feeder, Sink, create_operator
from tests.conftest import order_body
from worker.webhooks import WebhookSender

ENQUEUE = "/api/v1/order/enqueue"


@pytest.fixture
async def dash(server, pool) -> AsyncIterator[Dashboard]:
    """A logged-in operator's client."""
    await create_operator(pool)
    client = Dashboard(server.url)
    resp = await client.login("ops")
    assert resp.status == 303
    yield client
    await client.close()


async def feeder(consumer, tenant, can_create: bool = True) -> Feeder:
    rights = ("orders:write", "products:create") if can_create else ("orders:write",)
    key_id, _ = await tenant.key(rights=rights)
    return Feeder(consumer.queue, tenant.entity_id, key_id, can_create)


def test_passwords_are_scrypt_hashes_and_short_ones_are_refused() -> None:
    stored = hash_password(PASSWORD)
    assert stored.startswith("scrypt$32768$8$1$") and PASSWORD not in stored
    assert verify_password(PASSWORD, stored)
    assert not verify_password(PASSWORD + "!", stored)
    assert not verify_password(PASSWORD, None)
    assert hash_password(PASSWORD) != stored  # salted
    with pytest.raises(PasswordTooWeak):
        hash_password("short")


async def test_pages_need_a_session(server, http) -> None:
    async with http.get(server.url + "/dashboard/orders?q=x", allow_redirects=False) as resp:
        assert resp.status == 303
        location = urlsplit(resp.headers["Location"])
        assert location.path == "/dashboard/login"
        assert parse_qs(location.query) == {"next": ["/dashboard/orders?q=x"]}
    async with http.get(server.url + "/dashboard/events", headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status == 401
    async with http.post(server.url + "/dashboard/ingest/pause") as resp:
        assert resp.status == 401


async def test_wrong_password_gets_no_session_and_logout_ends_it(server, pool) -> None:
    await create_operator(pool)
    client = Dashboard(server.url)
    try:
        resp = await client.login("ops", "not the password")
        assert resp.status == 401
        assert "orderflow_session" not in {c.key for c in client.session.cookie_jar}
        assert (await client.login("nobody")).status == 401  # unknown operator: the same answer
        resp = await client.login("ops")
        assert resp.status == 303 and resp.headers["Location"] == "/dashboard/"
        cookie = resp.cookies["orderflow_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/dashboard"
        token = cookie.value
        assert await pool.fetchval("SELECT count(*) FROM operator_sessions WHERE token_hash = sha256($1::bytea)",
                                   token.encode()) == 1
        status, _ = await client.get("/dashboard/")
        assert status == 200
        assert (await client.post("/dashboard/logout")).status == 303
        status, _body = await client.get("/dashboard/", allow_redirects=False)
        assert status == 303
        # the old cookie is dead on the server, not just dropped by the browser
        client.session.cookie_jar.update_cookies({"orderflow_session": token})
        status, _ = await client.get("/dashboard/", allow_redirects=False)
        assert status == 303
        actions = [r["action"] for r in await pool.fetch("SELECT action FROM operator_actions ORDER BY action_id")]
        assert actions == ["login", "logout"]
    finally:
        await client.close()


async def test_login_form_needs_its_own_token(server, pool, http) -> None:
    await create_operator(pool)
    async with http.post(server.url + "/dashboard/login", allow_redirects=False,
                         data={"name": "ops", "password": PASSWORD}) as resp:
        assert resp.status == 403
        assert "orderflow_session" not in resp.cookies


async def test_actions_need_the_csrf_token_and_the_same_origin(dash, server, redis, settings) -> None:
    view = RedisView(server.app[QUEUE_KEY])
    resp = await dash.post("/dashboard/ingest/pause", csrf=False)
    assert resp.status == 403 and await view.paused_since() is None
    resp = await dash.post("/dashboard/ingest/pause", {"csrf_token": "forged"}, csrf=False)
    assert resp.status == 403 and await view.paused_since() is None
    resp = await dash.post("/dashboard/ingest/pause", headers={"Origin": "https://evil.example"})
    assert resp.status == 403 and await view.paused_since() is None
    resp = await dash.post("/dashboard/ingest/pause", {"back": "/dashboard/scheduled"})
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard/scheduled"
    assert await view.paused_since() is not None
    _status, body = await dash.get("/dashboard/scheduled")
    assert "Ingest consumption is PAUSED" in body and 'data-status="paused"' in body
    assert "Ingest consumption paused" in body  # the one-time message
    resp = await dash.post("/dashboard/ingest/resume", {"back": "//evil.example/"})
    assert resp.headers["Location"] == "/dashboard/"
    assert await view.paused_since() is None


async def test_security_headers(dash) -> None:
    async with dash.session.get(dash.base + "/dashboard/") as resp:
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.text()
    assert "http://" not in body.replace(dash.base, "") and "https://" not in body  # loads nothing from elsewhere


async def test_backlog_by_priority_and_oldest_wait(consumer, tenant, settings) -> None:
    f = await feeder(consumer, tenant)
    now = time.time()
    await f.put(order_body("L1")["payload"], priority=-3, received_at=now - 120)
    await f.put(order_body("N1")["payload"], priority=0, received_at=now - 30)
    await f.put(order_body("N2")["payload"], priority=0, received_at=now - 5)
    for i in range(3):
        await f.put(order_body(f"H{i}")["payload"], priority=5, received_at=now - 10)
    await f.put(order_body("H9")["payload"], priority=9, received_at=now - 1)
    backlog = await RedisView(consumer.queue).backlog()
    assert [(lv.priority, lv.count) for lv in backlog.levels] == [(9, 1), (5, 3), (0, 2), (-3, 1)]
    assert backlog.bands() == {"high": 4, "normal": 2, "low": 1}
    assert backlog.ready == 7 and backlog.leased == 0
    assert backlog.oldest_age_s is not None and backlog.oldest_age_s > 119  # put 120 s in the past
    await consumer.queue.claim(2, 30)
    backlog = await RedisView(consumer.queue).backlog()
    assert backlog.bands() == {"high": 2, "normal": 2, "low": 1} and backlog.leased == 2


async def read_events(resp: Any, names: set[str], limit: int = 20) -> dict[str, Any]:
    """The first event of each name in `names` from an SSE stream."""
    found: dict[str, Any] = {}
    event = None
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event in names and event not in found:
            found[event] = json.loads(line[6:])
            if set(found) == names:
                break
    return found


async def overview_until(dash: Dashboard, predicate: Any, timeout: float = 15) -> dict[str, Any]:
    """Overview snapshots from the live stream until one satisfies `predicate`."""

    async def watch() -> dict[str, Any]:
        async with dash.session.get(dash.base + "/dashboard/events") as resp:
            event = None
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "overview":
                    snap: dict[str, Any] = json.loads(line[6:])
                    if predicate(snap):
                        return snap
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(watch(), timeout)


async def test_events_stream_history_then_overview(dash, server, http, tenant, consumer, pool) -> None:
    headers = await tenant.headers()
    for i in range(3):
        async with http.post(server.url + ENQUEUE, json=order_body(f"S{i}", priority=i, status=1),
                             headers=headers) as r:
            assert r.status == 202
    async with dash.session.get(dash.base + "/dashboard/events") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        events = await asyncio.wait_for(read_events(resp, {"history", "overview"}), 10)
    assert {"seconds", "received", "stored", "released", "delivered"} == set(events["history"])
    snap = await overview_until(dash, lambda s: s["backlog"]["ready"] == 3)
    assert snap["backlog"]["bands"] == {"high": 2, "normal": 1, "low": 0}
    assert [lv["priority"] for lv in snap["backlog"]["levels"]] == [2, 1, 0]
    assert snap["paused_since"] is None and snap["failures"] == {"rejected": 0, "deliveries": 0}
    await consumer.drain()
    await consumer.heartbeat()
    snap = await overview_until(dash, lambda s: s["window_totals"]["stored"] >= 3)
    assert snap["window_totals"]["received"] == 3 and snap["window_totals"]["released"] == 3
    assert snap["backlog"]["ready"] == 0
    assert snap["lag"]["n"] == 3 and snap["lag"]["p50"] is not None
    assert [w["worker_id"] for w in snap["workers"]] == [consumer.worker_id]


async def test_search_by_reference_receipt_and_source_newest_first(dash, server, http, tenant, consumer, pool) -> None:
    headers = await tenant.headers()
    rids = {}
    for ref, source in (("R-100", "shopA"), ("R-200", "shopB"), ("R-300", "shopA")):
        body = order_body(ref)
        body["payload"]["source_id"] = source
        async with http.post(server.url + ENQUEUE, json=body, headers=headers) as r:
            rids[ref] = (await r.json())["data"]["receipt_id"]
    update = order_body("R-100", shipping_city="Boston")
    update["payload"]["source_id"] = "shopA"
    async with http.post(server.url + ENQUEUE, json=update, headers=headers) as r:
        assert r.status == 202
    await consumer.drain()
    status, body = await dash.get("/dashboard/orders", params={"q": "R-200"})
    assert status == 200 and "R-200" in body and "R-100" not in body
    status, body = await dash.get("/dashboard/orders", params={"q": "shopA"})
    assert body.index("R-300") < body.index("R-100") and "R-200" not in body
    status, body = await dash.get("/dashboard/orders")
    assert body.index("R-300") < body.index("R-200") < body.index("R-100")
    async with dash.session.get(dash.base + "/dashboard/orders", params={"q": rids["R-100"]},
                                allow_redirects=False) as resp:
        assert resp.status == 303
        order_url = resp.headers["Location"]
    status, page = await dash.get(order_url)
    assert status == 200 and "Order R-100" in page
    assert page.count("order.updated") == 1 and page.count("order.created") == 1
    assert "shipping" in page and "Boston" in page
    assert f"<mark>{rids['R-100']}</mark>" in page
    # a receipt still waiting in Redis is found too
    async with http.post(server.url + ENQUEUE, json=order_body("R-400"), headers=headers) as r:
        queued = (await r.json())["data"]["receipt_id"]
    status, body = await dash.get("/dashboard/orders", params={"q": queued})
    assert "is queued" in body and "R-400" in body


async def test_scheduled_per_hour_and_next_due(dash, server, http, tenant, consumer) -> None:
    import datetime as dt

    headers = await tenant.headers()
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    for i, prio in enumerate((1, 7)):
        body = order_body(f"D{i}", status=1, priority=prio, delivery_at=soon.strftime("%Y-%m-%d %H:%M:%S"))
        async with http.post(server.url + ENQUEUE, json=body, headers=headers) as r:
            assert r.status == 202, await r.text()
    await consumer.drain()
    status, body = await dash.get("/dashboard/scheduled")
    assert status == 200
    assert re.search(r'data-testid="scheduled-total">2<', body)
    assert body.count(": 2 due</title>") == 1 and body.count("<rect") == 7 * 24
    assert body.index("D1") < body.index("D0")  # same time: higher priority first


async def rejected_payload(consumer, tenant, pool, reference: str = "X1") -> tuple[Feeder, str]:
    """A payload rejected for an unknown SKU (its key may not create products), kept by the hook."""
    f = await feeder(consumer, tenant, can_create=False)
    rid = await f.put(order_body(reference)["payload"])
    await consumer.drain()
    assert await pool.fetchval("SELECT state FROM receipts WHERE receipt_id = $1", rid) == "rejected"
    assert await f.keep_rejected(pool) == [rid]
    return f, rid


async def test_retry_a_rejected_order_with_todays_key_rights(dash, consumer, tenant, pool) -> None:
    f, rid = await rejected_payload(consumer, tenant, pool)
    _status, body = await dash.get("/dashboard/failures")
    assert rid in body and "unknown SKU" in body and f"retry-{rid}" in body
    await pool.execute("UPDATE access_keys SET rights = rights || '{products:create}' WHERE key_id = $1", f.key_id)
    resp = await dash.post(f"/dashboard/failures/rejected/{rid}/retry", csrf=False)
    assert resp.status == 403  # no token, no retry
    resp = await dash.post(f"/dashboard/failures/rejected/{rid}/retry")
    assert resp.status == 303
    row = await pool.fetchrow("SELECT * FROM failed_payloads WHERE receipt_id = $1", rid)
    assert row["resolution"] == "retried" and row["resolved_by"] == "ops"
    new_rid = row["retried_as"]
    assert new_rid.startswith("rcpt_") and new_rid != rid
    await consumer.drain()
    stored = await pool.fetchrow("SELECT state, warnings FROM receipts WHERE receipt_id = $1", new_rid)
    assert stored["state"] == "stored"
    assert any(f"retry of {rid} by operator ops" in w["msg"] for w in stored["warnings"])
    # twice is once
    await dash.post(f"/dashboard/failures/rejected/{rid}/retry")
    assert await consumer.drain() == 0
    _status, body = await dash.get("/dashboard/failures")
    assert f"retry-{rid}" not in body and "No rejected order is waiting" in body
    _status, body = await dash.get("/dashboard/failures", params={"show": "all"})
    assert "retried by ops" in body and new_rid in body


async def test_retry_all_shown_and_discard(dash, consumer, tenant, pool) -> None:
    f, first = await rejected_payload(consumer, tenant, pool, "X1")
    second = await f.put(order_body("X2")["payload"])
    third = await f.put(order_body("X3")["payload"])
    await consumer.drain()
    await f.keep_rejected(pool)
    resp = await dash.post(f"/dashboard/failures/rejected/{third}/discard")
    assert resp.status == 303
    _status, body = await dash.get("/dashboard/failures")
    assert f"discard-{third}" not in body and "Retry all 2 shown" in body
    # only what the page showed is retried, even if more failed since
    later = await f.put(order_body("X4")["payload"])
    await consumer.drain()
    await f.keep_rejected(pool)
    resp = await dash.post("/dashboard/failures/rejected/retry", [("receipt_id", first), ("receipt_id", second)])
    assert resp.status == 303
    resolved = dict(await pool.fetch("SELECT receipt_id, resolution FROM failed_payloads"))
    assert resolved == {first: "retried", second: "retried", third: "discarded", later: None}
    assert (await RedisView(consumer.queue).backlog()).ready == 2


async def test_metrics_counters_and_lag_histogram(dash, server, http, tenant, consumer) -> None:
    def value(text: str, name: str) -> float:
        match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
        assert match is not None, name
        return float(match.group(1))

    async with http.get(server.url + "/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        assert "orderflow_orders_received_total 0.0" in await resp.text()
    headers = await tenant.headers()
    for i in range(5):
        async with http.post(server.url + ENQUEUE, json=order_body(f"M{i}", priority=-1, status=1), headers=headers) as r:
            assert r.status == 202
    async with http.get(server.url + "/metrics") as resp:
        text = await resp.text()
    assert value(text, 'orderflow_ingest_ready{band="low"}') == 5
    await consumer.drain()

    async def counted() -> str:
        while True:
            async with http.get(server.url + "/metrics") as resp:
                text = await resp.text()
            if (value(text, "orderflow_orders_stored_total") >= 5
                    and value(text, "orderflow_ingest_lag_seconds_count") >= 5):
                return text
            await asyncio.sleep(0.5)

    text = await asyncio.wait_for(counted(), 20)
    assert value(text, "orderflow_orders_received_total") == 5
    assert value(text, "orderflow_orders_released_total") == 5
    assert value(text, 'orderflow_ingest_lag_seconds_bucket{le="+Inf"}') == 5
    assert value(text, 'orderflow_metrics_source_up{source="postgresql"}') == 1
    assert value(text, "orderflow_ingest_paused") == 0


@pytest.fixture
def settings(settings):
    """Webhooks may go to a loopback sink; one attempt, so a failure gives up at once."""
    return msgspec.structs.replace(settings, webhook_allow_nets="127.0.0.0/8", webhook_retry_schedule="0")


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = await Sink().start()
    yield s
    await s.stop()


async def test_webhooks_page_and_failed_deliveries(dash, server, http, tenant, consumer, pool, settings,
                                                   sink) -> None:
    async with pool.acquire() as conn:
        sub = await create_subscription(conn, tenant.entity_id, msgspec.convert({"url": sink.url}, SubscriptionIn),
                                        settings, dt.datetime.now(dt.UTC))
    sid = sub.subscription_id
    async with http.get(server.url + "/metrics") as resp:
        assert resp.status == 200  # the counters start here
    headers = await tenant.headers()
    for ref in ("W1", "W2", "W3"):
        async with http.post(server.url + ENQUEUE, json=order_body(ref), headers=headers) as r:
            assert r.status == 202
    await consumer.drain()
    sink.status = 500
    async with WebhookSender(pool, settings) as sender:
        await sender.drain()
        ids = [r["delivery_id"] for r in await pool.fetch(
            "SELECT delivery_id FROM webhook_deliveries WHERE state = 'failed' ORDER BY delivery_id")]
        assert len(ids) == 3
        status, body = await dash.get("/dashboard/webhooks")
        assert sid in body and "0.0 %" in body and "HTTP 500: " in body and f"disable-{sid}" in body
        status, body = await dash.get("/dashboard/failures")
        assert "Retry all 3 shown" in body
        # discard one, retry the two others shown
        assert (await dash.post(f"/dashboard/failures/deliveries/{ids[0]}/discard")).status == 303
        sink.status = 200
        resp = await dash.post("/dashboard/failures/deliveries/retry",
                               [("delivery_id", str(ids[1])), ("delivery_id", str(ids[2]))])
        assert resp.status == 303
        await sender.drain()
        states = dict(await pool.fetch("SELECT delivery_id, state FROM webhook_deliveries"))
        assert states == {ids[0]: "failed", ids[1]: "delivered", ids[2]: "delivered"}
        status, body = await dash.get("/dashboard/failures")
        assert "No failed delivery is waiting" in body
        # disabled: no retry from the page; enabled again: replay what failed since a time
        assert (await dash.post(f"/dashboard/webhooks/{sid}/disable")).status == 303
        assert await pool.fetchval("SELECT state FROM webhook_subscriptions") == "disabled"
        refused = await dash.post(f"/dashboard/failures/deliveries/{ids[0]}/retry")
        assert refused.status == 303
        assert states[ids[0]] == await pool.fetchval(
            "SELECT state FROM webhook_deliveries WHERE delivery_id = $1", ids[0])
        assert (await dash.post(f"/dashboard/webhooks/{sid}/enable")).status == 303
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        assert (await dash.post(f"/dashboard/webhooks/{sid}/replay", {"since": since})).status == 303
        await sender.drain()
    assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'") == 3
    status, body = await dash.get(f"/dashboard/webhooks/{sid}")
    assert status == 200 and body.count("<td>delivered</td>") == 3
    # delivered per second comes from the deliveries' delivered_at
    snap = await overview_until(dash, lambda s: s["window_totals"]["delivered"] == 3)
    assert snap["rates"]["delivered"] > 0

    async def metrics_delivered() -> None:
        while True:
            async with http.get(server.url + "/metrics") as resp:
                if "orderflow_orders_delivered_total 3.0" in await resp.text():
                    return
            await asyncio.sleep(0.5)

    await asyncio.wait_for(metrics_delivered(), 20)
    actions = [r["action"] for r in await pool.fetch("SELECT action FROM operator_actions ORDER BY action_id")]
    assert actions == ["login", "discard_delivery", "retry_deliveries", "disable_webhook", "retry_deliveries",
                       "enable_webhook", "replay_webhook"]


async def test_open_event_streams_do_not_hold_up_a_shutdown(settings, pool) -> None:
    from aiohttp import web

    from ingest.app import create_app

    await create_operator(pool)
    # a long grace: if an open stream held up the shutdown, cleanup would not end within the bound
    runner = web.AppRunner(create_app(settings), shutdown_timeout=3600)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    client = Dashboard(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")  # type: ignore[union-attr]
    try:
        assert (await client.login("ops")).status == 303
        async with client.session.get(client.base + "/dashboard/events") as resp:
            await asyncio.wait_for(read_events(resp, {"overview"}), 10)
            await asyncio.wait_for(runner.cleanup(), 30)
            await asyncio.wait_for(resp.content.read(), 5)  # and the stream has ended
    finally:
        await client.close()


async def test_cookies_are_secure_behind_a_tls_proxy(server, pool) -> None:
    await create_operator(pool)
    client = Dashboard(server.url)
    try:
        async with client.session.get(server.url + "/dashboard/login") as resp:
            token = re.search(r'name="login_token" value="([^"]+)"', await resp.text())
            assert token is not None and not resp.cookies["orderflow_login"]["secure"]
        async with client.session.post(server.url + "/dashboard/login", allow_redirects=False,
                                       headers={"X-Forwarded-Proto": "https"},
                                       data={"name": "ops", "password": PASSWORD,
                                             "login_token": token.group(1)}) as resp:
            assert resp.status == 303 and resp.cookies["orderflow_session"]["secure"]
    finally:
        await client.close()


async def test_repeated_wrong_passwords_are_throttled(server, pool) -> None:
    from ingest.dashboard.auth import FAILED_LOGINS_MAX

    await create_operator(pool)
    client = Dashboard(server.url)
    try:
        statuses = [(await client.login("ops", password="wrong")).status for _ in range(FAILED_LOGINS_MAX + 1)]
        assert statuses[:FAILED_LOGINS_MAX] == [401] * FAILED_LOGINS_MAX
        assert statuses[-1] == 429
        # even the right password waits now, for this name and address
        assert (await client.login("ops")).status == 429
    finally:
        await client.close()


async def test_open_failures_count_what_is_not_handled_yet(tenant, consumer, pool) -> None:
    from ingest.dashboard.data import open_failures
    from tests.integration.test_worker_rules import feeder

    f = await feeder(consumer, tenant)
    await f.put(order_body("OF1")["payload"])
    await f.put(order_body("OF1", source_id="ebay")["payload"])  # rejected: another source owns it
    await f.put(order_body("OF2", source_id="ebay")["payload"])
    await f.put(order_body("OF2", source_id="amazon")["payload"])  # rejected too
    await consumer.drain()
    assert await open_failures(pool) == {"rejected": 2, "deliveries": 0}
    rejected = [r["receipt_id"] for r in await pool.fetch("SELECT receipt_id FROM receipts WHERE state = 'rejected'")]
    await pool.execute("UPDATE failed_payloads SET resolution = 'discarded', resolved_at = now() "
                       "WHERE receipt_id = $1", rejected[0])
    assert await open_failures(pool) == {"rejected": 1, "deliveries": 0}

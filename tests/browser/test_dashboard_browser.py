"""The dashboard in a real browser: log in, watch it move live, find an order, retry failures, pause, refusals."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import re
import shutil
from typing import Any

import msgspec
from playwright.async_api import Page, expect

from shared.webhooks import SubscriptionIn, create_subscription
from tests.browser.conftest import DOCS_SCREENSHOTS, SCREENSHOTS, Console, log_in

# ORDERFLOW_UPDATE_DOCS=1 make test refreshes docs/screenshots/ from this run
UPDATE_DOCS = os.environ.get("ORDERFLOW_UPDATE_DOCS") == "1"
from tests.browser.support import Feeder, Sink
from tests.conftest import order_body
from worker.webhooks import WebhookSender

ENQUEUE = "/api/v1/order/enqueue"


async def post_orders(http: Any, base: str, headers: dict[str, str], refs: list[str], **payload: Any) -> None:
    async def one(ref: str) -> None:
        async with http.post(base + ENQUEUE, json=order_body(ref, **payload), headers=headers) as resp:
            assert resp.status == 202, await resp.text()

    await asyncio.gather(*(one(r) for r in refs))


async def number(page: Page, selector: str) -> int:
    return int(re.sub(r"[^0-9]", "", await page.inner_text(selector)) or 0)


async def test_login_then_counters_and_chart_move_without_a_reload(
        page: Page, server, http, tenant, operator, worker) -> None:
    await log_in(page, server.url)
    await expect(page).to_have_url(server.url + "/dashboard/")
    await expect(page.get_by_test_id("live-state")).to_have_text("live")
    await page.evaluate("window.__sameDocument = true")
    assert await number(page, "#total-received") == 0
    headers = await tenant.headers()
    await post_orders(http, server.url, headers, [f"LIVE-{i}" for i in range(40)], status=1)
    await page.wait_for_function(
        "() => Number(document.getElementById('chart').dataset.receivedTotal) >= 40"
        " && document.getElementById('total-stored').textContent === '40'"
        " && document.getElementById('total-released').textContent === '40'")
    assert await number(page, "#total-received") == 40
    points = await page.get_attribute("#line-received", "points")
    assert points and any(float(p.split(",")[1]) < 200 for p in points.split())  # the line left the baseline
    assert await page.evaluate("window.__sameDocument") is True  # no reload happened
    await expect(page.get_by_test_id("workers")).to_contain_text(worker.worker_id)
    await expect(page.get_by_test_id("failures-rejected")).to_have_text("0")


async def test_overview_under_load(page: Page, server, http, tenant, operator, worker, pool) -> None:
    """A steady stream for ten seconds, then a burst of mixed priorities; the screenshot goes in the README."""
    worker.settings = msgspec.structs.replace(worker.settings, claim_batch=10)
    await log_in(page, server.url)
    await expect(page.get_by_test_id("live-state")).to_have_text("live")
    headers = await tenant.headers()
    rnd = random.Random(5)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=5)
    await post_orders(http, server.url, headers, [f"LATER-{i}" for i in range(12)], status=1,
                      delivery_at=soon.strftime("%Y-%m-%d %H:%M:%S"))
    sent = 12
    loop = asyncio.get_running_loop()
    start = loop.time()
    for second in range(11):
        size = 40 + 12 * second if second < 10 else 900  # ramp up, then a burst
        await asyncio.gather(*(post_orders(http, server.url, headers, [f"LOAD-{second}-{i}"],
                                           status=rnd.choice((0, 1, 1, 1)), priority=rnd.choice((-2, 0, 0, 0, 3, 9)))
                               for i in range(size)))
        sent += size
        if second < 10:  # the load's pace, not a wait for work
            await asyncio.sleep(max(0.0, start + second + 1 - loop.time()))
    await page.get_by_test_id("window-2m").click()
    await page.wait_for_function(f"() => Number(document.getElementById('chart').dataset.receivedTotal) >= {sent}")
    await expect(page.get_by_test_id("rate-received")).not_to_have_text("0.0")
    await expect(page.locator("#axis-0")).to_have_text("−2 min")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "overview-under-load.png"), full_page=True)
    if UPDATE_DOCS:  # the README's pictures change only when asked for
        shutil.copyfile(SCREENSHOTS / "overview-under-load.png", DOCS_SCREENSHOTS / "overview.png")


async def subscribe(pool: Any, settings: Any, entity_id: str, url: str) -> str:
    async with pool.acquire() as conn:
        out = await create_subscription(conn, entity_id, msgspec.convert({"url": url}, SubscriptionIn),
                                        settings, dt.datetime.now(dt.UTC))
    return out.subscription_id


async def test_find_an_order_by_reference_and_see_its_history(
        page: Page, server, http, tenant, operator, consumer, pool, settings, sink: Sink) -> None:
    await subscribe(pool, settings, tenant.entity_id, sink.url)
    headers = await tenant.headers()
    await post_orders(http, server.url, headers, ["ORD-7781", "ORD-7782"])
    await consumer.drain()
    await post_orders(http, server.url, headers, ["ORD-7781"], shipping_city="Rotterdam", priority=4)
    await consumer.drain()
    await post_orders(http, server.url, headers, ["ORD-7781"], shipping_city="Rotterdam", priority=4, status=1)
    await consumer.drain()
    async with WebhookSender(pool, settings) as sender:
        await sender.drain()
    await log_in(page, server.url)
    await page.click("nav >> text=Orders")
    await page.get_by_test_id("search-input").fill("ORD-7781")
    await page.get_by_test_id("search-button").click()
    results = page.get_by_test_id("order-results")
    await expect(results).to_contain_text("ORD-7781")
    await expect(results).not_to_contain_text("ORD-7782")
    await results.get_by_role("link", name="ORD-7781").click()
    await expect(page.locator("h1")).to_have_text("Order ORD-7781")
    await expect(page.get_by_test_id("versions").locator("tbody tr")).to_have_count(3)
    await expect(page.get_by_test_id("events")).to_contain_text("order.released")
    await expect(page.get_by_test_id("events")).to_contain_text("order.created")
    deliveries = page.get_by_test_id("order-deliveries")
    await expect(deliveries.locator("tbody tr")).to_have_count(4)  # created, updated, updated, released
    await expect(deliveries).to_contain_text("delivered")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "order.png"), full_page=True)
    if UPDATE_DOCS:
        shutil.copyfile(SCREENSHOTS / "order.png", DOCS_SCREENSHOTS / "order.png")


async def test_retry_a_failed_delivery_and_a_rejected_order_from_the_failures_page(
        page: Page, server, http, tenant, operator, consumer, pool, settings, sink: Sink) -> None:
    await subscribe(pool, settings, tenant.entity_id, sink.url)
    headers = await tenant.headers()
    await post_orders(http, server.url, headers, ["HOOK-1"])
    await consumer.drain()
    sink.status = 500
    async with WebhookSender(pool, settings) as sender:
        await sender.drain()
        assert [status for _, _, status in sink.got] == [500]
        # a rejected payload whose key may not create products, kept by the worker's hook
        key_id, _ = await tenant.key(rights=("orders:write",))
        feeder = Feeder(consumer.queue, tenant.entity_id, key_id, can_create=False)
        payload = order_body("REJ-1")["payload"]
        payload["items"][0]["sku"] = "NEW-SKU-1"
        rejected = await feeder.put(payload)
        await consumer.drain()
        await feeder.keep_rejected(pool)

        await log_in(page, server.url)
        await page.click("nav >> text=Failures")
        failed = page.get_by_test_id("failed-deliveries")
        await expect(failed).to_contain_text("HTTP 500")
        sink.status = 200
        await failed.get_by_role("button", name="Retry").click()
        await expect(page.locator(".flash")).to_contain_text("due again now")
        await sender.drain()
    hook = [(wid, status) for wid, body, status in sink.got if body["data"]["reference"] == "HOOK-1"]
    assert [status for _, status in hook] == [500, 200]
    assert hook[0][0] == hook[1][0]  # the same webhook-id: a retry, not a new message
    await page.reload()
    await expect(page.get_by_test_id("failed-deliveries")).to_contain_text("No failed delivery")

    rows = page.get_by_test_id("rejected")
    await expect(rows).to_contain_text(rejected)
    await expect(rows).to_contain_text("unknown SKU")
    await pool.execute("UPDATE access_keys SET rights = rights || '{products:create}' WHERE key_id = $1", key_id)
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.get_by_test_id("retry-all").click()
    await expect(page.locator(".flash")).to_contain_text(f"Retried {rejected}")
    assert await consumer.drain() == 1
    new_rid = await pool.fetchval("SELECT retried_as FROM failed_payloads WHERE receipt_id = $1", rejected)
    assert await pool.fetchval("SELECT state FROM receipts WHERE receipt_id = $1", new_rid) == "stored"
    await page.goto(server.url + "/dashboard/orders?q=REJ-1")
    await expect(page.get_by_test_id("order-results")).to_contain_text("REJ-1")


async def test_pause_and_resume_ingest(page: Page, server, http, tenant, operator, worker, pool) -> None:
    await log_in(page, server.url)
    await expect(page.get_by_test_id("live-state")).to_have_text("live")
    banner = page.locator("#paused-banner")
    await expect(banner).to_be_hidden()
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.get_by_test_id("pause").click()
    await expect(banner).to_be_visible()
    await expect(page.get_by_test_id("ingest-state")).to_have_text("PAUSED")
    await post_orders(http, server.url, await tenant.headers(), ["WAIT-1", "WAIT-2"], priority=2)
    # accepted, and waiting in Redis: the live overview shows them, the worker does not take them
    await expect(page.locator("#backlog-high")).to_have_text("2")
    await expect(page.get_by_test_id("backlog-oldest")).not_to_have_text("–")
    assert await pool.fetchval("SELECT count(*) FROM receipts") == 0
    await page.click("nav >> text=Scheduled")
    await expect(banner).to_be_visible()  # on every page
    await page.click("nav >> text=Overview")
    await page.get_by_test_id("resume").click()
    await expect(banner).to_be_hidden()
    await expect(page.locator("#total-stored")).to_have_text("2")
    await expect(page.locator("#backlog-high")).to_have_text("0")
    actions = [r["action"] for r in await pool.fetch("SELECT action FROM operator_actions ORDER BY action_id")]
    assert actions == ["login", "pause_ingest", "resume_ingest"]


async def test_a_wrong_password_and_a_missing_csrf_token_are_refused(
        page: Page, server, operator, console: Console, redis, settings) -> None:
    console.expect("status of 401")
    await log_in(page, server.url, password="not my password")
    await expect(page.get_by_test_id("login-error")).to_have_text("Wrong operator name or password.")
    assert not [c for c in await page.context.cookies() if c["name"] == "orderflow_session"]
    await log_in(page, server.url)
    await expect(page).to_have_url(server.url + "/dashboard/")
    session = next(c for c in await page.context.cookies() if c["name"] == "orderflow_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    # a request without the token (as a forged form would send) changes nothing
    resp = await page.request.post(server.url + "/dashboard/ingest/pause", form={"back": "/dashboard/"},
                                   max_redirects=0)
    assert resp.status == 403
    # nor does the real form with its token tampered with
    console.expect("status of 403")
    await page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(i => i.value = 'forged')")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.get_by_test_id("pause").click()
    await expect(page.get_by_test_id("refusal")).to_contain_text("CSRF token is missing or wrong")
    assert not await redis.exists("{" + settings.redis_prefix + "}:paused")
    # logging out ends the session
    await page.goto(server.url + "/dashboard/")
    await page.click("nav button:has-text('Log out')")
    await expect(page).to_have_url(re.compile(r"/dashboard/login$"))

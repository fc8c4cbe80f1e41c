"""Webhook delivery end to end: real orders through the receiver and the worker, a real sink on
127.0.0.1 that verifies every request with the standardwebhooks receiver library.

Time is a fake clock handed to the sender (and to the sink's timestamp check), so the retry
schedule is followed to the second without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.rules.webhooks import DEFAULT_SCHEDULE, Filter, matches
from shared.settings import Settings
from shared.webhooks import (
    SubscriptionIn,
    SubscriptionOut,
    create_subscription,
    replay_failed_since,
    rotate_secret,
    set_enabled,
)
from tests.conftest import Server, Tenant, make_tenant, order_body, serve_app
import worker.webhooks
from worker.webhooks import WebhookSender

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
ALLOW = "127.0.0.0/8,::1/128"
ENQUEUE = "/api/v1/order/enqueue"


class Clock:
    """A settable clock: the sender's notion of now."""

    def __init__(self, now: dt.datetime | None = None) -> None:
        self.now = now or dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


class ClockedWebhook(Webhook):
    """The receiver library; only its ±5 min freshness check reads the test's clock."""

    def __init__(self, secret: str, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(secret)
        self._clock = clock

    # overrides the library's private check (name-mangled)
    def _Webhook__verify_timestamp(self, header: str) -> dt.datetime:
        at = dt.datetime.fromtimestamp(float(header), dt.UTC)
        if abs((self._clock() - at).total_seconds()) > 300:
            raise WebhookVerificationError("Message timestamp out of tolerance")
        return at


@dataclass
class Received:
    """One request the sink got."""

    key: str
    behaviour: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    # indexes of the registered secrets whose signature verified
    verified_by: list[int]

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def signatures(self) -> list[str]:
        return self.headers["webhook-signature"].split(" ")


@dataclass
class Sink:
    """A webhook receiver: `/{key}/{behaviour}`; verifies with the secrets registered for `key`."""

    url: str = ""
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    secrets: dict[str, list[str]] = field(default_factory=dict)
    got: list[Received] = field(default_factory=list)
    seen_by_id: dict[str, int] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    holding: int = 0
    max_holding: int = 0
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def hook(self, key: str, behaviour: str = "ok") -> str:
        return f"{self.url}/{key}/{behaviour}"

    def expect(self, key: str, *secrets: str) -> None:
        self.secrets[key] = list(secrets)

    def of(self, key: str) -> list[Received]:
        return [r for r in self.got if r.key == key]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(predicate), timeout)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key, behaviour = request.match_info["key"], request.match_info["behaviour"]
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = []
        for i, secret in enumerate(self.secrets.get(key, [])):
            try:
                ClockedWebhook(secret, self.clock).verify(raw, headers)
                verified.append(i)
            except WebhookVerificationError:
                pass
        body = json.loads(raw) if raw else None
        received = Received(key, behaviour, headers, body, verified)
        nth = self.seen_by_id[received.webhook_id] = self.seen_by_id.get(received.webhook_id, 0) + 1
        async with self.arrived:
            self.got.append(received)
            self.arrived.notify_all()
        if not verified:
            return web.Response(status=401, text="bad signature")
        kind, _, arg = behaviour.partition("-")
        if kind == "ok":
            return web.Response(text="thanks " + "x" * 3000)
        if kind == "fail":  # fail-N: the first N attempts of each message fail
            if nth <= int(arg):
                return web.Response(status=500, text=f"nope #{nth}")
            return web.Response(text="finally")
        if kind == "status":  # status-503: always that status, with Retry-After when asked
            extra = {"Retry-After": request.query["retry_after"]} if "retry_after" in request.query else {}
            return web.Response(status=int(arg), text="status", headers=extra)
        if kind == "redirect":
            raise web.HTTPFound(self.hook(key, "ok"))
        if kind in ("hang", "hold"):  # hang: past any timeout; hold: until released, then 200
            self.holding += 1
            self.max_holding = max(self.max_holding, self.holding)
            try:
                await self.release.wait()
            finally:
                self.holding -= 1
            return web.Response(text="released")
        return web.Response(status=404)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings with the sink's loopback network allowed."""
    return msgspec.structs.replace(settings, webhook_allow_nets=ALLOW)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@contextlib.asynccontextmanager
async def running_sink(clock: Callable[[], dt.datetime]) -> AsyncIterator[Sink]:
    """The receiver under test's control, on a free loopback port."""
    s = Sink(clock=clock)
    app = web.Application()
    app.router.add_post("/{key}/{behaviour}", s.handle)
    async with serve_app(app, shutdown_timeout=1) as served:
        s.url = served.url
        try:
            yield s
        finally:
            s.release.set()  # let hanging handlers end before the runner shuts down


@pytest.fixture
async def sink(clock: Clock) -> AsyncIterator[Sink]:
    async with running_sink(clock) as s:
        yield s


@pytest.fixture
async def sender(pool: asyncpg.Pool, settings: Settings, clock: Clock) -> AsyncIterator[WebhookSender]:
    async with WebhookSender(pool, settings, clock=clock) as s:
        yield s


class Shop:
    """Posts orders through the real receiver and stores them with the in-process consumer."""

    def __init__(self, server: Server, http: Any, headers: dict[str, str], consumer: Any) -> None:
        self.server, self.http, self.headers, self.consumer = server, http, headers, consumer

    async def post(self, reference: str, **payload: Any) -> None:
        async with self.http.post(self.server.url + ENQUEUE, json=order_body(reference, **payload),
                                  headers=self.headers) as resp:
            assert resp.status == 202, await resp.text()

    async def order(self, reference: str, **payload: Any) -> None:
        await self.post(reference, **payload)
        await self.consumer.drain()


@pytest.fixture
async def shop(server: Server, http: Any, tenant: Tenant, consumer: Any) -> Shop:
    return Shop(server, http, await tenant.headers(), consumer)


async def subscribe(pool: asyncpg.Pool, settings: Settings, tenant: Tenant, sink: Sink, key: str,
                    behaviour: str = "ok", now: dt.datetime = T0, **spec: Any) -> SubscriptionOut:
    async with pool.acquire() as conn:
        out = await create_subscription(conn, tenant.entity_id, msgspec.convert(
            {"url": sink.hook(key, behaviour), **spec}, SubscriptionIn), settings, now)
    assert isinstance(out.secret, str)
    sink.expect(key, out.secret)
    return out


async def delivery(pool: asyncpg.Pool, subscription_id: str, reference: str | None = None) -> dict[str, Any]:
    rows = await pool.fetch("SELECT * FROM webhook_deliveries WHERE subscription_id = $1"
                            " AND ($2::text IS NULL OR reference = $2) ORDER BY delivery_id",
                            subscription_id, reference)
    assert len(rows) == 1, rows
    return dict(rows[0])


async def attempts(pool: asyncpg.Pool, delivery_id: int) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt",
                            delivery_id)
    return [dict(r) for r in rows]


# --- filters ---------------------------------------------------------------------------


async def test_filter_matrix_sends_each_event_to_the_matching_subscriptions(
        pool, settings, tenant, sink, sender, shop) -> None:
    subs = {
        "all": {},
        "amazon": {"source_ids": ["amazon"]},
        "released": {"event_types": ["order.released"]},
        "cod": {"conditions": {"cod_only": True}},
        "complete": {"conditions": {"no_partial": True}},
        "pos": {"conditions": {"order_type": 1}},
        "pos-mage2-created": {"source_ids": ["mage2"], "event_types": ["order.created"],
                              "conditions": {"order_type": 1, "no_partial": False}},
    }
    for key, spec in subs.items():
        await subscribe(pool, settings, tenant, sink, key, **spec)
    await shop.order("A", flag_partial="0")
    await shop.order("B", source_id="amazon", status="1", cod_amount="12.50")
    pos = order_body("C", type=1, flag_partial="1")["payload"]
    await shop.order("C", type=1, flag_partial="1",
                     **{k: None for k in pos if k.startswith("shipping_") and k != "shipping_method"})
    await shop.order("A", flag_partial="0", shipping_city="Boston")  # order.updated
    await shop.order("A", source_id="amazon")  # another source's reference: order.rejected
    assert await sender.drain() > 0

    got = {key: sorted((r.body["data"]["reference"], r.body["type"]) for r in sink.of(key)) for key in subs}
    assert got == {
        "all": [("A", "order.created"), ("A", "order.rejected"), ("A", "order.updated"),
                ("B", "order.created"), ("B", "order.released"), ("C", "order.created")],
        "amazon": [("A", "order.rejected"), ("B", "order.created"), ("B", "order.released")],
        "released": [("B", "order.released")],
        "cod": [("B", "order.created"), ("B", "order.released")],
        # B is COD, so it is stored with flag_partial 0; C allows partial shipments
        "complete": [("A", "order.created"), ("A", "order.updated"), ("B", "order.created"),
                     ("B", "order.released")],
        "pos": [("C", "order.created")],
        "pos-mage2-created": [("C", "order.created")],
    }
    assert all(r.verified_by == [0] for r in sink.got)
    # the body: {type, timestamp, data} with the order as stored, its source and version
    updated = next(r.body for r in sink.of("all") if r.body["type"] == "order.updated")
    assert set(updated) == {"type", "timestamp", "data"}
    assert updated["data"]["source_id"] == "mage2" and updated["data"]["version"] == 2
    assert updated["data"]["shipping"]["city"] == "Boston"
    assert msgspec.convert(updated["timestamp"], dt.datetime).tzinfo is not None
    assert len({r.webhook_id for r in sink.got}) == len(sink.got)  # one message per delivery
    assert await pool.fetchval("SELECT count(*) FROM order_events WHERE dispatched_at IS NULL") == 0
    states = await pool.fetch("SELECT DISTINCT state FROM webhook_deliveries")
    assert [r["state"] for r in states] == ["delivered"]


async def outbox(pool: asyncpg.Pool, entity_id: str, reference: str, data: str, *,
                 source_id: str = "mage2", event_type: str = "order.created", priority: int = 0) -> None:
    """An outbox row written straight into order_events: `data` is its JSON text, as stored."""
    await pool.execute(
        "INSERT INTO order_events (entity_id, reference, source_id, type, version, priority, data,"
        " created_at) VALUES ($1, $2, $3, $4, 1, $5, $6::text::json, $7)",
        entity_id, reference, source_id, event_type, priority, data, T0)


async def expected_fan_out(pool: asyncpg.Pool) -> list[tuple[str, str, str]]:
    """(subscription, reference, state) of every delivery, in order, the way fan-out always made them:
    every pending event decoded whole and put through matches() with each subscription of its entity."""
    events = await pool.fetch(
        "SELECT event_id, entity_id, reference, source_id, type, data::text AS data FROM order_events"
        " WHERE dispatched_at IS NULL ORDER BY priority DESC, event_id")
    subs = await pool.fetch("SELECT * FROM webhook_subscriptions ORDER BY subscription_id")
    out = []
    for e in events:
        doc = msgspec.json.decode(e["data"])
        data = doc if isinstance(doc, dict) else {}
        for s in subs:
            flt = Filter(source_ids=tuple(s["source_ids"]) if s["source_ids"] is not None else None,
                         event_types=tuple(s["event_types"]) if s["event_types"] is not None else None,
                         cod_only=s["cod_only"], no_partial=s["no_partial"], order_type=s["order_type"])
            if s["entity_id"] == e["entity_id"] and matches(flt, e["type"], e["source_id"], data):
                state = "pending" if s["state"] == "active" else "failed"
                out.append((s["subscription_id"], e["reference"], state))
    return out


async def test_typed_conditions_get_the_data_they_need_and_only_that(
        pool, settings, tenant, sink, sender, monkeypatch) -> None:
    """Fan-out reads events without their data; the events a typed condition looks at get theirs
    (cut down to the fields it reads) in one more query, with the same deliveries as ever."""
    specs = {
        "all": {},
        "cod": {"conditions": {"cod_only": True}},
        "complete": {"conditions": {"no_partial": True}},
        "pos": {"conditions": {"order_type": 1}},
        "amazon-cod-shipped": {"source_ids": ["amazon"], "event_types": ["order.shipped"],
                               "conditions": {"cod_only": True}},
        "off-cod": {"conditions": {"cod_only": True}},  # disabled: its deliveries are made failed
    }
    subs = {key: await subscribe(pool, settings, tenant, sink, key, **spec) for key, spec in specs.items()}
    async with pool.acquire() as conn:
        await set_enabled(conn, subs["off-cod"].subscription_id, None, False, T0)
    e = tenant.entity_id
    await outbox(pool, e, "E1", '{"reference":"E1","type":0,"flag_partial":0,"cod_amount":"12.50"}')
    await outbox(pool, e, "E2", '{"reference":"E2","type":1,"flag_partial":1,"cod_amount":"0.00"}')
    await outbox(pool, e, "E3", '{"reference":"E3","type":1,"flag_partial":0,"cod_amount":5}',
                 source_id="amazon", event_type="order.shipped", priority=5)
    await outbox(pool, e, "E4", '{"reference":"E4","type":0,"flag_partial":0,"cod_amount":"3"}',
                 event_type="order.shipped")
    await outbox(pool, e, "E5", '{"reference":"E5","type":1,"cod_amount":"9"}')  # no flag_partial
    await outbox(pool, e, "E6", '{"reference":"E6","type":1,"flag_partial":null,"cod_amount":"9"}')
    await outbox(pool, e, "E7", '{"reference":"E7","flag_partial":1,"flag_partial":0,"type":1,"type":0,'
                                '"cod_amount":"1"}')  # json keeps both; the last one counts
    await outbox(pool, e, "E8", '{"reference":"E8","type":1.0,"flag_partial":0.0,"cod_amount":1e-3}')
    await outbox(pool, e, "E9", '{"reference":"E9","cod_amount":{"x":1},"flag_partial":false,"type":"1",'
                                '"items":[{"sku":"A","qty":1}],"billing":{"city":"Boston"}}')
    await outbox(pool, e, "E10", '["E10"]')  # not an object
    await outbox(pool, e, "E11", '{"reference":"E11","type":1,"flag_partial":0,"cod_amount":"5"}',
                 event_type="order.rejected")
    # an entity with only a narrow conditional subscription and a plain one
    narrow = await make_tenant(pool, settings)
    subs["narrow-plain"] = await subscribe(pool, settings, narrow, sink, "narrow-plain")
    subs["narrow-cod"] = await subscribe(pool, settings, narrow, sink, "narrow-cod", source_ids=["amazon"],
                                         event_types=["order.shipped"], conditions={"cod_only": True})
    n = narrow.entity_id
    await outbox(pool, n, "Q1", '{"reference":"Q1","type":0,"flag_partial":0,"cod_amount":"2"}',
                 source_id="amazon", event_type="order.shipped")
    await outbox(pool, n, "Q2", '{"reference":"Q2","type":0,"flag_partial":0,"cod_amount":"2"}',
                 event_type="order.shipped")
    await outbox(pool, n, "Q3", '{"reference":"Q3","type":0,"flag_partial":0,"cod_amount":"0"}',
                 source_id="amazon")
    # plain subscriptions only, and none at all
    plain = await make_tenant(pool, settings)
    subs["plain"] = await subscribe(pool, settings, plain, sink, "plain")
    p = plain.entity_id
    await outbox(pool, p, "P1", '{"reference":"P1","type":1,"flag_partial":0,"cod_amount":"5"}')
    await outbox(pool, p, "P2", '{"receipt_id":"r","reason":"bad"}', event_type="order.rejected")
    nobody = (await make_tenant(pool, settings)).entity_id
    await outbox(pool, nobody, "N1", '{"reference":"N1","type":1,"flag_partial":0,"cod_amount":"5"}')

    expected = await expected_fan_out(pool)
    read: list[str] = []
    real_match_data = worker.webhooks.match_data

    def spy(text: str) -> dict[str, Any]:
        doc = json.loads(text)
        read.append(doc["reference"] if isinstance(doc, dict) else doc[0])
        return real_match_data(text)

    monkeypatch.setattr(worker.webhooks, "match_data", spy)
    assert await sender.dispatch_once() == 17
    assert await sender.dispatch_once() == 0

    names = {out.subscription_id: key for key, out in subs.items()}
    rows = await pool.fetch(
        "SELECT subscription_id, reference, state FROM webhook_deliveries ORDER BY delivery_id")
    assert [tuple(r) for r in rows] == expected
    got: dict[str, list[str]] = {key: [] for key in subs}
    for r in rows:
        got[names[r["subscription_id"]]].append(r["reference"] + ("" if r["state"] == "pending" else "!"))
    assert got == {
        "all": ["E3", "E1", "E2", "E4", "E5", "E6", "E7", "E8", "E9", "E10", "E11"],
        "cod": ["E3", "E1", "E4", "E6", "E7", "E8"],
        "complete": ["E3", "E1", "E4", "E7", "E8", "E9"],  # false == 0, as ever
        "pos": ["E3", "E2", "E6", "E8"],
        "amazon-cod-shipped": ["E3"],
        "off-cod": ["E3!", "E1!", "E4!", "E6!", "E7!", "E8!"],
        "narrow-plain": ["Q1", "Q2", "Q3"],
        "narrow-cod": ["Q1"],
        "plain": ["P1", "P2"],
    }
    # data only for the events some condition looks at: not rejected ones, not other sources or
    # event types, not entities with plain subscriptions or none
    assert sorted(read) == sorted(["E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8", "E9", "E10", "Q1"])
    assert await pool.fetchval("SELECT count(*) FROM order_events WHERE dispatched_at IS NULL") == 0


async def test_events_nobody_subscribes_to_are_only_marked_dispatched(pool, settings, tenant, sender,
                                                                      monkeypatch) -> None:
    for i in range(5):
        await outbox(pool, tenant.entity_id, f"N{i}", '{"type":1,"flag_partial":0,"cod_amount":"5"}')

    def unused(*args: Any) -> Any:
        raise AssertionError("no subscription: nothing to match")

    monkeypatch.setattr(worker.webhooks, "match_data", unused)
    monkeypatch.setattr(worker.webhooks, "matches", unused)
    assert await sender.dispatch_once() == 5
    assert await sender.dispatch_once() == 0
    assert await pool.fetchval("SELECT count(*) FROM order_events WHERE dispatched_at IS NULL") == 0
    assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries") == 0


async def test_a_stored_order_of_an_entity_without_subscriptions_is_dispatched_as_written(
        pool, settings, tenant, sink, sender, shop) -> None:
    await shop.order("NS1")
    rows = await pool.fetch("SELECT type, created_at, dispatched_at FROM order_events")
    assert [r["type"] for r in rows] == ["order.created"]
    assert rows[0]["dispatched_at"] == rows[0]["created_at"]  # nobody to tell: never fanned out
    assert await sender.dispatch_once() == 0
    # a subscription receives what is written after it exists, from then on
    await subscribe(pool, settings, tenant, sink, "all")
    await shop.order("NS2")
    assert await pool.fetchval("SELECT count(*) FROM order_events WHERE dispatched_at IS NULL") == 1
    await sender.drain()
    assert [(r.body["type"], r.body["data"]["reference"]) for r in sink.got] == [("order.created", "NS2")]


async def test_an_identical_repeat_sends_nothing(pool, settings, tenant, sink, sender, shop) -> None:
    await subscribe(pool, settings, tenant, sink, "all")
    await shop.order("R1")
    await shop.order("R1")
    await sender.drain()
    assert [r.body["type"] for r in sink.got] == ["order.created"]


# --- retries ---------------------------------------------------------------------------


async def step_to_next_attempt(pool: asyncpg.Pool, clock: Clock, sender: WebhookSender,
                               delivery_id: int) -> dt.datetime:
    """Move the clock to the delivery's next attempt, checking nothing goes a millisecond early."""
    due = await pool.fetchval("SELECT next_attempt_at FROM webhook_deliveries WHERE delivery_id = $1",
                              delivery_id)
    clock.now = due - dt.timedelta(milliseconds=1)
    assert await sender.drain() == 0
    clock.now = due
    assert await sender.drain() == 1
    return due  # type: ignore[no-any-return]


async def test_retries_follow_the_schedule_until_they_run_out(pool, settings, tenant, sink, sender, clock,
                                                              shop) -> None:
    sub = await subscribe(pool, settings, tenant, sink, "down", "status-500")
    await shop.order("S1")
    assert await sender.drain() == 1
    d = await delivery(pool, sub.subscription_id)
    times = [T0]
    for _ in DEFAULT_SCHEDULE[1:]:
        times.append(await step_to_next_attempt(pool, clock, sender, d["delivery_id"]))
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    for gap, planned in zip(gaps, DEFAULT_SCHEDULE[1:], strict=True):
        assert planned * 0.8 <= gap <= planned * 1.2, (gap, planned)
    assert len(set(gaps)) == len(gaps)  # jittered, not fixed
    d = await delivery(pool, sub.subscription_id)
    assert (d["state"], d["attempts"], d["next_attempt_at"]) == ("failed", 10, None)
    clock.now += dt.timedelta(days=30)
    assert await sender.drain() == 0
    log = await attempts(pool, d["delivery_id"])
    assert [a["attempt"] for a in log] == list(range(1, 11))
    assert [a["at"] for a in log] == times
    assert all(a["status"] == 500 and a["error"] == "HTTP 500" and a["response"] == "status" for a in log)
    assert len({r.webhook_id for r in sink.got}) == 1  # webhook-id stable across retries
    assert len({r.headers["webhook-timestamp"] for r in sink.got}) == 10  # signed anew each time
    assert all(r.verified_by == [0] for r in sink.got)


async def test_a_sink_failing_three_times_gets_it_on_the_fourth(pool, settings, tenant, sink, sender, clock,
                                                                shop) -> None:
    sub = await subscribe(pool, settings, tenant, sink, "flaky", "fail-3")
    await shop.order("F1")
    await sender.drain()
    d = await delivery(pool, sub.subscription_id)
    for _ in range(3):
        await step_to_next_attempt(pool, clock, sender, d["delivery_id"])
    d = await delivery(pool, sub.subscription_id)
    assert d["state"] == "delivered" and d["delivered_at"] == clock.now and d["attempts"] == 4
    log = await attempts(pool, d["delivery_id"])
    assert [(a["status"], a["response"], a["error"]) for a in log] == [
        (500, "nope #1", "HTTP 500"), (500, "nope #2", "HTTP 500"), (500, "nope #3", "HTTP 500"),
        (200, "finally", None)]
    assert all(a["latency_ms"] is not None and a["latency_ms"] >= 0 for a in log)
    assert [r.webhook_id for r in sink.got] == [d["webhook_id"]] * 4
    assert len({r.headers["webhook-signature"] for r in sink.got}) == 4
    failing = await pool.fetchval("SELECT failing_since FROM webhook_subscriptions")
    assert failing is None  # the success ended the failure streak


async def test_only_the_first_kib_of_an_answer_is_kept(pool, settings, tenant, sink, sender, shop) -> None:
    sub = await subscribe(pool, settings, tenant, sink, "big")
    await shop.order("K1")
    await sender.drain()
    [a] = await attempts(pool, (await delivery(pool, sub.subscription_id))["delivery_id"])
    assert a["status"] == 200 and len(a["response"]) == 1024 and a["response"].startswith("thanks xxx")


async def test_retry_after_is_honoured_within_bounds(pool, settings, tenant, sink, sender, clock,
                                                     shop) -> None:
    slow = await subscribe(pool, settings, tenant, sink, "slow", "status-503?retry_after=3600")
    huge = await subscribe(pool, settings, tenant, sink, "huge", "status-429?retry_after=99999999")
    await shop.order("RA")
    assert await sender.drain() == 2
    d = await delivery(pool, slow.subscription_id)
    assert d["next_attempt_at"] == T0 + dt.timedelta(hours=1)
    d = await delivery(pool, huge.subscription_id)
    assert d["next_attempt_at"] == T0 + dt.timedelta(seconds=settings.webhook_retry_after_max_s)


async def test_410_disables_the_subscription_and_fails_what_waits(pool, settings, tenant, sink, sender,
                                                                  clock, shop) -> None:
    sub = await subscribe(pool, settings, tenant, sink, "gone", "status-410")
    await shop.post("G1")
    await shop.post("G2", priority=5)
    await shop.consumer.drain()
    sender.capacity = 1
    assert await sender.run_once() == 1  # G2 first: higher priority
    rows = await pool.fetch("SELECT reference, state, last_status, last_error FROM webhook_deliveries"
                            " ORDER BY reference")
    assert [tuple(r) for r in rows] == [
        ("G1", "failed", None, "subscription disabled: the receiver answered 410 Gone"),
        ("G2", "failed", 410, "HTTP 410")]
    s = await pool.fetchrow("SELECT state, disabled_reason FROM webhook_subscriptions")
    assert tuple(s) == ("disabled", "the receiver answered 410 Gone")
    # later events are kept as failed deliveries: nothing is lost, a replay brings them back
    await shop.order("G3")
    clock.now += dt.timedelta(hours=1)
    assert await sender.drain() == 0
    assert await pool.fetchval("SELECT state FROM webhook_deliveries WHERE reference = 'G3'") == "failed"
    assert len(sink.got) == 1

    async with pool.acquire() as conn:
        await conn.execute("UPDATE webhook_subscriptions SET url = $1", sink.hook("gone", "ok"))
        await set_enabled(conn, sub.subscription_id, None, True, clock.now)
        assert await replay_failed_since(conn, sub.subscription_id, None, T0, clock.now) == 3
    sender.capacity = 16
    assert await sender.drain() == 3
    assert sorted(r.body["data"]["reference"] for r in sink.got[1:]) == ["G1", "G2", "G3"]
    g2 = [r.webhook_id for r in sink.got if r.body["data"]["reference"] == "G2"]
    assert len(g2) == 2 and g2[0] == g2[1]  # a replay keeps the webhook-id


async def test_a_redirect_is_a_failure_and_is_not_followed(pool, settings, tenant, sink, sender, shop) -> None:
    sub = await subscribe(pool, settings, tenant, sink, "moved", "redirect")
    await shop.order("M1")
    await sender.drain()
    assert [r.behaviour for r in sink.got] == ["redirect"]
    d = await delivery(pool, sub.subscription_id)
    assert (d["state"], d["last_status"]) == ("pending", 302)
    assert d["last_error"].startswith("redirect not followed (Location: http://127.0.0.1:")
    assert d["next_attempt_at"] > T0


async def test_a_hanging_receiver_times_out(pool, settings, tenant, sink, clock, shop) -> None:
    sub = await subscribe(pool, settings, tenant, sink, "slow", "hang")
    await shop.order("H1")
    fast = msgspec.structs.replace(settings, webhook_timeout_s=0.3)
    async with WebhookSender(pool, fast, clock=clock) as sender:
        assert await asyncio.wait_for(sender.drain(), 5) == 1
    d = await delivery(pool, sub.subscription_id)
    assert (d["state"], d["last_status"], d["last_error"]) == ("pending", None, "timeout after 0.3 s")
    [a] = await attempts(pool, d["delivery_id"])
    assert a["status"] is None and a["latency_ms"] >= 300


async def test_failing_for_five_days_disables_the_subscription(pool, settings, tenant, sink, sender, clock,
                                                               shop) -> None:
    await subscribe(pool, settings, tenant, sink, "dead", "status-503")
    await shop.order("D1")
    n = 0
    while (await pool.fetchval("SELECT state FROM webhook_subscriptions")) == "active":
        n += await sender.drain()
        due = await pool.fetchval("SELECT min(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending'")
        if due is None:  # D1 ran out of attempts (about 3 days); the shop keeps sending orders
            clock.now += dt.timedelta(hours=6)
            await shop.order(f"D{n}")
        else:
            clock.now = due
        assert clock.now < T0 + dt.timedelta(days=7)
    s = await pool.fetchrow("SELECT * FROM webhook_subscriptions")
    assert s["failing_since"] == T0
    assert T0 + dt.timedelta(days=5) <= s["disabled_at"] <= T0 + dt.timedelta(days=6)
    assert s["disabled_reason"].startswith("failing since 2026-06-01 12:00:00")
    assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'") == 0


# --- order, limits, rotation ------------------------------------------------------------


async def test_deliveries_go_out_by_order_priority(pool, settings, tenant, sink, sender, shop) -> None:
    await subscribe(pool, settings, tenant, sink, "one", max_concurrency=1)
    for ref, priority in (("P1", 1), ("P5", 5), ("P3", 3), ("Pm", -2)):
        await shop.post(ref, priority=priority)
    await shop.consumer.drain()
    assert await sender.drain() == 4
    assert [r.body["data"]["reference"] for r in sink.got] == ["P5", "P3", "P1", "Pm"]


async def test_concurrency_limit_per_subscription_holds(pool, settings, tenant, sink, clock, shop) -> None:
    await subscribe(pool, settings, tenant, sink, "held", "hold", max_concurrency=2)
    await subscribe(pool, settings, tenant, sink, "free", max_concurrency=10)
    for i in range(5):
        await shop.post(f"C{i}")
    await shop.consumer.drain()
    async with WebhookSender(pool, settings, clock=clock) as sender:
        while await sender.dispatch_once():
            pass
        first = await sender.claim(20)
        held = [j for j in first if "/held/" in j.url]
        assert (len(held), len(first)) == (2, 7)  # 2 of "held", all 5 of "free"
        sending = asyncio.gather(*(sender.attempt(j) for j in first))
        await sink.wait_for(lambda: sink.holding == 2 and len(sink.of("free")) == 5)
        assert await sender.claim(20) == []  # "held" is at its limit while two are in flight
        sink.release.set()
        await asyncio.wait_for(sending, 10)

        # the same through the sender's own loop: the last three go out two at a time
        sink.release.clear()
        stop = asyncio.Event()
        loop = asyncio.create_task(sender.run(stop))
        try:
            await sink.wait_for(lambda: sink.holding == 2)
            assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE state = 'sending'") == 2
            sink.release.set()

            async def all_delivered() -> None:
                while await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'"):
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(all_delivered(), 10)
        finally:
            stop.set()
            await asyncio.wait_for(loop, 10)
    assert sink.max_holding == 2 and len(sink.of("held")) == 5


async def test_rotation_sends_both_signatures_for_24_hours(pool, settings, tenant, sink, sender, clock,
                                                           shop) -> None:
    sub = await subscribe(pool, settings, tenant, sink, "rot")
    old = sub.secret
    async with pool.acquire() as conn:
        rotated = await rotate_secret(conn, sub.subscription_id, None, settings, T0)
    assert isinstance(rotated.secret, str) and rotated.secret != old
    assert rotated.previous_secret_until == T0 + dt.timedelta(hours=24)
    sink.expect("rot", rotated.secret, old)  # type: ignore[arg-type]
    await shop.order("X1")
    clock.now = T0 + dt.timedelta(hours=23, minutes=59)
    await sender.drain()
    [during] = sink.got
    assert len(during.signatures) == 2 and during.verified_by == [0, 1]  # new and old both verify
    await shop.order("X2")
    clock.now = T0 + dt.timedelta(hours=24)
    await sender.drain()
    after = sink.got[-1]
    assert len(after.signatures) == 1 and after.verified_by == [0]  # only the new one now


# --- SSRF at send time ------------------------------------------------------------------


async def test_send_refuses_internal_addresses_without_the_allow_list(pool, settings, tenant, sink, clock,
                                                                      shop) -> None:
    literal = await subscribe(pool, settings, tenant, sink, "lit")
    named = await subscribe(pool, settings, tenant, sink, "named")
    await pool.execute("UPDATE webhook_subscriptions SET url = replace(url, '127.0.0.1', 'localhost')"
                       " WHERE subscription_id = $1", named.subscription_id)
    mapped = await subscribe(pool, settings, tenant, sink, "mapped")
    await pool.execute("UPDATE webhook_subscriptions SET url = replace(url, '127.0.0.1', '[::ffff:127.0.0.1]')"
                       " WHERE subscription_id = $1", mapped.subscription_id)
    await shop.order("SS1")
    strict = msgspec.structs.replace(settings, webhook_allow_nets="")
    async with WebhookSender(pool, strict, clock=clock) as sender:
        assert await sender.drain() == 3
    assert sink.got == []  # nothing reached the sink
    errors = {r["subscription_id"]: r["last_error"] for r in await pool.fetch(
        "SELECT subscription_id, last_error FROM webhook_deliveries")}
    assert errors[literal.subscription_id] == "refused: 127.0.0.1 is a loopback address"
    assert errors[named.subscription_id].startswith("refused: localhost resolves to")
    assert errors[mapped.subscription_id].endswith("(carrying 127.0.0.1) is a loopback address")
    # the same deliveries go through once the network is allowed
    clock.now += dt.timedelta(minutes=1)
    async with WebhookSender(pool, settings, clock=clock) as sender:
        assert await sender.drain() == 3
    assert len(sink.got) == 3

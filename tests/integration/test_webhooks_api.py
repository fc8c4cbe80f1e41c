"""`/api/v1/webhooks…` over HTTP and `orderflow webhook …` as a real process."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared.settings import Settings
from tests.conftest import Tenant, make_tenant, serve_receiver
from tests.integration.test_webhooks import ALLOW, Clock, Shop, Sink, running_sink
from worker.webhooks import WebhookSender

API = "/api/v1/webhooks"
ORDERFLOW = str(Path(sys.executable).parent / "orderflow")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, webhook_allow_nets=ALLOW)


class WallClock(Clock):
    """Real time: the API stamps its changes with the wall clock too."""

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


@pytest.fixture
async def sink(clock: Clock) -> AsyncIterator[Sink]:
    async with running_sink(clock) as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return WallClock()


async def call(http: Any, method: str, url: str, headers: dict[str, str], body: Any = None,
               status: int = 200) -> Any:
    async with http.request(method, url, json=body, headers=headers) as resp:
        data = await resp.json()
        assert resp.status == status, data
        return data["data"] if resp.status < 400 else data


async def test_subscriptions_over_http(server, http, tenant: Tenant, pool, settings, sink: Sink,
                                       consumer, clock) -> None:
    admin = await tenant.headers(rights=("admin",))
    writer = await tenant.headers()
    url = server.url + API
    # credentials and rights
    await call(http, "GET", url, {}, status=401)
    assert (await call(http, "GET", url, writer, status=403))["errors"][0]["msg"] == \
        "this key lacks the right 'admin'"
    # validation: every failing field is named
    bad = await call(http, "POST", url, admin, {"url": sink.hook("a"), "event_types": ["order.lost"]},
                     status=422)
    assert bad["errors"][0]["loc"] == "$.event_types[0]"
    bad = await call(http, "POST", url, admin, {"url": sink.hook("a"), "colour": "red"}, status=422)
    assert "colour" in bad["errors"][0]["msg"]
    bad = await call(http, "POST", url, admin, {"url": "http://u:p@127.0.0.1/x"}, status=422)
    assert bad["errors"][0] == {"loc": "$.url", "msg": "the URL must not carry credentials (user:password@)"}

    created = await call(http, "POST", url, admin, {
        "url": sink.hook("api"), "description": "warehouse", "source_ids": ["mage2"],
        "event_types": ["order.created", "order.released"],
        "conditions": {"no_partial": True}, "max_concurrency": 3}, status=201)
    sub_id = created["subscription_id"]
    assert created["secret"].startswith("whsec_") and created["state"] == "active"
    assert created["conditions"] == {"cod_only": False, "no_partial": True, "order_type": None}
    assert created["source_ids"] == ["mage2"] and created["max_concurrency"] == 3
    sink.expect("api", created["secret"])
    listed = await call(http, "GET", url, admin)
    assert [s["subscription_id"] for s in listed] == [sub_id]
    assert "secret" not in listed[0] and created["secret"] not in json.dumps(listed)  # shown once
    assert (await call(http, "GET", f"{url}/{sub_id}", admin))["description"] == "warehouse"

    patched = await call(http, "PATCH", f"{url}/{sub_id}", admin,
                         {"event_types": None, "conditions": {"cod_only": False}})
    assert patched["event_types"] is None and patched["conditions"]["no_partial"] is False
    assert patched["source_ids"] == ["mage2"] and patched["description"] == "warehouse"

    # another entity's admin sees none of it
    other = await (await make_tenant(pool, settings)).headers(rights=("admin",))
    await call(http, "GET", f"{url}/{sub_id}", other, status=404)
    assert await call(http, "GET", url, other) == []

    # an order goes out; its delivery and attempt log are readable
    shop = Shop(server, http, writer, consumer)
    await shop.order("API1")
    async with WebhookSender(pool, settings, clock=clock) as sender:
        assert await sender.drain() == 1
        deliveries = await call(http, "GET", f"{url}/{sub_id}/deliveries?attempts=1", admin)
        [d] = deliveries
        assert (d["state"], d["event_type"], d["reference"], d["attempts"]) == (
            "delivered", "order.created", "API1", 1)
        assert d["webhook_id"] == sink.got[0].webhook_id
        [a] = d["attempt_log"]
        assert a["status"] == 200 and a["latency_ms"] >= 0 and a["response"].startswith("thanks")
        one = await call(http, "GET", f"{url}/{sub_id}/deliveries/{d['delivery_id']}", admin)
        assert one["attempt_log"] == d["attempt_log"]
        assert await call(http, "GET", f"{url}/{sub_id}/deliveries?state=failed", admin) == []

        # replay one: the same webhook-id again
        replayed = await call(http, "POST", f"{url}/{sub_id}/deliveries/{d['delivery_id']}/replay", admin,
                              status=202)
        assert replayed["state"] == "pending"
        await call(http, "POST", f"{url}/{sub_id}/deliveries/{d['delivery_id']}/replay", admin, status=409)
        assert await sender.drain() == 1
        assert [r.webhook_id for r in sink.got] == [d["webhook_id"]] * 2

        # rotate: a new secret once, both sign for a while
        rotated = await call(http, "POST", f"{url}/{sub_id}/rotate-secret", admin)
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
        assert rotated["previous_secret_until"] is not None

        # disable: new events become failed deliveries; enable + replay since brings them
        off = await call(http, "POST", f"{url}/{sub_id}/disable", admin)
        assert off["state"] == "disabled" and off["disabled_reason"].startswith("disabled with key ")
        await shop.order("API2")
        assert await sender.drain() == 0
        await call(http, "POST", f"{url}/{sub_id}/replay", admin, {"since": "2020-01-01T00:00:00Z"},
                   status=409)
        on = await call(http, "POST", f"{url}/{sub_id}/enable", admin)
        assert on["state"] == "active"
        sink.expect("api", rotated["secret"], created["secret"])
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
        assert (await call(http, "POST", f"{url}/{sub_id}/replay", admin, {"since": since},
                           status=202))["replayed"] == 1
        assert await sender.drain() == 1
    last = sink.got[-1]
    assert last.body["data"]["reference"] == "API2" and last.verified_by == [0, 1]
    await call(http, "GET", f"{url}/{sub_id}/deliveries/999999", admin, status=404)
    await call(http, "GET", f"{url}/nope", admin, status=404)


async def test_subscribe_refuses_internal_urls_without_the_allow_list(http, tenant: Tenant, settings) -> None:
    strict = msgspec.structs.replace(settings, webhook_allow_nets="")
    admin = await tenant.headers(rights=("admin",))
    async with serve_receiver(strict) as receiver:
        url = receiver.url + API
        for target, why in [("http://127.0.0.1:9/x", "loopback"), ("http://10.0.0.1/x", "private"),
                            ("http://169.254.169.254/latest", "metadata"), ("http://[::1]/x", "loopback"),
                            ("http://[::ffff:127.0.0.1]/x", "loopback"), ("http://0.0.0.0/x", "unspecified"),
                            ("http://localhost:9/x", "localhost resolves to")]:
            bad = await call(http, "POST", url, admin, {"url": target}, status=422)
            assert bad["errors"][0]["loc"] == "$.url" and why in bad["errors"][0]["msg"], (target, bad)


# --- the command line ----------------------------------------------------------------------


def cli(settings: Settings, *args: str, ok: bool = True) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env.update(ORDERFLOW_DATABASE_URL=settings.database_url, ORDERFLOW_REDIS_URL=settings.redis_url,
               ORDERFLOW_REDIS_PREFIX=settings.redis_prefix, ORDERFLOW_WEBHOOK_ALLOW_NETS=ALLOW)
    out = subprocess.run([ORDERFLOW, "webhook", *args], env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    if not ok:
        assert out.returncode != 0
        return out.stderr
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "--json" in args else out.stdout


@pytest.mark.parametrize("command", ["add", "list", "update", "disable", "enable", "rotate-secret",
                                     "deliveries", "replay"])
def test_every_webhook_command_has_help(command: str) -> None:
    out = subprocess.run([ORDERFLOW, "webhook", command, "--help"], capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode == 0 and "Usage: orderflow webhook" in out.stdout


async def test_webhook_commands(settings, tenant: Tenant, pool, sink: Sink) -> None:
    added = cli(settings, "add", "--entity", tenant.entity_id, "--url", sink.hook("cli"), "--sources", "a,b",
                "--events", "order.created,order.shipped", "--cod-only", "--type", "1", "--json")
    sub_id = added["subscription_id"]
    assert added["secret"].startswith("whsec_")
    assert added["conditions"] == {"cod_only": True, "no_partial": False, "order_type": 1}
    assert added["source_ids"] == ["a", "b"] and added["event_types"] == ["order.created", "order.shipped"]
    assert "refused" in cli(settings, "add", "--entity", tenant.entity_id, "--url", "http://169.254.169.254/",
                            "--json", ok=False)
    assert "unknown event type" in cli(settings, "add", "--entity", tenant.entity_id, "--url",
                                       sink.hook("x"), "--events", "order.lost", ok=False)
    listed = cli(settings, "list", "--entity", tenant.entity_id, "--json")
    assert [s["subscription_id"] for s in listed["subscriptions"]] == [sub_id]
    assert added["secret"] not in json.dumps(listed)
    updated = cli(settings, "update", sub_id, "--all-sources", "--any-cod", "--no-partial", "--type", "any",
                  "--json")
    assert updated["source_ids"] is None
    assert updated["conditions"] == {"cod_only": False, "no_partial": True, "order_type": None}
    assert updated["event_types"] == ["order.created", "order.shipped"]
    rotated = cli(settings, "rotate-secret", sub_id, "--json")
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != added["secret"]
    assert cli(settings, "disable", sub_id, "--reason", "maintenance", "--json")["disabled_reason"] == "maintenance"
    assert cli(settings, "enable", sub_id, "--json")["state"] == "active"
    assert cli(settings, "deliveries", sub_id, "--attempts", "--json") == {"deliveries": []}
    assert cli(settings, "replay", sub_id, "--since", "2026-01-01T00:00:00Z", "--json") == {
        "subscription_id": sub_id, "replayed": 0}
    assert "exactly one of" in cli(settings, "replay", sub_id, ok=False)
    assert sub_id in cli(settings, "list")  # the human form

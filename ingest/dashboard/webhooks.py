"""Webhook pages and actions: subscriptions (success rate, pending, last error, state; enable,
disable, replay failed since a time) and deliveries that gave up (retry, discard, retry all shown).

Subscription changes go through shared.webhooks, the same code the API and the CLI use.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
from aiohttp import web

from ingest.dashboard.actions import MAX_BULK, redirect
from ingest.dashboard.auth import audit
from ingest.dashboard.keys import SESSION
from ingest.dashboard.render import Html, button_form, csrf_field, h, table, url, when
from ingest.dashboard.respond import respond
from ingest.keys import POOL
from shared import webhooks as wh
from shared.db import QUERIES

LIST_LIMIT = 100


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _rate(delivered: int, failed: int) -> str:
    done = delivered + failed
    return "–" if done == 0 else f"{100 * delivered / done:.1f} %"


def _sub_link(subscription_id: str) -> Html:
    return h('<a href="{}">{}</a>', url(f"/webhooks/{subscription_id}"), subscription_id)


def _error(status: int | None, error: str | None, at: dt.datetime | None) -> Html:
    """The last answer: `HTTP 500: why` (or just the status, or just the error), and when."""
    if status is None and error is None:
        return Html("")
    text = ": ".join(x for x in (f"HTTP {status}" if status is not None else None, error) if x)
    return h('<span class="reason">{}</span>{}', text,
             h('<br><span class="muted">{}</span>', when(at)) if at is not None else "")


def _subscription_actions(r: asyncpg.Record, csrf: str, back: str) -> Html:
    sid = r["subscription_id"]
    if r["state"] == "active":
        toggle = button_form(url(f"/webhooks/{sid}/disable"), "Disable", csrf, back=back, test_id=f"disable-{sid}",
                             confirm=f"Disable {sid}? What waits for it fails; replay brings it back later.")
    else:
        toggle = button_form(url(f"/webhooks/{sid}/enable"), "Enable", csrf, css="primary", back=back,
                             test_id=f"enable-{sid}")
    default_since = (_now() - dt.timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M")
    replay = h('<form method="post" action="{}" class="inline" data-confirm="Replay every failed delivery of {} '
               'made since the time given?">{}<input type="hidden" name="back" value="{}">'
               '<input type="datetime-local" name="since" value="{}" required aria-label="since (UTC)"> '
               '<button type="submit" data-testid="replay-{}">Replay failed since</button></form>',
               url(f"/webhooks/{sid}/replay"), sid, csrf_field(csrf), back, default_since, sid)
    return h("{} {}", toggle, replay)


async def subscriptions(request: web.Request) -> web.Response:
    """GET /dashboard/webhooks: every subscription with its last 24 hours."""
    session = request[SESSION]
    rows = await request.config_dict[POOL].fetch(QUERIES["dash_webhook_subscriptions"], None)
    back = url("/webhooks")
    out = [(_sub_link(r["subscription_id"]), r["entity_id"], h('<span class="reason">{}</span>', r["url"]),
            h('<strong class="{}">{}</strong>{}', "ok" if r["state"] == "active" else "bad", r["state"],
              h("<br><span class=muted>{}</span>", r["disabled_reason"]) if r["disabled_reason"] else ""),
            _rate(r["delivered"], r["failed"]), f"{r['delivered']:,} / {r['failed']:,}",
            f"{r['pending'] + r['sending']:,}",
            _error(r["last_error_status"], r["last_error"], r["last_error_at"]),
            _subscription_actions(r, session.csrf_token, back)) for r in rows]
    body = h("<p class=muted>Success rate: delivered ÷ (delivered + gave up) of the deliveries made in the last "
             "24 hours. Pending: waiting for their next attempt or in flight. Times are UTC.</p>{}",
             table(("subscription", "entity", "url", "state", "success 24 h", "delivered / gave up 24 h",
                    "pending", "last error (7 days)", ""), out,
                   empty="No webhook subscription yet (orderflow webhook add, or POST /api/v1/webhooks).",
                   test_id="subscriptions"))
    return await respond(request, "Webhooks", body, active="webhooks", page_id="webhooks")


async def subscription_page(request: web.Request) -> web.Response:
    """GET /dashboard/webhooks/{subscription_id}: the subscription and its newest deliveries."""
    session = request[SESSION]
    sid = request.match_info["subscription_id"]
    pool = request.config_dict[POOL]
    rows = await pool.fetch(QUERIES["dash_webhook_subscriptions"], sid)
    if not rows:
        raise web.HTTPNotFound(text="no such subscription")
    sub = rows[0]
    async with pool.acquire() as conn:
        deliveries = await wh.list_deliveries(conn, sid, None, limit=LIST_LIMIT)
    back = url(f"/webhooks/{sid}")
    drows = []
    for d in deliveries:
        action = (button_form(url(f"/failures/deliveries/{d.delivery_id}/retry"), "Retry", session.csrf_token,
                              css="primary", back=back, test_id=f"retry-delivery-{d.delivery_id}")
                  if d.state == "failed" and sub["state"] == "active" else Html(""))
        drows.append((d.delivery_id, when(d.created_at), d.event_type, d.reference, d.state, d.attempts,
                      _error(d.last_status, d.last_error, d.last_attempt_at), when(d.delivered_at), action))
    body = h("""<dl class="facts"><div><dt>url</dt><dd>{url}</dd></div><div><dt>entity</dt><dd>{entity}</dd></div>
<div><dt>state</dt><dd data-testid="subscription-state">{state}</dd></div><div><dt>success 24 h</dt><dd>{rate}</dd></div>
<div><dt>pending</dt><dd>{pending}</dd></div><div><dt>failing since</dt><dd>{failing}</dd></div></dl>
<p>{actions}</p><section><h2>Deliveries, newest first</h2>{table}</section>""",
             url=sub["url"], entity=sub["entity_id"], state=sub["state"], rate=_rate(sub["delivered"], sub["failed"]),
             pending=sub["pending"] + sub["sending"], failing=when(sub["failing_since"]),
             actions=_subscription_actions(sub, session.csrf_token, back),
             table=table(("delivery", "created", "event", "reference", "state", "attempts", "last answer",
                          "delivered", ""), drows, empty="No delivery yet.", test_id="deliveries"))
    return await respond(request, f"Webhook {sid}", body, active="webhooks", page_id="webhook")


def failed_deliveries_section(rows: list[asyncpg.Record], csrf: str, back: str) -> Html:
    """The failures page's second half: deliveries that gave up."""
    out = []
    retryable = []
    for r in rows:
        did = r["delivery_id"]
        if r["subscription_state"] == "active":
            retryable.append(str(did))
            retry = button_form(url(f"/failures/deliveries/{did}/retry"), "Retry", csrf, css="primary", back=back,
                                test_id=f"retry-delivery-{did}")
        else:
            retry = h('<span class="muted">subscription disabled: {}</span>', _sub_link(r["subscription_id"]))
        discard = button_form(url(f"/failures/deliveries/{did}/discard"), "Discard", csrf, back=back,
                              test_id=f"discard-delivery-{did}",
                              confirm=f"Discard delivery {did} ({r['event_type']} of {r['reference']})?")
        reference = (h('<a href="{}">{}</a>', url(f"/orders/{r['order_id']}"), r["reference"])
                     if r["order_id"] else r["reference"])
        out.append((when(r["last_attempt_at"]), did, _sub_link(r["subscription_id"]),
                    h('<span class="reason">{}</span>', r["url"]), r["event_type"], reference, r["attempts"],
                    _error(r["last_status"], r["last_error"], None), h("{} {}", retry, discard)))
    retry_all = (button_form(url("/failures/deliveries/retry"), f"Retry all {len(retryable)} shown", csrf,
                             css="primary", back=back, test_id="retry-all-deliveries",
                             fields={"delivery_id": retryable},
                             confirm=f"Send all {len(retryable)} failed deliveries shown here again?")
                 if retryable else Html(""))
    return h('<section id="deliveries"><h2>Webhook deliveries that gave up</h2><p class="toolbar">{}</p>{}</section>',
             retry_all, table(("last attempt", "delivery", "subscription", "url", "event", "reference", "attempts",
                               "last error", ""), out, empty="No failed delivery is waiting for a decision.",
                              test_id="failed-deliveries"))


def order_deliveries(rows: list[asyncpg.Record]) -> Html:
    """An order's page: the deliveries of its events."""
    return table(("delivery", "subscription", "event", "state", "attempts", "last answer", "delivered", "next attempt"),
                 [(r["delivery_id"], _sub_link(r["subscription_id"]), f"{r['event_type']} #{r['event_id']}",
                   r["state"], r["attempts"], _error(r["last_status"], r["last_error"], r["last_attempt_at"]),
                   when(r["delivered_at"]), when(r["next_attempt_at"])) for r in rows],
                 empty="No webhook delivery for this order.", test_id="order-deliveries")


# --- actions -------------------------------------------------------------------------


async def retry_deliveries(pool: asyncpg.Pool, delivery_ids: list[int], now: dt.datetime) -> list[int]:
    """Send failed deliveries of active subscriptions again (a new round, the same webhook-id)."""
    async with pool.acquire() as conn, conn.transaction():
        subs = await conn.fetch(QUERIES["dash_deliveries_lock_subscriptions"], delivery_ids)
        active = [s["subscription_id"] for s in subs if s["state"] == "active"]
        rows = await conn.fetch(QUERIES["dash_deliveries_replay"], delivery_ids, now, active)
    return [r["delivery_id"] for r in rows]


def _ids(values: list[str]) -> list[int]:
    return [int(v) for v in values if v.isdigit()][:MAX_BULK]


async def _retry(request: web.Request, ids: list[int]) -> web.HTTPSeeOther:
    pool = request.config_dict[POOL]
    done = await retry_deliveries(pool, ids, _now())
    await audit(pool, request[SESSION].operator, "retry_deliveries", ",".join(map(str, ids))[:500],
                {"retried": done})
    skipped = len(ids) - len(done)
    message = (f"Delivery {done[0]} is due again now." if len(done) == 1 and not skipped
               else f"{len(done)} deliveries are due again now."
               + (f" {skipped} not (no longer failed, or the subscription is disabled)." if skipped else ""))
    return await redirect(request, url("/failures") + "#deliveries", message)


async def retry_delivery(request: web.Request) -> web.Response:
    """POST /dashboard/failures/deliveries/{delivery_id}/retry."""
    raise await _retry(request, _ids([request.match_info["delivery_id"]]))


async def retry_deliveries_shown(request: web.Request) -> web.Response:
    """POST /dashboard/failures/deliveries/retry: the delivery ids the page showed."""
    form = await request.post()
    raise await _retry(request, _ids([str(v) for v in form.getall("delivery_id", [])]))


async def discard_delivery(request: web.Request) -> web.Response:
    """POST /dashboard/failures/deliveries/{delivery_id}/discard: off the list, kept in history."""
    [did] = _ids([request.match_info["delivery_id"]]) or [0]
    pool = request.config_dict[POOL]
    operator = request[SESSION].operator
    done = await pool.fetchval(QUERIES["dash_delivery_discard"], did, operator)
    if done:
        await audit(pool, operator, "discard_delivery", str(did))
    raise await redirect(request, url("/failures") + "#deliveries",
                         f"Discarded delivery {did}." if done else f"Delivery {did} has not failed.")


async def _set_enabled(request: web.Request, enabled: bool) -> web.Response:
    sid = request.match_info["subscription_id"]
    operator = request[SESSION].operator
    pool = request.config_dict[POOL]
    try:
        async with pool.acquire() as conn:
            await wh.set_enabled(conn, sid, None, enabled, _now(), reason=f"disabled by operator {operator}")
    except wh.WebhookNotFound as exc:
        raise web.HTTPNotFound(text=str(exc)) from exc
    await audit(pool, operator, "enable_webhook" if enabled else "disable_webhook", sid)
    raise await redirect(request, url("/webhooks"), f"{sid} {'enabled' if enabled else 'disabled'}.")


async def enable(request: web.Request) -> web.Response:
    """POST /dashboard/webhooks/{subscription_id}/enable."""
    return await _set_enabled(request, True)


async def disable(request: web.Request) -> web.Response:
    """POST /dashboard/webhooks/{subscription_id}/disable."""
    return await _set_enabled(request, False)


async def replay_since(request: web.Request) -> web.Response:
    """POST /dashboard/webhooks/{subscription_id}/replay with `since` (UTC, YYYY-MM-DDTHH:MM)."""
    sid = request.match_info["subscription_id"]
    operator = request[SESSION].operator
    pool = request.config_dict[POOL]
    try:
        since = dt.datetime.fromisoformat(str((await request.post()).get("since", ""))).replace(tzinfo=dt.UTC)
    except ValueError:
        raise await redirect(request, url("/webhooks"), "Replay: give the time as YYYY-MM-DDTHH:MM (UTC).") from None
    try:
        async with pool.acquire() as conn:
            n = await wh.replay_failed_since(conn, sid, None, since, _now())
    except wh.WebhookNotFound as exc:
        raise web.HTTPNotFound(text=str(exc)) from exc
    except wh.WebhookConflict as exc:
        raise await redirect(request, url("/webhooks"), f"Not replayed: {exc}.") from None
    await audit(pool, operator, "replay_webhook", sid, {"since": since.isoformat(), "replayed": n})
    raise await redirect(request, url("/webhooks"), f"{n} failed deliveries of {sid} since {when(since)} are due again.")


"""The dashboard's pages: overview, scheduled, orders (search and one order), failures (webhooks: webhooks.py)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import asyncpg
from aiohttp import web

from ingest.dashboard import data
from ingest.dashboard.keys import HUB, SESSION
from ingest.dashboard.render import (
    Html,
    ago,
    button_form,
    h,
    join,
    table,
    url,
    when,
)
from ingest.dashboard.respond import respond
from ingest.dashboard.webhooks import failed_deliveries_section, order_deliveries
from ingest.keys import POOL, QUEUE
from shared.db import QUERIES
from shared.queue import IngestQueue, seq_of_receipt, split_envelope
from shared.schemas import header_decoder

LIST_LIMIT = 100
CHART_W, CHART_H = 900, 200


def _order_link(order_id: int, reference: str) -> Html:
    return h('<a href="{}">{}</a>', url(f"/orders/{order_id}"), reference)


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _capped(n: int) -> str:
    return f"{n:,}+" if n >= data.FAILURE_COUNT_CAP else f"{n:,}"


def _secs(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:,.0f} ms" if value < 10 else f"{value:,.1f} s"


# --- overview -------------------------------------------------------------------------


def _chart() -> Html:
    grid = join(h('<line class="grid" x1="{x}" y1="0" x2="{x}" y2="{hh}"></line>'
                  '<text class="axis" id="axis-{i}" x="{tx}" y="{ty}">{label}</text>',
                  i=i, x=x, hh=CHART_H, tx=x + 4, ty=CHART_H + 14, label=label)
                for i, (x, label) in enumerate(((0, "−15 min"), (300, "−10 min"), (600, "−5 min"))))
    lines = join(h('<polyline id="line-{0}" class="series {0}" points="" data-testid="line-{0}"></polyline>', name)
                 for name in ("received", "stored", "released", "delivered"))
    return h('<svg id="chart" class="chart" viewBox="0 -10 {w} {vh}" preserveAspectRatio="none" '
             'role="img" aria-label="orders per second, last 15 minutes" data-testid="chart" data-points="0">'
             '{grid}<text id="chart-max" class="axis" x="4" y="4">0/s</text>{lines}</svg>',
             w=CHART_W, vh=CHART_H + 30, grid=grid, lines=lines)


def _rate_card(name: str, label: str, snap: dict[str, Any]) -> Html:
    return h('<div class="card {0}"><div class="label">{1}</div>'
             '<div class="big"><span id="rate-{0}" data-testid="rate-{0}">{2}</span><small>/s</small></div>'
             '<div class="sub">15 min: <span id="total-{0}" data-testid="total-{0}">{3}</span></div></div>',
             name, label, _num(snap["rates"][name]), f"{snap['window_totals'][name]:,}")


async def overview(request: web.Request) -> web.Response:
    """GET /dashboard/: live counters, chart, backlog, lag, workers; pause and resume."""
    session = request[SESSION]
    pool, queue = request.config_dict[POOL], request.config_dict[QUEUE]
    snap = await request.app[HUB].snapshot(pool, queue)
    actions = await pool.fetch(QUERIES["dash_audit_recent"], 10)
    backlog = snap["backlog"]
    paused = snap["paused_since"] is not None
    cards = join(_rate_card(n, label, snap) for n, label in (
        ("received", "Received"), ("stored", "Stored"), ("released", "Released"), ("delivered", "Delivered")))
    pause = button_form(url("/ingest/pause"), "Pause ingest", session.csrf_token, css="danger",
                        confirm="Pause ingest consumption? Orders keep being accepted and wait in Redis.",
                        test_id="pause", back=url("/"))
    resume = button_form(url("/ingest/resume"), "Resume ingest", session.csrf_token, css="primary",
                         test_id="resume", back=url("/"))
    levels = table(("priority", "waiting", "oldest waits"),
                   [(lv["priority"], f"{lv['count']:,}", ago(lv["oldest_age_s"])) for lv in backlog["levels"]],
                   empty="No order is waiting.")
    workers = table(("worker", "pid", "holds", "stored since start", "last heartbeat"),
                    [(w.get("worker_id", "?"), w.get("pid", ""), w.get("held", 0), f"{w.get('stored_total', 0):,}",
                      f"{ago(w['age_s'])} ago") for w in snap["workers"]],
                    empty="No worker has sent a heartbeat in the last 30 s.")
    audit_rows = table(("when", "operator", "action", "target"),
                       [(when(a["at"]), a["operator"], a["action"], a["target"]) for a in actions],
                       empty="No operator action yet.")
    body = h("""
<section class="cards">{cards}</section>
<section><h2>Orders per second, last <span id="chart-window">15 minutes</span></h2>{chart}
<p class="legend"><span class="key received">received</span><span class="key stored">stored</span>
<span class="key released">released</span><span class="key delivered">delivered</span>
<span class="zoom">show <button type="button" class="link-button active" data-window="900" data-testid="window-15m">15 min</button>
<button type="button" class="link-button" data-window="120" data-testid="window-2m">2 min</button></span>
<span class="muted">updated live · <span id="live-state" data-testid="live-state">connecting…</span></span></p></section>
<section id="ingest"><h2>Ingest queue</h2>
<p class="state">Consumption: <strong id="ingest-state" data-testid="ingest-state" class="{state_css}">{state}</strong>
<span id="pause-control"{pause_hidden}>{pause}</span><span id="resume-control"{resume_hidden}>{resume}</span></p>
<div class="cards small">
<div class="card"><div class="label">Waiting, priority &gt; 0</div><div class="big" id="backlog-high">{high}</div></div>
<div class="card"><div class="label">Waiting, priority 0</div><div class="big" id="backlog-normal">{normal}</div></div>
<div class="card"><div class="label">Waiting, priority &lt; 0</div><div class="big" id="backlog-low">{low}</div></div>
<div class="card"><div class="label">Claimed by workers</div><div class="big" id="backlog-leased">{leased}</div></div>
<div class="card"><div class="label">Oldest waiting</div><div class="big" id="backlog-oldest" data-testid="backlog-oldest">{oldest}</div></div>
<div class="card"><div class="label">Ingest lag p50 / p99</div><div class="big"><span id="lag-p50">{p50}</span> / <span id="lag-p99">{p99}</span></div>
<div class="sub">202 → stored, newest <span id="lag-n">{lag_n}</span> orders of the last 5 min</div></div>
</div>
<h3>Waiting by priority</h3><div id="levels">{levels}</div></section>
<section><h2>Workers</h2><div id="workers" data-testid="workers">{workers}</div></section>
<section><h2>Needs attention</h2><p><a href="{failures_url}"><span id="failures-rejected" data-testid="failures-rejected">{rejected}</span> rejected orders</a> and
<a href="{failures_url}#deliveries"><span id="failures-deliveries" data-testid="failures-deliveries">{deliveries}</span> webhook deliveries that gave up</a>, not retried or discarded yet.</p></section>
<section><h2>Recent operator actions</h2>{audit}</section>
""", cards=cards, chart=_chart(), state="PAUSED" if paused else "running", state_css="bad" if paused else "ok",
             pause=pause, resume=resume, pause_hidden=Html(" hidden") if paused else Html(""),
             resume_hidden=Html("") if paused else Html(" hidden"),
             high=f"{backlog['bands']['high']:,}", normal=f"{backlog['bands']['normal']:,}",
             low=f"{backlog['bands']['low']:,}", leased=f"{backlog['leased']:,}", oldest=ago(backlog["oldest_age_s"]),
             p50=_secs(snap["lag"]["p50"]), p99=_secs(snap["lag"]["p99"]), lag_n=snap["lag"]["n"],
             levels=levels, workers=workers, failures_url=url("/failures"),
             rejected=_capped(snap["failures"]["rejected"]), deliveries=_capped(snap["failures"]["deliveries"]),
             audit=audit_rows)
    return await respond(request, "Overview", body, active="overview", page_id="overview",
                          paused_since=snap["paused_since"])


# --- scheduled -----------------------------------------------------------------------


def _hour_bars(hours: list[tuple[dt.datetime, int]]) -> Html:
    top = max([n for _, n in hours] + [1])
    width = CHART_W / len(hours)
    bars = []
    for i, (hour, n) in enumerate(hours):
        height = CHART_H * n / top
        bars.append(h('<rect class="bar" x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{hh:.2f}">'
                      '<title>{label}: {n} due</title></rect>',
                      x=i * width, y=CHART_H - height, w=max(width - 1, 1), hh=height,
                      label=hour.strftime("%a %Y-%m-%d %H:00Z"), n=n))
    days = join(h('<text class="axis" x="{x:.0f}" y="{y}">{d}</text>', x=i * width + 2, y=CHART_H + 14,
                  d=hours[i][0].strftime("%a %d"))
                for i in range(0, len(hours), 24))
    return h('<svg class="chart" viewBox="0 -10 {w} {vh}" preserveAspectRatio="none" role="img" '
             'aria-label="orders due per hour, next 7 days" data-testid="due-chart">'
             '<text class="axis" x="4" y="4">{top}/h</text>{bars}{days}</svg>',
             w=CHART_W, vh=CHART_H + 30, top=top, bars=join(bars), days=days)


async def scheduled(request: web.Request) -> web.Response:
    """GET /dashboard/scheduled: orders due per hour for 7 days, and the next ones due."""
    pool = request.config_dict[POOL]
    sched = await data.schedule(pool, dt.datetime.now(dt.UTC), limit=LIST_LIMIT)
    rows = [(when(r["release_at"]), r["priority"], _order_link(r["order_id"], r["reference"]), r["source_id"],
             r["entity_id"]) for r in sched.next_due]
    body = h("""<p class="totals"><strong data-testid="scheduled-total">{total:,}</strong> scheduled ·
<span class="{overdue_css}"><strong>{overdue:,}</strong> overdue</span> (due, not yet released) ·
<strong>{later:,}</strong> due after the next 7 days</p>
<section><h2>Due per hour, next 7 days (UTC)</h2>{bars}</section>
<section><h2>Next due</h2>{table}</section>""",
             total=sched.total, overdue=sched.overdue, overdue_css="bad" if sched.overdue else "",
             later=sched.later, bars=_hour_bars(sched.hours),
             table=table(("due", "priority", "reference", "source", "entity"), rows,
                         empty="No order is scheduled.", test_id="next-due"))
    return await respond(request, "Scheduled", body, active="scheduled", page_id="scheduled")


# --- orders --------------------------------------------------------------------------


def _order_rows(rows: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
    return [(_order_link(r["order_id"], r["reference"]), r["source_id"], r["entity_id"], r["state"], r["status"],
             r["priority"], r["version"], when(r["release_at"]), when(r["updated_at"])) for r in rows]


ORDER_HEADERS = ("reference", "source", "entity", "state", "status", "priority", "version", "release at", "updated")


async def orders(request: web.Request) -> web.Response:
    """GET /dashboard/orders?q=: by reference, receipt id or source; newest first."""
    pool, queue = request.config_dict[POOL], request.config_dict[QUEUE]
    q = request.query.get("q", "").strip()
    entity = request.query.get("entity") or None
    entities = await pool.fetch(QUERIES["dash_entities"])
    found: list[asyncpg.Record] = []
    receipts: list[asyncpg.Record] = []
    note = Html("")
    if not q:
        found = await pool.fetch(QUERIES["dash_orders_recent"], entity, LIST_LIMIT)
        title = "Newest orders"
    else:
        title = f"Results for “{q}”"
        if q.startswith("rcpt_"):
            receipt = await pool.fetchrow(QUERIES["dash_receipt_get"], q)
            if receipt is not None and receipt["order_id"] is not None:
                raise web.HTTPSeeOther(url(f"/orders/{receipt['order_id']}", receipt=q))
            if receipt is not None:
                receipts = [receipt]
            else:
                note = await _queued_note(queue, q)
        else:
            by_ref = await pool.fetch(QUERIES["dash_orders_by_reference"], q, entity)
            by_source = await pool.fetch(QUERIES["dash_orders_by_source"], q, entity, LIST_LIMIT)
            seen = {r["order_id"] for r in by_ref}
            found = sorted([*by_ref, *(r for r in by_source if r["order_id"] not in seen)],
                           key=lambda r: r["order_id"], reverse=True)[:LIST_LIMIT]
            receipts = [r for r in await pool.fetch(QUERIES["dash_receipts_by_reference"], q, entity, LIST_LIMIT)
                        if r["order_id"] is None]
    options = join(h('<option value="{}"{}>{} ({})</option>', e["entity_id"],
                     Html(" selected") if e["entity_id"] == entity else Html(""), e["name"], e["entity_id"])
                   for e in entities)
    receipt_rows = [(r["receipt_id"], r["reference"], r["source_id"], r["entity_id"], r["state"], r["code"],
                     r["reason"] or "", when(r["stored_at"])) for r in receipts]
    body = h("""<form method="get" action="{action}" class="search" role="search">
<input name="q" value="{q}" placeholder="reference, receipt id (rcpt_…) or source" aria-label="search" data-testid="search-input">
<select name="entity" aria-label="entity"><option value="">all entities</option>{options}</select>
<button type="submit" data-testid="search-button">Search</button></form>
{note}<h2>{title}</h2>{orders}{receipts}""",
             action=url("/orders"), q=q, options=options, note=note, title=title,
             orders=table(ORDER_HEADERS, _order_rows(found), empty="No order found.", test_id="order-results"),
             receipts=h("<h2>Receipts that stored no order</h2>{}", table(
                 ("receipt", "reference", "source", "entity", "state", "code", "reason", "at"), receipt_rows,
                 test_id="receipt-results")) if receipt_rows else Html(""))
    return await respond(request, "Orders", body, active="orders", page_id="orders")


async def _queued_note(queue: IngestQueue, rid: str) -> Html:
    seq = seq_of_receipt(rid)
    envelope = await queue.peek_envelope(seq) if seq is not None else None
    if envelope is None:
        return h('<p class="empty">No receipt {} is known.</p>', rid)
    header = header_decoder.decode(split_envelope(envelope)[0])
    if not rid.endswith("_" + header.token):
        return h('<p class="empty">No receipt {} is known.</p>', rid)
    return h('<p class="flash">Receipt {} is queued: reference {} waits in Redis since {}.</p>',
             rid, header.reference, when(header.received_at))


async def order_page(request: web.Request) -> web.Response:
    """GET /dashboard/orders/{order_id}: the order, its versions, events, receipts and deliveries."""
    pool = request.config_dict[POOL]
    try:
        order_id = int(request.match_info["order_id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    async with pool.acquire() as conn:
        order = await conn.fetchrow(QUERIES["dash_order_get"], order_id)
        if order is None:
            raise web.HTTPNotFound(text="no such order")
        lines = await conn.fetch(QUERIES["order_lines"], order_id)
        addresses = await conn.fetch(QUERIES["order_addresses"], order_id)
        versions = await conn.fetch(QUERIES["order_versions"], order_id)
        events = await conn.fetch(QUERIES["dash_order_events"], order_id, LIST_LIMIT)
        receipts = await conn.fetch(QUERIES["dash_order_receipts"], order["entity_id"], order["reference"], LIST_LIMIT)
        deliveries = await conn.fetch(QUERIES["dash_order_deliveries"], [e["event_id"] for e in events])
    highlight = request.query.get("receipt")
    facts = [("entity", order["entity_id"]), ("source", order["source_id"]), ("state", order["state"]),
             ("status", order["status"]), ("type", order["type"]), ("priority", order["priority"]),
             ("version", order["version"]), ("flag_partial", order["flag_partial"]),
             ("cod_amount", f"{order['cod_amount']} {order['currency']}"),
             ("shipping method", order["shipping_method"]), ("customer", order["customer_id"]),
             ("created at", when(order["created_at"])), ("delivery at", when(order["delivery_at"])),
             ("release at", when(order["release_at"])), ("released at", when(order["released_at"])),
             ("first stored", when(order["stored_at"])), ("updated", when(order["updated_at"]))]
    body = h("""<dl class="facts" data-testid="order-facts">{facts}</dl>
<section><h2>Versions</h2>{versions}</section>
<section><h2>Events</h2>{events}</section>
<section><h2>Webhook deliveries</h2>{deliveries}</section>
<section><h2>Receipts</h2>{receipts}</section>
<section><h2>Lines</h2>{lines}</section>
<section><h2>Addresses</h2>{addresses}</section>
<section><h2>Stored payload</h2><details><summary>raw JSON as received</summary><pre>{raw}</pre></details></section>""",
             facts=join(h("<div><dt>{}</dt><dd>{}</dd></div>", k, v) for k, v in facts),
             versions=table(("version", "seq", "at", "receipt", "changed"),
                            [(v["version"], v["seq"], when(v["at"]), v["receipt_id"],
                              "created" if v["changes"] == ["*"] else ", ".join(v["changes"]))
                             for v in reversed(versions)], test_id="versions"),
             events=table(("event", "type", "version", "at", "dispatched"),
                          [(e["event_id"], e["type"], e["version"], when(e["created_at"]),
                            when(e["dispatched_at"])) for e in events], empty="No event.", test_id="events"),
             deliveries=order_deliveries(deliveries),
             receipts=table(("receipt", "seq", "state", "code", "reason", "received", "stored"),
                            [(h('<mark>{}</mark>', r["receipt_id"]) if r["receipt_id"] == highlight else r["receipt_id"],
                              r["seq"], r["state"], r["code"], r["reason"] or "", when(r["received_at"]),
                              when(r["stored_at"])) for r in receipts], test_id="receipts"),
             lines=table(("#", "sku", "qty", "description", "unit price", "allocation"),
                         [(x["line_no"], x["sku"], x["qty"], x["description"], x["unit_price"] or "",
                           x["allocation_type"]) for x in lines]),
             addresses=table(("kind", "name", "company", "street", "postcode", "city", "country"),
                             [(a["kind"], f"{a['firstname']} {a['lastname']}", a["company"],
                               f"{a['street']} {a['housenumber']}{a['housenumber_ext']}", a["postcode"],
                               a["city"], a["country"].strip()) for a in addresses]),
             raw=json.dumps(order["raw"], indent=2, ensure_ascii=False))
    return await respond(request, f"Order {order['reference']}", body, active="orders", page_id="order")


# --- failures ------------------------------------------------------------------------


async def failures(request: web.Request) -> web.Response:
    """GET /dashboard/failures: rejected orders (retry, discard, retry all shown), deliveries that gave up."""
    session = request[SESSION]
    pool = request.config_dict[POOL]
    show_all = request.query.get("show") == "all"
    rows = await pool.fetch(QUERIES["dash_rejected"], show_all, LIST_LIMIT)
    deliveries = await pool.fetch(QUERIES["dash_deliveries_failed"], LIST_LIMIT)
    back = url("/failures", show="all" if show_all else None)
    retryable = [r["receipt_id"] for r in rows if r["kept"] and r["resolution"] is None]
    out = []
    for r in rows:
        if r["resolution"] is not None:
            done = f"{r['resolution']} by {r['resolved_by']} {when(r['resolved_at'])}"
            actions = h("{}{}", done, h(" as {}", r["retried_as"]) if r["retried_as"] else "")
        else:
            retry = (button_form(url(f"/failures/rejected/{r['receipt_id']}/retry"), "Retry", session.csrf_token,
                                 css="primary", back=back, test_id=f"retry-{r['receipt_id']}")
                     if r["kept"] else Html('<span class="muted" title="rejected before payloads were kept">no payload</span>'))
            discard = button_form(url(f"/failures/rejected/{r['receipt_id']}/discard"), "Discard",
                                  session.csrf_token, back=back, test_id=f"discard-{r['receipt_id']}",
                                  confirm=f"Discard the rejected order {r['reference']} ({r['receipt_id']})?")
            actions = h("{} {}", retry, discard)
        reference = _order_link(r["order_id"], r["reference"]) if r["order_id"] else r["reference"]
        out.append((when(r["stored_at"]), r["receipt_id"], reference, r["source_id"], r["entity_id"], r["code"],
                    h('<span class="reason">{}</span>', r["reason"] or ""), actions))
    retry_all = (button_form(url("/failures/rejected/retry"), f"Retry all {len(retryable)} shown",
                             session.csrf_token, css="primary", back=back, test_id="retry-all",
                             fields={"receipt_id": retryable},
                             confirm=f"Retry all {len(retryable)} rejected orders shown on this page?")
                 if retryable else Html(""))
    toggle = (h('<a href="{}">Only open ones</a>', url("/failures")) if show_all
              else h('<a href="{}">Show retried and discarded too</a>', url("/failures", show="all")))
    body = h("""<section><h2>Rejected orders</h2><p class="toolbar">{retry_all} {toggle}</p>{table}</section>
{deliveries}""",
             retry_all=retry_all, toggle=toggle,
             deliveries=failed_deliveries_section(deliveries, session.csrf_token, back),
             table=table(("rejected", "receipt", "reference", "source", "entity", "code", "reason", ""), out,
                         empty="No rejected order is waiting for a decision.", test_id="rejected"))
    return await respond(request, "Failures", body, active="failures", page_id="failures")

"""What an operator can change: pause and resume ingest, retry and discard rejected payloads."""

from __future__ import annotations

import base64
import dataclasses
import secrets
import time

import asyncpg
import msgspec
from aiohttp import web

from ingest.dashboard.auth import audit, over_https
from ingest.dashboard.keys import SESSION
from ingest.dashboard.render import PREFIX, url
from ingest.keys import POOL, QUEUE
from shared.db import QUERIES
from shared.queue import IngestQueue, make_envelope, receipt_id, split_envelope
from shared.schemas import Problem, header_decoder, json_encoder

FLASH_COOKIE = "orderflow_flash"
# "retry all shown" never takes more than one page of the failures list
MAX_BULK = 200


@dataclasses.dataclass
class RetryOutcome:
    """Which rejected payloads went back on the queue (old receipt -> new receipt) and which did not."""

    retried: dict[str, str] = dataclasses.field(default_factory=dict)
    refused: dict[str, str] = dataclasses.field(default_factory=dict)


async def retry_rejected(pool: asyncpg.Pool, queue: IngestQueue, receipt_ids: list[str],
                         operator: str) -> RetryOutcome:
    """Put kept payloads of rejected orders back on the ingest queue, each exactly once.

    A retried payload gets a new receipt, is received now (so its lag is its own), and is
    stored with the rights its key has today: a key given `products:create` since, or a
    product created since, lets a retry succeed. A payload whose key was revoked is not retried.
    """
    outcome = RetryOutcome()
    # (old receipt id, new token, queue item)
    items: list[tuple[str, str, tuple[int, str, str, bytes]]] = []
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(QUERIES["dash_failed_open_for_retry"], receipt_ids)
        decoded = [(r["receipt_id"], *split_envelope(bytes(r["envelope"]))) for r in rows]
        headers = {rid: header_decoder.decode(hj) for rid, hj, _ in decoded}
        keys = {k["key_id"]: k for k in await conn.fetch(
            QUERIES["dash_keys_state"], sorted({hd.key_id for hd in headers.values()}))}
        for rid, _, raw in decoded:
            header = headers[rid]
            key = keys.get(header.key_id)
            if key is None or key["revoked_at"] is not None:
                outcome.refused[rid] = "the key that sent it is revoked"
                continue
            fresh = msgspec.structs.replace(
                header, token=secrets.token_hex(6), received_at=time.time(),
                can_create_products="products:create" in key["rights"],
                warnings=[*header.warnings, Problem(loc="$", msg=f"retry of {rid} by operator {operator}")])
            items.append((rid, fresh.token, (fresh.priority, fresh.key_id, "dashboard",
                                             make_envelope(json_encoder.encode(fresh), raw))))
        if items:
            # Hand off while the rows are locked, and mark them in the same transaction: a
            # crash before the commit leaves them open (a second retry is an identical
            # repeat), never marked retried without having been queued.
            seqs = await queue.enqueue_many([item for _, _, item in items])
            for (rid, token, _), seq in zip(items, seqs, strict=True):
                outcome.retried[rid] = receipt_id(seq, token)
            await conn.execute(QUERIES["dash_failed_mark_retried"], list(outcome.retried), operator)
            await conn.execute(QUERIES["dash_failed_retried_as"], list(outcome.retried),
                               list(outcome.retried.values()))
    for rid in receipt_ids:
        if rid not in outcome.refused and rid not in headers:
            outcome.refused[rid] = "already handled, or its payload was not kept"
    return outcome


async def redirect(request: web.Request, fallback: str, message: str) -> web.HTTPSeeOther:
    """Back to the page the form named in `back` (a dashboard page), with a one-time message."""
    back = (await request.post()).get("back")
    target = back if isinstance(back, str) and back.startswith(PREFIX + "/") and "//" not in back else fallback
    resp = web.HTTPSeeOther(target)
    resp.set_cookie(FLASH_COOKIE, base64.urlsafe_b64encode(message.encode()).decode(), path=PREFIX,
                    httponly=True, samesite="Strict", secure=over_https(request), max_age=60)
    return resp


async def pause_ingest(request: web.Request) -> web.Response:
    """POST /dashboard/ingest/pause."""
    await request.config_dict[QUEUE].pause(True)
    await audit(request.config_dict[POOL], request[SESSION].operator, "pause_ingest")
    raise await redirect(request, url("/"), "Ingest consumption paused: orders are accepted and wait in Redis.")


async def resume_ingest(request: web.Request) -> web.Response:
    """POST /dashboard/ingest/resume."""
    await request.config_dict[QUEUE].pause(False)
    await audit(request.config_dict[POOL], request[SESSION].operator, "resume_ingest")
    raise await redirect(request, url("/"), "Ingest consumption resumed.")


async def _retry(request: web.Request, receipt_ids: list[str]) -> web.HTTPSeeOther:
    operator = request[SESSION].operator
    outcome = await retry_rejected(request.config_dict[POOL], request.config_dict[QUEUE], receipt_ids, operator)
    await audit(request.config_dict[POOL], operator, "retry_rejected", ",".join(receipt_ids)[:500],
                {"retried": outcome.retried, "refused": outcome.refused})
    parts = []
    if len(outcome.retried) == 1:
        [(old, new)] = outcome.retried.items()
        parts.append(f"Retried {old}: it is queued again as {new}.")
    elif outcome.retried:
        parts.append(f"Retried {len(outcome.retried)} rejected orders.")
    if len(outcome.refused) == 1:
        [(old, why)] = outcome.refused.items()
        parts.append(f"Not retried {old}: {why}.")
    elif outcome.refused:
        parts.append(f"{len(outcome.refused)} could not be retried (already handled, payload not kept, or key revoked).")
    return await redirect(request, url("/failures"), " ".join(parts) or "Nothing to retry.")


async def retry_one(request: web.Request) -> web.Response:
    """POST /dashboard/failures/rejected/{receipt_id}/retry."""
    raise await _retry(request, [request.match_info["receipt_id"]])


async def retry_shown(request: web.Request) -> web.Response:
    """POST /dashboard/failures/rejected/retry: every receipt id the page showed (and only those)."""
    form = await request.post()
    ids = [str(v) for v in form.getall("receipt_id", [])][:MAX_BULK]
    raise await _retry(request, ids)


async def discard_one(request: web.Request) -> web.Response:
    """POST /dashboard/failures/rejected/{receipt_id}/discard: off the list, kept in history."""
    rid = request.match_info["receipt_id"]
    operator = request[SESSION].operator
    pool = request.config_dict[POOL]
    done = await pool.fetchval(QUERIES["dash_failed_discard"], rid, operator)
    if done:
        await audit(pool, operator, "discard_rejected", rid)
    raise await redirect(request, url("/failures"),
                   f"Discarded {rid}." if done else f"{rid} was already handled or is not a rejected order.")

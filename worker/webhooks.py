"""Webhook delivery: the outbox fan-out and the sender.

Dispatch: undispatched `order_events` (locked with SKIP LOCKED, highest priority first)
become one `webhook_deliveries` row per matching subscription, in one transaction that
also marks the events dispatched. Send: due deliveries are claimed with a lease (priority
first, each subscription below its concurrency limit), signed, POSTed without following
redirects, and the result is logged per attempt and turned into the next step of the
retry schedule. A worker killed mid-attempt loses nothing: its lease runs out and the
delivery is sent again with the same webhook-id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import time
from collections.abc import Callable
from typing import Any, Self

import aiohttp
import asyncpg

from shared import webhook_signing as signing
from shared.db import QUERIES
from shared.logging import get_logger
from shared.rules.webhooks import (
    Filter,
    disables,
    has_conditions,
    is_success,
    match_data,
    matches,
    next_attempt_delay,
    parse_schedule,
    reads_data,
    retry_after_seconds,
    should_auto_disable,
)
from shared.settings import Settings
from shared.ssrf import (
    GuardedResolver,
    UnsafeURL,
    check_addresses,
    check_shape,
    ip_literal,
    parse_nets,
)
from shared.webhooks import disable_subscription

log = get_logger(__name__)
Clock = Callable[[], dt.datetime]
USER_AGENT = "orderflow-webhooks/1"
RESPONSE_HEAD_BYTES = 1024


def utcnow() -> dt.datetime:
    """The wall clock, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True)
class Job:
    """A claimed delivery: everything one attempt needs."""

    delivery_id: int
    webhook_id: str
    subscription_id: str
    event_type: str
    reference: str
    priority: int
    # index into the retry schedule of this attempt, and the attempt's number in the log
    step: int
    attempt: int
    url: str
    secrets: tuple[str, ...]
    body: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one attempt got: an HTTP status (or none) and what to log."""

    at: dt.datetime
    status: int | None
    latency_ms: int
    response: str | None = None
    error: str | None = None
    retry_after: str | None = None


def _filter_of(row: asyncpg.Record) -> Filter:
    return Filter(source_ids=tuple(row["source_ids"]) if row["source_ids"] is not None else None,
                  event_types=tuple(row["event_types"]) if row["event_types"] is not None else None,
                  cod_only=row["cod_only"], no_partial=row["no_partial"], order_type=row["order_type"])


def _unsafe_cause(exc: BaseException) -> UnsafeURL | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UnsafeURL):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class WebhookSender:
    """One per worker process: fans out the outbox and sends due deliveries."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, *, clock: Clock = utcnow,
                 rnd: Callable[[], float] = random.random) -> None:
        self.pool = pool
        self.settings = settings
        self.clock = clock
        self.rnd = rnd
        self.schedule = parse_schedule(settings.webhook_retry_schedule)
        self.allow = parse_nets(settings.webhook_allow_nets)
        self.capacity = settings.webhook_senders
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """The HTTP client: no proxies from the environment, no cookies, resolver that refuses private addresses."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.allow), use_dns_cache=False,
                                         limit=max(self.capacity, 1) * 2)
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s),
            headers={"User-Agent": USER_AGENT})

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- fan-out -------------------------------------------------------------------

    async def dispatch_once(self) -> int:
        """Turn up to one batch of outbox events into deliveries; how many events.

        The events come without their data: only those that a subscription with a typed
        condition looks at get it, in one more query, cut down to the fields the
        conditions read. A round of events whose entities subscribe to nothing only marks
        them dispatched.
        """
        now = self.clock()
        rows: list[tuple[Any, ...]] = []
        async with self.pool.acquire() as conn, conn.transaction():
            events = await conn.fetch(QUERIES["webhook_events_undispatched"],
                                      self.settings.webhook_dispatch_batch)
            if not events:
                return 0
            subs: dict[str, list[tuple[asyncpg.Record, Filter]]] = {}
            for s in await conn.fetch(QUERIES["webhook_subscriptions_of_entities"],
                                      sorted({e["entity_id"] for e in events})):
                subs.setdefault(s["entity_id"], []).append((s, _filter_of(s)))
            if subs:
                rows = await self._fan_out(conn, events, subs)
            if rows:
                await conn.execute(QUERIES["webhook_deliveries_insert"],
                                   *([r[i] for r in rows] for i in range(8)), now)
            await conn.execute(QUERIES["webhook_events_mark_dispatched"],
                               [e["event_id"] for e in events], now)
        if rows:
            log.debug("webhook_dispatched", events=len(events), deliveries=len(rows))
        return len(events)

    @staticmethod
    async def _fan_out(conn: asyncpg.Connection, events: list[asyncpg.Record],
                       subs: dict[str, list[tuple[asyncpg.Record, Filter]]]) -> list[tuple[Any, ...]]:
        """One delivery row per (event, matching subscription), in event then subscription order."""
        # the filters that set a typed condition, per entity that has any
        conditional = {entity: fs for entity, of in subs.items()
                       if (fs := [f for _, f in of if has_conditions(f)])}
        wanted = [e["event_id"] for e in events
                  if (fs := conditional.get(e["entity_id"]))
                  and any(reads_data(f, e["type"], e["source_id"]) for f in fs)]
        data: dict[int, dict[str, Any]] = {}
        if wanted:
            data = {r["event_id"]: match_data(r["data"])
                    for r in await conn.fetch(QUERIES["webhook_events_match_data"], wanted)}
        no_data: dict[str, Any] = {}  # matches() does not look at it (reads_data is False)
        rows: list[tuple[Any, ...]] = []
        for e in events:
            of = subs.get(e["entity_id"])
            if not of:
                continue
            event_data = data.get(e["event_id"], no_data)
            for s, flt in of:
                if matches(flt, e["type"], e["source_id"], event_data):
                    rows.append((signing.new_webhook_id(), s["subscription_id"], e["event_id"],
                                 e["entity_id"], e["type"], e["reference"], e["priority"],
                                 "pending" if s["state"] == "active" else "failed"))
        return rows

    # --- claiming ------------------------------------------------------------------

    async def reap(self) -> int:
        """Deliveries whose worker died mid-attempt are due again; how many."""
        rows = await self.pool.fetch(QUERIES["webhook_reap"], self.clock())
        if rows:
            log.warning("webhook_leases_reaped", count=len(rows))
        return len(rows)

    async def claim(self, limit: int) -> list[Job]:
        """Claim up to `limit` due deliveries, highest priority first, within each subscription's limit."""
        if limit <= 0:
            return []
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            candidates = await conn.fetch(QUERIES["webhook_claim_candidates"], now, limit * 4)
            if not candidates:
                return []
            limits = {r["subscription_id"]: r["max_concurrency"] for r in await conn.fetch(
                QUERIES["webhook_claim_lock_subscriptions"], sorted({c["subscription_id"] for c in candidates}))}
            rows = await conn.fetch(QUERIES["webhook_claim_lock_deliveries"],
                                    [c["delivery_id"] for c in candidates if c["subscription_id"] in limits], now)
            # counted after the subscription locks: every claimer of these counts the same way
            busy = {r["subscription_id"]: r["n"] for r in await conn.fetch(QUERIES["webhook_in_flight"], list(limits))}
            take: list[int] = []
            for r in rows:
                sub = r["subscription_id"]
                if len(take) < limit and busy.get(sub, 0) < limits[sub]:
                    take.append(r["delivery_id"])
                    busy[sub] = busy.get(sub, 0) + 1
            if not take:
                return []
            claimed = await conn.fetch(QUERIES["webhook_claim"], take,
                                       now + dt.timedelta(seconds=self.settings.webhook_lease_s), now)
        return [self._job(r, now) for r in claimed]

    def _job(self, r: asyncpg.Record, now: dt.datetime) -> Job:
        live = signing.live_secrets(r["secret"], r["previous_secret"], r["previous_secret_until"], now)
        return Job(delivery_id=r["delivery_id"], webhook_id=r["webhook_id"],
                   subscription_id=r["subscription_id"], event_type=r["event_type"],
                   reference=r["reference"], priority=r["priority"], step=r["step"],
                   attempt=r["attempts"], url=r["url"], secrets=tuple(live),
                   body=signing.body(r["event_type"], r["occurred_at"], r["data"]))

    # --- one attempt ---------------------------------------------------------------

    async def send(self, job: Job) -> Outcome:
        """POST once: signed now, no redirects, the first 1 KiB of the answer kept."""
        assert self._session is not None, "open() the sender first"
        at = self.clock()
        started = time.monotonic()

        def outcome(status: int | None = None, **kw: Any) -> Outcome:
            return Outcome(at=at, status=status, latency_ms=int((time.monotonic() - started) * 1000), **kw)

        try:
            parsed = check_shape(job.url)
            literal = ip_literal(parsed.raw_host or "")
            if literal is not None:  # aiohttp does not ask the resolver for these
                check_addresses(parsed.raw_host or "", [str(literal)], self.allow)
            headers = {**signing.headers(job.secrets, job.webhook_id, at, job.body),
                       "Content-Type": "application/json"}
            async with asyncio.timeout(self.settings.webhook_timeout_s + 1), self._session.post(
                    parsed, data=job.body.encode(), headers=headers, allow_redirects=False) as resp:
                head = b""
                while len(head) < RESPONSE_HEAD_BYTES:
                    chunk = await resp.content.read(RESPONSE_HEAD_BYTES - len(head))
                    if not chunk:
                        break
                    head += chunk
                text = head.decode("utf-8", "replace").replace("\x00", "")
                error = None
                if 300 <= resp.status < 400:
                    error = f"redirect not followed (Location: {resp.headers.get('Location', '-')})"
                elif not is_success(resp.status):
                    error = f"HTTP {resp.status}"
                return outcome(resp.status, response=text, error=error,
                               retry_after=resp.headers.get("Retry-After"))
        except UnsafeURL as exc:
            return outcome(error=str(exc))
        except TimeoutError:
            return outcome(error=f"timeout after {self.settings.webhook_timeout_s:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            unsafe = _unsafe_cause(exc)
            if unsafe is not None:
                return outcome(error=str(unsafe))
            return outcome(error=f"{type(exc).__name__}: {exc}"[:1000])

    async def record(self, job: Job, result: Outcome) -> str:
        """Log the attempt and move the delivery on (delivered, retry, failed); the new state."""
        now = self.clock()
        status = result.status
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES["webhook_attempt_insert"], job.delivery_id, job.attempt, result.at,
                               status, result.latency_ms, result.response, result.error)
            if status is not None and is_success(status):
                state = await conn.fetchval(QUERIES["webhook_delivery_result"], job.delivery_id, job.attempt,
                                            "delivered", job.step, None, status, None, now)
                await conn.execute(QUERIES["webhook_subscription_succeeded"], job.subscription_id)
            elif status is not None and disables(status):
                state = await conn.fetchval(QUERIES["webhook_delivery_result"], job.delivery_id, job.attempt,
                                            "failed", job.step + 1, None, status, result.error, now)
                await disable_subscription(conn, job.subscription_id, None,
                                           "the receiver answered 410 Gone", now)
            else:
                retry_after = retry_after_seconds(result.retry_after, now,
                                                  self.settings.webhook_retry_after_max_s)
                delay = next_attempt_delay(job.step + 1, self.schedule, self.settings.webhook_jitter,
                                           self.rnd, retry_after)
                due = now + dt.timedelta(seconds=delay) if delay is not None else None
                state = await conn.fetchval(QUERIES["webhook_delivery_result"], job.delivery_id, job.attempt,
                                            "pending" if due else "failed", job.step + 1, due, status,
                                            result.error, now)
                streak = await conn.fetchrow(QUERIES["webhook_subscription_failed"], job.subscription_id, now)
                if (streak is not None and streak["state"] == "active" and should_auto_disable(
                        streak["failing_since"], now, self.settings.webhook_disable_after_s)):
                    await disable_subscription(
                        conn, job.subscription_id, None,
                        f"failing since {streak['failing_since']:%Y-%m-%d %H:%M:%S} UTC", now)
        log.info("webhook_attempt", delivery_id=job.delivery_id, webhook_id=job.webhook_id,
                 subscription_id=job.subscription_id, reference=job.reference, event_type=job.event_type,
                 attempt=job.attempt, status=status, latency_ms=result.latency_ms, error=result.error,
                 state=state or "lease lost")
        return str(state or "lease lost")

    async def attempt(self, job: Job) -> str:
        """Send and record one claimed delivery."""
        return await self.record(job, await self.send(job))

    async def _attempt_logged(self, job: Job) -> str:
        try:
            return await self.attempt(job)
        except Exception:
            # the lease runs out and the delivery is sent again: at least once, never lost
            log.exception("webhook_record_failed", delivery_id=job.delivery_id, webhook_id=job.webhook_id)
            return "lease lost"

    # --- loops ---------------------------------------------------------------------

    async def run_once(self) -> int:
        """Reap, fan out everything, send what is due now (up to capacity); attempts made."""
        await self.reap()
        while await self.dispatch_once():
            pass
        jobs = await self.claim(self.capacity)
        await asyncio.gather(*(self.attempt(job) for job in jobs))
        return len(jobs)

    async def drain(self, max_rounds: int = 10_000) -> int:
        """Run until nothing is due at the clock's current time (tests and one-shot use)."""
        total = 0
        for _ in range(max_rounds):
            n = await self.run_once()
            if n == 0:
                return total
            total += n
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until `stop`; sends in flight are finished (each is bounded by the timeout)."""
        await self.open()
        in_flight: set[asyncio.Task[str]] = set()
        stopping = asyncio.create_task(stop.wait())
        backoff = 0.0
        try:
            while not stop.is_set():
                busy = False
                try:
                    await self.reap()
                    busy = await self.dispatch_once() >= self.settings.webhook_dispatch_batch
                    free = self.capacity - len(in_flight)
                    for job in await self.claim(free):
                        task = asyncio.create_task(self._attempt_logged(job), name=f"webhook-{job.delivery_id}")
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                    backoff = 0.0
                except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                        asyncpg.CannotConnectNowError, ConnectionError, TimeoutError) as exc:
                    backoff = min(5.0, max(0.1, backoff * 2))
                    log.warning("webhook_backoff", error=repr(exc), sleep_s=backoff)
                except Exception:
                    backoff = min(5.0, max(0.1, backoff * 2))
                    log.exception("webhook_error", sleep_s=backoff)
                if busy and not backoff:
                    continue
                await asyncio.wait({stopping, *in_flight}, timeout=backoff or self.settings.webhook_poll_s,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            await self.close()

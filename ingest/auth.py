"""Access-key checks against a short-lived cache, so a revocation bites within seconds."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from shared.access import KeyHasher, key_id_of
from shared.db import QUERIES


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated key: who it belongs to and what it may do."""

    key_id: str
    entity_id: str
    rights: frozenset[str]
    source_ids: frozenset[str] | None
    timezone: str


@dataclass(frozen=True, slots=True)
class _KeyRecord:
    caller: Caller
    key_hash: bytes
    revoked: bool


LOOKUP_TIMEOUT_S = 1.0


class Unauthorized(Exception):
    """Unknown entity or wrong key: one answer for both."""


class KeyStoreUnavailable(Exception):
    """PostgreSQL cannot be asked about a key this receiver has not seen lately."""


# PostgreSQL unreachable, restarting or shutting down (class 57 covers admin/crash shutdown)
STORE_DOWN = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
              asyncpg.exceptions.OperatorInterventionError)


class KeyCache:
    """key_id -> record, re-read from PostgreSQL after `ttl_s` (negative answers too)."""

    def __init__(self, pool: asyncpg.Pool, pepper: str, ttl_s: float) -> None:
        self.pool = pool
        self.hasher = KeyHasher(pepper)
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, _KeyRecord | None]] = {}
        # compared against when the key id is unknown, so timing does not tell
        self._dummy = self.hasher.hash("ak_key_000000000000_dummy")

    async def _record(self, key_id: str) -> _KeyRecord | None:
        now = time.monotonic()
        hit = self._entries.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            # bounded: a PostgreSQL that stops answering (not refusing) must not hang requests
            async with self.pool.acquire(timeout=LOOKUP_TIMEOUT_S) as conn:
                row = await conn.fetchrow(QUERIES["key_lookup"], key_id, timeout=LOOKUP_TIMEOUT_S)
        except STORE_DOWN as exc:
            # While PostgreSQL is down, keys seen lately stay good (a revocation cannot be written
            # meanwhile, and one announced over Redis has dropped the entry); ask again after a TTL.
            if hit is None:
                raise KeyStoreUnavailable from exc
            self._entries[key_id] = (now + self.ttl_s, hit[1])
            return hit[1]
        record = None
        if row is not None:
            caller = Caller(row["key_id"], row["entity_id"], frozenset(row["rights"]),
                            frozenset(row["source_ids"]) if row["source_ids"] is not None else None,
                            row["timezone"])
            record = _KeyRecord(caller, bytes(row["key_hash"]), row["revoked_at"] is not None)
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[key_id] = (now + self.ttl_s, record)
        return record

    async def authenticate(self, access_key: str | None, entity_id: str | None) -> Caller:
        """The caller for a key and entity, or Unauthorized; constant-time on the secret."""
        if not access_key or not entity_id:
            raise Unauthorized
        key_id = key_id_of(access_key)
        record = await self._record(key_id) if key_id else None
        expected = record.key_hash if record is not None else self._dummy
        ok = self.hasher.matches(access_key, expected)
        if not ok or record is None or record.revoked or record.caller.entity_id != entity_id:
            raise Unauthorized
        return record.caller

    def forget(self, key_id: str | None = None) -> None:
        """Drop cached keys (one or all)."""
        if key_id is None:
            self._entries.clear()
        else:
            self._entries.pop(key_id, None)


async def follow_revocations(cache: KeyCache, redis: aioredis.Redis, channel: str) -> None:
    """Drop revoked keys from the cache as `orderflow key revoke` announces them.

    Best effort: the cache TTL still bounds how long a revoked key works when a message is
    missed (Redis down, receiver reconnecting).
    """
    while True:
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                cache.forget()  # anything revoked while we were not listening
                while True:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError  # redis-py may have swallowed the cancel
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        cache.forget(bytes(message["data"]).decode())
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - reconnect; the TTL covers the gap
            await asyncio.sleep(1.0)

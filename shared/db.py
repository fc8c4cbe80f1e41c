"""PostgreSQL: the pool, named queries loaded once from sql/queries.sql, and the migration runner."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import asyncpg
import msgspec

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_BLOCK = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
# Any constant works; it only has to be the same for every process of orderflow.
_MIGRATE_LOCK = 0x0F_DE_F1_0E


def load_queries(text: str | None = None) -> dict[str, str]:
    """Named blocks (`-- name: foo`) of every shared/sql/*.sql file (one file per domain)."""
    if text is None:
        files = sorted(
            (e for e in resources.files("shared.sql").iterdir() if e.name.endswith(".sql")),
            key=lambda e: e.name,
        )
        text = "\n".join(e.read_text() for e in files)
    parts = _BLOCK.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


QUERIES = load_queries()


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + msgspec.json.encode(value)


def _jsonb_decode(data: bytes) -> Any:
    return msgspec.json.decode(data[1:])


def _json_encode(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb as Python objects both ways, so callers never hand-encode; binary format
    # (version byte 1, then the text) because COPY only speaks binary.
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode,
                              schema="pg_catalog", format="binary")
    await conn.set_type_codec("json", encoder=_json_encode, decoder=msgspec.json.decode, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10,
                      command_timeout: float | None = None) -> asyncpg.Pool:
    """A pool whose connections speak jsonb as Python objects."""
    # connect timeout: an unreachable (not refusing) PostgreSQL must not stall requests for 60 s
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_connection,
                                     timeout=5, command_timeout=command_timeout)
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection with the same codecs as the pool."""
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


@contextlib.asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection for the length of a block (CLI commands, migrations), closed after."""
    conn = await connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in order."""
    found = []
    for entry in resources.files("shared.sql.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    found.sort()
    return found


async def migrate(conn: asyncpg.Connection) -> dict[str, Any]:
    """Apply missing migrations, each in its own transaction, under an advisory lock."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATE_LOCK)
    try:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(f"{version:04d}_{name}")
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATE_LOCK)
    return {"applied": applied, "version": current}


async def ensure_database(dsn: str) -> None:
    """Create the database named in the DSN when it does not exist yet (local convenience)."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return
    base, _, name = dsn.rpartition("/")
    name = name.split("?")[0]
    admin = await asyncpg.connect(base + "/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await admin.close()

"""`orderflow`: the one command line. Commands that create something print it; --json prints one JSON object."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from shared.settings import Settings, SettingsError

T = TypeVar("T")


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def _emit(as_json: bool, obj: dict[str, Any], human: str) -> None:
    click.echo(json.dumps(obj, default=str) if as_json else human)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """orderflow: order ingestion for the Clougistic Demand API."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def migrate(as_json: bool) -> None:
    """Create the database if needed and apply missing schema migrations."""
    from shared.db import connection, ensure_database
    from shared.db import migrate as run_migrations

    settings = _settings()

    async def go() -> dict[str, Any]:
        await ensure_database(settings.database_url)
        async with connection(settings.database_url) as conn:
            return await run_migrations(conn)

    result = _run(go)
    applied = ", ".join(result["applied"]) or "nothing to apply"
    _emit(as_json, result, f"schema at version {result['version']} ({applied})")


@main.command()
@click.option("--host", default=None, help="Address to listen on (ORDERFLOW_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (ORDERFLOW_PORT, default 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Run the receiver (aiohttp) until SIGINT/SIGTERM."""
    from ingest.app import run

    run(_settings(host=host, port=port))


@main.command()
@click.option("--concurrency", type=int, default=2, show_default=True,
              help="Batches this process stores at the same time.")
@click.option("--check", is_flag=True,
              help="Exit 0 when a worker process on this host wrote a heartbeat in the last 30 s (probe).")
def worker(concurrency: int, check: bool) -> None:
    """Run one worker process (arq) until SIGINT/SIGTERM."""
    from worker.main import alive_on_this_host, run

    settings = _settings()
    if check:
        alive = _run(lambda: alive_on_this_host(settings))
        click.echo("alive" if alive else "no heartbeat from a worker on this host")
        sys.exit(0 if alive else 1)
    run(settings, concurrency)


@main.group()
def entity() -> None:
    """Entities: the tenants that own keys and orders."""


@entity.command("create")
@click.argument("name")
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone for the entity's dates.")
@click.option("--id", "entity_id", default=None, help="Choose the entity id (default: generated).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def entity_create(name: str, timezone: str, entity_id: str | None, as_json: bool) -> None:
    """Create an entity and print its id."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from shared.db import QUERIES, connection

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise click.BadParameter(f"unknown time zone {timezone!r}", param_hint="--timezone") from exc
    settings = _settings()
    new_id = entity_id or "ent_" + secrets.token_hex(6)

    async def go() -> str:
        async with connection(settings.database_url) as conn:
            return str(await conn.fetchval(QUERIES["entity_create"], new_id, name, timezone))

    created = _run(go)
    _emit(as_json, {"entity_id": created}, f"entity {created} ({name}, {timezone})")


@main.group()
def key() -> None:
    """Access keys: create (shown once), list, revoke."""


@key.command("create")
@click.option("--entity", "entity_id", required=True, help="Entity the key belongs to.")
@click.option("--rights", default="orders:write,products:create", show_default=True,
              help="Comma-separated: orders:write, products:create, admin.")
@click.option("--sources", default=None, help="Comma-separated source_ids the key may send for (default: any).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def key_create(entity_id: str, rights: str, sources: str | None, as_json: bool) -> None:
    """Create a key and print it once; only its keyed hash is stored."""
    import asyncpg

    from shared.access import hash_key, new_access_key, new_key_id, parse_rights
    from shared.db import QUERIES, connection

    try:
        right_list = parse_rights(rights)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--rights") from exc
    source_list = [s.strip() for s in sources.split(",") if s.strip()] if sources else None
    settings = _settings()
    key_id = new_key_id()
    access_key = new_access_key(key_id)

    async def go() -> None:
        async with connection(settings.database_url) as conn:
            try:
                await conn.execute(QUERIES["key_create"], key_id, entity_id,
                                   hash_key(settings.key_pepper, access_key), list(right_list), source_list)
            except asyncpg.ForeignKeyViolationError as exc:
                raise click.ClickException(f"no entity {entity_id!r}") from exc

    _run(go)
    _emit(as_json, {"key_id": key_id, "access_key": access_key, "entity_id": entity_id,
                    "rights": list(right_list), "sources": source_list},
          f"key {key_id} for {entity_id} ({','.join(right_list)})\n"
          f"access key (shown once, store it now): {access_key}")


@key.command("list")
@click.option("--entity", "entity_id", default=None, help="Only this entity's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def key_list(entity_id: str | None, as_json: bool) -> None:
    """List keys (never the secret)."""
    from shared.db import QUERIES, connection

    settings = _settings()

    async def go() -> list[dict[str, Any]]:
        async with connection(settings.database_url) as conn:
            return [dict(r) for r in await conn.fetch(QUERIES["key_list"], entity_id)]

    keys = _run(go)
    if as_json:
        click.echo(json.dumps({"keys": keys}, default=str))
        return
    for k in keys:
        state = f"revoked {k['revoked_at']:%Y-%m-%d %H:%M}" if k["revoked_at"] else "active"
        sources = ",".join(k["source_ids"]) if k["source_ids"] else "any source"
        click.echo(f"{k['key_id']}  {k['entity_id']}  {','.join(k['rights'])}  {sources}  {state}")


@key.command("revoke")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def key_revoke(key_id: str, as_json: bool) -> None:
    """Revoke a key; receivers refuse it within 5 seconds."""
    from shared.db import QUERIES, connection

    settings = _settings()

    async def go() -> bool:
        async with connection(settings.database_url) as conn:
            return await conn.fetchval(QUERIES["key_revoke"], key_id) is not None

    if not _run(go):
        raise click.ClickException(f"no active key {key_id!r}")
    _announce_revocation(settings, key_id)
    _emit(as_json, {"key_id": key_id, "revoked": True}, f"key {key_id} revoked")


def _announce_revocation(settings: Settings, key_id: str) -> None:
    """Tell running receivers at once; if Redis is unreachable their cache TTL still applies."""
    from redis.exceptions import RedisError

    from shared.redis_client import connect_redis
    from shared.redis_keys import RedisKeys

    async def publish() -> None:
        client = connect_redis(settings, socket_connect_timeout=2, socket_timeout=2)
        try:
            await client.publish(RedisKeys.for_prefix(settings.redis_prefix).revocations, key_id)
        finally:
            await client.aclose()

    try:
        _run(publish)
    except (RedisError, OSError) as exc:
        click.echo(f"warning: running receivers were not told at once ({exc.__class__.__name__}); "
                   f"they refuse the key within {settings.key_cache_ttl_s:g} s", err=True)


@main.command()
@click.option("--data-dir", default=".orderflow-dev", show_default=True,
              help="Folder for embedded services' data and the demo key.")
@click.option("--port", type=int, default=8080, show_default=True, help="Receiver port.")
def dev(data_dir: str, port: int) -> None:
    """Everything at once: services (embedded when none is configured), migrate, demo key, receiver, worker."""
    from shared.dev import run_dev

    run_dev(data_dir, port)


# attached last: the group lives in its own module
from shared.cli_webhook import webhook

main.add_command(webhook)


from shared.cli_operator import dashboard, operator  # registered last: it is a separate module

main.add_command(operator)
main.add_command(dashboard)

"""`orderflow operator …` (dashboard operators) and `orderflow dashboard` (the dashboard alone)."""

from __future__ import annotations

import sys
from typing import Any

import click


@click.group()
def operator() -> None:
    """Dashboard operators: create, list, set a password, disable."""


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


def _hash(password: str) -> str:
    from ingest.dashboard.passwords import PasswordTooWeak, hash_password

    try:
        return hash_password(password)
    except PasswordTooWeak as exc:
        raise click.BadParameter(str(exc), param_hint="password") from exc


@operator.command("create")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def operator_create(name: str, password_stdin: bool, as_json: bool) -> None:
    """Create an operator who can log in to /dashboard (asks for the password)."""
    import asyncpg

    from shared.cli import _emit, _run, _settings
    from shared.db import QUERIES, connection

    settings = _settings()
    password_hash = _hash(_read_password(password_stdin))

    async def go() -> None:
        async with connection(settings.database_url) as conn:
            try:
                await conn.execute(QUERIES["dash_operator_create"], name, password_hash)
            except asyncpg.UniqueViolationError as exc:
                raise click.ClickException(f"operator {name!r} exists; use `orderflow operator password`") from exc
            except asyncpg.CheckViolationError as exc:
                raise click.BadParameter("1 to 64 of A-Z a-z 0-9 _ . @ -", param_hint="NAME") from exc

    _run(go)
    _emit(as_json, {"operator": name}, f"operator {name} created")


@operator.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def operator_password(name: str, password_stdin: bool, as_json: bool) -> None:
    """Set a new password (and enable the operator again); ends the operator's sessions."""
    from shared.cli import _emit, _run, _settings
    from shared.db import QUERIES, connection

    settings = _settings()
    password_hash = _hash(_read_password(password_stdin))

    async def go() -> bool:
        async with connection(settings.database_url) as conn:
            return await conn.fetchval(QUERIES["dash_operator_set_password"], name, password_hash) is not None

    if not _run(go):
        raise click.ClickException(f"no operator {name!r}")
    _emit(as_json, {"operator": name, "password_set": True}, f"password of {name} set")


@operator.command("disable")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def operator_disable(name: str, as_json: bool) -> None:
    """Refuse the operator's logins and end their sessions at once."""
    from shared.cli import _emit, _run, _settings
    from shared.db import QUERIES, connection

    settings = _settings()

    async def go() -> bool:
        async with connection(settings.database_url) as conn:
            return await conn.fetchval(QUERIES["dash_operator_disable"], name) is not None

    if not _run(go):
        raise click.ClickException(f"no enabled operator {name!r}")
    _emit(as_json, {"operator": name, "disabled": True}, f"operator {name} disabled")


@operator.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def operator_list(as_json: bool) -> None:
    """List operators (never a password hash)."""
    import json

    from shared.cli import _run, _settings
    from shared.db import QUERIES, connection

    settings = _settings()

    async def go() -> list[dict[str, Any]]:
        async with connection(settings.database_url) as conn:
            return [dict(r) for r in await conn.fetch(QUERIES["dash_operator_list"])]

    rows = _run(go)
    if as_json:
        click.echo(json.dumps({"operators": rows}, default=str))
        return
    for r in rows:
        state = f"disabled {r['disabled_at']:%Y-%m-%d %H:%M}" if r["disabled_at"] else "enabled"
        seen = f"last seen {r['last_seen_at']:%Y-%m-%d %H:%M}" if r["last_seen_at"] else "never logged in"
        click.echo(f"{r['name']}  {state}  {seen}")


@click.command()
@click.option("--host", default=None, help="Address to listen on (ORDERFLOW_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=8081, show_default=True, help="Port.")
def dashboard(host: str | None, port: int) -> None:
    """Serve /dashboard and /metrics alone, without the ingest API (the receiver serves them too)."""
    from ingest.dashboard.app import run
    from shared.cli import _settings

    run(_settings(host=host, port=port))

"""`orderflow operator …` and `orderflow dashboard` as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ingest.dashboard.passwords import verify_password
from shared.settings import Settings
from tests.browser.support import PASSWORD, Dashboard

ORDERFLOW = str(Path(sys.executable).parent / "orderflow")


def env(settings: Settings) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    out.update(ORDERFLOW_DATABASE_URL=settings.database_url, ORDERFLOW_REDIS_URL=settings.redis_url,
               ORDERFLOW_REDIS_PREFIX=settings.redis_prefix, ORDERFLOW_LOG_FORMAT="json")
    return out


def run(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORDERFLOW, *args], env=env(settings), input=stdin, capture_output=True, text=True, check=False,
                          timeout=60)


@pytest.mark.parametrize("command", [["operator"], ["operator", "create"], ["operator", "list"],
                                     ["operator", "password"], ["operator", "disable"], ["dashboard"]])
def test_every_command_has_help(command: list[str]) -> None:
    out = subprocess.run([ORDERFLOW, *command, "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert "Usage: orderflow" in out.stdout


async def test_operator_create_list_password_disable(settings: Settings, pool: Any) -> None:
    out = run(settings, "operator", "create", "alice", "--password-stdin", "--json", stdin=PASSWORD + "\n")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"operator": "alice"}
    stored = await pool.fetchval("SELECT password_hash FROM operators WHERE name = 'alice'")
    assert stored.startswith("scrypt$") and verify_password(PASSWORD, stored)
    again = run(settings, "operator", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert again.returncode == 1 and "exists" in again.stderr
    short = run(settings, "operator", "create", "bob", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    bad_name = run(settings, "operator", "create", "bob smith", "--password-stdin", stdin=PASSWORD + "\n")
    assert bad_name.returncode == 2
    listed = json.loads(run(settings, "operator", "list", "--json").stdout)
    assert [o["name"] for o in listed["operators"]] == ["alice"]
    assert "scrypt" not in json.dumps(listed)
    out = run(settings, "operator", "password", "alice", "--password-stdin", "--json", stdin="another long one\n")
    assert json.loads(out.stdout) == {"operator": "alice", "password_set": True}
    out = run(settings, "operator", "disable", "alice", "--json")
    assert json.loads(out.stdout) == {"operator": "alice", "disabled": True}
    assert run(settings, "operator", "disable", "alice").returncode == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_dashboard_command_serves_the_dashboard_and_metrics_alone(settings: Settings, pool: Any) -> None:
    assert run(settings, "operator", "create", "ops", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(ORDERFLOW, "dashboard", "--port", str(port), env=env(settings),
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    client = Dashboard(base)
    try:
        async def up() -> None:
            while True:
                try:
                    status, _ = await client.get("/dashboard/login")
                    if status == 200:
                        return
                except OSError:
                    pass
                await asyncio.sleep(0.1)

        await asyncio.wait_for(up(), 30)
        assert (await client.login("ops")).status == 303
        status, body = await client.get("/dashboard/")
        assert status == 200 and "Ingest queue" in body
        status, metrics = await client.get("/metrics")
        assert status == 200 and "orderflow_orders_received_total" in metrics
        status, _ = await client.get("/api/v1/order/receipts/x")
        assert status == 404  # no ingest API here
    finally:
        await client.close()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)

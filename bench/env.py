"""The bench's own deployment: a database and a Redis prefix of its own, its processes, cleanup.

Database `orderflow_bench_<pid>` is created and migrated by `orderflow migrate`; the entity
and key by `orderflow entity/key create`, so the bench also exercises the real CLI. Redis
keys carry the prefix `bench<pid>`. Both go away at the end (unless --keep).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from bench.procs import Proc, free_port, spawn
from shared.queue import IngestQueue

REPO = Path(__file__).resolve().parents[1]
ORDERFLOW = str(Path(sys.executable).parent / "orderflow")
DATA_TABLES = ("orders", "order_lines", "addresses", "receipts", "order_versions", "order_events", "products")


class BenchEnv:
    """Database, Redis prefix, credentials and child processes of one bench run."""

    def __init__(self, pg_base: str, redis_url: str, log_dir: Path) -> None:
        pid = os.getpid()
        self.pg_base = pg_base.rstrip("/")
        self.db_name = f"orderflow_bench_{pid}"
        self.dsn = f"{self.pg_base}/{self.db_name}"
        self.redis_url = redis_url
        self.prefix = f"bench{pid}"
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.entity_id = ""
        self.key_id = ""
        self.access_key = ""
        self.redis: aioredis.Redis | None = None
        self.queue: IngestQueue | None = None
        self.db_created = False
        self.uvloop = False  # start every process through bench.launch on uvloop
        self.code: Path | None = None  # another checkout whose orderflow runs (python -m bench --code)

    # --- environment -------------------------------------------------------------------

    def child_env(self, **extra: str) -> dict[str, str]:
        """The environment of every orderflow process: only our ORDERFLOW_* settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
        env.update({"ORDERFLOW_DATABASE_URL": self.dsn, "ORDERFLOW_REDIS_URL": self.redis_url,
                    "ORDERFLOW_REDIS_PREFIX": self.prefix, "ORDERFLOW_LOG_FORMAT": "json",
                    "ORDERFLOW_LOG_LEVEL": "INFO", "PYTHONPATH": str(REPO),
                    # orderflow picks uvloop by itself; the bare app and orderflow must share a loop
                    "ORDERFLOW_UVLOOP": "1" if self.uvloop else "0", **extra})
        return env

    def cli(self, *args: str) -> dict[str, Any]:
        out = subprocess.run([*self.orderflow(*args), "--json"], env=self._env(self.code), capture_output=True,
                             text=True, timeout=120, check=False, cwd=self.code or REPO)
        if out.returncode != 0:
            raise RuntimeError(f"orderflow {' '.join(args)} failed: {out.stderr.strip()[-1500:]}")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    async def setup(self) -> dict[str, Any]:
        """Create + migrate the database (orderflow migrate), an entity and a key."""
        self.db_created = True  # from here on, cleanup tries to drop it
        migrated = await asyncio.to_thread(self.cli, "migrate")
        entity = await asyncio.to_thread(self.cli, "entity", "create", "bench shop")
        self.entity_id = entity["entity_id"]
        key = await asyncio.to_thread(self.cli, "key", "create", "--entity", self.entity_id,
                                      "--rights", "orders:write,products:create")
        self.key_id, self.access_key = key["key_id"], key["access_key"]
        self.redis = aioredis.Redis.from_url(self.redis_url)
        self.queue = IngestQueue(self.redis, self.prefix)
        return migrated

    async def cleanup(self, keep: bool = False) -> list[str]:
        """Stop our processes, delete our Redis keys, drop our database."""
        notes = []
        for proc in self.procs:
            proc.stop(10)
        self.procs.clear()
        if keep:
            return [f"kept database {self.db_name} and Redis prefix {{{self.prefix}}}"]
        try:
            await self.clear_redis()
        except Exception as exc:  # noqa: BLE001 - report and go on cleaning
            notes.append(f"could not delete Redis keys {{{self.prefix}}}*: {exc!r}")
        if self.redis is not None:
            await self.redis.aclose()
        if self.db_created:
            try:
                admin = await asyncpg.connect(self.pg_base + "/postgres")
                try:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
                finally:
                    await admin.close()
            except Exception as exc:  # noqa: BLE001
                notes.append(f"could not drop {self.db_name}: {exc!r}")
        return notes

    # --- data --------------------------------------------------------------------------

    async def clear_redis(self) -> int:
        """Delete every key of our prefix (queue, counters, heartbeats, arq's)."""
        client = self.redis or aioredis.Redis.from_url(self.redis_url)
        keys = [k async for k in client.scan_iter(match="{" + self.prefix + "}*", count=2000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start:start + 1000])
        if client is not self.redis:
            await client.aclose()
        return len(keys)

    async def truncate(self) -> None:
        """Empty the tables the pipeline writes (entities and keys stay)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()

    async def pg_setting(self, name: str) -> str:
        conn = await asyncpg.connect(self.dsn)
        try:
            return str(await conn.fetchval("SELECT current_setting($1)", name))
        finally:
            await conn.close()

    async def queue_counts(self) -> dict[str, int]:
        """seq counter, ready, payloads and leased of our queue."""
        assert self.redis is not None and self.queue is not None
        k = self.queue.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(k.seq)
            pipe.zcard(k.ready)
            pipe.hlen(k.payloads)
            pipe.zcard(k.leased)
            seq, ready, payloads, leased = await pipe.execute()
        return {"seq": int(seq or 0), "ready": int(ready), "payloads": int(payloads), "leased": int(leased)}

    async def heartbeats(self) -> int:
        assert self.redis is not None and self.queue is not None
        return len([k async for k in self.redis.scan_iter(match=self.queue.keys.heartbeat + "*", count=1000)])

    # --- processes ---------------------------------------------------------------------

    def orderflow(self, *args: str, code: Path | None = None) -> list[str]:
        """argv of an orderflow command: this checkout's, or `code`'s (default: --code's)."""
        if (code or self.code) is not None:  # that checkout's directory comes first on sys.path
            return [sys.executable, "-c", "from shared.cli import main; main()", *args]
        if self.uvloop:
            return [sys.executable, "-m", "bench.launch", "orderflow", *args]
        return [ORDERFLOW, *args]

    def _env(self, code: Path | None, **extra: str) -> dict[str, str]:
        return self.child_env(**({"PYTHONPATH": str(code)} if code else {}), **extra)

    def start(self, name: str, argv: list[str], code: Path | None = None, **extra_env: str) -> Proc:
        """A child process; with `code`, it runs from that checkout (the bench's baselines never do)."""
        proc = spawn(name, argv, self._env(code, **extra_env), self.log_dir, cwd=code or REPO)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> int | None:
        code = proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)
        return code

    async def start_receiver(self, name: str = "receiver", code: Path | None = None) -> tuple[Proc, str]:
        """`orderflow serve`, from `code` (another checkout, same venv and settings) if given, else --code's."""
        port = free_port()
        code = code or self.code
        proc = self.start(name, self.orderflow("serve", "--port", str(port), code=code), code=code)
        url = f"http://127.0.0.1:{port}"
        await wait_http(url + "/healthz", proc)
        return proc, url

    async def start_bare(self) -> tuple[Proc, str]:
        port = free_port()
        module = ["bench.launch", "bare"] if self.uvloop else ["bench.bare"]
        proc = self.start("bare", [sys.executable, "-m", *module, "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        await wait_http(url + "/healthz", proc)
        return proc, url

    async def start_workers(self, count: int, concurrency: int, tag: str) -> list[Proc]:
        """`orderflow worker` processes; returns once every consumer wrote its heartbeat."""
        procs = [self.start(f"{tag}-worker{i}", self.orderflow("worker", "--concurrency", str(concurrency)),
                            code=self.code)
                 for i in range(count)]
        deadline = time.monotonic() + 60
        while await self.heartbeats() < count * concurrency:
            dead = [p for p in procs if not p.alive()]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited:\n{dead[0].tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start within 60 s:\n" + procs[0].tail())
            await asyncio.sleep(0.1)
        return procs


async def wait_http(url: str, proc: Proc, timeout: float = 60.0) -> None:
    """Poll url until it answers 200 (or the process dies)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not answer {url} within {timeout} s:\n{proc.tail()}")
            await asyncio.sleep(0.1)

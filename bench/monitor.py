"""Sampling while a phase runs: queue depth, RSS and CPU of our processes, machine CPU."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from bench.env import BenchEnv
from bench.procs import Proc, cpu_of, cpu_s, pids_named, rss_kb


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


class PidRef(NamedTuple):
    """A process we did not start through Proc (asyncio subprocesses), for CpuMeter."""

    name: str
    pid: int


class CpuMeter:
    """CPU used between start() and stop(): each of our processes, PostgreSQL, Redis, the machine.

    PostgreSQL is shared with whoever else uses this server, so its CPU is split into the
    backends connected to our database (ours alone; a backend that appears during the phase
    counts whole), its background processes (WAL writer, checkpointer: shared) and all of it.
    """

    def __init__(self, procs: Sequence[Proc | PidRef], dsn: str | None = None) -> None:
        self.procs = procs
        self.dsn = dsn

    async def _pg_pids(self) -> tuple[list[int], list[int]]:
        """(backends of our database, background processes) from pg_stat_activity."""
        if self.dsn is None:
            return [], []
        import asyncpg

        try:
            conn = await asyncpg.connect(self.dsn)
        except Exception:  # noqa: BLE001 - the figure is optional
            return [], []
        try:
            rows = await conn.fetch(
                "SELECT pid, datname = current_database() AS ours, backend_type FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid()")
        finally:
            await conn.close()
        ours = [r["pid"] for r in rows if r["ours"] and r["backend_type"] == "client backend"]
        background = [r["pid"] for r in rows if r["backend_type"] not in ("client backend", "autovacuum worker")]
        return ours, background

    async def _read(self) -> dict[str, Any]:
        ours, background = await self._pg_pids()
        busy, total = machine_cpu()
        return {"t": time.monotonic(), "busy": busy, "total": total,
                "procs": {p.name: cpu_s(p.pid) or 0.0 for p in self.procs},
                "pg_ours": {pid: cpu_s(pid) for pid in ours}, "pg_background": cpu_of(background),
                "postgres": cpu_of(pids_named("postgres")), "redis": cpu_of(pids_named("redis-server"))}

    async def start(self) -> None:
        self.first = await self._read()

    async def stop(self) -> dict[str, Any]:
        """Cores used on average (1.0 = one core busy all the time)."""
        last = await self._read()
        wall = max(1e-9, last["t"] - self.first["t"])
        ncores = os.cpu_count() or 1
        busy_frac = (last["busy"] - self.first["busy"]) / max(1, last["total"] - self.first["total"])
        cores: dict[str, float | None] = {
            name: round((last["procs"][name] - self.first["procs"][name]) / wall, 3) if last["procs"][name] else None
            for name in last["procs"]}
        if self.dsn is not None:
            pg = sum((now or 0.0) - (self.first["pg_ours"].get(pid) or 0.0) for pid, now in last["pg_ours"].items())
            cores["postgres (our backends)"] = round(pg / wall, 3)
            cores["postgres (background, shared)"] = round((last["pg_background"] - self.first["pg_background"]) / wall, 3)
        cores["postgres (all, incl. neighbours)"] = round((last["postgres"] - self.first["postgres"]) / wall, 3)
        cores["redis-server (shared)"] = round((last["redis"] - self.first["redis"]) / wall, 3)
        busy_cores = busy_frac * ncores
        ours = sum(v for k, v in cores.items() if v is not None and "all, incl." not in k)
        return {"wall_s": round(wall, 2), "machine_busy_cores": round(busy_cores, 2),
                "machine_cores": ncores, "cores_used": cores,
                "neighbours_cores": round(max(0.0, busy_cores - ours), 2) if self.dsn is not None else None}


def per_order_us(cpu: dict[str, Any], rate: float) -> dict[str, float]:
    """CPU microseconds per order for each entry of cpu['cores_used'] at `rate` orders/s."""
    if rate <= 0:
        return {}
    return {name: round(cores * 1e6 / rate, 1) for name, cores in cpu["cores_used"].items() if cores is not None}


class Monitor:
    """Samples every `interval` s until stopped: queue depth, RSS and CPU of each process."""

    def __init__(self, env: BenchEnv, procs: list[Proc], interval: float = 0.5) -> None:
        self.env, self.procs, self.interval = env, procs, interval
        self.samples: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def sample_now(self) -> dict[str, Any]:
        return {"t": time.time(), "rss_kb": {p.name: rss_kb(p.pid) for p in self.procs},
                "cpu_s": {p.name: cpu_s(p.pid) for p in self.procs}}

    async def _run(self) -> None:
        while True:
            sample = self.sample_now()
            try:
                counts = await self.env.queue_counts()
                sample["ready"], sample["leased"], sample["seq"] = counts["ready"], counts["leased"], counts["seq"]
            except Exception:  # noqa: BLE001 - a missed sample is not a failure
                pass
            self.samples.append(sample)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

"""Sampling while a phase runs: queue depth, RSS and CPU of our processes, machine CPU."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from bench.env import BenchEnv
from bench.procs import Proc, cpu_of, cpu_s, pids_named, rss_kb

BENCH_APP = "orderflow-bench"  # application_name of the bench's own PostgreSQL connections
# their CPU (ANALYZE standing in for autovacuum, pg_stat_activity sampling): not orderflow's
BENCH_PG = "postgres (bench's own: ANALYZE, sampling)"


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
    The bench's own backends in our database (the Analyzer's ANALYZE, the PgSampler's polling:
    application_name BENCH_APP ...) are counted apart from orderflow's, as "postgres (bench's own)".
    """

    def __init__(self, procs: Sequence[Proc | PidRef], dsn: str | None = None) -> None:
        self.procs = procs
        self.dsn = dsn

    async def _pg_pids(self) -> tuple[list[int], list[int], list[int]]:
        """(orderflow's backends of our database, the bench's own, background processes)."""
        if self.dsn is None:
            return [], [], []
        import asyncpg

        try:
            conn = await asyncpg.connect(self.dsn)
        except Exception:  # noqa: BLE001 - the figure is optional
            return [], [], []
        try:
            rows = await conn.fetch(
                "SELECT pid, datname = current_database() AS ours, backend_type,"
                " coalesce(application_name, '') LIKE $1 AS bench FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid()", BENCH_APP + "%")
        finally:
            await conn.close()
        client = [r for r in rows if r["ours"] and r["backend_type"] == "client backend"]
        ours = [r["pid"] for r in client if not r["bench"]]
        bench = [r["pid"] for r in client if r["bench"]]
        background = [r["pid"] for r in rows if r["backend_type"] not in ("client backend", "autovacuum worker")]
        return ours, bench, background

    async def _read(self) -> dict[str, Any]:
        ours, bench, background = await self._pg_pids()
        busy, total = machine_cpu()
        return {"t": time.monotonic(), "busy": busy, "total": total,
                "procs": {p.name: cpu_s(p.pid) or 0.0 for p in self.procs},
                "pg_ours": {pid: cpu_s(pid) for pid in ours}, "pg_bench": {pid: cpu_s(pid) for pid in bench},
                "pg_background": cpu_of(background),
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
            def grown(key: str) -> float:  # a backend that appeared during the phase counts whole
                return sum((now or 0.0) - (self.first[key].get(pid) or 0.0) for pid, now in last[key].items())

            cores["postgres (our backends)"] = round(grown("pg_ours") / wall, 3)
            if last["pg_bench"] or self.first["pg_bench"]:
                cores[BENCH_PG] = round(grown("pg_bench") / wall, 3)
            cores["postgres (background, shared)"] = round((last["pg_background"] - self.first["pg_background"]) / wall, 3)
        cores["postgres (all, incl. neighbours)"] = round((last["postgres"] - self.first["postgres"]) / wall, 3)
        cores["redis-server (shared)"] = round((last["redis"] - self.first["redis"]) / wall, 3)
        busy_cores = busy_frac * ncores
        ours = sum(v for k, v in cores.items() if v is not None and "all, incl." not in k)
        return {"wall_s": round(wall, 2), "machine_busy_cores": round(busy_cores, 2),
                "machine_cores": ncores, "cores_used": cores,
                "neighbours_cores": round(max(0.0, busy_cores - ours), 2) if self.dsn is not None else None}


def per_order_us(cpu: dict[str, Any], rate: float, stored_rate: float | None = None) -> dict[str, float]:
    """CPU microseconds per order for each entry of cpu['cores_used'].

    The receiver and Redis are divided by the accepted `rate`, workers and PostgreSQL by
    `stored_rate` (when given): a worker that falls behind did less work, not cheaper work.
    """
    out = {}
    for name, cores in cpu["cores_used"].items():
        r = stored_rate if stored_rate is not None and ("worker" in name or "postgres" in name) else rate
        if cores is not None and r and r > 0:
            out[name] = round(cores * 1e6 / r, 1)
    return out


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
            except Exception:  # noqa: BLE001, S110 - a missed sample is not a failure
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


class PgSampler:
    """What our database's backends are doing, sampled from pg_stat_activity every `interval` s.

    A poor man's statement profile that needs no extension: the share of samples in which a
    backend was active in each statement (named after shared/sql), or waiting on a lock.
    """

    def __init__(self, dsn: str, interval: float = 0.05) -> None:
        self.dsn, self.interval = dsn, interval
        self.counts: dict[str, int] = {}
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        import asyncpg

        from shared.db import QUERIES

        # pg_stat_activity cuts long statements (track_activity_query_size): match on a prefix
        names = {" ".join(q.split())[:300]: n for n, q in QUERIES.items()}
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": BENCH_APP + " sampler"})
        try:
            while True:
                rows = await conn.fetch(
                    "SELECT query, wait_event_type, wait_event, coalesce(application_name, '') LIKE $1 AS bench"
                    " FROM pg_stat_activity"
                    " WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()",
                    BENCH_APP + "%")
                self.samples += 1
                for r in rows:
                    text = " ".join((r["query"] or "").split())
                    name = names.get(text[:300]) or text[:70]
                    if r["bench"]:  # the Analyzer standing in for autovacuum, not orderflow
                        name = "(bench) " + name
                    if r["wait_event_type"] in ("Lock", "LWLock", "IO", "Client"):
                        name += f"  [waiting {r['wait_event_type']}:{r['wait_event']}]"
                    self.counts[name] = self.counts.get(name, 0) + 1
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        """Average number of backends busy in each statement (1.0 = one backend all the time)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - stopping; a failed sampler only loses samples
                pass
        top = sorted(self.counts.items(), key=lambda kv: -kv[1])[:20]
        return {"samples": self.samples, "interval_s": self.interval,
                "busy_backends": {k: round(v / max(1, self.samples), 3) for k, v in top}}


class Analyzer:
    """ANALYZE tables when autovacuum would, standing in for it (the local server runs without).

    The PostgreSQL on the development machines runs with autovacuum off; without statistics
    the planner keeps seq-scanning tables that grow during the run (and caches that plan in
    each connection's prepared statements), which no production server with autovacuum on
    would do. So every `interval` s (the bench's stand-in for autovacuum_naptime) this reads
    pg_stat_user_tables and ANALYZEs, one by one, only the tables past autovacuum's trigger:
    n_mod_since_analyze > autovacuum_analyze_threshold + autovacuum_analyze_scale_factor *
    reltuples (the server's settings, or the table's own reloptions; reltuples -1, never
    analyzed, counts as 0). --no-analyze measures the case without statistics instead.
    """

    def __init__(self, dsn: str, interval: float = 5.0) -> None:
        self.dsn, self.interval = dsn, interval
        self.checks = 0
        self.by_table: dict[str, int] = {}
        self.analyze_s = 0.0
        self.settings = {"autovacuum_analyze_threshold": 50.0, "autovacuum_analyze_scale_factor": 0.1}
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    CANDIDATES = (
        "SELECT s.schemaname, s.relname, s.n_mod_since_analyze, c.reltuples, c.reloptions"
        " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
        " WHERE c.relkind IN ('r', 'm')")

    @staticmethod
    def _reloption(options: list[str] | None, name: str) -> str | None:
        for opt in options or ():
            key, _, value = opt.partition("=")
            if key == name:
                return value
        return None

    def due(self, n_mod: int, reltuples: float, options: list[str] | None = None) -> bool:
        """autovacuum's analyze trigger (relation_needs_vacanalyze) for one table."""
        enabled = self._reloption(options, "autovacuum_enabled")
        if enabled is not None and enabled.lower() in ("false", "off", "no", "0", "f", "n"):
            return False
        base = self._reloption(options, "autovacuum_analyze_threshold")
        scale = self._reloption(options, "autovacuum_analyze_scale_factor")
        base_n = self.settings["autovacuum_analyze_threshold"] if base is None else float(base)
        scale_f = self.settings["autovacuum_analyze_scale_factor"] if scale is None else float(scale)
        return n_mod > base_n + scale_f * max(0.0, reltuples)

    async def _run(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": BENCH_APP + " analyze"})
        try:
            for row in await conn.fetch(
                    "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])", list(self.settings)):
                self.settings[row["name"]] = float(row["setting"])
            while True:
                await asyncio.sleep(self.interval)
                self.checks += 1
                for r in await conn.fetch(self.CANDIDATES):
                    if not self.due(r["n_mod_since_analyze"] or 0, float(r["reltuples"]), r["reloptions"]):
                        continue
                    t = time.monotonic()
                    await conn.execute("ANALYZE {}.{}".format(*(
                        '"' + name.replace('"', '""') + '"' for name in (r["schemaname"], r["relname"]))))
                    self.analyze_s += time.monotonic() - t
                    self.by_table[r["relname"]] = self.by_table.get(r["relname"], 0) + 1
        finally:
            await conn.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any] | None:
        """How many ANALYZEs ran, per table, in how many checks (None: never started)."""
        if self._task is None:
            return None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - report it; a failed analyzer only loses statistics
            self.error = repr(exc)
        return {"trigger": "n_mod_since_analyze > autovacuum_analyze_threshold"
                           " + autovacuum_analyze_scale_factor * reltuples",
                "settings": self.settings, "interval_s": self.interval, "checks": self.checks,
                "analyzes": sum(self.by_table.values()),
                "by_table": dict(sorted(self.by_table.items(), key=lambda kv: -kv[1])),
                "seconds_in_analyze": round(self.analyze_s, 3), "error": self.error}

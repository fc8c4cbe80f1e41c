"""The three measurements: receiver vs bare aiohttp, worker vs raw COPY, end to end."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import wrk
from bench.env import REPO, BenchEnv
from bench.monitor import Analyzer, CpuMeter, Monitor, PgSampler, per_order_us
from bench.orders import body_for, body_template, envelope
from bench.procs import Proc

ENQUEUE = "/api/v1/order/enqueue"
Say = Callable[[str], None]


@dataclass
class Options:
    """What one run does (see bench/run.py for the command line)."""

    ingest_seconds: float  # per server, split over rounds
    rounds: int
    warmup_s: float
    connections: int
    threads: int
    store_orders: int
    workers: int
    concurrency: int
    claim_batch: int
    e2e_seconds: float
    e2e_rate: float
    e2e_connections: int
    drain_cap_s: float
    analyze: bool = True  # ANALYZE at autovacuum's trigger, checked every 5 s (see monitor.Analyzer)


async def post_one(url: str, body: dict[str, Any]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, await resp.text()


def _rate(results: list[dict[str, Any]]) -> float:
    accepted = sum(r["accepted_202"] for r in results)
    seconds = sum(r["duration_s"] for r in results)
    return accepted / seconds if seconds else 0.0


# --- 1. the receiver against a bare aiohttp app --------------------------------------------


async def phase_ingest(env: BenchEnv, opts: Options, say: Say, against: Path | None = None) -> dict[str, Any]:
    """Closed-loop wrk at both servers in alternating rounds; then every 202 must be in Redis.

    `against`: a checkout of another revision whose receiver joins the rounds as "before",
    so a change is measured against the code it replaces in the same minutes.
    """
    bare, bare_url = await env.start_bare()
    receiver, recv_url = await env.start_receiver("ingest-receiver")
    servers: list[tuple[str, str, Proc]] = [("bare", bare_url, bare), ("receiver", recv_url, receiver)]
    if against is not None:
        before, before_url = await env.start_receiver("ingest-receiver-before", code=against)
        servers.append(("before", before_url, before))
    for name, url, _ in servers[1:]:
        status, text = await post_one(url + ENQUEUE, body_for(f"probe-{name}", env.access_key, env.entity_id))
        if status != 202:
            raise RuntimeError(f"the {name} receiver answered {status} to order-valid.json: {text[:500]}")
    prefix, suffix = body_template(env.access_key, env.entity_id)
    per_round = max(1.0, opts.ingest_seconds / opts.rounds)
    for name, url, _ in servers:
        script = wrk.write_script(env.log_dir / f"ingest-{name}-warmup.lua", prefix, suffix,
                                  f"w{name[0]}-", 0, opts.threads)
        await wrk.run(url + ENQUEUE, script, seconds=opts.warmup_s, connections=opts.connections,
                      threads=opts.threads)
    await asyncio.sleep(0.5)  # the warm-up's last requests land before the count starts
    before = await env.queue_counts()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in servers}
    for r in range(opts.rounds):
        for name, url, proc in servers:
            script = wrk.write_script(env.log_dir / f"ingest-{name}-{r}.lua", prefix, suffix,
                                      f"{name[0]}{r}-", 0, opts.threads)
            meter = CpuMeter([proc])
            await meter.start()
            res = await wrk.run(url + ENQUEUE, script, seconds=per_round, connections=opts.connections,
                                threads=opts.threads)
            cpu = await meter.stop()
            run = {**res.as_dict(), "cpu": cpu, "wrk_cores": round(res.cpu_s / res.duration_s, 2)}
            server_cores = cpu["cores_used"][proc.name] or 0.0
            run["server_cpu_us_per_request"] = round(server_cores * 1e6 / res.rate, 1) if res.rate else None
            runs[name].append(run)
            say(f"   round {r + 1} {name:<8} {res.rate:>9,.0f}/s  p99 {res.latency_ms['p99']:6.1f} ms  "
                f"server {cpu['cores_used'][proc.name]} cores, wrk {run['wrk_cores']} cores, "
                f"machine {cpu['machine_busy_cores']}/{cpu['machine_cores']} busy")
    await asyncio.sleep(1.0)  # requests wrk stopped waiting for still finish
    after = await env.queue_counts()
    accepted = sum(r["accepted_202"] for name, _, _ in servers[1:] for r in runs[name])
    in_redis = after["seq"] - before["seq"]
    ready = after["ready"] - before["ready"]
    payloads = after["payloads"] - before["payloads"]
    slack = opts.connections * opts.rounds * (len(servers) - 1)
    extra = in_redis - accepted
    check = {"receiver_202s": accepted, "seq_delta": in_redis, "ready_delta": ready,
             "payloads_delta": payloads, "accepted_after_wrk_stopped_reading": extra,
             "in_flight_bound": slack,
             "ok": ready == payloads == in_redis and 0 <= extra <= slack}
    for _, _, proc in servers:
        env.stop(proc)
    await env.clear_redis()
    bare_rate, recv_rate = _rate(runs["bare"]), _rate(runs["receiver"])
    per_round_ratio = [round(rv["rate_202_per_s"] / bv["rate_202_per_s"], 3) if bv["rate_202_per_s"] else None
                       for bv, rv in zip(runs["bare"], runs["receiver"], strict=True)]
    def cpu_us(name: str) -> float | None:
        vals = [(r["server_cpu_us_per_request"], r["accepted_202"]) for r in runs[name]
                if r["server_cpu_us_per_request"]]
        return round(sum(v * n for v, n in vals) / sum(n for _, n in vals), 1) if vals else None

    bare_us, recv_us = cpu_us("bare"), cpu_us("receiver")
    return {"bare": {"rate_per_s": round(bare_rate, 1), "server_cpu_us_per_request": bare_us, "runs": runs["bare"]},
            "receiver": {"rate_per_s": round(recv_rate, 1), "server_cpu_us_per_request": recv_us,
                         "runs": runs["receiver"]},
            "ratio": round(recv_rate / bare_rate, 3) if bare_rate else None,
            # the same comparison per CPU second of the server: steadier on a shared machine
            "ratio_per_cpu": round(bare_us / recv_us, 3) if bare_us and recv_us else None,
            **({"before": {"rate_per_s": round(_rate(runs["before"]), 1),
                           "server_cpu_us_per_request": cpu_us("before"), "runs": runs["before"],
                           "receiver_cpu_vs_before": round(recv_us / cpu_us("before"), 3)
                           if recv_us and cpu_us("before") else None}} if against is not None else {}),
            "ratio_per_round": per_round_ratio, "redis_check": check,
            "connections": opts.connections, "seconds_per_round": per_round}


# --- 2. the worker against raw COPY --------------------------------------------------------


async def copy_round(env: BenchEnv, opts: Options, n: int, tag: str) -> dict[str, Any]:
    """n orders' rows COPYed by `workers` processes x `concurrency` connections, batches of claim_batch."""
    conn = await asyncpg.connect(env.dsn)
    try:
        seq_name = await conn.fetchval("SELECT pg_get_serial_sequence('orders', 'order_id')")
        first_id = int(await conn.fetchval("SELECT nextval($1)", seq_name))
        await conn.execute("SELECT setval($1, $2)", seq_name, first_id + n)
    finally:
        await conn.close()
    shares = [n // opts.workers + (1 if i < n % opts.workers else 0) for i in range(opts.workers)]
    procs = []
    start = 0
    for share in shares:
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.copyload", "--dsn", env.dsn, "--entity", env.entity_id,
            "--first-id", str(first_id + start), "--count", str(share), "--seq", str(1_000_000 + start),
            "--tag", tag, "--batch", str(opts.claim_batch), "--concurrency", str(opts.concurrency),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO, env=env.child_env()))
        start += share
    for p in procs:
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), 300)
        if line.strip() != b"ready":
            raise RuntimeError(f"copyload did not get ready: {line!r}")
    meter = CpuMeter([], env.dsn)
    await meter.start()
    t_go = time.time()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        await p.stdin.drain()
    outs = []
    for p in procs:
        assert p.stdout is not None
        outs.append(json.loads(await asyncio.wait_for(p.stdout.readline(), 300)))
    cpu = await meter.stop()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"bye\n")
        await p.stdin.drain()
        await asyncio.wait_for(p.wait(), 60)
    t_end = max(o["t1"] for o in outs)
    conn = await asyncpg.connect(env.dsn)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM orders WHERE reference LIKE $1", tag + "-%")
    finally:
        await conn.close()
    if stored != n:
        raise RuntimeError(f"COPY stored {stored} orders, expected {n}")
    seconds = t_end - t_go
    cpu["cores_used"]["copy clients"] = round(sum(o["cpu_s"] for o in outs) / seconds, 3)
    return {"orders": n, "seconds": round(seconds, 3), "rate_per_s": round(n / seconds, 1), "cpu": cpu,
            "cpu_us_per_order": per_order_us(cpu, n / seconds)}


async def worker_round(env: BenchEnv, opts: Options, n: int, say: Say) -> dict[str, Any]:
    """Pre-fill n envelopes (as ingest/routes.py builds them), start paused workers, time the drain."""
    assert env.queue is not None
    await env.queue.pause(True)
    t_fill = time.monotonic()
    chunk: list[tuple[int, str, str, bytes]] = []
    for i in range(n):
        body = body_for(f"w-{i}", env.access_key, env.entity_id)
        priority, env_bytes = envelope(body, entity_id=env.entity_id, key_id=env.key_id)
        chunk.append((priority, env.key_id, "127.0.0.1", env_bytes))
        if len(chunk) == 500 or i == n - 1:
            await env.queue.enqueue_many(chunk)
            chunk = []
    counts = await env.queue_counts()
    if counts["ready"] != n:
        raise RuntimeError(f"pre-fill left {counts['ready']} ready, expected {n}")
    say(f"   pre-filled {n:,} envelopes in {time.monotonic() - t_fill:.1f} s; starting workers (paused)")
    workers = await env.start_workers(opts.workers, opts.concurrency, "store")
    meter = CpuMeter(workers, env.dsn)
    await meter.start()
    pg_sampler = PgSampler(env.dsn)
    pg_sampler.start()
    analyzer = Analyzer(env.dsn)
    if opts.analyze:
        analyzer.start()
    t0 = time.time()
    await env.queue.pause(False)
    deadline = time.monotonic() + max(120.0, n / 100)
    while True:
        counts = await env.queue_counts()
        if counts["ready"] + counts["leased"] == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not drain {n} orders in time: {counts}")
        await asyncio.sleep(0.05)
    t1 = time.time()
    cpu = await meter.stop()
    pg_activity = await pg_sampler.stop()
    analyzed = await analyzer.stop()
    codes = {w.name: env.stop(w) for w in workers}
    conn = await asyncpg.connect(env.dsn)
    try:
        states = {r["state"]: r["n"] for r in await conn.fetch(
            "SELECT state, count(*) AS n FROM receipts GROUP BY state")}
    finally:
        await conn.close()
    seconds = t1 - t0
    return {"orders": n, "seconds": round(seconds, 3), "rate_per_s": round(n / seconds, 1),
            "receipts": states, "ok": states.get("stored", 0) == n and sum(states.values()) == n,
            "cpu": cpu, "cpu_us_per_order": per_order_us(cpu, n / seconds), "pg_activity": pg_activity,
            "analyze_runs": analyzed,
            "worker_exit_codes": codes, "logs": {w.name: scan_log(w) for w in workers}}


async def phase_store(env: BenchEnv, opts: Options, say: Say) -> dict[str, Any]:
    """COPY, worker, COPY again (drift check), each into empty tables."""
    n = opts.store_orders
    await env.clear_redis()
    await env.truncate()
    before = await copy_round(env, opts, n, "ca")
    say(f"   COPY (before)  {before['rate_per_s']:>9,.0f}/s  ({n:,} orders in {before['seconds']:.2f} s)")
    await env.truncate()
    worker = await worker_round(env, opts, n, say)
    say(f"   worker         {worker['rate_per_s']:>9,.0f}/s  ({n:,} orders in {worker['seconds']:.2f} s; "
        f"workers {worker['cpu']['cores_used']} cores)")
    await env.truncate()
    await env.clear_redis()
    after = await copy_round(env, opts, n, "cb")
    say(f"   COPY (after)   {after['rate_per_s']:>9,.0f}/s")
    await env.truncate()
    copy_rate = (before["rate_per_s"] + after["rate_per_s"]) / 2
    return {"copy": {"rate_per_s": round(copy_rate, 1), "before": before, "after": after},
            "worker": worker, "ratio": round(worker["rate_per_s"] / copy_rate, 3) if copy_rate else None,
            "orders": n, "workers": opts.workers, "concurrency": opts.concurrency,
            "claim_batch": opts.claim_batch}


# --- 3. end to end ---------------------------------------------------------------------------


def scan_log(proc: Proc) -> dict[str, Any]:
    """Counts of warning/error lines in a process's JSON log, with the first few error events."""
    counts: dict[str, int] = {}
    firsts: list[str] = []
    batch_sizes: list[int] = []
    try:
        lines = proc.log.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                counts["traceback"] = counts.get("traceback", 0) + 1
            continue
        if not isinstance(event, dict):
            continue
        if event.get("event") == "batch_stored" and isinstance(event.get("size"), int):
            batch_sizes.append(event["size"])
        level = str(event.get("level", "")).lower()
        if level in ("warning", "error", "critical", "exception"):
            counts[level] = counts.get(level, 0) + 1
            if level != "warning" and len(firsts) < 3:
                firsts.append(str(event.get("event"))[:200])
    out: dict[str, Any] = {"counts": counts, "first_errors": firsts}
    if batch_sizes:
        out["batches"] = len(batch_sizes)
        out["mean_batch_size"] = round(sum(batch_sizes) / len(batch_sizes), 1)
    return out


async def phase_e2e(env: BenchEnv, opts: Options, say: Say) -> dict[str, Any]:
    """Paced load for e2e_seconds with receiver and workers running; then drain and read receipts."""
    await env.clear_redis()
    await env.truncate()
    receiver, url = await env.start_receiver("e2e-receiver")
    workers = await env.start_workers(opts.workers, opts.concurrency, "e2e")
    procs = [receiver, *workers]
    await asyncio.sleep(1.0)
    rss_idle = {p.name: p.rss_kb() for p in procs}
    prefix, suffix = body_template(env.access_key, env.entity_id)
    script = wrk.write_script(env.log_dir / "e2e.lua", prefix, suffix, "e-", opts.e2e_rate, opts.threads)
    monitor = Monitor(env, procs)
    monitor.start()
    pg_sampler = PgSampler(env.dsn)
    pg_sampler.start()
    analyzer = Analyzer(env.dsn)
    if opts.analyze:
        analyzer.start()
    meter = CpuMeter(procs, env.dsn)
    await meter.start()
    t_load0 = time.time()
    load = asyncio.create_task(wrk.run(url + ENQUEUE, script, seconds=opts.e2e_seconds,
                                       connections=opts.e2e_connections, threads=opts.threads))
    warm_s = min(10.0, max(2.0, opts.e2e_seconds * 0.1))
    await asyncio.sleep(warm_s)
    rss_warm = {p.name: p.rss_kb() for p in procs}
    res = await load
    t_load1 = time.time()
    rss_end = {p.name: p.rss_kb() for p in procs}
    cpu = await meter.stop()
    pg_activity = await pg_sampler.stop()
    say(f"   load done: {res.accepted:,} 202s ({res.rate:,.0f}/s); draining the queue "
        f"(at most {opts.drain_cap_s:.0f} s)")
    drain_deadline = time.monotonic() + opts.drain_cap_s
    while True:
        counts = await env.queue_counts()
        if counts["ready"] + counts["leased"] == 0 or time.monotonic() > drain_deadline:
            break
        await asyncio.sleep(0.1)
    t_drained = time.time()
    analyzed = await analyzer.stop()
    await asyncio.sleep(0.6)
    await monitor.stop()
    counts = await env.queue_counts()
    left = counts["ready"] + counts["leased"]
    conn = await asyncpg.connect(env.dsn)
    try:
        states = {r["state"]: r["n"] for r in await conn.fetch(
            "SELECT state, count(*) AS n FROM receipts GROUP BY state")}
        lag_sql = "extract(epoch FROM stored_at - received_at)"
        lag = await conn.fetchrow(
            f"SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99, 0.999]) WITHIN GROUP (ORDER BY {lag_sql}) AS p,"
            f" max({lag_sql}) AS max, avg({lag_sql}) AS mean FROM receipts")
        window = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE stored_at BETWEEN to_timestamp($1) AND to_timestamp($2)) AS stored,"
            " count(*) FILTER (WHERE stored_at BETWEEN to_timestamp($3) AND to_timestamp($2)) AS stored_steady,"
            " count(*) FILTER (WHERE received_at BETWEEN to_timestamp($1) AND to_timestamp($2)) AS received"
            " FROM receipts", t_load0, t_load1, t_load0 + warm_s)
        by_received = await conn.fetch(
            f"SELECT floor(extract(epoch FROM received_at))::bigint AS s, count(*) AS n,"
            f" percentile_cont(0.5) WITHIN GROUP (ORDER BY {lag_sql}) AS p50,"
            f" percentile_cont(0.99) WITHIN GROUP (ORDER BY {lag_sql}) AS p99"
            " FROM receipts GROUP BY 1 ORDER BY 1")
        by_stored = await conn.fetch(
            "SELECT floor(extract(epoch FROM stored_at))::bigint AS s, count(*) AS n"
            " FROM receipts GROUP BY 1 ORDER BY 1")
    finally:
        await conn.close()
    codes = {p.name: env.stop(p) for p in procs}
    logs = {p.name: scan_log(p) for p in procs}
    load_s = t_load1 - t_load0
    receipts_total = sum(states.values())
    lost = counts["seq"] - receipts_total - left
    log_errors = sum(v for lg in logs.values() for k, v in lg.get("counts", {}).items() if k != "warning")
    not_stored = receipts_total - states.get("stored", 0)
    pct = list(lag["p"]) if lag["p"] else [None] * 4
    rss = {}
    for p in procs:
        idle, warm, end = rss_idle[p.name], rss_warm[p.name], rss_end[p.name]
        rss[p.name] = {"idle_kb": idle, "warm_kb": warm, "end_kb": end,
                       "growth_from_warm": round(end / warm - 1, 4) if end and warm else None,
                       "growth_from_idle": round(end / idle - 1, 4) if end and idle else None}
    series = {
        "t0": t_load0, "load_s": load_s,
        "received": [[r["s"] + 0.5 - t_load0, r["n"], r["p50"], r["p99"]] for r in by_received],
        "stored": [[r["s"] + 0.5 - t_load0, r["n"]] for r in by_stored],
        "samples": [{"t": s["t"] - t_load0, "ready": s.get("ready"), "leased": s.get("leased"),
                     "rss_kb": s["rss_kb"]} for s in monitor.samples],
    }
    steady_s = max(1e-9, t_load1 - (t_load0 + warm_s))
    errors = {"non_202": sum(res.non_202.values()),
              "socket": sum(v for k, v in res.socket_errors.items() if k != "status"),
              "receipts_not_stored": not_stored, "lost": lost, "log_errors": log_errors}
    return {
        "offered_rate_per_s": opts.e2e_rate, "seconds": round(load_s, 2), "connections": opts.e2e_connections,
        "wrk": res.as_dict(), "accepted_rate_per_s": round(res.rate, 1),
        "stored_in_window": window["stored"], "stored_rate_per_s": round(window["stored"] / load_s, 1),
        "stored_rate_steady_per_s": round(window["stored_steady"] / steady_s, 1),
        "received_in_window": window["received"],
        "lag_s": {"p50": pct[0], "p90": pct[1], "p99": pct[2], "p999": pct[3],
                  "max": lag["max"], "mean": float(lag["mean"]) if lag["mean"] is not None else None},
        "drain_s": round(t_drained - t_load1, 2), "left_in_queue": left, "accepted_by_redis": counts["seq"],
        "receipts": states, "errors": errors, "errors_total": sum(errors.values()),
        "rss": rss, "cpu": cpu, "pg_activity": pg_activity, "analyze_runs": analyzed,
        "cpu_us_per_order": per_order_us(cpu, window["received"] / load_s, window["stored"] / load_s),
        "exit_codes": codes, "logs": logs, "series": series,
        "workers": opts.workers, "concurrency": opts.concurrency,
    }

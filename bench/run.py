"""`python -m bench`: start our own receiver, workers and baselines; measure; print ratios; write JSON + PNG."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import wrk
from bench.env import REPO, BenchEnv
from bench.monitor import BENCH_PG
from bench.phases import Options, phase_e2e, phase_ingest, phase_store

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"receiver_vs_bare": 0.8, "worker_vs_copy": 0.5, "e2e_rate_per_s": 5000, "e2e_seconds": 60,
           "lag_p99_s": 1.0, "errors": 0, "rss_growth": 0.10}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short phases (about 1.5 minutes in all)")
    p.add_argument("--duration", type=float, default=None, help="end-to-end load seconds (default 60, quick 10)")
    p.add_argument("--rate", type=float, default=TARGETS["e2e_rate_per_s"],
                   help="offered end-to-end rate, orders/s (0: as fast as it goes)")
    p.add_argument("--ingest-seconds", type=float, default=None,
                   help="closed-loop seconds per server in phase 1 (default 20, quick 8)")
    p.add_argument("--rounds", type=int, default=2, help="alternating bare/receiver rounds in phase 1")
    p.add_argument("--orders", type=int, default=None, help="pre-filled orders in phase 2 (default 30000, quick 8000)")
    p.add_argument("--workers", type=int, default=2, help="`orderflow worker` processes")
    p.add_argument("--concurrency", type=int, default=2, help="consumers per worker process")
    p.add_argument("--connections", type=int, default=64, help="wrk connections for the ceilings")
    p.add_argument("--e2e-connections", type=int, default=128, help="wrk connections for the paced e2e load")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--uvloop", action="store_true",
                   help="run every process (bare app, receiver, workers) on uvloop (A/B; needs uvloop from PyPI)")
    p.add_argument("--no-analyze", action="store_true",
                   help="do not ANALYZE tables during phases 2 and 3 (by default, every 5 s, those past "
                        "autovacuum's analyze trigger, since the local PostgreSQL runs with autovacuum off; "
                        "see bench/README.md)")
    p.add_argument("--only", default="ingest,store,e2e", help="comma-separated phases to run")
    p.add_argument("--code", metavar="REV", default=None,
                   help="run orderflow (migrate, receivers, workers) as git revision REV has it, from a "
                        "temporary worktree; the bench itself and its baselines stay this checkout's")
    p.add_argument("--against", metavar="REV", default=None,
                   help="phase 1 also runs the receiver of git revision REV (a temporary worktree) in "
                        "the same alternating rounds: before/after measured in the same minutes")
    p.add_argument("--profile", action="store_true",
                   help="instead of measuring: py-spy the receiver and the workers under load (bench/profile.py)")
    p.add_argument("--profile-seconds", type=float, default=20.0, help="py-spy seconds per process")
    p.add_argument("--pg", default=os.environ.get("ORDERFLOW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432"),
                   help="PostgreSQL server URL without database (env ORDERFLOW_BENCH_PG)")
    p.add_argument("--redis", default=os.environ.get("ORDERFLOW_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
                   help="Redis URL (env ORDERFLOW_BENCH_REDIS)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where JSON, PNG and logs go")
    p.add_argument("--keep", action="store_true", help="keep the database and Redis keys afterwards")
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> Options:
    quick = args.quick
    e2e_s = args.duration if args.duration is not None else (10.0 if quick else 60.0)
    return Options(
        ingest_seconds=args.ingest_seconds or (8.0 if quick else 20.0), rounds=max(1, args.rounds),
        warmup_s=1.0 if quick else 2.0, connections=args.connections, threads=args.threads,
        store_orders=args.orders or (8000 if quick else 30000), workers=args.workers,
        concurrency=args.concurrency, claim_batch=int(os.environ.get("ORDERFLOW_CLAIM_BATCH", "200")),
        e2e_seconds=e2e_s, e2e_rate=args.rate, e2e_connections=args.e2e_connections,
        drain_cap_s=max(20.0, min(60.0, e2e_s)), analyze=not args.no_analyze)


@contextlib.contextmanager
def checkout_of(rev: str | None) -> Iterator[Path | None]:
    """A detached worktree of `rev` for the run's length (None without a revision)."""
    if not rev:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="orderflow-bench-against-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(path), rev],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                       capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def git_commit(rev: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", rev], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def say(text: str) -> None:
    print(text, flush=True)


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cores": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load],
            "python": platform.python_version(), "platform": platform.platform()}


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the work tree differed from it (outside bench/)."""
    import subprocess

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=RESULTS.parents[1], capture_output=True, text=True,
                                  timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [ln[3:] for ln in git("status", "--porcelain").splitlines() if not ln[3:].startswith("bench/")]
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty_paths_outside_bench": dirty[:50]}


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The ratios against targets (report, never assert)."""
    out: dict[str, Any] = {}
    ingest, store, e2e = result.get("ingest"), result.get("store"), result.get("e2e")
    if ingest:
        out["receiver_vs_bare"] = {"value": ingest["ratio"], "target": ">= 0.8",
                                   "met": ingest["ratio"] is not None and ingest["ratio"] >= TARGETS["receiver_vs_bare"]}
        out["every_202_in_redis"] = {"value": ingest["redis_check"]["ok"], "met": ingest["redis_check"]["ok"]}
    if store:
        out["worker_vs_copy"] = {"value": store["ratio"], "target": ">= 0.5",
                                 "met": store["ratio"] is not None and store["ratio"] >= TARGETS["worker_vs_copy"]}
    if e2e:
        rate_ratio = e2e["stored_rate_per_s"] / TARGETS["e2e_rate_per_s"]
        full_length = e2e["seconds"] >= TARGETS["e2e_seconds"] - 1
        out["e2e_vs_5000"] = {"value": round(rate_ratio, 3), "stored_rate_per_s": e2e["stored_rate_per_s"],
                              "target": ">= 1.0 for 60 s",
                              "met": rate_ratio >= 1.0 and full_length and e2e["offered_rate_per_s"] >= 5000,
                              "note": None if full_length else f"ran {e2e['seconds']:.0f} s, not 60 s"}
        p99 = e2e["lag_s"]["p99"]
        out["lag_p99"] = {"value": p99, "target": "<= 1 s", "met": p99 is not None and p99 <= TARGETS["lag_p99_s"]}
        out["errors_and_lost"] = {"value": e2e["errors_total"], "detail": e2e["errors"],
                                  "met": e2e["errors_total"] == 0 and e2e["left_in_queue"] == 0}
        growth = {k: v["growth_from_warm"] for k, v in e2e["rss"].items()}
        worst = max((g for g in growth.values() if g is not None), default=None)
        out["rss_growth"] = {"value": worst, "per_process": growth, "target": "< 10 % (warmed start to end)",
                             "met": worst is not None and worst < TARGETS["rss_growth"]}
    return out


def budget(us: dict[str, float]) -> str:
    """'receiver 180 µs, ...' without the all-of-PostgreSQL figure (it includes the neighbours)."""
    return ", ".join(f"{k} {v:,.0f} µs" for k, v in us.items() if "all, incl." not in k)


def orderflow_us(us: dict[str, float]) -> float:
    """CPU per order of orderflow's processes and PostgreSQL work: no neighbours, no bench housekeeping."""
    return sum(v for k, v in us.items() if "all, incl." not in k and k != BENCH_PG)


def analyze_line(runs: Any) -> str:
    """How many ANALYZEs the Analyzer ran (autovacuum's trigger, checked every 5 s), per table."""
    if not isinstance(runs, dict):
        return "ANALYZE: off (--no-analyze)" if runs is None else f"ANALYZE: {runs}"
    st = runs["settings"]
    tables = ", ".join(f"{t} {n}" for t, n in runs["by_table"].items()) or "none"
    return (f"ANALYZE as autovacuum would ({st['autovacuum_analyze_threshold']:.0f} + "
            f"{st['autovacuum_analyze_scale_factor']:g} x reltuples rows changed; {runs['checks']} checks "
            f"every {runs['interval_s']:.0f} s): {runs['analyzes']} runs, {runs['seconds_in_analyze']:.2f} s; "
            f"{tables}" + (f"; FAILED {runs['error']}" if runs.get("error") else ""))


def print_report(result: dict[str, Any]) -> None:
    ingest, store, e2e = result.get("ingest"), result.get("store"), result.get("e2e")
    summary = result["summary"]
    say("")
    say("=" * 78)
    say(f"orderflow bench {result['started']} ({result['mode']}), {result['machine']['cores']} cores, "
        f"load avg at start {result['machine']['loadavg_at_start']}")
    say(f"load generator: {result['load_generator']}")
    say(f"event loop: {result['event_loop']}; PostgreSQL autovacuum {result.get('pg_autovacuum')}, "
        f"bench ANALYZE at autovacuum's trigger (checked every 5 s): "
        f"{'yes' if result['options']['analyze'] else 'no'}")
    g = result["git"]
    if "code" in result:
        say(f"code: orderflow as of {result['code']['rev']} ({result['code']['commit'][:7]}); "
            f"bench and baselines at {g['commit']}")
    else:
        say(f"code: {g['commit']}" + (f" + uncommitted changes in {len(g['dirty_paths_outside_bench'])} paths"
                                     if g["dirty_paths_outside_bench"] else ""))
    if ingest:
        b, r = ingest["bare"], ingest["receiver"]
        b99 = max(x["latency_ms"]["p99"] for x in b["runs"])
        r99 = max(x["latency_ms"]["p99"] for x in r["runs"])
        wrk_cores = max(x["wrk_cores"] for x in b["runs"] + r["runs"])
        say(f"1. receiver ceiling: closed loop, {len(r['runs'])} alternating rounds x "
            f"{ingest['seconds_per_round']:.0f} s, {ingest['connections']} connections")
        say(f"   bare aiohttp {b['rate_per_s']:>10,.0f}/s   p99 {b99:6.1f} ms   server CPU "
            f"{b['server_cpu_us_per_request']} µs/request")
        say(f"   receiver     {r['rate_per_s']:>10,.0f}/s   p99 {r99:6.1f} ms   server CPU "
            f"{r['server_cpu_us_per_request']} µs/request")
        if "before" in ingest:
            bf = ingest["before"]
            say(f"   receiver at {result['against']['rev']} ({result['against']['commit'][:7]}) "
                f"{bf['rate_per_s']:>8,.0f}/s   server CPU {bf['server_cpu_us_per_request']} µs/request; "
                f"this code's CPU per request {bf['receiver_cpu_vs_before']} x that")
        say(f"   receiver/bare {ingest['ratio']:.2f} (per round {ingest['ratio_per_round']}; per CPU second "
            f"{ingest['ratio_per_cpu']})   target >= 0.80  {_verdict(summary['receiver_vs_bare']['met'])}")
        c = ingest["redis_check"]
        say(f"   every 202 in Redis: {c['receiver_202s']:,} 202s; Redis seq +{c['seq_delta']:,}, ready "
            f"+{c['ready_delta']:,}, payloads +{c['payloads_delta']:,}; {c['accepted_after_wrk_stopped_reading']} "
            f"accepted after wrk stopped reading (<= {c['in_flight_bound']} in flight)  "
            f"{'OK' if c['ok'] else 'FAILED'}")
        say(f"   wrk used at most {wrk_cores} cores")
    if store:
        w = store["worker"]
        say(f"2. worker ceiling: {store['orders']:,} orders pre-filled, {store['workers']} workers x "
            f"{store['concurrency']} consumers, batches of {store['claim_batch']}")
        say(f"   raw COPY     {store['copy']['rate_per_s']:>10,.0f}/s   (before {store['copy']['before']['rate_per_s']:,.0f}, "
            f"after {store['copy']['after']['rate_per_s']:,.0f}; 5 tables, same rows, same batches)")
        say(f"   worker       {w['rate_per_s']:>10,.0f}/s   ({w['seconds']:.1f} s; receipts {w['receipts']})")
        say(f"   CPU per order, COPY:   {budget(store['copy']['before']['cpu_us_per_order'])}")
        say(f"   CPU per order, worker: {budget(w['cpu_us_per_order'])}")
        say(f"   worker/COPY  {store['ratio']:.2f}   target >= 0.50  {_verdict(summary['worker_vs_copy']['met'])}")
        say(f"   {analyze_line(w.get('analyze_runs'))}")
    if e2e:
        wr = e2e["wrk"]
        lag = e2e["lag_s"]
        say(f"3. end to end: offered {e2e['offered_rate_per_s']:,.0f}/s for {e2e['seconds']:.0f} s, "
            f"{e2e['connections']} connections, {e2e['workers']} workers x {e2e['concurrency']}")
        say(f"   accepted     {e2e['accepted_rate_per_s']:>10,.0f}/s   receiver latency p50 "
            f"{wr['latency_ms']['p50']:.1f} ms, p99 {wr['latency_ms']['p99']:.1f} ms, max {wr['latency_ms']['max']:.0f} ms")
        say(f"   stored       {e2e['stored_rate_per_s']:>10,.0f}/s   (after warm-up {e2e['stored_rate_steady_per_s']:,.0f}/s); "
            f"drain {e2e['drain_s']:.1f} s, left in queue {e2e['left_in_queue']:,}")

        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f} s"

        say(f"   lag          p50 {fmt(lag['p50'])}, p99 {fmt(lag['p99'])}, max {fmt(lag['max'])}   "
            f"target p99 <= 1 s  {_verdict(summary['lag_p99']['met'])}")
        say(f"   errors       {e2e['errors_total']} {e2e['errors']}; receipts {e2e['receipts']}  "
            f"{_verdict(summary['errors_and_lost']['met'])}")
        say(f"   e2e/target   {summary['e2e_vs_5000']['value']:.2f} (stored {e2e['stored_rate_per_s']:,.0f}/s "
            f"vs 5,000/s)  {_verdict(summary['e2e_vs_5000']['met'])}"
            + (f"  [{summary['e2e_vs_5000']['note']}]" if summary["e2e_vs_5000"]["note"] else ""))
        for name, r in e2e["rss"].items():
            def mb(kb: int | None) -> str:
                return "?" if kb is None else f"{kb / 1024:.0f}"
            g = r["growth_from_warm"]
            say(f"   RSS {name:<14} idle {mb(r['idle_kb'])} MiB, warm {mb(r['warm_kb'])} MiB, end {mb(r['end_kb'])} MiB"
                f"  growth {'?' if g is None else f'{g:+.1%}'}")
        say(f"   RSS growth (worst, warm to end) target < 10 %  {_verdict(summary['rss_growth']['met'])}")
        say(f"   CPU during load (cores): {e2e['cpu']['cores_used']}; machine busy "
            f"{e2e['cpu']['machine_busy_cores']}/{e2e['cpu']['machine_cores']}, of which neighbours "
            f"(not this bench) {e2e['cpu']['neighbours_cores']}")
        us = e2e["cpu_us_per_order"]
        say(f"   CPU per order: {budget(us)}")
        act = e2e.get("pg_activity", {}).get("busy_backends", {})
        if act:
            say("   PostgreSQL, our backends busy in (average backends, sampled pg_stat_activity):")
            for name, v in list(act.items())[:8]:
                say(f"     {v:5.2f}  {name}")
        sizes = [lg["mean_batch_size"] for name, lg in e2e["logs"].items() if "mean_batch_size" in lg]
        if sizes:
            say(f"   mean batch size in the workers: {', '.join(f'{x:.0f}' for x in sizes)} "
                f"(phase 2: {', '.join(str(lg.get('mean_batch_size')) for lg in (result.get('store') or {}).get('worker', {}).get('logs', {}).values()) or 'n/a'})")
        say(f"   {analyze_line(e2e.get('analyze_runs'))}")
        own = orderflow_us(us)
        say(f"   => {own:,.0f} µs of CPU per order end to end: {own * TARGETS['e2e_rate_per_s'] / 1e6:.1f} cores "
            f"for 5,000/s (this machine: {result['machine']['cores']})")


async def run(args: argparse.Namespace) -> int:
    opts = options(args)
    phases = {p.strip() for p in args.only.split(",") if p.strip()}
    if wrk.available() is None and (phases & {"ingest", "e2e"} or args.profile):
        say("wrk is not installed: apt-get install -y wrk   (the load generator; see bench/README.md)")
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.results.mkdir(parents=True, exist_ok=True)
    log_dir = args.results / f"{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = BenchEnv(args.pg, args.redis, log_dir)
    env.uvloop = args.uvloop
    started = time.monotonic()
    result: dict[str, Any] = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "mode": "profile" if args.profile else ("quick" if args.quick else "full"),
        "machine": machine(), "git": git_state(), "options": opts.__dict__, "targets": TARGETS,
        "load_generator": (f"wrk ({wrk.available()}), {opts.threads} thread(s), Lua script with a unique "
                           "reference per request; C + epoll, a few % of a core at these rates (measured below)"),
        "event_loop": "uvloop" if args.uvloop else "asyncio (default)",
        "database": env.db_name, "redis_prefix": env.prefix, "logs": str(log_dir),
    }
    status = 0
    task = asyncio.current_task()
    if task is not None:  # SIGTERM (a CI timeout, say) cleans up like Ctrl-C does
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    checkouts = contextlib.ExitStack()
    try:
        if args.code:
            env.code = checkouts.enter_context(checkout_of(args.code))
            result["code"] = {"rev": args.code, "commit": git_commit(args.code)}
            say(f"bench: orderflow as of {args.code} ({result['code']['commit'][:7]}), from {env.code}")
        say(f"bench: database {env.db_name}, Redis prefix {{{env.prefix}}}, logs in {log_dir}")
        migrated = await env.setup()
        result["pg_autovacuum"] = await env.pg_setting("autovacuum")
        say(f"   migrated ({migrated}); entity {env.entity_id}, key {env.key_id}")
        if args.profile:
            from bench.profile import run_profile

            result["profile"] = await run_profile(env, opts, args.profile_seconds, args.results, stamp, say)
        else:
            if "ingest" in phases:
                say("1. receiver vs bare aiohttp ...")
                with checkout_of(args.against) as against:
                    if args.against:
                        result["against"] = {"rev": args.against, "commit": git_commit(args.against)}
                    result["ingest"] = await phase_ingest(env, opts, say, against)
            if "store" in phases:
                say("2. worker vs raw COPY ...")
                result["store"] = await phase_store(env, opts, say)
            if "e2e" in phases:
                say(f"3. end to end, {opts.e2e_seconds:.0f} s at {opts.e2e_rate:,.0f}/s ...")
                result["e2e"] = await phase_e2e(env, opts, say)
            result["summary"] = summarize(result)
    except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - report it, then clean up
        result["failed"] = repr(exc)
        say(f"bench failed: {exc!r} (logs kept in {log_dir})")
        status = 1
    finally:
        notes = await env.cleanup(keep=args.keep)
        checkouts.close()
        for note in notes:
            say("   " + note)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    json_path = args.results / f"{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1, default=str))
    if "summary" in result:
        print_report(result)
        from bench.chart import draw

        png = draw(result, args.results / f"{stamp}.png")
        say(f"JSON  {json_path}")
        say(f"chart {png}" if png else "chart: matplotlib is not installed (pip install matplotlib)")
    else:
        say(f"JSON  {json_path}")
    say(f"took {result['elapsed_s']:.0f} s")
    return status


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        sys.exit(asyncio.run(run(args)))
    except KeyboardInterrupt:
        sys.exit(130)

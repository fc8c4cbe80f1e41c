"""Where one worker batch spends its time: worker.store.store_batch with every statement timed.

`python -m bench.statements [--orders 6000] [--batch 200]` creates its own database (like the
bench), builds envelopes as the receiver does, and runs store_batch in this process on one
connection, one batch after another (no Redis, no competition), through a proxy connection
that times each fetch/execute/COPY (named after shared/sql) and the commit. The remainder of
a batch is Python: decoding and the order rules (prepare) and planning.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.env import BenchEnv
from bench.orders import body_for, envelope


class TimedConnection:
    """Forwards to an asyncpg connection, timing each statement by name."""

    def __init__(self, conn: Any, names: dict[str, str], times: dict[str, list[float]]) -> None:
        self._conn, self._names, self.times = conn, names, times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def _name(self, query: str) -> str:
        return self._names.get(query.strip(), query.strip().split("\n")[0][:40])

    async def _timed(self, label: str, coro: Any) -> Any:
        t = time.perf_counter()
        try:
            return await coro
        finally:
            self.times[label].append(time.perf_counter() - t)

    async def fetch(self, query: str, *args: Any, **kw: Any) -> Any:
        return await self._timed(self._name(query), self._conn.fetch(query, *args, **kw))

    async def fetchrow(self, query: str, *args: Any, **kw: Any) -> Any:
        return await self._timed(self._name(query), self._conn.fetchrow(query, *args, **kw))

    async def fetchval(self, query: str, *args: Any, **kw: Any) -> Any:
        return await self._timed(self._name(query), self._conn.fetchval(query, *args, **kw))

    async def execute(self, query: str, *args: Any, **kw: Any) -> Any:
        return await self._timed(self._name(query), self._conn.execute(query, *args, **kw))

    async def copy_records_to_table(self, table: str, **kw: Any) -> Any:
        return await self._timed(f"COPY {table}", self._conn.copy_records_to_table(table, **kw))

    def transaction(self, **kw: Any) -> Any:
        outer = self

        class Timed:
            def __init__(self) -> None:
                self.tx = outer._conn.transaction(**kw)

            async def __aenter__(self) -> Any:
                return await outer._timed("BEGIN", self.tx.__aenter__())

            async def __aexit__(self, *exc: object) -> Any:
                return await outer._timed("COMMIT", self.tx.__aexit__(*exc))

        return Timed()


async def main_async(orders: int, batch: int, pg: str) -> None:
    import msgspec

    from shared.db import QUERIES, connect
    from worker import store

    env = BenchEnv(pg, "redis://127.0.0.1:6379/0", Path(tempfile.mkdtemp(prefix="bench-statements-")))
    try:
        await env.setup()
        envs = []
        for i in range(orders):
            _, data = envelope(body_for(f"s-{i}", env.access_key, env.entity_id), entity_id=env.entity_id,
                               key_id=env.key_id)
            envs.append((i + 1, data))
        conn = await connect(env.dsn)
        times: dict[str, list[float]] = defaultdict(list)
        timed = TimedConnection(conn, {q.strip(): n for n, q in QUERIES.items()}, times)
        prepare_s = 0.0
        t_all = time.perf_counter()
        for start in range(0, orders, batch):
            chunk = envs[start:start + batch]
            t = time.perf_counter()
            for seq, data in chunk:  # what store_batch's first line does, timed on its own
                store.prepare(seq, data)
            prepare_s += time.perf_counter() - t
            await store.store_batch(timed, chunk, dt.datetime.now(dt.UTC))
        total = time.perf_counter() - t_all - prepare_s  # store_batch prepares again: count it once
        await conn.close()
        statements = sum(sum(v) for v in times.values())
        batches = (orders + batch - 1) // batch
        print(f"{orders} orders in {batches} batches of {batch}, one connection, nothing else running here:")
        print(f"  {orders / total:,.0f} orders/s; per order {1e6 * total / orders:,.0f} µs, of which")
        rows = sorted(times.items(), key=lambda kv: -sum(kv[1]))
        for name, vals in rows:
            print(f"  {1e6 * sum(vals) / orders:7.1f} µs  {100 * sum(vals) / total:5.1f}%  {name} "
                  f"({1e3 * sum(vals) / len(vals):.2f} ms per call, {len(vals)} calls)")
        py = total - statements
        print(f"  {1e6 * py / orders:7.1f} µs  {100 * py / total:5.1f}%  Python (prepare: decode + order rules "
              f"{1e6 * prepare_s / orders:.0f} µs; planning and encoding the rest)")
        print(msgspec.json.encode({"orders_per_s": orders / total, "us_per_order": {
            n: 1e6 * sum(v) / orders for n, v in rows}, "python_us_per_order": 1e6 * py / orders}).decode())
    finally:
        await env.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    asyncio.run(main_async(args.orders, args.batch, args.pg))


if __name__ == "__main__":
    main()

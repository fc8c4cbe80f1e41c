"""The database's ceiling: raw copy_records_to_table of the worker's rows, one process of several.

Each process builds its rows first (untimed), says `ready`, waits for `go` on stdin, then
commits batches of `--batch` orders over `--concurrency` connections, one transaction per
batch with one COPY per table (orders, order_lines, addresses, receipts, order_versions),
and prints one JSON line with its wall-clock start and end.
`python -m bench.copyload --dsn DSN --entity E --first-id N --count N --seq N --tag T`
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time

import asyncpg

from bench.orders import ORDER_COLUMNS, RECEIPT_COLUMNS, VERSION_COLUMNS, RowFactory

TABLES = ("orders", "order_lines", "addresses", "receipts", "order_versions")


def columns() -> dict[str, tuple[str, ...]]:
    from worker.store import ADDRESS_COLUMNS, LINE_COLUMNS

    return {"orders": ORDER_COLUMNS, "order_lines": LINE_COLUMNS,
            "addresses": ("order_id", "kind", *ADDRESS_COLUMNS), "receipts": RECEIPT_COLUMNS,
            "order_versions": VERSION_COLUMNS}


def build(entity: str, first_id: int, count: int, first_seq: int, tag: str,
          batch: int) -> list[dict[str, list[tuple[object, ...]]]]:
    """Batches of rows per table."""
    factory = RowFactory(entity, dt.datetime.now(dt.UTC))
    batches: list[dict[str, list[tuple[object, ...]]]] = []
    for start in range(0, count, batch):
        merged: dict[str, list[tuple[object, ...]]] = {t: [] for t in TABLES}
        for i in range(start, min(count, start + batch)):
            for table, rows in factory.rows(first_id + i, first_seq + i, f"{tag}-{first_id + i}").items():
                merged[table] += rows
        batches.append(merged)
    return batches


async def copy_all(dsn: str, batches: list[dict[str, list[tuple[object, ...]]]], concurrency: int) -> None:
    cols = columns()
    queue = list(reversed(batches))

    async def one_connection(conn: asyncpg.Connection) -> None:
        await ready.wait()
        while queue:
            rows = queue.pop()
            async with conn.transaction():
                for table in TABLES:
                    await conn.copy_records_to_table(table, records=rows[table], columns=cols[table])

    ready = asyncio.Event()
    # connections open before the clock starts, and stay open until the parent has read
    # their backends' CPU time
    conns = [await asyncpg.connect(dsn) for _ in range(concurrency)]
    tasks = [asyncio.create_task(one_connection(c)) for c in conns]
    print("ready", flush=True)
    readline = asyncio.get_running_loop().run_in_executor
    await readline(None, sys.stdin.readline)
    t0, c0 = time.time(), time.process_time()
    ready.set()
    await asyncio.gather(*tasks)
    t1, c1 = time.time(), time.process_time()
    print(json.dumps({"t0": t0, "t1": t1, "cpu_s": c1 - c0, "orders": sum(len(b["orders"]) for b in batches)}),
          flush=True)
    await readline(None, sys.stdin.readline)
    for conn in conns:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--entity", required=True)
    parser.add_argument("--first-id", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    batches = build(args.entity, args.first_id, args.count, args.seq, args.tag, args.batch)
    asyncio.run(copy_all(args.dsn, batches, args.concurrency))


if __name__ == "__main__":
    main()

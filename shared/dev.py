"""`orderflow dev` / `make run`: everything on one machine, embedded services when none is configured."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.settings import Settings

DEFAULT_PG = ("127.0.0.1", 5432)
DEFAULT_REDIS = ("127.0.0.1", 6379)


def _say(text: str) -> None:
    print(text, flush=True)


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return parts._replace(path="/" + name).geturl()


def _redacted(url: str) -> str:
    """url without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def choose_services(data_dir: Path) -> tuple[str, str, Any]:
    """(database_url, redis_url, embedded services or None): configured, local, or embedded."""
    from shared.devservices import DevServices, port_is_open

    services = None
    db = os.environ.get("ORDERFLOW_DATABASE_URL")
    redis_url = os.environ.get("ORDERFLOW_REDIS_URL")
    if db:
        _say(f"PostgreSQL: using ORDERFLOW_DATABASE_URL ({_redacted(db)})")
    else:
        if port_is_open(*DEFAULT_PG):
            db = Settings().database_url
            _say(f"PostgreSQL: using the local server at {DEFAULT_PG[0]}:{DEFAULT_PG[1]}")
        else:
            services = DevServices(data_dir)
            db = _with_database(services.start_postgres(), "orderflow")
            _say(f"PostgreSQL: started an embedded server ({db}), data in {data_dir}")
    if redis_url:
        _say(f"Redis: using ORDERFLOW_REDIS_URL ({_redacted(redis_url)})")
    else:
        if port_is_open(*DEFAULT_REDIS):
            redis_url = Settings().redis_url
            _say(f"Redis: using the local server at {DEFAULT_REDIS[0]}:{DEFAULT_REDIS[1]}")
        else:
            services = services or DevServices(data_dir)
            redis_url = services.start_redis()
            _say(f"Redis: started an embedded server ({redis_url}), data in {data_dir}")
    return db, redis_url, services


async def prepare_database(settings: Settings, data_dir: Path) -> dict[str, str]:
    """Migrate, and make (or reuse) the demo entity and key."""
    from shared.access import hash_key, new_access_key, new_key_id
    from shared.db import QUERIES, connection, ensure_database, migrate

    await ensure_database(settings.database_url)
    async with connection(settings.database_url) as conn:
        result = await migrate(conn)
        _say(f"schema at version {result['version']} (applied: {', '.join(result['applied']) or 'none'})")
        demo_file = data_dir / "demo-key.json"
        if demo_file.exists():
            demo = json.loads(demo_file.read_text())
            row = await conn.fetchrow(QUERIES["key_lookup"], demo.get("key_id"))
            if row is not None and row["revoked_at"] is None and bytes(row["key_hash"]) == hash_key(
                settings.key_pepper, demo["access_key"]
            ):
                return dict(demo)
        entity_id = "ent_demo_" + os.urandom(3).hex()
        await conn.execute(QUERIES["entity_create"], entity_id, "Demo shop", "UTC")
        key_id = new_key_id()
        access_key = new_access_key(key_id)
        await conn.execute(QUERIES["key_create"], key_id, entity_id, hash_key(settings.key_pepper, access_key),
                           ["orders:write", "products:create", "admin"], None)
        demo = {"entity_id": entity_id, "key_id": key_id, "access_key": access_key}
        _write_private(demo_file, json.dumps(demo, indent=2))
        return demo


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)  # an existing file keeps its mode through O_CREAT


def write_demo_order(data_dir: Path, demo: dict[str, str]) -> Path:
    """The published order-valid.json shape, with the demo credentials filled in."""
    from importlib import resources

    body = json.loads(resources.files("shared.examples").joinpath("order-valid.json").read_text())
    body["access_key"], body["entity_id"] = demo["access_key"], demo["entity_id"]
    path = data_dir / "demo-order.json"
    _write_private(path, json.dumps(body, indent=1))  # it carries the demo access key
    return path


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{shlex.join(map(str, p.args))} exited with {p.returncode}")  # type: ignore[arg-type]
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the receiver was not ready within {timeout:.0f} s")


def run_dev(data_dir_name: str, port: int) -> None:
    """Start everything, print a curl line, stop everything on Ctrl-C."""
    started = time.monotonic()
    data_dir = Path(data_dir_name).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    services = None
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int = 0, frame: Any = None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        db, redis_url, services = choose_services(data_dir)
        env = {**os.environ, "ORDERFLOW_DATABASE_URL": db, "ORDERFLOW_REDIS_URL": redis_url,
               "ORDERFLOW_PORT": str(port)}
        settings = Settings.from_env(env)
        demo = asyncio.run(prepare_database(settings, data_dir))
        order_file = write_demo_order(data_dir, demo)
        exe = str(Path(sys.executable).parent / "orderflow")
        procs.append(subprocess.Popen([exe, "serve", "--port", str(port)], env=env))
        procs.append(subprocess.Popen([exe, "worker"], env=env))
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, procs)
        elapsed = time.monotonic() - started
        reference = json.loads(order_file.read_text())["payload"]["reference"]
        auth = f"-H 'CG-Access-Key: {demo['access_key']}' -H 'CG-Entity-ID: {demo['entity_id']}'"
        _say(f"""
orderflow is running ({elapsed:.1f} s to start): receiver {base}, one worker.
  entity:     {demo['entity_id']}
  access key: {demo['access_key']}   (also in {data_dir / 'demo-key.json'})
  API docs:   {base}/api/docs

Post the demo order (order-valid.json with the demo key):
  curl -sS -X POST {base}/api/v1/order/enqueue -H 'Content-Type: application/json' --data @{order_file}

Read it back:
  curl -sS {base}/api/v1/order/{reference} {auth}

Ctrl-C stops everything.
""")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        _say("a process exited; stopping the rest")
    except KeyboardInterrupt:
        _say("\nstopping...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if services is not None:
            services.stop()
        _say("stopped.")

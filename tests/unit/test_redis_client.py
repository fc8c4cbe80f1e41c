"""Redis URLs: plain and `redis+sentinel://`, for the receiver's client and for arq."""

from __future__ import annotations

import pytest

from shared.redis_client import (
    DEFAULT_SENTINEL_PORT,
    SentinelTarget,
    arq_redis_settings,
    connect_redis,
    is_sentinel_url,
    parse_sentinel_url,
)
from shared.settings import Settings, SettingsError


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+sentinel://10.0.0.1:26379/mymaster",
     SentinelTarget((("10.0.0.1", 26379),), "mymaster")),
    ("redis+sentinel://s1:26380,s2:26381,s3/orders/3",
     SentinelTarget((("s1", 26380), ("s2", 26381), ("s3", DEFAULT_SENTINEL_PORT)), "orders", 3)),
    ("redis+sentinel://:s3cret@s1:26379/mymaster/0",
     SentinelTarget((("s1", 26379),), "mymaster", 0, None, "s3cret")),
    ("redis+sentinel://app:p%40ss%2Fw%3Ard@s1,s2/mymaster/2/",
     SentinelTarget((("s1", DEFAULT_SENTINEL_PORT), ("s2", DEFAULT_SENTINEL_PORT)), "mymaster", 2, "app",
                    "p@ss/w:rd")),
    ("redis+sentinel://[::1]:26379,[fd00::2]/mymaster",
     SentinelTarget((("::1", 26379), ("fd00::2", DEFAULT_SENTINEL_PORT)), "mymaster")),
    ("REDIS+SENTINEL://s1/mymaster", SentinelTarget((("s1", DEFAULT_SENTINEL_PORT),), "mymaster")),
])
def test_sentinel_urls_parse(url: str, expected: SentinelTarget) -> None:
    assert is_sentinel_url(url)
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(("url", "why"), [
    ("redis+sentinel://s1:26379", "names the service"),
    ("redis+sentinel://s1:26379/", "names the service"),
    ("redis+sentinel:///mymaster", "at least one host"),
    ("redis+sentinel://s1,,s2/mymaster", "no empty ones"),
    ("redis+sentinel://s1:port/mymaster", "bad port"),
    ("redis+sentinel://s1:70000/mymaster", "bad port"),
    ("redis+sentinel://[::1/mymaster", "bad [IPv6]:port Sentinel address"),
    ("redis+sentinel://s1/mymaster/one", "is a number"),
    ("redis+sentinel://s1/mymaster/0/extra", "/service_name[/db]"),
    ("redis+sentinel://s1/mymaster?db=1", "no query"),
])
def test_bad_sentinel_urls_are_refused_by_settings(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_sentinel_url(url)
    with pytest.raises(SettingsError, match="ORDERFLOW_REDIS_URL"):
        Settings(redis_url=url).check()


def test_a_password_with_a_raw_slash_is_not_echoed() -> None:
    with pytest.raises(ValueError, match="percent-encode") as caught:
        parse_sentinel_url("redis+sentinel://admin:s3cr/et@h1/svc")
    assert "s3cr" not in str(caught.value)


def test_the_password_never_shows() -> None:
    target = parse_sentinel_url("redis+sentinel://:hunter2@s1/mymaster")
    assert "hunter2" not in repr(target)
    with pytest.raises(SettingsError) as caught:
        Settings(redis_url="redis+sentinel://:hunter2@s1:x/mymaster").check()
    assert "hunter2" not in str(caught.value)


def test_settings_accept_every_supported_scheme() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://r.example:6380/1", "unix:///run/redis.sock",
                "redis+sentinel://s1:26379,s2:26379/mymaster/1"):
        assert Settings.from_env({"ORDERFLOW_REDIS_URL": url}).redis_url == url
    with pytest.raises(SettingsError, match="redis\\+sentinel://"):
        Settings.from_env({"ORDERFLOW_REDIS_URL": "http://127.0.0.1:6379"})


async def test_connect_redis_builds_a_sentinel_managed_client() -> None:
    settings = Settings(redis_url="redis+sentinel://:pw@s1:26380,s2/orders/4")
    client = connect_redis(settings)
    try:
        pool = client.connection_pool
        assert pool.service_name == "orders"  # type: ignore[attr-defined]
        assert pool.connection_kwargs["db"] == 4
        assert pool.connection_kwargs["password"] == "pw"
        sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
        assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
                for s in sentinels] == [("s1", 26380), ("s2", 26379)]
        # the Sentinels are asked without the primary's password (arq cannot pass one either)
        assert all(s.connection_pool.connection_kwargs.get("password") is None for s in sentinels)
    finally:
        await client.aclose()


async def test_connect_redis_plain_url() -> None:
    client = connect_redis(Settings(redis_url="redis://127.0.0.1:6390/5"))
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == ("127.0.0.1", 6390, 5, 5.0)
    finally:
        await client.aclose()


def test_arq_settings_follow_the_url() -> None:
    plain = arq_redis_settings(Settings(redis_url="redis://:pw@r1:6390/2"))
    assert (plain.host, plain.port, plain.database, plain.password, plain.sentinel) == ("r1", 6390, 2, "pw", False)
    # the worker rides out a Redis restart: refused connects and dropped connections are retried
    assert plain.retry is not None and OSError in (plain.retry_on_error or [])
    sentinel = arq_redis_settings(Settings(redis_url="redis+sentinel://:pw@s1:26380,s2/orders/4"))
    assert sentinel.sentinel and sentinel.sentinel_master == "orders"
    assert sentinel.host == [("s1", 26380), ("s2", 26379)]
    assert (sentinel.database, sentinel.password) == (4, "pw")


def test_hiredis_packing_sends_the_same_bytes_as_redis_py() -> None:
    from redis.asyncio.connection import Connection

    from shared.redis_client import PackedConnection

    envelope = b'["tok",...]\n{"reference":"A-1"}\n{"reference":"A-1"}'
    commands = [
        ("EVALSHA", "a" * 40, 6, *["{p}:k"] * 6, "rate", 0, 0, 20, 10**12, 2,
         3, "key_abcdef123456", "127.0.0.1", "", envelope, -7, "key_x", "::1", "ent\x1fA-1", envelope * 5000),
        ("SCRIPT LOAD", "return 1"),
        (b"CONFIG GET", "maxmemory"),
        ("SET", "k", 1.5, "EX", 30),
        ("GET", "ünïcode"),
    ]
    for command in commands:
        assert b"".join(PackedConnection().pack_command(*command)) == b"".join(Connection().pack_command(*command))


def test_hiredis_packing_refuses_what_redis_py_refuses() -> None:
    from redis.exceptions import DataError

    from shared.redis_client import PackedConnection

    with pytest.raises(DataError):
        PackedConnection().pack_command("SET", "k", {"a": 1})


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0", "PackedConnection"),
    ("rediss://127.0.0.1:6379/0", "SSLConnection"),
    ("unix:///tmp/redis.sock", "UnixDomainSocketConnection"),
])
def test_each_url_scheme_keeps_its_own_connection_class(url: str, expected: str) -> None:
    from shared.redis_client import connect_redis

    client = connect_redis(Settings(redis_url=url))
    assert client.connection_pool.connection_class.__name__ == expected  # TLS is never lost to packing

"""SSRF refusals: checked without connecting anywhere (literals by rule, `localhost` by the resolver)."""

from __future__ import annotations

import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from shared.ssrf import GuardedResolver, UnsafeURL, address_refusal, check_url, parse_nets

ALLOW = parse_nets("127.0.0.0/8, 10.0.0.0/8, 169.254.0.0/16, ::1/128, 0.0.0.0/32")

REFUSED = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://10.0.0.1/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[::1]:8080/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://localhost:9/hook", "localhost resolves to"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
async def test_refused_without_the_allow_list(url: str, why: str) -> None:
    with pytest.raises(UnsafeURL, match=why):
        await check_url(url)


@pytest.mark.parametrize(("url", "why"), REFUSED)
async def test_allowed_with_the_allow_list(url: str, why: str) -> None:
    parsed = await check_url(url, ALLOW)
    assert parsed.scheme == "http"


@pytest.mark.parametrize(("address", "kind"), [
    ("100.64.0.1", "CGNAT"), ("100.100.100.200", "metadata"), ("224.0.0.1", "multicast"),
    ("192.168.1.1", "private"), ("172.16.0.1", "private"), ("fe80::1", "link-local"),
    ("fd00:ec2::254", "metadata"), ("fc00::1", "private"), ("ff02::1", "multicast"),
    ("::", "unspecified"), ("240.0.0.1", "address"), ("2002:7f00:1::", "loopback"),
    ("64:ff9b::a00:1", "private"), ("::ffff:10.1.2.3", "private"), ("255.255.255.255", "address"),
])
def test_other_internal_addresses_are_refused(address: str, kind: str) -> None:
    refusal = address_refusal(address)
    assert refusal is not None and kind in refusal


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "1.1.1.1"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(address) is None


def test_allow_list_opens_only_what_it_names() -> None:
    nets = parse_nets("127.0.0.0/8")
    assert address_refusal("127.0.0.1", nets) is None
    assert address_refusal("::ffff:127.0.0.1", nets) is None
    assert address_refusal("10.0.0.1", nets) is not None
    assert address_refusal("::1", nets) is not None
    with pytest.raises(ValueError):
        parse_nets("127.0.0.0/8,not-a-net")


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://example.com/x", "http"), ("http://user:pw@example.com/x", "credentials"),
    ("http://user@example.com/x", "credentials"), ("https:///nohost", "no host"),
    ("http://example.com/x#frag", "fragment"), ("file:///etc/passwd", "http"),
])
async def test_bad_shapes_are_refused_before_any_lookup(url: str, why: str) -> None:
    with pytest.raises(UnsafeURL, match=why):
        await check_url(url, ALLOW)


class FixedResolver(AbstractResolver):
    """Answers every name with fixed addresses: a name resolving to a private address, offline."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
                for a in self.addresses]

    async def close(self) -> None:
        pass


async def test_send_time_resolver_refuses_a_name_with_any_private_address() -> None:
    guarded = GuardedResolver((), FixedResolver("93.184.215.14", "10.0.0.5"))
    with pytest.raises(UnsafeURL, match="10.0.0.5 is a private address"):
        await guarded.resolve("rebind.example", 443)
    public = GuardedResolver((), FixedResolver("93.184.215.14"))
    assert [r["host"] for r in await public.resolve("ok.example", 443)] == ["93.184.215.14"]
    loopback = GuardedResolver()
    with pytest.raises(UnsafeURL, match="localhost resolves to"):
        await loopback.resolve("localhost", 80)
    assert await GuardedResolver(ALLOW).resolve("localhost", 80)

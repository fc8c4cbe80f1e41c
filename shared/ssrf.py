"""Refuse webhook URLs that point into our own network (SSRF), at subscribe time and at every send.

Every address a host name resolves to must be public; IP literals are checked here because
aiohttp skips the resolver for them. At send time the same check runs inside the resolver
aiohttp connects with (`GuardedResolver`), so a name cannot resolve to a public address
when we check and a private one when we connect. `ORDERFLOW_WEBHOOK_ALLOW_NETS` opens
chosen networks (tests, on-premise receivers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud instance-metadata endpoints: named in the refusal because they are the usual target.
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254"))
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeURL(ValueError):
    """A webhook URL we will not send to; the message says why."""


def parse_nets(text: str) -> tuple[IPNetwork, ...]:
    """'127.0.0.0/8, ::1' -> networks; a bare address is a /32 or /128."""
    nets = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ValueError(f"{part!r} is not a network (CIDR) or address") from exc
    return tuple(nets)


def _embedded_v4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _kind(ip: IPAddress) -> str | None:
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "a shared (CGNAT) address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a public address"
    return None


def address_refusal(ip: IPAddress | str, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why we will not connect to `ip`, or None when it is public or allow-listed."""
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip.split("%", 1)[0])
    # an embedded IPv4 address says more about where the packet goes than its wrapper
    candidates: list[IPAddress] = [*_embedded_v4(ip), ip]
    if any(c in net for c in candidates for net in allow if c.version == net.version):
        return None
    for candidate in candidates:
        kind = _kind(candidate)
        if kind is not None:
            shown = str(ip) if candidate == ip else f"{ip} (carrying {candidate})"
            return f"{shown} is {kind}"
    return None


_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")


def ip_literal(host: str) -> IPAddress | None:
    """The address when `host` is an IP literal (brackets allowed), else None.

    Also the legacy IPv4 spellings inet_aton accepts (`2130706433`, `127.1`, `0x7f.1`,
    `0177.0.0.1`, `0`): some HTTP clients connect to them without asking a resolver.
    """
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_shape(url: str) -> URL:
    """Scheme, host and no credentials; the parsed URL."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise UnsafeURL(f"{url!r} is not a URL") from exc
    if parsed.scheme not in ("http", "https"):
        raise UnsafeURL("the URL must be http:// or https://")
    if not parsed.host:
        raise UnsafeURL("the URL has no host")
    if parsed.user is not None or parsed.password is not None:
        raise UnsafeURL("the URL must not carry credentials (user:password@)")
    if parsed.fragment:
        raise UnsafeURL("the URL must not have a #fragment")
    return parsed


def check_addresses(host: str, addresses: Iterable[str], allow: Sequence[IPNetwork]) -> None:
    """Refuse when any address of `host` is not public (a name with one private address is unsafe)."""
    for address in addresses:
        refusal = address_refusal(address, allow)
        if refusal is not None:
            shown = "" if ip_literal(host) is not None else f"{host} resolves to "
            raise UnsafeURL(f"refused: {shown}{refusal}")


async def check_url(url: str, allow: Sequence[IPNetwork] = ()) -> URL:
    """Subscribe-time check: shape, then every address the host is or resolves to."""
    parsed = check_shape(url)
    host = parsed.raw_host or ""
    literal = ip_literal(host)
    if literal is not None:
        check_addresses(host, [str(literal)], allow)
        return parsed
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, parsed.port or 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"{host} does not resolve: {exc}") from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise UnsafeURL(f"{host} does not resolve")
    check_addresses(host, addresses, allow)
    return parsed


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses names resolving to a non-public address (checked per connect)."""

    def __init__(self, allow: Sequence[IPNetwork] = (), inner: AbstractResolver | None = None) -> None:
        self.allow = tuple(allow)
        self.inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        """Resolve with the inner resolver, then refuse the lot if any address is not allowed."""
        results = await self.inner.resolve(host, port, family)
        check_addresses(host, [r["host"] for r in results], self.allow)
        return results

    async def close(self) -> None:
        """Close the inner resolver."""
        await self.inner.close()


__all__ = ["GuardedResolver", "UnsafeURL", "address_refusal", "check_addresses",
                      "check_shape", "check_url", "ip_literal", "parse_nets"]

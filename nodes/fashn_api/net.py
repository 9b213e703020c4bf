"""Outbound HTTP for the API (input image URLs, webhooks), guarded against server-side request forgery.

Every hop is checked before any connection: the URL (scheme, no userinfo, no metadata host), then
every address its host resolves to (no loopback, private, link-local, CGNAT, multicast, reserved or
metadata address, including IPv4-mapped IPv6 forms). aiohttp then connects only to those vetted
addresses (a pinning resolver), so a DNS answer that changes between check and connect is never used.
The ``MODELSWAP_API_FETCH_ALLOW`` setting (parsed by ``UrlPolicy.from_setting``) lets chosen hosts,
addresses or ranges through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Union
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

log = logging.getLogger(__name__)

SETTING = "MODELSWAP_API_FETCH_ALLOW"
IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Resolver = Callable[[str, int], Awaitable[list[str]]]

METADATA_HOSTS = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "metadata.azure.com",
    "instance-data", "instance-data.ec2.internal",
})
METADATA_IPS = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
REDIRECTS = (301, 302, 303, 307, 308)

_BLOCKED: tuple[tuple[Network, str], ...] = tuple((ipaddress.ip_network(n), rule) for n, rule in (
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("169.254.0.0/16", "link-local"),
    ("100.64.0.0/10", "carrier-grade NAT (shared)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("fc00::/7", "private (unique local)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOSTNAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")


class UrlRefused(Exception):
    """The URL or one of its addresses is refused by the policy."""


class FetchError(Exception):
    """The fetch or delivery failed for a reason other than policy."""


@dataclass(frozen=True)
class _Entry:
    host: str | None = None          # a hostname entry
    network: Network | None = None   # an IP (as a /32 or /128) or CIDR entry
    port: int | None = None

    def matches(self, host: str, ips: tuple[IP, ...], port: int, exact_ip: bool = False) -> bool:
        """Whether the entry covers (host, any of ips, port); ``exact_ip`` demands a single-IP entry."""
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return not exact_ip and self.host == host
        assert self.network is not None
        if exact_ip and self.network.num_addresses != 1:
            return False
        return any(ip.version == self.network.version and ip in self.network for ip in ips)


def _parse_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{SETTING}: bad port in entry {entry!r} (expected 1-65535)")
    return int(text)


def _parse_entry(entry: str) -> _Entry:
    """Parse one allow-list entry: hostname, IP or CIDR, each optionally with ``:port``."""
    text, port = entry.strip().lower(), None
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{SETTING}: bad entry {entry!r} (IPv6 with a port is written [addr]:port)")
        text, port = inside, (_parse_port(rest[1:], entry) if rest else None)
    elif text.count(":") == 1:
        text, port_text = text.split(":")
        port = _parse_port(port_text, entry)
    try:
        return _Entry(network=ipaddress.ip_network(text, strict=False), port=port)
    except ValueError:
        pass
    name = text.rstrip(".")
    if ":" in name or "/" in name or not _HOSTNAME.fullmatch(name) or name.replace(".", "").isdigit():
        raise ValueError(f"{SETTING}: {entry!r} is not a hostname, IP address or CIDR range (optionally with :port)")
    return _Entry(host=name, port=port)


def _embedded_v4(ip: IP) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address, if any."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _blocked_rule(ip: IP) -> str | None:
    """Why ``ip`` is not a public destination, or None when it is."""
    if ip in METADATA_IPS:
        return "cloud metadata"
    inner = _embedded_v4(ip)
    if inner is not None:
        rule = _blocked_rule(inner)
        return f"IPv6 form of {inner} ({rule})" if rule else None
    for network, rule in _BLOCKED:
        if ip.version == network.version and ip in network:
            return f"{rule} range {network}"
    if not ip.is_global:
        return "reserved / non-public range"
    return None


def _literal_ip(host: str) -> IP | None:
    """``host`` as an IP address if it is written as one; raises UrlRefused for odd numeric forms."""
    if ":" not in host and not re.fullmatch(r"[0-9.]+|(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*", host):
        return None
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise UrlRefused(f"refused host {host!r}: not a canonical IP address (numeric forms like 0x7f.1 or "
                         "2130706433 are not accepted); write the address as a dotted quad or use a hostname")


def _raw_netloc(url: str) -> str:
    """The authority part as written (yarl drops an empty ``@``), or "" if it cannot be split."""
    try:
        return urlsplit(url).netloc
    except ValueError:
        return ""


def _fix(what: str) -> str:
    return f"if this destination is trusted, add {what} to the {SETTING} setting (comma-separated allow-list)"


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs outbound requests may go to: public addresses, plus anything on the allow-list."""

    allow: tuple[str, ...] = ()
    _entries: tuple[_Entry, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_entries", tuple(_parse_entry(e) for e in self.allow if e.strip()))

    @classmethod
    def from_setting(cls, text: str) -> "UrlPolicy":
        """Build from a comma/whitespace separated allow-list; raises ValueError naming a bad entry."""
        return cls(allow=tuple(e for e in re.split(r"[\s,]+", text or "") if e))

    def _allowed(self, host: str, ips: tuple[IP, ...], port: int, exact_ip: bool = False) -> bool:
        return any(e.matches(host, ips, port, exact_ip) for e in self._entries)

    def check_url(self, url: str) -> tuple[str, str, int]:
        """Check scheme, host and (for IP literals) the address; return (scheme, host, port) or raise UrlRefused."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError) as exc:
            raise UrlRefused(f"refused URL: it cannot be parsed ({exc}); give an absolute http(s) URL") from None
        scheme = parsed.scheme.lower()
        if scheme not in ("http", "https"):
            raise UrlRefused(f"refused URL scheme {scheme or '(none)'!r}: only http and https URLs are fetched")
        host = (parsed.raw_host or "").lower().rstrip(".")
        if not host:
            raise UrlRefused("refused URL without a host: give an absolute http(s) URL like https://example.com/a.png")
        if "@" in (parsed.raw_authority or "") or "@" in _raw_netloc(url):
            raise UrlRefused(f"refused URL for host {host!r}: credentials in the URL (user:pass@) are not accepted; "
                             "use a signed URL or a public one instead")
        port = parsed.port
        if not port:
            raise UrlRefused(f"refused URL for host {host!r}: port 0 is not a valid destination")
        ip = _literal_ip(host)
        if ip is not None:
            self.check_address(host, str(ip), port)
        elif host in METADATA_HOSTS and not self._allowed(host, (), port):
            raise UrlRefused(f"refused host {host!r}: it is a cloud metadata service name; {_fix(repr(host))}")
        return scheme, host, port

    def check_address(self, host: str, ip: str, port: int) -> None:
        """Refuse (UrlRefused) a non-public address unless the allow-list covers it (or its hostname)."""
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            raise UrlRefused(f"refused host {host!r}: {ip!r} is not an IP address") from None
        rule = _blocked_rule(addr)
        if rule is None:
            return
        host, inner = host.lower().rstrip("."), _embedded_v4(addr)
        ips = (addr,) if inner is None else (addr, inner)
        shown = f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"
        if addr in METADATA_IPS or inner in METADATA_IPS:
            if self._allowed(host, ips, port, exact_ip=True):
                return
            raise UrlRefused(f"refused host {host!r} -> {addr}: {rule}; metadata addresses are only let through "
                             f"by an entry naming the exact address: {_fix(repr(shown))}")
        if self._allowed(host, ips, port):
            return
        raise UrlRefused(f"refused host {host!r} -> {addr} (port {port}): {rule}; "
                         f"{_fix(repr(shown) + ' (or a CIDR range, or the hostname)')}")


async def _system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the event loop's getaddrinfo (threaded, the system resolver)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _PinnedResolver(AbstractResolver):
    """aiohttp resolver that only returns addresses vetted earlier; any other name fails."""

    def __init__(self) -> None:
        self.vetted: dict[str, list[str]] = {}

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        addresses = self.vetted.get(host.lower().rstrip("."))
        if not addresses:
            raise OSError(f"host {host!r} was not vetted by the URL policy")
        return [ResolveResult(hostname=host, host=a, port=port,
                              family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST) for a in addresses]

    async def close(self) -> None:
        pass


async def _vet(url: str, policy: UrlPolicy, resolver: Resolver | None, pinned: _PinnedResolver) -> None:
    """Check ``url`` and every address of its host, then pin those addresses for the connection."""
    _, host, port = policy.check_url(url)
    if _literal_ip(host) is not None:
        return  # already checked by check_url; aiohttp connects to literals directly
    try:
        addresses = list(dict.fromkeys(await (resolver or _system_resolver)(host, port)))
    except OSError as exc:
        raise FetchError(f"could not resolve host {host!r} ({exc}); check the URL's hostname") from None
    if not addresses:
        raise FetchError(f"host {host!r} resolved to no addresses; check the URL's hostname")
    for address in addresses:
        policy.check_address(host, address, port)
    pinned.vetted[host] = [str(ipaddress.ip_address(a.split("%", 1)[0])) for a in addresses]


def _session(pinned: _PinnedResolver, timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=pinned, use_dns_cache=False, force_close=True)
    return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


async def _fetch(url: str, policy: UrlPolicy, max_bytes: int, timeout_s: float, accept_types: tuple[str, ...],
                 max_redirects: int, resolver: Resolver | None) -> tuple[bytes, str]:
    pinned = _PinnedResolver()
    async with _session(pinned, timeout_s) as session:
        for _hop in range(max_redirects + 1):
            await _vet(url, policy, resolver, pinned)
            async with session.get(URL(url), allow_redirects=False,
                                   headers={"Accept": ", ".join(t + "*" if t.endswith("/") else t
                                                                for t in accept_types),
                                            "Accept-Encoding": "identity"}) as resp:
                if resp.status in REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise FetchError(f"HTTP {resp.status} redirect without a Location header from {resp.url.host}")
                    try:
                        url = str(URL(url).join(URL(location)))
                    except ValueError:
                        raise FetchError(f"bad redirect Location {location!r} from {resp.url.host}") from None
                    continue
                return await _read_body(resp, max_bytes, accept_types)
    raise FetchError(f"too many redirects (more than {max_redirects}); give the final URL of the image directly")


async def _read_body(resp: aiohttp.ClientResponse, max_bytes: int, accept_types: tuple[str, ...]) -> tuple[bytes, str]:
    """Check status, type, encoding and size, then read at most ``max_bytes``."""
    host = resp.url.host
    if not 200 <= resp.status < 300:
        raise FetchError(f"HTTP {resp.status} {resp.reason or '(no reason)'} from {host}; check that the URL is "
                         "right and publicly readable (or signed)")
    content_type = (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if not content_type or not content_type.startswith(tuple(t.lower() for t in accept_types)):
        raise FetchError(f"{host} answered with content type {content_type or '(none)'!r}; an image content type "
                         f"({', '.join(accept_types)}) is needed: point the URL at the image file itself")
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchError(f"{host} sent a {encoding!r}-encoded body; serve the image without content encoding")
    limit = f"the limit is {max_bytes} bytes: send a smaller image"
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise FetchError(f"image from {host} is too big ({resp.content_length} bytes); {limit}")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(f"image from {host} is too big (more than {max_bytes} bytes); {limit}")
    return bytes(body), content_type


async def fetch(url: str, *, policy: UrlPolicy, max_bytes: int, timeout_s: float,
                accept_types: tuple[str, ...] = ("image/",), max_redirects: int = 5,
                resolver: Resolver | None = None) -> tuple[bytes, str]:
    """GET ``url`` under ``policy``; return (body, media type). Raises UrlRefused or FetchError.

    Each hop is checked and its addresses pinned before connecting; redirects are followed by hand,
    the whole fetch is bounded by ``timeout_s`` and the body by ``max_bytes``.
    """
    try:
        return await asyncio.wait_for(
            _fetch(url, policy, max_bytes, timeout_s, accept_types, max_redirects, resolver), timeout_s)
    except asyncio.TimeoutError:
        raise FetchError(f"fetching the image timed out after {timeout_s:g} s; use a faster host or a smaller "
                         "image, or raise the timeout") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise FetchError(f"could not fetch the image: {type(exc).__name__}: {exc}; check the URL and that the "
                         "host is reachable") from None


async def _post_once(url: str, payload: dict, policy: UrlPolicy, timeout_s: float,
                     resolver: Resolver | None) -> int:
    """One vetted POST without following redirects; returns the HTTP status."""
    pinned = _PinnedResolver()
    await _vet(url, policy, resolver, pinned)
    async with _session(pinned, timeout_s) as session:
        async with session.post(URL(url), json=payload, allow_redirects=False) as resp:
            return resp.status


async def post_json(url: str, payload: dict, *, policy: UrlPolicy, timeout_s: float = 10.0, attempts: int = 4,
                    backoff_s: float = 1.0, resolver: Resolver | None = None,
                    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> bool:
    """Deliver a webhook: POST ``payload`` as JSON, retrying transient failures. Returns success; never raises.

    Connection errors, timeouts, 429 and 5xx are retried after ``backoff_s``, 2x, 4x ... up to
    ``attempts`` tries; a 2xx succeeds; a policy refusal, a 3xx or another 4xx stops at once.
    """
    try:
        host = URL(url).host or "(no host)"
    except (ValueError, TypeError):
        host = "(unparsable URL)"
    tries = max(1, attempts)
    for attempt in range(1, tries + 1):
        retry = True
        try:
            status = await asyncio.wait_for(_post_once(url, payload, policy, timeout_s, resolver), timeout_s)
            if 200 <= status < 300:
                return True
            retry = status == 429 or status >= 500
            reason = f"HTTP {status}"
            if 300 <= status < 400:
                reason += " (redirects are not followed for webhooks; give the final URL)"
            elif not retry:
                reason += " (not retried)"
        except UrlRefused as exc:
            retry, reason = False, str(exc)
        except asyncio.TimeoutError:
            reason = f"timed out after {timeout_s:g} s"
        except (FetchError, aiohttp.ClientError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a webhook must never break the job that reports to it
            retry, reason = False, f"unexpected {type(exc).__name__}: {exc}"
        log.warning("webhook to %s: attempt %d/%d failed: %s", host, attempt, tries, reason)
        if not retry:
            return False
        if attempt < tries:
            try:
                await sleep(backoff_s * 2 ** (attempt - 1))
            except Exception:  # a broken sleep must not raise out of a webhook either
                return False
    return False

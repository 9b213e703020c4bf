"""Outbound HTTP guard (``fashn_api.net``): URL/address policy, fetch and webhook delivery.

Only loopback is ever contacted. Refusal tests inject a fake resolver and record socket connects,
so they prove the refusal happens before any connection (conftest also blocks non-loopback sockets).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from comfyui_model_swap.nodes.fashn_api import net
from comfyui_model_swap.nodes.fashn_api.net import FetchError, UrlPolicy, UrlRefused, fetch, post_json

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
EMPTY = UrlPolicy()


# --- URL and address policy (no network) ---

REFUSED_URLS = [
    ("http://127.0.0.1/a.png", "loopback"),
    ("http://127.8.9.10/a.png", "loopback"),
    ("http://[::1]/a.png", "loopback"),
    ("http://10.1.2.3/a.png", "private"),
    ("http://172.16.0.1/a.png", "private"),
    ("http://172.31.255.254/a.png", "private"),
    ("http://192.168.1.1/a.png", "private"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://100.100.100.200/", "metadata"),
    ("http://[::ffff:127.0.0.1]/", "127.0.0.1"),
    ("http://[::ffff:10.0.0.1]/", "10.0.0.1"),
    ("http://[::ffff:169.254.169.254]/", "metadata"),
    ("http://[64:ff9b::a00:1]/", "10.0.0.1"),          # NAT64 form of 10.0.0.1
    ("http://[2002:7f00:1::]/", "127.0.0.1"),           # 6to4 form of 127.0.0.1
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://100.64.0.1/", "carrier-grade"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://192.0.2.10/", "non-public"),               # documentation range
    ("http://0x7f.1/", "canonical"),
    ("http://2130706433/", "canonical"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://Metadata.Google.Internal./computeMetadata/v1/", "metadata"),
    ("http://metadata/", "metadata"),
    ("http://metadata.azure.com/", "metadata"),
    ("http://instance-data/latest/", "metadata"),
    ("http://instance-data.ec2.internal/latest/", "metadata"),
    ("ftp://example.com/a.png", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://example.com/_x", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("/relative/a.png", "scheme"),
    ("http:///a.png", "host"),
    ("http://user:pass@example.com/a.png", "credentials"),
    ("http://user@example.com/a.png", "credentials"),
    ("http://@example.com/a.png", "credentials"),
    ("http://example.com:0/a.png", "port 0"),
]


@pytest.mark.parametrize("url,why", REFUSED_URLS)
def test_check_url_refuses(url, why):
    with pytest.raises(UrlRefused, match=why) as info:
        EMPTY.check_url(url)
    assert "pass@example" not in str(info.value)  # never echoes credentials


@pytest.mark.parametrize("url,expected", [
    ("https://example.com/a.png", ("https", "example.com", 443)),
    ("HTTP://Images.Example.COM:8080/a.png?sig=1", ("http", "images.example.com", 8080)),
    ("http://93.184.216.34/a.png", ("http", "93.184.216.34", 80)),
    ("http://172.32.0.1/a.png", ("http", "172.32.0.1", 80)),
    ("https://[2606:4700:4700::1111]/a.png", ("https", "2606:4700:4700::1111", 443)),
])
def test_check_url_accepts_public(url, expected):
    assert EMPTY.check_url(url) == expected


def test_address_refusal_names_host_rule_and_fix():
    with pytest.raises(UrlRefused) as info:
        EMPTY.check_address("images.test", "10.0.0.7", 80)
    text = str(info.value)
    assert "images.test" in text and "10.0.0.7" in text and "private" in text
    assert "MODELSWAP_API_FETCH_ALLOW" in text


# (allow-list, host, ip, port, allowed?)
ADDRESS_CASES = [
    ((), "example.com", "93.184.216.34", 443, True),
    ((), "example.com", "::ffff:93.184.216.34", 443, True),
    ((), "example.com", "2606:4700:4700::1111", 443, True),
    ((), "x", "10.1.2.3", 80, False),
    (("10.0.0.0/8",), "x", "10.1.2.3", 80, True),
    (("10.0.0.0/8",), "x", "::ffff:10.1.2.3", 80, True),
    (("10.0.0.0/8",), "x", "192.168.0.1", 80, False),
    (("10.0.0.5:8080",), "x", "10.0.0.5", 8080, True),
    (("10.0.0.5:8080",), "x", "10.0.0.5", 80, False),
    (("10.0.0.5:8080",), "x", "10.0.0.6", 8080, False),
    (("10.0.0.0/8:8080",), "x", "10.9.9.9", 8080, True),
    (("10.0.0.0/8:8080",), "x", "10.9.9.9", 8081, False),
    (("images.local",), "images.local", "10.0.0.9", 443, True),
    (("images.local",), "IMAGES.local", "10.0.0.9", 443, True),
    (("images.local",), "other.local", "10.0.0.9", 443, False),
    (("images.local:8443",), "images.local", "10.0.0.9", 8443, True),
    (("images.local:8443",), "images.local", "10.0.0.9", 443, False),
    (("[::1]:8080",), "x", "::1", 8080, True),
    (("[::1]:8080",), "x", "::1", 8081, False),
    (("::1",), "x", "::1", 1, True),
    (("fd00::/8",), "x", "fd12::1", 443, True),
    (("fd00::/8",), "x", "fc00::1", 443, False),
    # Metadata addresses need an entry naming the exact address, not a range or a hostname.
    (("fd00::/8",), "x", "fd00:ec2::254", 80, False),
    (("169.254.0.0/16",), "x", "169.254.1.1", 80, True),
    (("169.254.0.0/16",), "x", "169.254.169.254", 80, False),
    (("metadata.google.internal",), "metadata.google.internal", "169.254.169.254", 80, False),
    (("169.254.169.254",), "x", "169.254.169.254", 80, True),
    (("169.254.169.254:80",), "x", "169.254.169.254", 8080, False),
]


@pytest.mark.parametrize("allow,host,ip,port,allowed", ADDRESS_CASES)
def test_check_address(allow, host, ip, port, allowed):
    policy = UrlPolicy(allow=allow)
    if allowed:
        policy.check_address(host, ip, port)
    else:
        with pytest.raises(UrlRefused):
            policy.check_address(host, ip, port)


def test_check_url_allow_list():
    policy = UrlPolicy.from_setting("127.0.0.1:8188, metadata.google.internal 10.0.0.0/8")
    assert policy.check_url("http://127.0.0.1:8188/x") == ("http", "127.0.0.1", 8188)
    with pytest.raises(UrlRefused, match="loopback"):
        policy.check_url("http://127.0.0.1:8189/x")
    assert policy.check_url("http://metadata.google.internal/x")[1] == "metadata.google.internal"
    assert policy.check_url("https://10.20.30.40/x")[1] == "10.20.30.40"
    with pytest.raises(UrlRefused, match="scheme"):
        policy.check_url("ftp://10.20.30.40/x")  # the allow-list opens addresses, not schemes


def test_from_setting_parses_entries():
    policy = UrlPolicy.from_setting(" 10.0.0.0/8, images.local:8080\n[::1]:9000,,fd00::/8\t127.0.0.1:1 ")
    assert policy.allow == ("10.0.0.0/8", "images.local:8080", "[::1]:9000", "fd00::/8", "127.0.0.1:1")
    assert UrlPolicy.from_setting("") == UrlPolicy()


@pytest.mark.parametrize("entry", ["http://x.com", "bad!host", "10.0.0.1:99999", "[::1", "[::1]x", "1.2.3",
                                   "images.local:", "-bad.example", "10.0.0.0/33"])
def test_from_setting_rejects_bad_entries(entry):
    with pytest.raises(ValueError) as info:
        UrlPolicy.from_setting(f"10.0.0.0/8, {entry}")
    assert entry in str(info.value)


# --- helpers: fake resolver, connection recorder, loopback servers ---

class FakeResolver:
    """Maps names to address lists (one list per call when given several), recording each lookup."""

    def __init__(self, table: dict[str, list[list[str]]]):
        self.table = table
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answers = self.table[host]
        return answers[min(len(self.calls), len(answers)) - 1]


@pytest.fixture
def connects(monkeypatch):
    """Every socket connect attempt (address tuples), recorded before conftest's loopback guard runs."""
    seen: list = []
    for name in ("connect", "connect_ex"):
        real = getattr(socket.socket, name)

        def record(self, address, _real=real):
            seen.append(address)
            return _real(self, address)

        monkeypatch.setattr(socket.socket, name, record)
    return seen


@dataclass
class Server:
    port: int = 0
    hits: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def serve(routes: dict):
    """An aiohttp app on 127.0.0.1 (free port); handlers get (request, server)."""
    server = Server()

    def wrap(handler):
        async def handle(request):
            server.hits.append(request.path)
            server.hosts.append(request.headers.get("Host", ""))
            return await handler(request, server)
        return handle

    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, wrap(handler))
    runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


async def png(request, server):
    return web.Response(body=PNG, content_type="image/png")


async def html(request, server):
    return web.Response(text="<html>not an image</html>", content_type="text/html")


async def huge_length(request, server):
    resp = web.StreamResponse(headers={"Content-Type": "image/png"})
    resp.content_length = 10**9
    await resp.prepare(request)
    await resp.write(b"x" * 10)
    await server.release.wait()
    return resp


async def chunked(request, server):
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(8):
        await resp.write(b"x" * 65536)
    await resp.write_eof()
    return resp


async def slow(request, server):
    await server.release.wait()
    return web.Response(body=PNG, content_type="image/png")


def redirect_to(location, status=302):
    async def handler(request, server):
        target = location(server) if callable(location) else location
        return web.Response(status=status, headers={"Location": target})
    return handler


ROUTES = {
    "/img": png,
    "/page": html,
    "/huge": huge_length,
    "/chunked": chunked,
    "/slow": slow,
    "/redir": redirect_to("/img"),
    "/redir-abs": redirect_to(lambda s: f"http://127.0.0.1:{s.port}/img", status=307),
    "/redir-chain": redirect_to("/redir", status=301),
    "/redir-private": redirect_to("http://10.0.0.7/x"),
    "/redir-file": redirect_to("file:///etc/passwd"),
    "/loop": redirect_to("/loop"),
}


def loopback_policy(port: int) -> UrlPolicy:
    return UrlPolicy.from_setting(f"127.0.0.1:{port}")


async def get(server: Server, path: str, **kwargs):
    options = {"policy": loopback_policy(server.port), "max_bytes": 100_000, "timeout_s": 5.0} | kwargs
    return await fetch(f"http://127.0.0.1:{server.port}{path}", **options)


# --- fetch: refusal before any connection ---

@pytest.mark.parametrize("answers", [["10.1.2.3"], ["93.184.216.34", "127.0.0.1"], ["::ffff:169.254.169.254"],
                                     ["fe80::1%eth0"]])
def test_fetch_refuses_blocked_resolution_without_connecting(answers, connects):
    resolver = FakeResolver({"evil.test": [answers]})
    with pytest.raises(UrlRefused, match="evil.test"):
        asyncio.run(fetch("http://evil.test/a.png", policy=EMPTY, max_bytes=1000, timeout_s=5, resolver=resolver))
    assert resolver.calls == [("evil.test", 80)]
    assert connects == []


@pytest.mark.parametrize("url", ["http://10.0.0.7/x", "http://169.254.169.254/latest/meta-data/",
                                 "http://metadata.google.internal/", "http://[::ffff:127.0.0.1]:80/"])
def test_fetch_refuses_literals_without_resolving_or_connecting(url, connects):
    resolver = FakeResolver({})
    with pytest.raises(UrlRefused):
        asyncio.run(fetch(url, policy=EMPTY, max_bytes=1000, timeout_s=5, resolver=resolver))
    assert resolver.calls == [] and connects == []


def test_fetch_resolution_failure_is_fetch_error():
    async def failing(host, port):
        raise socket.gaierror(-2, "Name or service not known")

    with pytest.raises(FetchError, match="resolve"):
        asyncio.run(fetch("http://nowhere.test/a.png", policy=EMPTY, max_bytes=1000, timeout_s=5, resolver=failing))


# --- fetch against a loopback server ---

def test_fetch_success():
    async def scenario():
        async with serve(ROUTES) as server:
            return await get(server, "/img")

    body, content_type = asyncio.run(scenario())
    assert body == PNG and content_type == "image/png"


def test_fetch_without_allow_list_refuses_loopback(connects):
    async def scenario():
        async with serve(ROUTES) as server:
            with pytest.raises(UrlRefused, match="loopback"):
                await get(server, "/img", policy=EMPTY)
            return server

    assert asyncio.run(scenario()).hits == []
    assert connects == []


@pytest.mark.parametrize("path,kwargs,error,message", [
    ("/page", {}, FetchError, "text/html"),
    ("/img", {"accept_types": ("application/json",)}, FetchError, "image/png"),
    ("/huge", {"max_bytes": 1000}, FetchError, "too big"),
    ("/chunked", {}, FetchError, "too big"),
    ("/missing", {}, FetchError, "404"),
    ("/slow", {"timeout_s": 0.3}, FetchError, "timed out"),
    ("/loop", {"max_redirects": 3}, FetchError, "too many redirects"),
    ("/redir-private", {}, UrlRefused, "10.0.0.7"),
    ("/redir-file", {}, UrlRefused, "scheme"),
])
def test_fetch_failures(path, kwargs, error, message, connects):
    async def scenario():
        async with serve(ROUTES) as server:
            with pytest.raises(error, match=message):
                await get(server, path, **kwargs)
            return server

    server = asyncio.run(scenario())
    assert all(address[0] == "127.0.0.1" for address in connects)
    if path == "/loop":
        assert server.hits == ["/loop"] * 4  # the initial request and three followed redirects


def test_fetch_refuses_huge_content_length_before_reading():
    async def scenario():
        async with serve(ROUTES) as server:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(FetchError, match="1000000000 bytes"):
                await get(server, "/huge", max_bytes=1000, timeout_s=5)
            return loop.time() - started

    assert asyncio.run(scenario()) < 2  # refused from the header, not by waiting for the body


def free_loopback_port() -> int:
    """A loopback port with nothing listening on it."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def test_fetch_connection_refused_is_fetch_error():
    port = free_loopback_port()
    with pytest.raises(FetchError, match="could not fetch"):
        asyncio.run(fetch(f"http://127.0.0.1:{port}/a.png", policy=loopback_policy(port), max_bytes=100,
                          timeout_s=5))


def test_fetch_missing_content_type_refused():
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd")
        await writer.drain()
        writer.close()

    async def scenario():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await fetch(f"http://127.0.0.1:{port}/x", policy=loopback_policy(port), max_bytes=100, timeout_s=5)
        finally:
            server.close()
            await server.wait_closed()

    with pytest.raises(FetchError, match=r"\(none\)"):
        asyncio.run(scenario())


@pytest.mark.parametrize("path", ["/redir", "/redir-abs", "/redir-chain"])
def test_fetch_follows_allowed_redirects(path):
    async def scenario():
        async with serve(ROUTES) as server:
            return await get(server, path), server.hits

    (body, content_type), hits = asyncio.run(scenario())
    assert body == PNG and content_type == "image/png" and hits[-1] == "/img"


def test_fetch_redirect_to_other_port_refused():
    async def scenario():
        async with serve({"/img": png}) as other:
            routes = dict(ROUTES, **{"/away": redirect_to(f"http://127.0.0.1:{other.port}/img")})
            async with serve(routes) as server:
                with pytest.raises(UrlRefused, match=str(other.port)):
                    await get(server, "/away")
            return other.hits

    assert asyncio.run(scenario()) == []  # the other (live) server was never contacted


def test_fetch_connects_to_the_vetted_address_with_original_host(connects):
    async def scenario():
        async with serve(ROUTES) as server:
            resolver = FakeResolver({"images.test": [["127.0.0.1"]]})
            policy = UrlPolicy.from_setting(f"images.test:{server.port}")
            result = await fetch(f"http://images.test:{server.port}/redir", policy=policy, max_bytes=100_000,
                                 timeout_s=5, resolver=resolver)
            return result, server, resolver

    (body, _), server, resolver = asyncio.run(scenario())
    assert body == PNG
    # Each hop is resolved by the injected resolver (the system resolver would raise NetworkBlocked)...
    assert resolver.calls == [("images.test", server.port)] * 2
    # ...the connection goes to the vetted address, and the Host header keeps the name.
    assert ("127.0.0.1", server.port) in connects
    assert server.hosts == [f"images.test:{server.port}"] * 2


def test_fetch_rechecks_every_hop_against_rebinding(connects):
    async def scenario():
        async with serve(ROUTES) as server:
            # The allow-list names the address, not the name: a hostname entry would trust any answer.
            resolver = FakeResolver({"images.test": [["127.0.0.1"], ["10.0.0.1"]]})
            policy = loopback_policy(server.port)
            with pytest.raises(UrlRefused, match="10.0.0.1"):
                await fetch(f"http://images.test:{server.port}/redir", policy=policy, max_bytes=100_000,
                            timeout_s=5, resolver=resolver)
            return server

    server = asyncio.run(scenario())
    assert server.hits == ["/redir"]
    assert all(address[0] == "127.0.0.1" for address in connects)


# --- webhooks ---

PAYLOAD = {"id": "abc123", "status": "completed", "output": ["http://x/1.png"], "error": None, "note": "café ✓"}


def receiver(statuses: list[int], received: list):
    async def hook(request, server):
        received.append(await request.json())
        status = statuses.pop(0)
        if status == 0:  # hang until the test ends
            await server.release.wait()
            status = 200
        headers = {"Location": "/elsewhere"} if 300 <= status < 400 else None
        return web.Response(status=status, headers=headers)
    return hook


def deliver(statuses: list[int], **kwargs):
    """POST PAYLOAD to a loopback receiver answering ``statuses``; returns (result, received, sleeps)."""
    received: list = []
    sleeps: list[float] = []

    async def fake_sleep(seconds):
        sleeps.append(seconds)

    async def scenario():
        async with serve({"/hook": receiver(statuses, received)}) as server:
            options = {"policy": loopback_policy(server.port), "backoff_s": 0.5, "sleep": fake_sleep} | kwargs
            return await post_json(f"http://127.0.0.1:{server.port}/hook", PAYLOAD, **options)

    return asyncio.run(scenario()), received, sleeps


def test_post_json_retries_5xx_then_succeeds():
    ok, received, sleeps = deliver([500, 503, 200])
    assert ok is True
    assert received == [PAYLOAD] * 3
    assert sleeps == [0.5, 1.0]


def test_post_json_retries_429_and_timeouts():
    ok, received, sleeps = deliver([0, 429, 200], timeout_s=0.3)
    assert ok is True and len(received) == 3 and sleeps == [0.5, 1.0]


@pytest.mark.parametrize("status", [400, 404, 302])
def test_post_json_stops_on_4xx_and_3xx(status, caplog):
    with caplog.at_level(logging.WARNING, logger=net.log.name):
        ok, received, sleeps = deliver([status, 200])
    assert ok is False and len(received) == 1 and sleeps == []
    assert f"HTTP {status}" in caplog.text and "attempt 1/4" in caplog.text


def test_post_json_gives_up_after_attempts():
    ok, received, sleeps = deliver([500] * 5, attempts=3)
    assert ok is False and len(received) == 3 and sleeps == [0.5, 1.0]


@pytest.mark.parametrize("url", ["http://10.0.0.1/hook", "http://hooks.test/hook", "ftp://hooks.test/hook",
                                 "http://169.254.169.254/"])
def test_post_json_refused_url_makes_no_attempt(url, connects, caplog):
    resolver = FakeResolver({"hooks.test": [["192.168.1.5"]]})
    sleeps: list[float] = []

    async def fake_sleep(seconds):
        sleeps.append(seconds)

    with caplog.at_level(logging.WARNING, logger=net.log.name):
        ok = asyncio.run(post_json(url, PAYLOAD, policy=EMPTY, resolver=resolver, sleep=fake_sleep))
    assert ok is False and connects == [] and sleeps == []
    assert len(resolver.calls) <= 1 and "attempt 1/4" in caplog.text and "refused" in caplog.text


def test_post_json_receiver_down(connects, caplog):
    port = free_loopback_port()
    sleeps: list[float] = []

    async def fake_sleep(seconds):
        sleeps.append(seconds)

    with caplog.at_level(logging.WARNING, logger=net.log.name):
        ok = asyncio.run(post_json(f"http://127.0.0.1:{port}/hook", PAYLOAD, policy=loopback_policy(port),
                                   attempts=3, backoff_s=2.0, sleep=fake_sleep))
    assert ok is False
    assert sleeps == [2.0, 4.0]
    assert connects == [("127.0.0.1", port)] * 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("127.0.0.1" in w for w in warnings)
    assert "attempt 3/3" in warnings[-1]


def test_post_json_never_raises_on_garbage():
    assert asyncio.run(post_json("http://[not-an-ip/", {}, policy=EMPTY, sleep=lambda s: asyncio.sleep(0))) is False

"""The one network guard of the tests: after ``install``, connecting to or resolving anything but
loopback raises ``error`` before a packet is sent. conftest installs it in the test process; the
``sitecustomize`` beside this file installs it in the ComfyUI processes the API tests start."""

from __future__ import annotations

import socket
from collections.abc import Callable

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def install(error: type[Exception], on_block: Callable[[str], None] = lambda what: None) -> None:
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(host, what: str) -> None:
        if host is not None and str(host) not in LOOPBACK:
            on_block(what)
            raise error(f"{what}; tests are offline (only loopback is reachable)")

    def guarded_connect(self, address):
        if isinstance(address, tuple) and address:  # not AF_UNIX paths
            check(address[0], f"tried to connect to {address!r}")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if isinstance(address, tuple) and address:
            check(address[0], f"tried to connect to {address!r}")
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        check(host, f"tried to resolve {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.getaddrinfo = guarded_getaddrinfo

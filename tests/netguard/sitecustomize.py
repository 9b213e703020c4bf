"""Loaded by the ComfyUI subprocess the API tests start (on its PYTHONPATH): it can only ever reach
loopback. Any other connection or name lookup fails with an OSError before a packet is sent, so a
bug in the URL policy shows up as a failed test, never as traffic to a private or metadata address."""

import socket

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
BLOCKED = []  # what was refused, for post-mortems in the server log


class NetworkBlocked(ConnectionRefusedError):
    pass


def _check(host):
    if host is not None and str(host) not in _LOOPBACK:
        BLOCKED.append(str(host))
        print(f"[netguard] blocked a connection or lookup to {host!r}", flush=True)
        raise NetworkBlocked(f"netguard: {host!r} is not loopback; the test server is offline")


def _guarded_connect(self, address):
    if isinstance(address, tuple):
        _check(address[0])
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    if isinstance(address, tuple):
        _check(address[0])
    return _connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    _check(host)
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo

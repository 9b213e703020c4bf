"""Loaded by the ComfyUI subprocess the API tests start (on its PYTHONPATH): it can only ever reach
loopback. Any other connection or name lookup fails with an OSError before a packet is sent, so a
bug in the URL policy shows up as a failed test, never as traffic to a private or metadata address."""

import loopback_guard


class NetworkBlocked(ConnectionRefusedError):  # an OSError: ComfyUI handles it like a refused connection
    pass


loopback_guard.install(NetworkBlocked, on_block=lambda what: print(f"[netguard] blocked: {what}", flush=True))

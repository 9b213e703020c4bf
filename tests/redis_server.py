"""A real redis-server for tests, on a loopback port, persistence off (as README's "Several GPUs" runs it).

``stop()`` ends it (SIGTERM: with ``--save ""`` nothing is written) and ``start()`` starts a new one on the
same port: it comes back empty, as after a crash or an upgrade; ``restart(down_s)`` does both.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

import comfy_harness


class RedisServer:
    def __init__(self, folder: Path):
        self.folder = folder
        self.port = comfy_harness.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.client = None

    def __enter__(self) -> "RedisServer":
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            if comfy_harness.IN_CI:
                pytest.fail("redis-server is not installed: .ci/run installs it with apt-get install redis-server")
            pytest.skip("redis-server not installed (apt-get install redis-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._exe = exe
        self.client = redis.Redis(port=self.port)
        self.start()
        return self

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [self._exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT)
        for _ in range(400):  # redis-server starts in milliseconds; wait for it to accept connections
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    raise RuntimeError((self.folder / "redis.log").read_text()) from None
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.client.connection_pool.disconnect()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again empty on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.client.close()

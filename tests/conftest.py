"""Test set-up: offline (sockets blocked), fast on CPU, the pack importable by name.

The repository root is a ComfyUI custom-node package whose folder name varies
(custom_nodes/<anything>), so tests import it under the fixed name
``comfyui_model_swap``.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _register_package() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import _pack

    _pack.import_pack()


_register_package()

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class NetworkBlocked(RuntimeError):
    pass


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _host_of(address) -> str | None:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return None  # AF_UNIX paths


def _guarded_connect(self, address):
    host = _host_of(address)
    if host is not None and host not in LOOPBACK:
        raise NetworkBlocked(f"test tried to connect to {address!r}; tests are offline")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    host = _host_of(address)
    if host is not None and host not in LOOPBACK:
        raise NetworkBlocked(f"test tried to connect to {address!r}; tests are offline")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and str(host) not in LOOPBACK:
        raise NetworkBlocked(f"test tried to resolve {host!r}; tests are offline")
    return _real_getaddrinfo(host, *args, **kwargs)


def pytest_configure(config):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo
    try:
        import torch

        torch.set_flush_denormal(True)
    except ImportError:
        pass



@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    """A ComfyUI-style models folder with every tiny model under its default name."""
    import tiny_models

    root = tmp_path_factory.mktemp("models")
    tiny_models.build_all(root)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread, and much faster when other processes share the cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

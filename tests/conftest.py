"""Test set-up: offline (sockets blocked), fast on CPU, the pack importable by name.

The repository root is a ComfyUI custom-node package whose folder name varies
(custom_nodes/<anything>), so tests import it under the fixed name
``comfyui_model_swap``.
"""

from __future__ import annotations

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


class NetworkBlocked(RuntimeError):
    """A test tried to reach something other than loopback (a RuntimeError, so no OSError handler
    in the code under test can swallow it)."""


def pytest_configure(config):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
    from netguard.loopback_guard import install

    install(NetworkBlocked)
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

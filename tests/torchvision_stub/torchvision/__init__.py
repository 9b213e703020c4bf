"""Test-only stand-in for torchvision, put on ComfyUI's PYTHONPATH by tests/comfy_harness.py.

ComfyUI 0.3.75 imports torchvision at start-up (``comfy.sd`` -> cascade and cosmos
models), but uses it only inside a few model classes this pack never loads. PyPI's
torchvision does not import beside the CPU torch 2.13.0 build the tests use, and
installing it pulls a multi-GB CUDA torch. This stub lets those imports succeed;
anything actually *used* from it raises ImportError naming what was missing.

It has no dist-info on purpose: transformers, diffusers and friends check
``importlib.metadata`` and so still see torchvision as not installed.
"""

from __future__ import annotations

# Older than any real release: libraries that compare versions treat the features as absent.
__version__ = "0.0.0"


class Missing:
    """Stands for any torchvision object; attribute access chains, calling raises ImportError."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise ImportError(f"{self._name} is unavailable: torchvision is a test stub here (tests/torchvision_stub)")

    def __repr__(self) -> str:
        return f"<torchvision stub {self._name}>"


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return Missing(f"torchvision.{name}")


class _StubFinder:
    """Serves every ``torchvision.<sub>`` module that has no file here as a stub module, so
    libraries that import submodules at import time (transformers' image processors import
    ``torchvision.transforms.v2.functional``) load; using anything from them raises ImportError."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        import importlib.machinery

        if not fullname.startswith("torchvision."):
            return None
        return importlib.machinery.ModuleSpec(fullname, cls, is_package=True)

    @staticmethod
    def create_module(spec):
        import types

        module = types.ModuleType(spec.name)
        module.__path__ = []

        def _missing(attr: str, _name=spec.name):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return Missing(f"{_name}.{attr}")

        module.__getattr__ = _missing
        return module

    @staticmethod
    def exec_module(module):
        return None


def _install_finder() -> None:
    import sys

    if not any(isinstance(f, type) and f is _StubFinder for f in sys.meta_path):
        sys.meta_path.append(_StubFinder)


_install_finder()

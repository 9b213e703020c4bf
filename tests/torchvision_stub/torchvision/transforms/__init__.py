"""Test-only stand-in for torchvision.transforms (see the package docstring)."""

from __future__ import annotations

from torchvision import Missing


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return Missing(f"torchvision.transforms.{name}")

"""Generation engines, by name. Adding one means adding its module here; nothing else changes.

Each engine module defines ``CAPABILITIES`` (a :class:`base.Capabilities`), a frozen
``Files`` dataclass naming the model files it loads, and
``load(files, *, device, dtype, offload) -> base.Engine``. Modules import torch and
diffusers lazily, so reading capabilities is cheap.
"""

from __future__ import annotations

import importlib

from .base import Capabilities, Engine, IdentityCondition, InpaintRequest, StepCallback

ENGINES = {
    "sdxl": "sdxl",
    "flux2_klein": "flux2_klein",
}
DEFAULT_ENGINE = "sdxl"

__all__ = ["Capabilities", "Engine", "IdentityCondition", "InpaintRequest", "StepCallback", "ENGINES",
           "DEFAULT_ENGINE", "engine_module", "capabilities"]


def engine_module(name: str):
    """The module of engine ``name`` (one of ENGINES)."""
    if name not in ENGINES:
        from ..errors import InputValidationError

        raise InputValidationError(f"Unknown engine {name!r}: use one of {', '.join(ENGINES)}.")
    return importlib.import_module(f"{__name__}.{ENGINES[name]}")


def capabilities(name: str) -> Capabilities:
    return engine_module(name).CAPABILITIES

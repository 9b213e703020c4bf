"""Generation engines, by name: the one list of engines. Adding one means adding its module and one
line in ``ENGINES`` (or :func:`register` from outside the pack); nothing else changes.

Each engine module defines ``CAPABILITIES`` (a :class:`base.Capabilities`: what it supports and its
settings per generation mode), a frozen ``Files`` dataclass naming the model files it loads, and
``load(files, *, device, dtype, offload) -> base.Engine``. Modules import torch and diffusers
lazily, so reading capabilities is cheap.
"""

from __future__ import annotations

import importlib

from .base import Capabilities, Engine, IdentityCondition, InpaintRequest, StepCallback

ENGINES = {  # name -> module (in this package, or a dotted name); the default first
    "flux2_klein": "flux2_klein",
    "sdxl": "sdxl",
}
DEFAULT_ENGINE = "flux2_klein"  # the shipped default workflows' engine (Apache-2.0)

__all__ = ["Capabilities", "Engine", "IdentityCondition", "InpaintRequest", "StepCallback", "ENGINES",
           "DEFAULT_ENGINE", "engine_module", "capabilities", "register"]


def engine_module(name: str):
    """The module of engine ``name`` (one of ENGINES)."""
    if name not in ENGINES:
        from ..errors import InputValidationError

        raise InputValidationError(f"Unknown engine {name!r}: use one of {', '.join(ENGINES)}.")
    module = ENGINES[name]
    return importlib.import_module(module if "." in module else f"{__name__}.{module}")


def capabilities(name: str) -> Capabilities:
    return engine_module(name).CAPABILITIES


def register(name: str, module: str) -> None:
    """Make the engine module ``module`` (an importable dotted name) available as ``name`` everywhere the
    pack lists engines: the API's engine setting, the installer, the stages."""
    if not name.isidentifier():
        from ..errors import InputValidationError

        raise InputValidationError(f"Engine name {name!r} must be an identifier (letters, digits, _).")
    ENGINES[name] = module

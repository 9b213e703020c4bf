"""Generation engines, by name: the one list of engines. Adding one means adding its module and one
line in ``ENGINES``, or, from outside the pack, :func:`register` or the environment variable
``MODELSWAP_ENGINES="name=dotted.module[,name2=...]"`` (read here, the module imported when first used);
nothing else changes: the stages, the Engine Loader node, the HTTP API's engine setting and the
installer's list read this registry.

Each engine module defines:
- ``CAPABILITIES`` (a :class:`base.Capabilities`: what it supports, its presets per generation mode);
- ``Files`` (a frozen dataclass naming the model files it loads) and
  ``load(files, *, device, dtype, offload) -> base.Engine``;
- ``MODEL_FOLDERS`` (the ComfyUI models folders its main model comes from) and
  ``load_model(path, locate, *, device, dtype, offload) -> base.Engine`` (its main model, the rest at
  the default names; ``locate(folder, name)`` finds a file): what the generic Engine Loader calls;
- ``DEFAULT_MODEL`` (its main model's name) and, when it has one, ``LOADER_NODE`` (its own loader node);
- ``API_WORKFLOWS``: the API-format workflows (without, with a face reference) the HTTP API fills,
  by name in the pack's workflows/ folder or as absolute paths.
Modules import torch and diffusers lazily, so reading capabilities is cheap.
"""

from __future__ import annotations

import importlib
import os

from .base import Capabilities, Engine, IdentityCondition, InpaintRequest, StepCallback

ENGINES = {  # name -> module (".name": in this package; else an importable module name); the default first
    "flux2_klein": ".flux2_klein",
    "sdxl": ".sdxl",
}
DEFAULT_ENGINE = "flux2_klein"  # the shipped default workflows' engine (Apache-2.0)
ENGINES_VARIABLE = "MODELSWAP_ENGINES"

__all__ = ["Capabilities", "Engine", "IdentityCondition", "InpaintRequest", "StepCallback", "ENGINES",
           "DEFAULT_ENGINE", "engine_module", "capabilities", "engine_of_loader", "register"]


def engine_module(name: str):
    """The module of engine ``name`` (one of ENGINES)."""
    if name not in ENGINES:
        from ..errors import InputValidationError

        raise InputValidationError(f"Unknown engine {name!r}: use one of {', '.join(ENGINES)}.")
    return importlib.import_module(ENGINES[name], __name__)


def capabilities(name: str) -> Capabilities:
    return engine_module(name).CAPABILITIES


def engine_of_loader(node: dict) -> str | None:
    """The engine an API-format loader node loads: its ``engine`` input (the Engine Loader), else the engine
    whose module names the node's class as its ``LOADER_NODE``; None for other nodes."""
    chosen = node.get("inputs", {}).get("engine")
    if isinstance(chosen, str):
        return chosen
    for name in ENGINES:
        try:
            if getattr(engine_module(name), "LOADER_NODE", None) == node.get("class_type"):
                return name
        except ImportError:  # a broken outside engine must not hide the others
            continue
    return None


def register(name: str, module: str) -> None:
    """Make the engine module ``module`` (an importable dotted name) available as ``name`` everywhere the
    pack lists engines: the API's engine setting, the installer, the stages."""
    if not name.isidentifier():
        from ..errors import InputValidationError

        raise InputValidationError(f"Engine name {name!r} must be an identifier (letters, digits, _).")
    ENGINES[name] = module


def register_from_env(env=None) -> None:
    """Register the engines ``MODELSWAP_ENGINES`` names ("name=dotted.module", comma separated)."""
    raw = (os.environ if env is None else env).get(ENGINES_VARIABLE, "")
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, module = item.partition("=")
        if not sep or not module.strip():
            from ..errors import InputValidationError

            raise InputValidationError(
                f"{ENGINES_VARIABLE} item {item!r} is not name=module: write e.g. "
                f"{ENGINES_VARIABLE}=myengine=my_package.my_engine")
        register(name.strip(), module.strip())


register_from_env()

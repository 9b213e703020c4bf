"""The licence guard: refuse to load any weight whose licence forbids commercial use.

One switch, three ways to turn it on (README, "Using outputs commercially"):

- ``MODELSWAP_COMMERCIAL_ONLY=1`` in the environment of ComfyUI (or of any Python using the
  pack): every loader of the pack, the HTTP API and the headless runner's ComfyUI refuse;
- per graph: the Licence Guard node (``ModelSwap_LicenceGuard``) connected to the loaders'
  ``licence_guard`` input;
- the installer: ``python scripts/get_models.py --commercial-only`` installs only
  commercial-use models (and so does the environment variable there).

Which models are non-commercial, and their licence-clean replacements, are the registry's
facts (``model_files.ModelSpec.licence`` / ``.alternative``); this module only decides and words
the refusal. The environment variable cannot be switched off by a graph.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from . import model_files
from .errors import ModelSwapError

ENV_VAR = "MODELSWAP_COMMERCIAL_ONLY"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class NonCommercialModelError(ModelSwapError, PermissionError):
    """The licence guard is on and a model published for non-commercial use only was asked for."""

    api_name = "LicenceGuardError"


def env_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``MODELSWAP_COMMERCIAL_ONLY`` turns the guard on; a value that is neither on nor off is an error."""
    raw = (os.environ if env is None else env).get(ENV_VAR, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{ENV_VAR}={raw!r}: set it to 1 (refuse non-commercial weights) or 0 (allow them).")


def enabled(graph_guard: bool | None = None, env: Mapping[str, str] | None = None) -> bool:
    """The guard is on when the environment says so, or when the graph's Licence Guard node does."""
    return env_enabled(env) or bool(graph_guard)


def refusal(key: str, name: str | None = None, where: str = "") -> str:
    """The documented message: the model, its licence and the licence-clean alternative."""
    spec = model_files.MODELS[key]
    name = name or spec.name
    why = where or f"the licence guard is on ({ENV_VAR}=1 or a Licence Guard node in the graph)"
    alternative = f" Use the licence-clean alternative: {spec.alternative}." if spec.alternative else ""
    return (f"Licence guard: {spec.title} ('{name}') is published under {spec.licence}, which does not allow "
            f"commercial use, and {why}.{alternative}")


def check(models: Iterable[tuple[str, str]], graph_guard: bool | None = None,
          env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`NonCommercialModelError` for the first non-commercial (registry key, name) in
    ``models`` when the guard is on; do nothing when it is off."""
    if not enabled(graph_guard, env):
        return
    for key, name in models:
        if model_files.MODELS[key].non_commercial:
            raise NonCommercialModelError(refusal(key, name))



def check_engine(caps, graph_guard: bool | None = None, env: Mapping[str, str] | None = None) -> None:
    """The guard for an engine loaded from its main model (the Engine Loader): its capabilities declare
    the licence of what it loads; an engine that declares none counts as non-commercial."""
    if not enabled(graph_guard, env) or caps.commercial_use:
        return
    licence = f"published under {caps.licence}, which does not allow commercial use" if caps.licence else \
        "declares no licence that allows commercial use"
    raise NonCommercialModelError(
        f"Licence guard: the {caps.label} engine ('{caps.name}') {licence}, and the licence guard is on "
        f"({ENV_VAR}=1 or a Licence Guard node in the graph). Use the licence-clean alternative: the FLUX.2 klein "
        "engine (flux2_klein, Apache-2.0).")

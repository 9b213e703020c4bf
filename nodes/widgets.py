"""Node widgets and their checks, derived from the parameter declarations in ``pipeline/contract.py``.

A widget's default, bounds, step and tooltip come from its :class:`contract.Param`. ComfyUI checks widget
min/max when a graph is queued but not the step, and an API-format graph can carry any value; so each
node that declares parameters also names them in ``validate_inputs`` (which makes ComfyUI leave their
range check to the node) and calls :func:`check` before any work, refusing with the same sentence the
HTTP API and the headless runner give for the same value.
"""

from __future__ import annotations

from comfy_api.latest import io

from .pipeline import contract as c
from .pipeline.errors import InputValidationError


def number(param: c.Param, **extra):
    """The ComfyUI Int or Float widget for ``param``."""
    if param.kind is int:
        return io.Int.Input(param.name, default=param.default, min=param.widget_min, max=param.bounds[1],
                            step=param.step or 1, tooltip=param.meaning, **extra)
    return io.Float.Input(param.name, default=param.default, min=param.bounds[0], max=param.bounds[1],
                          step=param.step or 0.01, tooltip=param.meaning, **extra)


def check(node_id: str, **values) -> None:
    """Refuse, before any work, a value of ``node_id``'s declared widgets that is out of range or off-step."""
    problems = c.node_problems(node_id, values)
    if problems:
        raise InputValidationError(" ".join(problems))

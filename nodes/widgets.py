"""Node widgets and their checks, derived from the parameter declarations in ``pipeline/contract.py``.

A widget's default, bounds, step and tooltip come from its :class:`contract.Param`. ComfyUI checks widget
min/max when a graph is queued (its own words: "Value 5 bigger than max of 4") but not the step, and an
API-format graph can carry any value; a node whose parameter has a step rule (FaceRefine's work_size)
names it in ``validate_inputs``, which refuses it at queue time with :func:`problems`, the sentence the
headless runner and the Python checks give for the same value.
"""

from __future__ import annotations

from comfy_api.latest import io

from .pipeline import contract as c


def number(param: c.Param, **extra):
    """The ComfyUI Int or Float widget for ``param``."""
    if param.kind is int:
        return io.Int.Input(param.name, default=param.default, min=param.widget_min, max=param.bounds[1],
                            step=param.step or 1, tooltip=param.meaning, **extra)
    return io.Float.Input(param.name, default=param.default, min=param.bounds[0], max=param.bounds[1],
                          step=param.step or 0.01, tooltip=param.meaning, **extra)


def problems(node_id: str, **values) -> bool | str:
    """For a node's ``validate_inputs``: True, or the declaration's refusal of the values given."""
    found = c.node_problems(node_id, values)
    return " ".join(found) if found else True

"""The one place that reads a weight file the user gave us into a state dict.

``.safetensors`` / ``.sft`` go through safetensors; anything else through
``torch.load(weights_only=True)`` (memory-mapped when the file allows it), so a
pickle that carries code is refused, never run.
"""

from __future__ import annotations

from pathlib import Path

from ..contract import SAFETENSORS_SUFFIXES
from ..errors import InputValidationError


def read_state_dict(path: str | Path, what: str) -> dict:
    """The tensors in ``path`` (a dict, nested as stored); ``what`` names the file in errors,
    e.g. "IP-Adapter file"."""
    import torch

    path = Path(path)
    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
                raise
            data = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy pickles cannot be mapped
    except Exception as exc:  # truncated, corrupt, or a pickle holding objects
        raise InputValidationError(
            f"The {what} {path.name} could not be read ({type(exc).__name__}: {str(exc)[:300]}). Only plain weight "
            "files load (safetensors, or .bin/.pt readable with torch.load(weights_only=True)): re-download it."
        ) from exc
    if not isinstance(data, dict):
        raise InputValidationError(
            f"The {what} {path.name} holds a {type(data).__name__}, not a dict of weights: use the file as published."
        )
    return data

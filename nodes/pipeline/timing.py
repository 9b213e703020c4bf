"""Stage timings: how long each stage took, recorded by the stage itself."""

from __future__ import annotations

import time
from contextlib import contextmanager

Timings = tuple  # ((stage name, seconds), ...)


@contextmanager
def timed(device, into: list, name: str):
    """Append (name, seconds) to ``into``; on CUDA the clock stops after the device finishes."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if getattr(device, "type", str(device)) == "cuda":
            import torch

            torch.cuda.synchronize()
        into.append((name, time.perf_counter() - start))

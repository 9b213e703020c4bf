"""What every engine needs around its diffusers pipeline: device and dtype choice, offload,
per-seed generators, the step callback and uint8 results. Torch is imported lazily."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputValidationError

OFFLOAD_MODES = ("none", "model")
_DTYPE_NAMES = {
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}


def resolve_device(device: Any):
    """"auto" -> cuda when available else cpu; a CUDA request without CUDA is an error."""
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as exc:
        raise InputValidationError(f"Unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputValidationError(
            f"Device {device!r} was requested but CUDA is not available in this PyTorch ({torch.__version__}): "
            "use device='cpu' (slow) or install a CUDA build of PyTorch.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputValidationError("Device 'mps' was requested but is not available: use device='cpu'.")
    return dev


def resolve_dtype(dtype: Any, device, cuda_default: str = "fp16"):
    """None/"auto" -> ``cuda_default`` on CUDA, float32 elsewhere; names or torch dtypes otherwise."""
    import torch

    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() in ("", "auto", "default")):
        dtype = cuda_default if torch.device(device).type == "cuda" else "fp32"
    if isinstance(dtype, torch.dtype) and dtype in (torch.float16, torch.bfloat16, torch.float32):
        return dtype
    name = dtype.strip().lower().removeprefix("torch.") if isinstance(dtype, str) else None
    if name in _DTYPE_NAMES:
        return getattr(torch, _DTYPE_NAMES[name])
    raise InputValidationError(f"Unsupported dtype {dtype!r}: use 'fp16', 'bf16' or 'fp32' (the CPU default).")


def check_offload(offload: str, device) -> str:
    mode = (offload or "none").strip().lower()
    if mode not in OFFLOAD_MODES:
        raise InputValidationError(
            f"Unknown offload mode {offload!r}: use 'none' (everything on the device) or 'model' "
            "(model CPU offload for GPUs with little VRAM).")
    if mode == "model" and device.type != "cuda":
        raise InputValidationError(
            f"offload='model' needs a CUDA device (it moves models between CPU and GPU) but the device is "
            f"'{device}': use offload='none' on {device.type}.")
    return mode


def place(pipe, device, offload: str) -> None:
    """Model CPU offload, or everything on ``device``; under a memory host (placement.py) the
    modules stay on the CPU until the host loads them for a use."""
    from .. import placement

    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif not placement.managed():
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)


def generators(seeds: Sequence[int]) -> list:
    """One CPU generator per image: image i depends on seeds[i] alone, on every device."""
    import torch

    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def to_uint8(images) -> list[np.ndarray]:
    """diffusers' float images in [0, 1] (N, H, W, 3) -> uint8 arrays."""
    arr = np.asarray(images)
    return [np.ascontiguousarray(im) for im in np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)]


def free_accelerator_memory() -> None:
    """Return dropped models' GPU memory to the driver (CPU memory goes by refcount)."""
    import gc

    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def stamp(path) -> tuple:
    """A cache key part that changes when the file or folder is replaced."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        return (None,)
    st = path.stat()
    marks = [str(path.resolve()), st.st_mtime_ns, st.st_size if path.is_file() else 0]
    for name in ("model_index.json", "config.json"):
        if path.is_dir() and (path / name).is_file():
            marks.append((path / name).stat().st_mtime_ns)
    return tuple(marks)

"""Image and mask validation, conversion and resizing (numpy, uint8 RGB).

The pipeline works on ``np.ndarray`` images of shape (H, W, 3), dtype uint8.
:func:`as_rgb_uint8` is the single entry point that turns whatever a caller
hands in (float or uint8 arrays, torch tensors, batches of one, grey or RGBA)
into that form, or raises an error that says what was wrong and what to pass.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .contract import MAX_PIXELS  # FASHN processes at most about 1 MP
from .errors import ImageLoadError, InputValidationError

SIDE_MULTIPLE = 8  # SDXL's VAE downsamples by 8


def _to_numpy(image) -> np.ndarray:
    if image is None:
        raise ImageLoadError("No image was given: pass an RGB image as an (H, W, 3) array.")
    if hasattr(image, "detach"):  # torch tensor, without importing torch here
        image = image.detach().to("cpu").float().numpy() if image.dtype.is_floating_point else image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.dtype.kind in "USOV":
        raise ImageLoadError(
            f"Expected an image array, got {type(image).__name__} (dtype {arr.dtype}); decode the file first "
            "and pass its pixels as an (H, W, 3) array.")
    return arr


def as_rgb_uint8(image, what: str = "image") -> np.ndarray:
    """Return ``image`` as a contiguous (H, W, 3) uint8 array.

    Accepts (H, W), (H, W, 1|3|4) and a batch of one (1, H, W, C); float images
    must lie in [0, 1]; uint8 is taken as is.
    """
    arr = _to_numpy(image)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ImageLoadError(
                f"The {what} is a batch of {arr.shape[0]} images; pass one image (H, W, 3) "
                "or split the batch first."
            )
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageLoadError(
            f"The {what} has shape {tuple(arr.shape)}; expected (H, W, 3) RGB, (H, W) grey or (H, W, 4) RGBA."
        )
    if arr.shape[0] < 16 or arr.shape[1] < 16:
        raise ImageLoadError(
            f"The {what} is {arr.shape[1]}x{arr.shape[0]} pixels, too small or empty; give an image of at least 16x16."
        )
    if arr.dtype == np.uint8:
        out = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageLoadError(f"The {what} contains NaN or infinite values; pass finite values in [0, 1].")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ImageLoadError(
                f"The {what} is float with values in [{lo:.3g}, {hi:.3g}]; float images must lie in [0, 1] "
                "(or pass uint8 0-255)."
            )
        out = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    elif arr.dtype == np.uint16:
        out = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    else:
        raise ImageLoadError(f"The {what} has dtype {arr.dtype}; pass uint8 (0-255) or float (0-1).")
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif out.shape[2] == 4:
        out = out[:, :, :3]
    return np.ascontiguousarray(out)


def as_mask(mask, shape: tuple[int, int], what: str = "mask") -> np.ndarray:
    """Return ``mask`` as a float32 (H, W) array in [0, 1] matching ``shape`` (H, W)."""
    arr = _to_numpy(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise InputValidationError(f"The {what} has shape {tuple(arr.shape)}; expected (H, W) or a batch of one (1, H, W).")
    if tuple(arr.shape) != tuple(shape):
        raise InputValidationError(
            f"The {what} is {arr.shape[1]}x{arr.shape[0]} but the image is {shape[1]}x{shape[0]}; "
            "give a mask of the image's size (resize it, or make it from this image)."
        )
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
        raise InputValidationError(f"The {what} must hold values in [0, 1] (or uint8 0-255).")
    return np.clip(arr, 0.0, 1.0)


def processing_size(height: int, width: int, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(H, W) to process an image at: the input size if it has at most ``max_pixels``,
    else scaled down with the aspect ratio kept and both sides multiples of 8."""
    if height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    h = max(SIDE_MULTIPLE, int(height * scale) // SIDE_MULTIPLE * SIDE_MULTIPLE)
    w = max(SIDE_MULTIPLE, int(width * scale) // SIDE_MULTIPLE * SIDE_MULTIPLE)
    return h, w


def resize(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an image or mask: INTER_AREA when shrinking, Lanczos when enlarging."""
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image
    shrinking = h * w < image.shape[0] * image.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    out = cv2.resize(image, (w, h), interpolation=interp)
    if image.dtype == np.float32:
        out = np.clip(out, 0.0, 1.0)
    return out


def pad_to_multiple(image: np.ndarray, multiple: int = SIDE_MULTIPLE) -> tuple[np.ndarray, tuple[int, int]]:
    """Edge-pad the bottom and right so both sides are multiples of ``multiple``.

    Returns the padded array and the original (H, W) to crop back to.
    """
    h, w = image.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image, (h, w)
    pad = ((0, ph), (0, pw)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad, mode="edge"), (h, w)

"""Marketplace formats: extend a photo to one of FASHN's aspect ratios, never cropping it.

The canvas is the smallest one of the ratio that contains the photo unchanged; the engine
outpaints the new area (a full-strength mask there) and a seam band inside the photo's
extended borders blends old and new. Everything else of the photo is kept exactly.

Placement (README, "Marketplace formats"): the photo is centred horizontally and sits on the
canvas's bottom edge. New columns go left and right of the person (background); new rows go
above the head, never below the photo, so a garment cut off by the bottom of the frame is
never continued by invention. A canvas taller than the photo therefore adds headroom.

Rounding: both canvas sides are multiples of :data:`SIDE_MULTIPLE` (8, what every engine's
side multiple divides or the pipeline pads to). The side the ratio fixes is the photo's side
rounded up to a multiple of 8; the other is that side times the ratio, rounded up to the next
multiple of 8. So ``0 <= extended - fixed * ratio < 8``: the output ratio is within one 8 px
step of the exact one (:func:`canvas_size`).

Size: with a ratio the photo is processed smaller, so that the whole canvas stays within the
processing budget (about 1.05 MP, FASHN's; :func:`photo_budget`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .contract import ASPECT_RATIOS, ORIGINAL_RATIO
from .images import SIDE_MULTIPLE

SEAM = 16  # px at processing size: the blend band inside each extended border of the photo


def ratio_of(name: str) -> tuple[int, int]:
    """(width, height) of a contract.ASPECT_RATIOS name, e.g. "4:5" -> (4, 5)."""
    if name not in ASPECT_RATIOS:
        raise ValueError(f"{name!r} is not one of {', '.join(ASPECT_RATIOS)}")  # checked where values enter
    w, h = name.split(":")
    return int(w), int(h)


def _up(value: float, multiple: int = SIDE_MULTIPLE) -> int:
    return int(math.ceil(value / multiple - 1e-9)) * multiple


def canvas_size(photo_hw: tuple[int, int], ratio: str) -> tuple[int, int]:
    """(H, W) of the smallest canvas of ``ratio`` (sides multiples of 8) that contains ``photo_hw``."""
    h, w = photo_hw
    rw, rh = ratio_of(ratio)
    if w * rh >= h * rw:  # the photo is at least as wide as the ratio: the width is fixed, rows are added
        width = _up(w)
        return max(_up(h), _up(width * rh / rw)), width
    height = _up(h)
    return height, max(_up(w), _up(height * rw / rh))


def photo_budget(photo_hw: tuple[int, int], ratio: str, max_pixels: int) -> int:
    """The pixel budget for the photo so that its canvas of ``ratio`` holds about ``max_pixels``."""
    h, w = photo_hw
    ch, cw = canvas_size(photo_hw, ratio)
    return max(SIDE_MULTIPLE * SIDE_MULTIPLE, int(max_pixels * (h * w) / float(ch * cw)))


@dataclass(frozen=True)
class Frame:
    """Where the photo sits on the canvas, and what the engine must paint.

    ``canvas_hw``: (H, W). ``top``, ``left``: the photo's offset; it spans ``photo_hw``.
    ``outpaint``: float32 (H, W): 1 on every new canvas pixel, a smoothstep falling to exactly 0
    :data:`SEAM` px inside each extended border of the photo, 0 elsewhere. Where both it and the
    person band are 0 the output is the photo's own pixel."""

    ratio: str
    canvas_hw: tuple[int, int]
    top: int
    left: int
    photo_hw: tuple[int, int]
    outpaint: np.ndarray

    @property
    def photo_box(self) -> tuple[slice, slice]:
        """Index the photo's area of a canvas-sized array: ``canvas[frame.photo_box]``."""
        return slice(self.top, self.top + self.photo_hw[0]), slice(self.left, self.left + self.photo_hw[1])


def plan(photo_hw: tuple[int, int], ratio: str, seam: int = SEAM) -> Frame:
    """The frame for a photo of ``photo_hw`` (processing size) at ``ratio``."""
    h, w = photo_hw
    ch, cw = canvas_size(photo_hw, ratio)
    top, left = ch - h, (cw - w) // 2  # bottom-aligned, centred horizontally
    outpaint = np.ones((ch, cw), np.float32)
    inner = np.zeros((h, w), np.float32)
    depth = max(1, min(seam, h // 4, w // 4))
    ramp = _seam_ramp(depth)
    extended = {"top": top > 0, "left": left > 0, "right": cw - w - left > 0, "bottom": False}
    rows = np.arange(h)[:, None].astype(np.int64)
    cols = np.arange(w)[None, :].astype(np.int64)
    for side, grows in extended.items():
        if not grows:
            continue
        dist = {"top": rows, "left": cols, "right": w - 1 - cols, "bottom": h - 1 - rows}[side]
        np.maximum(inner, ramp[np.minimum(dist, depth)], out=inner)
    outpaint[top:top + h, left:left + w] = inner
    return Frame(ratio=ratio, canvas_hw=(ch, cw), top=top, left=left, photo_hw=(h, w), outpaint=outpaint)


def _seam_ramp(depth: int) -> np.ndarray:
    """Alpha at distance 0 .. depth from the photo's border: smoothstep from 1 to exactly 0."""
    t = np.clip(1.0 - np.arange(depth + 1, dtype=np.float64) / depth, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def extend(image: np.ndarray, frame: Frame) -> np.ndarray:
    """The photo on the canvas; the new area starts as the photo's border pixels repeated outward (the
    engine repaints it at full strength, so this is only its starting colour)."""
    h, w = frame.photo_hw
    ch, cw = frame.canvas_hw
    return cv2.copyMakeBorder(image, frame.top, ch - h - frame.top, frame.left, cw - w - frame.left,
                              cv2.BORDER_REPLICATE)


def extend_zeros(array: np.ndarray, frame: Frame) -> np.ndarray:
    """A mask or label map on the canvas: 0 (nothing, background) on the new area."""
    out = np.zeros(frame.canvas_hw + array.shape[2:], array.dtype)
    out[frame.photo_box] = array
    return out


def extend_native(native: np.ndarray, ratio: str) -> np.ndarray:
    """The full-size photo on its own canvas of ``ratio`` (for the native, 2k and 4k outputs): the same rule
    and placement as :func:`plan` at the full size, so the full-size output meets the ratio as documented."""
    nh, nw = native.shape[:2]
    ch, cw = canvas_size((nh, nw), ratio)
    left = (cw - nw) // 2
    return cv2.copyMakeBorder(native, ch - nh, 0, left, cw - nw - left, cv2.BORDER_REPLICATE)


def is_original(ratio: str | None) -> bool:
    return ratio in (None, "", ORIGINAL_RATIO)

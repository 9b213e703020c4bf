"""The swap mask: which pixels the model swap repaints, and how softly it blends.

A model swap keeps the garments and the background and regenerates the person
(face, hair, skin). :func:`build_swap_mask` turns the parser's label map (or a
mask the user drew) into a :class:`SwapMask`: a hard region that is fully
regenerated, and a feathered alpha that falls to exactly zero a fixed number of
pixels outside it, so every pixel with alpha 0 is guaranteed to come back
unchanged from the compositing stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np

from . import contract
from .errors import InputValidationError
from .images import as_mask, as_rgb_uint8
from .parsing import LABEL_IDS, LABELS

DEFAULT_REGENERATE: tuple[str, ...] = ("face", "hair", "torso", "arms", "hands", "legs", "feet")
PRESERVED_CLASSES: tuple[str, ...] = (
    "top", "dress", "skirt", "pants", "belt", "bag", "hat", "scarf", "glasses", "jewelry",
)  # and "background", always

# One distinct colour per class (index = class id) for the preview output.
PALETTE = np.array(
    [
        (0, 0, 0),  # background
        (255, 170, 127),  # face
        (128, 64, 0),  # hair
        (255, 0, 0),  # top
        (255, 0, 255),  # dress
        (255, 128, 192),  # skirt
        (0, 0, 255),  # pants
        (255, 255, 0),  # belt
        (0, 128, 128),  # bag
        (128, 0, 128),  # hat
        (255, 128, 0),  # scarf
        (0, 255, 255),  # glasses
        (0, 255, 0),  # arms
        (128, 255, 128),  # hands
        (0, 128, 0),  # legs
        (128, 128, 0),  # feet
        (128, 128, 255),  # torso
        (255, 255, 255),  # jewelry
    ],
    dtype=np.uint8,
)
assert len(PALETTE) == len(LABELS)


def _valid_names() -> str:
    return ", ".join(LABELS)


def class_names(classes) -> tuple[str, ...]:
    """Normalise a class selection to a tuple of known names.

    Accepts an iterable of names or one comma-separated string (as a node's
    text widget gives it); case and surrounding spaces are ignored.
    """
    if isinstance(classes, str):
        classes = classes.split(",")
    names = tuple(str(c).strip().lower() for c in classes)
    names = tuple(n for n in names if n)
    unknown = [n for n in names if n not in LABEL_IDS]
    if unknown:
        raise InputValidationError(
            f"Unknown class name(s) {', '.join(repr(u) for u in unknown)}; choose from: {_valid_names()}."
        )
    return names


def _check_labels(labels) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputValidationError(
            f"The label map has shape {tuple(arr.shape)} and dtype {arr.dtype}; expected an (H, W) "
            "integer array of class ids as the human parser returns it."
        )
    if arr.size and (arr.min() < 0 or arr.max() >= len(LABELS)):
        raise InputValidationError(
            f"The label map holds ids in [{arr.min()}, {arr.max()}]; FASHN's parser uses 0..{len(LABELS) - 1}. "
            "Pass the human parser's output unchanged."
        )
    return arr


def class_mask(labels, classes: Iterable[str] | str) -> np.ndarray:
    """Boolean (H, W): pixels whose class is one of ``classes`` (names from LABELS)."""
    arr = _check_labels(labels)
    selected = np.zeros(len(LABELS), bool)
    selected[[LABEL_IDS[n] for n in class_names(classes)]] = True
    return selected[arr]  # ids are checked to lie in 0..17: one table lookup per pixel


@dataclass
class SwapMask:
    """The region to regenerate.

    ``hard``: fully regenerated. ``alpha``: 1 on ``hard``, falling to exactly 0
    ``feather`` pixels outside it. ``labels``: the parse it came from (None
    for an external mask).
    """

    labels: np.ndarray | None
    hard: np.ndarray
    alpha: np.ndarray
    source: str = "parser"

    @property
    def band(self) -> np.ndarray:
        """Every pixel that may change (alpha > 0)."""
        return self.alpha > 0

    @property
    def preserve(self) -> np.ndarray:
        """Pixels guaranteed identical to the input (alpha == 0)."""
        return self.alpha == 0


def _squared_distance_to(region: np.ndarray, limit: int) -> np.ndarray:
    """Exact squared Euclidean distance (pixels, int32) from each pixel to the nearest
    ``region`` pixel, capped at ``limit**2``: 0 inside, ``limit**2`` at ``limit`` px or
    farther and everywhere when ``region`` is empty. ``limit`` <= 1024.

    cv2.distanceTransform (precise mask) is within about 1e-4 px of the truth but not
    bit-stable: its first call in a process can differ in the last bits from later
    ones. Squaring and rounding snaps it to the exact integer, so masks are
    deterministic and ``<= grow**2`` comparisons are exact. Capped at ``limit``, the
    float32 square is off by at most limit**2 * 2**-24 (0.07 at 1024), far below the
    0.5 that rounding tolerates.
    """
    if not region.any():
        return np.full(region.shape, limit * limit, np.int32)
    outside = np.ascontiguousarray(~region).view(np.uint8)  # bool is one byte of 0/1: no copy
    d = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    np.minimum(d, np.float32(limit), out=d)
    np.multiply(d, d, out=d)
    return np.rint(d, out=d).astype(np.int32)


def grow_mask(hard: np.ndarray, grow: int) -> np.ndarray:
    """Dilate (grow > 0) or erode (grow < 0) by ``|grow|`` pixels with a round structuring element.

    Uses exact Euclidean distances rather than cv2.dilate with an elliptical
    kernel: the result is the same disc-shaped growth (every pixel centre within
    ``|grow|`` px), but its cost does not depend on the radius (a 513x513 kernel
    on a 1 MP image is slow). The image border does not erode the mask, so a
    body cut off by the frame stays masked up to the edge.
    """
    if grow == 0:
        return hard.copy()
    if abs(grow) <= _SMALL_GROW:
        # The same set by a morphological filter with the disc of offsets |d|^2 <= grow^2; OpenCV's
        # default border (ignored when dilating, counted as mask when eroding) matches the above.
        disc = _disc(abs(grow))
        src = np.ascontiguousarray(hard).view(np.uint8)
        op = cv2.dilate if grow > 0 else cv2.erode
        return op(src, disc).view(bool)
    if grow > 0:
        return _squared_distance_to(hard, grow + 1) <= grow * grow
    return _squared_distance_to(~hard, -grow + 1) > grow * grow


_SMALL_GROW = 8  # up to this radius a disc-shaped filter is faster than a distance transform


def _disc(radius: int) -> np.ndarray:
    """uint8 (2r+1, 2r+1) kernel: 1 at every offset (dy, dx) with dy^2 + dx^2 <= r^2."""
    dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (dy * dy + dx * dx <= radius * radius).astype(np.uint8)


def _falloff(feather: int) -> np.ndarray:
    """Alpha at squared distance k = 0 .. feather**2 (float32): a smoothstep, exactly 0 at the end.
    Distances are whole squared pixels, so a table gives every pixel its value in one lookup."""
    k = np.arange(feather * feather + 1, dtype=np.float64)
    t = np.clip(1.0 - np.sqrt(k) / float(feather), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def feather_alpha(hard: np.ndarray, feather: int) -> np.ndarray:
    """Alpha: 1 on ``hard``, a smoothstep falloff outside it, exactly 0 at distance >= ``feather``."""
    if feather == 0:
        return hard.astype(np.float32)
    alpha = _falloff(feather)[_squared_distance_to(hard, feather)]
    alpha[hard] = 1.0
    return alpha


def build_swap_mask(
    labels=None,
    *,
    external=None,
    regenerate: Iterable[str] | str = DEFAULT_REGENERATE,
    grow: int = 0,
    feather: int = 8,
    image_shape: tuple[int, int] | None = None,
) -> SwapMask:
    """Make the swap mask from the parser's ``labels`` and the ``regenerate`` classes,
    or from an ``external`` mask (float [0, 1], bool or uint8, (H, W); > 0.5 counts
    as regenerate), which replaces the parser's when both are given.

    ``grow`` > 0 dilates and < 0 erodes the hard region by that many pixels;
    ``feather`` is the width of the soft band outside it. ``image_shape`` (H, W),
    when given, is checked against the label map or external mask.
    """
    contract.check(contract.GROW, grow)  # the one declaration of their bounds (widgets, API, runner)
    contract.check(contract.FEATHER, feather)
    arr = None if labels is None else _check_labels(labels)
    shape = tuple(image_shape[:2]) if image_shape is not None else None
    if arr is not None:
        if shape is not None and arr.shape != shape:
            raise InputValidationError(
                f"The label map is {arr.shape[1]}x{arr.shape[0]} but the image is {shape[1]}x{shape[0]}; "
                "parse this image (or resize the label map with nearest-neighbour)."
            )
        shape = arr.shape

    if external is not None:
        if shape is None:
            ext = np.asarray(external.detach().cpu() if hasattr(external, "detach") else external)
            ext = ext[0] if ext.ndim == 3 and ext.shape[0] == 1 else ext
            shape = tuple(ext.shape[:2])
        hard = as_mask(external, shape, "external mask") >= 0.5
        source = "external"
    elif arr is not None:
        names = class_names(regenerate)
        if "background" in names:
            raise InputValidationError(
                "'background' cannot be regenerated: the model swap always keeps the background. "
                f"Choose from: {', '.join(n for n in LABELS if n != 'background')}, "
                "or supply an external mask."
            )
        hard = class_mask(arr, names)
        source = "parser"
    else:
        raise InputValidationError(
            "No mask source: pass the human parser's label map, or an external mask of the image's size."
        )

    hard = grow_mask(hard, grow)
    return SwapMask(labels=arr, hard=hard, alpha=feather_alpha(hard, feather), source=source)


def preview(labels) -> np.ndarray:
    """Colour-coded parse, (H, W, 3) uint8, one :data:`PALETTE` colour per class."""
    arr = _check_labels(labels).astype(np.uint8, copy=False)  # ids 0..17, checked
    table = np.zeros((256, 1, 3), np.uint8)
    table[: len(PALETTE), 0] = PALETTE
    return cv2.LUT(cv2.merge([arr, arr, arr]), table)  # a per-channel table lookup, much faster than PALETTE[arr]


def overlay(image, swap_mask: SwapMask, colour=(255, 0, 96), strength: float = 0.55) -> np.ndarray:
    """The image with the area to regenerate tinted by ``colour`` (stronger where alpha is higher)."""
    rgb = as_rgb_uint8(image, "image")
    if rgb.shape[:2] != swap_mask.alpha.shape:
        h, w = swap_mask.alpha.shape
        raise InputValidationError(
            f"The image is {rgb.shape[1]}x{rgb.shape[0]} but the mask is {w}x{h}; overlay the mask on the "
            "image it was made from."
        )
    out = rgb.copy()  # where the tint weight is 0 the blend below returns the pixel itself
    a = swap_mask.alpha.reshape(-1) * float(strength)
    tinted = np.flatnonzero(a != 0)
    if tinted.size:
        a = a[tinted, None]
        flat = out.reshape(-1, 3)
        blend = flat[tinted].astype(np.float32) * (1.0 - a) + np.asarray(colour, np.float32) * a
        flat[tinted] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return out

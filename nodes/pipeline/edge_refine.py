"""Refine a coarse class map along the photo's own edges: the guided filter (He, Sun and Tang, 2010).

A segmenter that sees the photo at 256x256 gives class probabilities whose borders, upsampled
to a 1 MP photo, can lie several pixels off the real edge of a sleeve or a collar. The guided
filter fits, in every window of radius ``radius`` around a pixel, the probability as a linear
function of the photo's colour (``q = a . I + b``), so the result changes where the photo's
colour changes and stays flat where it does not: the border moves onto the photo's edge. Each
class's probability is filtered this way and the label is the argmax of the filtered ones.

Only box filters (``cv2.boxFilter``) and a 3x3 solve per pixel: linear in the pixel count and
independent of the radius. Pixels far from any coarse border keep their coarse label (the
filter is only evaluated in a band of ``2 * radius`` around borders), which is where almost all
of a photo lies.
"""

from __future__ import annotations

import cv2
import numpy as np

DEFAULT_EPS = 1e-3  # regularisation of the local linear fit (photo in [0, 1]): lower follows weaker edges


def radius_for(coarse_hw: tuple[int, int], full_hw: tuple[int, int]) -> int:
    """Window radius for refining a ``coarse_hw`` map at ``full_hw``: twice the upsampling factor
    (at least 4 px), so a border the coarse map misplaces by up to one of its own pixels is
    still inside the windows that see the true edge."""
    scale = max(full_hw[0] / max(1, coarse_hw[0]), full_hw[1] / max(1, coarse_hw[1]))
    return max(4, int(np.ceil(2.0 * scale)))


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2r+1)^2 window (reflected at the border), channel by channel."""
    k = 2 * radius + 1
    if x.ndim == 3 and x.shape[2] > 4:  # OpenCV filters up to 4 channels per call reliably and fast
        return np.concatenate([_box(x[:, :, i:i + 4], radius) for i in range(0, x.shape[2], 4)], axis=2)
    out = cv2.boxFilter(x, -1, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT)
    return out.reshape(x.shape)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float = DEFAULT_EPS) -> np.ndarray:
    """He's guided filter with a colour guide.

    ``guide``: (H, W, 3) float32 in [0, 1]; ``src``: (H, W, C) float32 (C maps filtered at once).
    Returns (H, W, C) float32.
    """
    h, w, c = src.shape
    mean_i = _box(guide, radius)  # (H, W, 3)
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    products = np.stack([guide[:, :, i] * guide[:, :, j] for i, j in pairs], axis=2)
    corr = _box(products, radius)
    cov = [corr[:, :, n] - mean_i[:, :, i] * mean_i[:, :, j] for n, (i, j) in enumerate(pairs)]
    rr, rg, rb, gg, gb, bb = (v + (eps if i == j else 0.0) for v, (i, j) in zip(cov, pairs))
    # Inverse of the symmetric 3x3 [[rr, rg, rb], [rg, gg, gb], [rb, gb, bb]] per pixel (adjugate / det).
    inv = [gg * bb - gb * gb, gb * rb - rg * bb, rg * gb - gg * rb, rr * bb - rb * rb, rb * rg - rr * gb,
           rr * gg - rg * rg]
    det = rr * inv[0] + rg * inv[1] + rb * inv[2]
    inv = [v / det for v in inv]
    full = ((inv[0], inv[1], inv[2]), (inv[1], inv[3], inv[4]), (inv[2], inv[4], inv[5]))

    mean_p = _box(src, radius)  # (H, W, C)
    ip = (guide[:, :, :, None] * src[:, :, None, :]).reshape(h, w, 3 * c)
    mean_ip = _box(ip, radius).reshape(h, w, 3, c)
    cov_ip = mean_ip - mean_i[:, :, :, None] * mean_p[:, :, None, :]
    a = np.stack([sum(full[k][j][:, :, None] * cov_ip[:, :, j] for j in range(3)) for k in range(3)], axis=2)
    b = mean_p - (a * mean_i[:, :, :, None]).sum(axis=2)
    mean_a = _box(a.reshape(h, w, 3 * c), radius).reshape(h, w, 3, c)
    mean_b = _box(b, radius)
    return ((mean_a * guide[:, :, :, None]).sum(axis=2) + mean_b).astype(np.float32)


def refine_labels(photo: np.ndarray, probabilities: np.ndarray, *, radius: int | None = None,
                  eps: float = DEFAULT_EPS) -> np.ndarray:
    """Labels (H, W) uint8 at the photo's size from coarse class ``probabilities`` (h, w, C).

    ``photo``: (H, W, 3) uint8 RGB. The probabilities are resized bilinearly to (H, W), refined
    with :func:`guided_filter` guided by the photo inside the band where the coarse labels change
    within ``2 * radius`` pixels, and the argmax is taken. Outside that band the label is the
    upsampled map's own.
    """
    full_hw = photo.shape[:2]
    radius = radius or radius_for(probabilities.shape[:2], full_hw)
    up = cv2.resize(probabilities.astype(np.float32), (full_hw[1], full_hw[0]), interpolation=cv2.INTER_LINEAR)
    up = up.reshape(full_hw + (probabilities.shape[2],))
    labels = up.argmax(axis=2).astype(np.uint8)
    border = cv2.morphologyEx(labels, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    if not border.any():
        return labels
    band = cv2.dilate(border.view(np.uint8), np.ones((4 * radius + 1, 4 * radius + 1), np.uint8)) > 0
    ys, xs = np.nonzero(band)
    pad = 2 * radius + 1  # the filter's support around the band: results inside the band are exact
    y0, y1 = max(0, ys.min() - pad), min(full_hw[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(full_hw[1], xs.max() + pad + 1)
    guide = photo[y0:y1, x0:x1].astype(np.float32) / np.float32(255.0)
    present = np.flatnonzero(up[y0:y1, x0:x1].max(axis=(0, 1)) > 1e-3)  # classes that occur here
    filtered = guided_filter(guide, np.ascontiguousarray(up[y0:y1, x0:x1][:, :, present]), radius, eps)
    window = band[y0:y1, x0:x1]
    labels[y0:y1, x0:x1][window] = present[filtered.argmax(axis=2)][window].astype(np.uint8)
    return labels

"""Putting generated pixels back: exact preservation, native-size output, colour matching.

The guarantee lives here: every pixel where the swap mask's alpha is 0 is
copied from the input, byte for byte. Generated pixels only enter through the
regenerate region and its feathered band.
"""

from __future__ import annotations

import cv2
import numpy as np

from .images import resize


def composite(original: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend ``generated`` over ``original`` by ``alpha`` (H, W) in [0, 1]; exact where alpha == 0.

    Only the feathered band is blended in float: pixels with alpha 0 are copied from
    ``original`` and pixels with alpha exactly 1 from ``generated`` (what the blend gives
    there anyway), so a 1 MP composite touches a few per cent of its pixels in float.
    """
    if original.shape != generated.shape or original.shape[:2] != alpha.shape:
        raise ValueError(
            f"composite: shapes differ (original {original.shape}, generated {generated.shape}, alpha {alpha.shape})"
        )
    out = original.copy()
    np.copyto(out, generated, where=(alpha == 1.0)[:, :, None])
    flat_alpha = alpha.reshape(-1)
    band = np.flatnonzero(~(flat_alpha <= 0.0) & (flat_alpha != 1.0))
    if band.size:
        a = flat_alpha[band, None].astype(np.float32)
        flat = out.reshape(-1, original.shape[2])
        blended = original.reshape(flat.shape)[band].astype(np.float32) * (1.0 - a)
        blended += generated.reshape(flat.shape)[band].astype(np.float32) * a
        flat[band] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def upscale_alpha(alpha: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a feathered alpha to ``size_hw`` (linear), keeping exact zeros where the source
    neighbourhood is all zero, so the preserve region does not leak."""
    h, w = size_hw
    if alpha.shape == (h, w):
        return alpha
    up = cv2.resize(alpha.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    up[up < 1e-4] = 0.0
    return np.clip(up, 0.0, 1.0)


def to_native(original_native: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Composite a result generated at processing size onto the full-resolution original.

    Returns the native-size image and the native-size alpha. Pixels with alpha 0
    are the original full-resolution pixels.
    """
    size = original_native.shape[:2]
    gen_up = resize(generated, size)
    alpha_up = upscale_alpha(alpha, size)
    return composite(original_native, gen_up, alpha_up), alpha_up


def match_colour(source: np.ndarray, target: np.ndarray, source_mask: np.ndarray,
                 target_mask: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Shift ``source``'s colour (in CIELAB, mean and spread) so that the pixels under
    ``source_mask`` look like ``target``'s pixels under ``target_mask``.

    Used to make a refined face agree with the neck and surrounding skin, the
    skin-tone jump users complain about most. Returns a new uint8 image.
    """
    sm, tm = source_mask > 0, target_mask > 0
    if sm.sum() < 16 or tm.sum() < 16 or strength <= 0:
        return source.copy()
    src_lab = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    tgt_lab = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    s_mean, s_std = src_lab[sm].mean(0), src_lab[sm].std(0) + 1e-3
    t_mean, t_std = tgt_lab[tm].mean(0), tgt_lab[tm].std(0) + 1e-3
    ratio = np.clip(t_std / s_std, 0.5, 2.0)
    matched = (src_lab - s_mean) * ratio + t_mean
    out_lab = src_lab + (matched - src_lab) * float(np.clip(strength, 0.0, 1.0))
    out = cv2.cvtColor(np.clip(out_lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return out


def soft_paste_mask(mask: np.ndarray, feather: int) -> np.ndarray:
    """A paste alpha that is 1 deep inside ``mask`` and fades to 0 before the mask edge and
    before the crop border, so a pasted crop leaves no square seam."""
    m = (mask > 0).astype(np.uint8)
    if feather <= 0:
        return m.astype(np.float32)
    # Fade inward: distance to the outside of the mask, normalised by the feather width.
    padded = np.pad(m, 1, constant_values=0)  # the crop border counts as outside
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    return np.clip(dist / float(feather), 0.0, 1.0).astype(np.float32)

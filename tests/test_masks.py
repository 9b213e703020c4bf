"""The swap mask: class selection, exact grow/shrink, feather band, external masks, previews."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comfyui_model_swap.nodes.pipeline import masks
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError
from comfyui_model_swap.nodes.pipeline.parsing import LABEL_IDS, LABELS

H, W = 101, 121
TOP, LEFT, SIDE = 40, 50, 21  # a SIDE x SIDE square at rows TOP.., columns LEFT..


def _square(value=True):
    m = np.zeros((H, W), bool)
    m[TOP : TOP + SIDE, LEFT : LEFT + SIDE] = value
    return m


def _distance_to_square():
    """Exact Euclidean distance from each pixel centre to the square's nearest pixel centre."""
    rows, cols = np.mgrid[0:H, 0:W]
    dy = np.maximum.reduce([TOP - rows, np.zeros_like(rows), rows - (TOP + SIDE - 1)])
    dx = np.maximum.reduce([LEFT - cols, np.zeros_like(cols), cols - (LEFT + SIDE - 1)])
    return np.hypot(dy, dx)


def _person_labels():
    """A small synthetic label map: background, hair above face, top, arms, pants."""
    labels = np.zeros((H, W), np.uint8)
    labels[5:20, 40:80] = LABEL_IDS["hair"]
    labels[20:40, 45:75] = LABEL_IDS["face"]
    labels[40:70, 35:85] = LABEL_IDS["top"]
    labels[40:70, 20:35] = LABEL_IDS["arms"]
    labels[70:100, 40:80] = LABEL_IDS["pants"]
    return labels


def test_default_classes_split_all_18_labels_into_regenerate_preserve_and_background():
    regen, keep = set(masks.DEFAULT_REGENERATE), set(masks.PRESERVED_CLASSES)
    assert not regen & keep
    assert regen | keep | {"background"} == set(LABELS)
    assert "top" in keep and "face" in regen and "hair" in regen


def test_class_mask_selects_exactly_the_named_classes():
    labels = _person_labels()
    m = masks.class_mask(labels, ["face", "arms"])
    assert m.dtype == bool and m.shape == labels.shape
    assert np.array_equal(m, (labels == LABEL_IDS["face"]) | (labels == LABEL_IDS["arms"]))
    assert np.array_equal(masks.class_mask(labels, " Face, arms "), m)  # a node's text widget
    assert np.array_equal(masks.class_mask(labels.astype(np.int64), ["face", "arms"]), m)


def test_unknown_class_name_is_rejected_with_the_valid_names_listed():
    with pytest.raises(InputValidationError) as e:
        masks.class_mask(_person_labels(), ["face", "shirt"])
    message = str(e.value)
    assert "'shirt'" in message and "'face'" not in message
    assert all(name in message for name in LABELS)


def test_default_swap_mask_regenerates_skin_and_hair_and_keeps_garments_and_background():
    labels = _person_labels()
    swap = masks.build_swap_mask(labels, feather=0)
    assert swap.source == "parser" and swap.labels is labels
    regen_ids = [LABEL_IDS[n] for n in masks.DEFAULT_REGENERATE]
    assert np.array_equal(swap.hard, np.isin(labels, regen_ids))
    assert not swap.hard[labels == LABEL_IDS["top"]].any()
    assert not swap.hard[labels == 0].any()


def test_keeping_hair_leaves_hair_pixels_out_of_the_regenerated_region():
    labels = _person_labels()
    regen = [n for n in masks.DEFAULT_REGENERATE if n != "hair"]
    swap = masks.build_swap_mask(labels, regenerate=regen, feather=0)
    hair = labels == LABEL_IDS["hair"]
    assert not swap.hard[hair].any() and swap.preserve[hair].all()
    assert swap.hard[labels == LABEL_IDS["face"]].all()


def test_background_cannot_be_selected_for_regeneration():
    with pytest.raises(InputValidationError, match="background"):
        masks.build_swap_mask(_person_labels(), regenerate=["face", "background"])


def _square_labels():
    labels = np.zeros((H, W), np.uint8)
    labels[_square()] = LABEL_IDS["face"]
    return labels


@pytest.mark.parametrize("grow", [1, 3, 10])
def test_grow_dilates_a_square_by_exactly_grow_pixels_with_a_round_kernel(grow):
    swap = masks.build_swap_mask(_square_labels(), regenerate=["face"], grow=grow, feather=0)
    row, col = swap.hard[TOP + SIDE // 2], swap.hard[:, LEFT + SIDE // 2]
    assert row.sum() == SIDE + 2 * grow and col.sum() == SIDE + 2 * grow
    assert row[LEFT - grow] and not row[LEFT - grow - 1]
    assert np.array_equal(swap.hard, _distance_to_square() <= grow)  # a disc, corners rounded
    assert not swap.hard[TOP - grow, LEFT - grow]


@pytest.mark.parametrize("grow", [1, 3, 10])
def test_negative_grow_erodes_a_square_by_exactly_that_many_pixels(grow):
    swap = masks.build_swap_mask(_square_labels(), regenerate=["face"], grow=-grow, feather=0)
    expected = np.zeros((H, W), bool)
    expected[TOP + grow : TOP + SIDE - grow, LEFT + grow : LEFT + SIDE - grow] = True
    assert np.array_equal(swap.hard, expected)


def test_erosion_does_not_shrink_a_mask_from_the_image_border():
    labels = np.zeros((40, 40), np.uint8)
    labels[20:, :] = LABEL_IDS["legs"]  # a body cut off by the bottom and side edges
    swap = masks.build_swap_mask(labels, grow=-5, feather=0)
    assert swap.hard[25:, :].all() and not swap.hard[:25].any()


@pytest.mark.parametrize("feather", [1, 4, 8, 20])
def test_feather_falls_from_1_on_hard_to_exactly_0_at_feather_pixels(feather):
    swap = masks.build_swap_mask(_square_labels(), regenerate=["face"], feather=feather)
    d = _distance_to_square()
    assert swap.alpha.dtype == np.float32
    assert (swap.alpha[d == 0] == 1).all()
    assert (swap.alpha[d >= feather] == 0).all()
    ring = (d > 0) & (d < feather)
    assert ((swap.alpha[ring] > 0) & (swap.alpha[ring] < 1)).all()
    # Monotone: farther from the hard region never means more regeneration.
    order = np.argsort(d[ring], kind="stable")
    assert (np.diff(swap.alpha[ring][order]) <= 1e-6).all()


def test_feather_zero_makes_alpha_equal_the_hard_mask():
    swap = masks.build_swap_mask(_person_labels(), feather=0)
    assert np.array_equal(swap.alpha, swap.hard.astype(np.float32))
    assert np.array_equal(swap.band, swap.hard)


def test_preserve_is_exactly_the_complement_of_band():
    swap = masks.build_swap_mask(_person_labels(), grow=2, feather=6)
    assert np.array_equal(swap.preserve, ~swap.band)
    assert swap.band[swap.hard].all() and swap.band.sum() > swap.hard.sum()


@pytest.mark.parametrize(
    "kind", ["float", "bool", "uint8", "batch_of_one"],
)
def test_external_mask_replaces_the_parsers_and_is_thresholded_at_one_half(kind):
    labels = _person_labels()
    ext = np.zeros((H, W), np.float32)
    ext[60:90, 10:30] = 0.8  # counts
    ext[0:10, 0:10] = 0.3  # does not
    as_kind = {
        "float": ext,
        "bool": ext >= 0.5,
        "uint8": np.rint(ext * 255).astype(np.uint8),
        "batch_of_one": ext[None],
    }[kind]
    swap = masks.build_swap_mask(labels, external=as_kind, feather=0)
    assert swap.source == "external"
    assert np.array_equal(swap.hard, ext >= 0.5)
    assert not swap.hard[labels == LABEL_IDS["face"]].any()  # the parser's choice is gone


def test_external_mask_alone_uses_its_own_size_or_the_given_image_shape():
    ext = _square()
    assert np.array_equal(masks.build_swap_mask(external=ext, feather=0).hard, ext)
    with pytest.raises(InputValidationError) as e:
        masks.build_swap_mask(external=ext, image_shape=(50, 60))
    assert f"{W}x{H}" in str(e.value) and "60x50" in str(e.value)


def test_external_mask_of_the_wrong_size_names_both_sizes():
    with pytest.raises(InputValidationError) as e:
        masks.build_swap_mask(_person_labels(), external=np.zeros((30, 40), np.float32))
    assert "40x30" in str(e.value) and f"{W}x{H}" in str(e.value)


def test_label_map_not_matching_the_image_shape_names_both_sizes():
    with pytest.raises(InputValidationError) as e:
        masks.build_swap_mask(_person_labels(), image_shape=(64, 48, 3))
    assert f"{W}x{H}" in str(e.value) and "48x64" in str(e.value)


def test_no_labels_and_no_external_mask_is_a_clear_error():
    with pytest.raises(InputValidationError, match="label map.*external mask"):
        masks.build_swap_mask()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"grow": 65}, "grow=65 is out of range: give an integer from -64 to 64"),
        ({"grow": -65}, "grow=-65"),
        ({"grow": 2.5}, "grow=2.5 is not an integer"),
        ({"feather": -1}, "feather=-1"),
        ({"feather": 65}, "feather=65 is out of range: give an integer from 0 to 64"),
        ({"feather": "8"}, "feather='8'"),
    ],
)
def test_out_of_range_grow_and_feather_are_rejected_with_the_allowed_range(kwargs, words):
    with pytest.raises(InputValidationError) as e:
        masks.build_swap_mask(_person_labels(), **kwargs)
    assert words in str(e.value) and "64" in str(e.value)


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.full((10, 10), 18, np.uint8), "0..17"),
        (np.zeros((10, 10), np.float32), "integer"),
        (np.zeros((2, 10, 10), np.uint8), "(H, W)"),
    ],
)
def test_invalid_label_maps_are_rejected(bad, words):
    with pytest.raises(InputValidationError) as e:
        masks.build_swap_mask(bad)
    assert words in str(e.value)


def test_swap_mask_is_bit_identical_across_calls_including_a_fresh_process():
    import subprocess
    import sys

    labels = _person_labels()
    a = masks.build_swap_mask(labels, grow=3, feather=7)
    b = masks.build_swap_mask(labels.copy(), grow=3, feather=7)
    assert np.array_equal(a.hard, b.hard) and np.array_equal(a.alpha, b.alpha)
    # OpenCV's distance transform can differ in the last bits on its first call in a
    # process; the first mask a fresh process builds must still match exactly.
    code = (
        "import sys, numpy as np, conftest, test_masks as t;"
        "from comfyui_model_swap.nodes.pipeline import masks;"
        "sys.stdout.buffer.write(masks.build_swap_mask(t._person_labels(), grow=3, feather=7).alpha.tobytes())"
    )
    here = str(Path(__file__).resolve().parent)
    fresh = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True, check=True).stdout
    assert fresh == a.alpha.tobytes()


def test_the_largest_grow_and_feather_on_a_megapixel_mask_are_exact_at_the_edge():
    labels = np.zeros((1024, 1024), np.uint8)
    labels[400:600, 400:600] = LABEL_IDS["torso"]
    swap = masks.build_swap_mask(labels, grow=64, feather=64)  # contract.GROW / FEATHER maxima
    row = swap.hard[500]
    assert row.sum() == 200 + 2 * 64 and row[400 - 64] and not row[400 - 65]
    assert swap.alpha[500, 400 - 64 - 64] == 0 and swap.alpha[500, 400 - 64 - 63] > 0
    shrunk = masks.build_swap_mask(labels, grow=-64, feather=0)
    assert shrunk.hard.sum() == 72 * 72 and shrunk.hard[464:536, 464:536].all()


def test_preview_paints_each_class_with_its_own_palette_colour():
    labels = np.arange(18, dtype=np.uint8).repeat(2)[None].repeat(3, axis=0)  # (3, 36)
    img = masks.preview(labels)
    assert img.shape == (3, 36, 3) and img.dtype == np.uint8
    assert len({tuple(c) for c in masks.PALETTE}) == 18  # all distinct
    for k in range(18):
        assert (img[labels == k] == masks.PALETTE[k]).all()


def test_overlay_tints_the_band_and_leaves_preserved_pixels_identical():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    swap = masks.build_swap_mask(_person_labels(), feather=5)
    out = masks.overlay(image, swap)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[swap.preserve], image[swap.preserve])
    assert (out[swap.hard] != image[swap.hard]).any(axis=-1).mean() > 0.95
    with pytest.raises(InputValidationError, match="mask"):
        masks.overlay(image[:50], swap)


def _blobs(seed, h=61, w=73):
    """Random blobs, some touching the image border."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), bool)
    for _ in range(6):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, 12)
        yy, xx = np.ogrid[:h, :w]
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    m[rng.random((h, w)) < 0.01] = True  # isolated pixels
    return m


def _grow_by_brute_force(hard, grow):
    """Every pixel whose centre lies within |grow| px of a mask pixel (dilate), or whose disc of
    radius |grow| holds only mask pixels, counting outside the image as mask (erode)."""
    h, w = hard.shape
    r = abs(grow)
    pad = np.pad(hard, r, constant_values=grow < 0)
    out = np.zeros_like(hard) if grow > 0 else np.ones_like(hard)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= r * r:
                shifted = pad[r + dy : r + dy + h, r + dx : r + dx + w]
                out = (out | shifted) if grow > 0 else (out & shifted)
    return out


@pytest.mark.parametrize("grow", [1, 2, 5, 8, 9, 13, -1, -3, -8, -9, -12])
def test_grow_by_filter_and_by_distance_both_match_the_disc_rule_exactly(grow):
    # Radii up to 8 use a disc-shaped filter, larger ones the distance transform.
    for seed in range(3):
        hard = _blobs(seed)
        assert np.array_equal(masks.grow_mask(hard, grow), _grow_by_brute_force(hard, grow)), seed


@pytest.mark.parametrize("feather", [1, 5, 8, 23])
def test_feather_alpha_is_the_smoothstep_of_the_exact_distance_bit_for_bit(feather):
    hard = _square()
    alpha = masks.feather_alpha(hard, feather)
    rows, cols = np.mgrid[0:H, 0:W]
    dy = np.maximum.reduce([TOP - rows, np.zeros_like(rows), rows - (TOP + SIDE - 1)])
    dx = np.maximum.reduce([LEFT - cols, np.zeros_like(cols), cols - (LEFT + SIDE - 1)])
    t = np.clip(1.0 - np.sqrt((dy * dy + dx * dx).astype(np.float64)) / feather, 0.0, 1.0)
    assert np.array_equal(alpha, (t * t * (3.0 - 2.0 * t)).astype(np.float32))

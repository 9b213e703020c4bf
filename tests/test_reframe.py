"""Marketplace formats (aspect_ratio): the photo is extended to the ratio, never cropped; the engine
outpaints the new canvas; every original pixel outside the person band and the seam band is exact.

Stage tests with the engine double (tests/engine_double.py) cover all ten ratios cheaply; one run on
tiny FLUX.2 klein shows a real engine outpainting the canvas through the same stages.
"""

from __future__ import annotations

import numpy as np
import pytest

import tiny_klein
import tiny_models
from engine_double import EngineDouble, with_capabilities
from test_engine_seam import ColourParser, OneFace
from comfyui_model_swap.nodes.pipeline import contract, reframe
from comfyui_model_swap.nodes.pipeline import pipeline as stages
from comfyui_model_swap.nodes.pipeline.engines import capabilities, flux2_klein
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError
from comfyui_model_swap.nodes.pipeline.images import SIDE_MULTIPLE
from comfyui_model_swap.nodes.pipeline.loading import ModelChoice, load_pipeline

FASHN_RATIOS = ("21:9", "1:1", "4:3", "3:2", "2:3", "5:4", "4:5", "3:4", "16:9", "9:16")  # its SDK's list


@pytest.fixture(scope="module")
def photo():
    """A portrait photo whose width is not a multiple of 8 (so rounding adds columns too)."""
    return np.ascontiguousarray(tiny_models.fashion_photo(160)[:, 22:141])  # 160 x 119


def _swap(photo, ratio, engine=None, **settings):
    engine = engine or EngineDouble()
    prepared = stages.prepare(ColourParser(), photo, stages.MaskSettings(aspect_ratio=ratio, **settings))
    encoded = stages.encode(OneFace(), prepared)
    result = stages.finish(stages.generate(engine, encoded, stages.GenerateSettings(seed=7)))
    return result, engine.requests[0], prepared


def assert_ratio_within_one_step(hw, ratio, photo_hw):
    """The documented rounding: sides are multiples of 8, the photo fits, the side the ratio fixes is the
    photo's rounded up to 8, and the other is that side times the ratio rounded up to the next 8."""
    (h, w), (ph, pw) = hw, photo_hw
    rw, rh = (int(v) for v in ratio.split(":"))
    up = lambda v: -(-v // SIDE_MULTIPLE) * SIDE_MULTIPLE  # noqa: E731
    assert h % SIDE_MULTIPLE == 0 and w % SIDE_MULTIPLE == 0 and h >= ph and w >= pw
    if w == up(pw) and 0 <= h - w * rh / rw < SIDE_MULTIPLE:
        return
    assert h == up(ph) and 0 <= w - h * rw / rh < SIDE_MULTIPLE, (hw, ratio, photo_hw)


def test_the_contract_spells_fashns_ten_ratios_once():
    assert contract.ASPECT_RATIOS == FASHN_RATIOS
    assert contract.ASPECT_RATIO_CHOICES == ("original",) + FASHN_RATIOS
    assert all(contract.aspect_ratio_problem(r) is None for r in contract.ASPECT_RATIO_CHOICES)
    for bad in ("7:3", "4x5", "", None, 1.25):
        problem = contract.aspect_ratio_problem(bad)
        assert problem.startswith(f"aspect_ratio={bad!r} is not a supported") and "21:9, 1:1" in problem
    assert capabilities("flux2_klein").outpaint and capabilities("sdxl").outpaint


@pytest.mark.parametrize("ratio", FASHN_RATIOS)
def test_every_ratio_extends_the_photo_outpaints_the_canvas_and_keeps_the_rest_exact(photo, ratio):
    result, request, prepared = _swap(photo, ratio)
    frame = result.frame
    out = result.images[0]
    ph, pw = photo.shape[:2]
    assert frame.photo_hw == (ph, pw) and out.shape[:2] == frame.canvas_hw == result.swap_mask.alpha.shape
    assert_ratio_within_one_step(out.shape[:2], ratio, (ph, pw))
    # Placement: centred horizontally, on the bottom edge (new rows above the head).
    assert frame.top == out.shape[0] - ph and frame.left == (out.shape[1] - pw) // 2
    inside = np.zeros(out.shape[:2], bool)
    inside[frame.photo_box] = True
    # The engine was asked to regenerate the whole new canvas at full strength.
    assert (request.mask[: out.shape[0], : out.shape[1]][~inside] == 1.0).all()
    new = ~inside
    if new.any():
        assert (out[new] != prepared.image[new]).any(axis=-1).mean() > 0.9  # outpainted, not the start fill
    # Exact: every photo pixel outside the person band and the seam band.
    keep = result.swap_mask.preserve
    assert not keep[new].any()
    person = prepared.swap.alpha[frame.photo_box] > 0
    depth = np.full((ph, pw), 10**6)
    rows, cols = np.mgrid[:ph, :pw]
    if frame.top:
        depth = np.minimum(depth, rows)
    if frame.left:
        depth = np.minimum(depth, cols)
    if out.shape[1] - pw - frame.left:
        depth = np.minimum(depth, pw - 1 - cols)
    expected_keep = ~person & (depth >= reframe.SEAM)
    assert np.array_equal(keep[frame.photo_box], expected_keep)
    assert expected_keep.mean() > 0.2
    assert np.array_equal(out[frame.photo_box][expected_keep], photo[expected_keep])
    # The seam band blends: inside the photo next to an extended border the output is not the photo's.
    if frame.left:
        assert (out[frame.top:, frame.left] != photo[:, 0]).any()


def test_the_canvas_stays_within_the_processing_budget_and_native_output_keeps_native_pixels():
    native = np.ascontiguousarray(tiny_models.fashion_photo(240)[:, 40:200])  # 240 x 160
    result, _, prepared = _swap(native, "16:9", max_pixels=60_000, output_size="native")
    ch, cw = result.frame.canvas_hw
    assert ch * cw <= 60_000 * 1.1 and result.processing_size == (ch, cw)
    out = result.images[0]
    assert out.shape[:2] == (240, 432)  # the rule at the full size: 240 * 16 / 9 = 426.7 -> 432
    assert_ratio_within_one_step(out.shape[:2], "16:9", native.shape[:2])
    keep = result.swap_mask.preserve
    assert keep.shape == out.shape[:2] and keep.mean() > 0.1
    assert np.array_equal(out[keep], prepared.native[keep])  # the full-size photo's own pixels, placed:
    assert np.array_equal(prepared.native[:, 136:296], native)  # unscaled, centred, bottom-aligned
    assert not keep[:, :136].any() and not keep[:, 296:].any()


def test_original_leaves_the_frame_alone_and_an_engine_without_outpainting_is_refused(photo):
    result, _, _ = _swap(photo, "original")
    assert result.frame is None and result.images[0].shape == photo.shape
    prepared = stages.prepare(ColourParser(), photo, stages.MaskSettings(aspect_ratio="9:16"))
    with pytest.raises(InputValidationError, match=r"aspect_ratio='9:16'.*cannot: set aspect_ratio to 'original'"):
        stages.generate(with_capabilities(outpaint=False), stages.encode(OneFace(), prepared))
    with pytest.raises(InputValidationError, match="aspect_ratio='5:7' is not a supported aspect ratio"):
        stages.validate_options(stages.SwapOptions(aspect_ratio="5:7"))


def _klein(tmp_path_factory, tiny_models_dir):
    return flux2_klein.load(flux2_klein.Files(folder=tiny_klein.build_once(tmp_path_factory)["folder"]), device="cpu")


def _sdxl(tmp_path_factory, tiny_models_dir):
    return load_pipeline([tiny_models_dir], ModelChoice(parser=None, insightface=None), device="cpu").engine


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("load", [_klein, _sdxl], ids=["flux2_klein", "sdxl"])
def test_a_real_tiny_engine_outpaints_a_wider_canvas_and_keeps_the_photo_exact(load, tmp_path_factory,
                                                                               tiny_models_dir):
    engine = load(tmp_path_factory, tiny_models_dir)
    assert engine.capabilities.outpaint
    photo = tiny_models.fashion_photo(96)
    pipe = stages.ModelSwapPipeline(engine, parser=ColourParser())
    result = pipe.run(photo, stages.SwapOptions(aspect_ratio="16:9", steps=2, refine_faces=False))
    out, frame = result.images[0], result.frame
    assert out.shape == (96, 176, 3)  # 96 * 16 / 9 = 170.7 -> 176, a multiple of 8
    keep = result.swap_mask.preserve
    assert keep[frame.photo_box].mean() > 0.1
    assert np.array_equal(out[frame.photo_box][keep[frame.photo_box]], photo[keep[frame.photo_box]])
    new = np.ones(out.shape[:2], bool)
    new[frame.photo_box] = False
    start = reframe.extend(photo, frame)
    assert np.abs(out[new].astype(int) - start[new]).mean() > 5  # the engine painted the new columns

"""The model-swap pipeline end to end, on tiny models saved under the default names.

The parser is colour-keyed (its classes follow the painted colours), the face
detector fires at the astronaut's face position, and the diffusion models are
tiny SDXL-architecture ones, so every stage runs the real code on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models
from same_picture import assert_same_picture
from comfyui_model_swap.nodes.pipeline import masks
from comfyui_model_swap.nodes.pipeline.errors import (
    ImageLoadError, InputValidationError, MissingModelError, NoFaceError)
from comfyui_model_swap.nodes.pipeline.face_refine import RefineSettings
from comfyui_model_swap.nodes.pipeline.images import MAX_PIXELS
from comfyui_model_swap.nodes.pipeline.loading import ModelChoice, load_pipeline, missing_models, requirements
from comfyui_model_swap.nodes.pipeline import contract
from comfyui_model_swap.nodes.pipeline import pipeline as pipeline_mod
from comfyui_model_swap.nodes.pipeline.images import resize
from comfyui_model_swap.nodes.pipeline.pipeline import SwapOptions, output_hw

FAST = dict(steps=2, refine=RefineSettings(work_size=64, steps=1))


def opts(**kw) -> SwapOptions:
    return SwapOptions(**{**FAST, **kw})


@pytest.fixture(scope="module")
def pipe(tiny_models_dir):
    return load_pipeline([tiny_models_dir], ModelChoice(faceid="ip-adapter-faceid_sdxl.bin"), device="cpu")


@pytest.fixture(scope="module")
def photo():
    return tiny_models.fashion_photo(128)


@pytest.fixture(scope="module")
def swapped(pipe, photo):
    return pipe.run(photo, opts())


def assert_preserved_exactly(original, result):
    keep = result.swap_mask.preserve
    assert keep.shape == original.shape[:2]
    assert keep.mean() > 0.1, "the test photo should have plenty of preserved pixels"
    for out in result.images:
        assert out.dtype == np.uint8 and out.shape == original.shape
        diff = np.abs(out.astype(np.int16) - original.astype(np.int16)).max(axis=-1)
        assert diff[keep].max() == 0  # max abs difference 0 outside the feathered band


# ---------------------------------------------------------------------------- the swap itself

def test_swap_regenerates_the_person_and_keeps_garments_and_background_exact(swapped, photo):
    assert_preserved_exactly(photo, swapped)
    out = swapped.images[0]
    hard = swapped.swap_mask.hard
    assert (out[hard] != photo[hard]).any(axis=-1).mean() > 0.5  # the person really changed
    labels = swapped.swap_mask.labels
    for garment in ("top", "pants", "bag"):
        inside = masks.class_mask(labels, garment) & swapped.swap_mask.preserve
        assert inside.sum() > 50 and np.array_equal(out[inside], photo[inside])


def test_result_reports_face_prompts_seeds_and_stage_timings(swapped):
    assert swapped.face_found and not swapped.notes
    assert swapped.seeds == [42] and len(swapped.prompts) == 1
    assert set(swapped.timings) >= {"garment_mask", "identity", "generate", "face_refine", "composite"}
    assert len(swapped.face_crops) == 1 and swapped.face_crops[0].shape == (64, 64, 3)


def test_same_inputs_and_seed_give_bit_identical_output(pipe, photo, swapped):
    again = pipe.run(photo, opts())
    assert np.array_equal(again.images[0], swapped.images[0])


def test_different_seeds_give_different_people(pipe, photo, swapped):
    other = pipe.run(photo, opts(seed=7))
    assert other.prompts != swapped.prompts
    assert not np.array_equal(other.images[0], swapped.images[0])
    assert_preserved_exactly(photo, other)


def test_four_images_come_from_seed_plus_i_and_all_differ(pipe, photo):
    result = pipe.run(photo, opts(num_images=4, seed=100))
    assert result.seeds == [100, 101, 102, 103] and len(result.images) == 4
    assert len({im.tobytes() for im in result.images}) == 4
    assert len(set(result.prompts)) >= 3  # a new person per seed
    assert_preserved_exactly(photo, result)


def test_image_i_of_a_batch_is_the_single_run_at_seed_plus_i_up_to_rounding_on_a_real_photo(pipe):
    """README's promise, on the astronaut (a real photo) with a face reference and face refine: a user who
    likes image 3 of a batch gets the same picture alone with seed + 2, up to float rounding (batched and
    single kernels round differently; the bound is in same_picture.py). Two seeds are not the same picture."""
    astronaut = tiny_models.astronaut(128)
    reference = tiny_models.astronaut(128)[:, ::-1].copy()
    batch = pipe.run(astronaut, opts(num_images=4, seed=42), face_reference=reference)
    for i in range(4):
        alone = pipe.run(astronaut, opts(seed=42 + i), face_reference=reference)
        assert_same_picture(alone.images[0], batch.images[i], f"image {i}")
        assert alone.prompts == [batch.prompts[i]]
    with pytest.raises(AssertionError):
        assert_same_picture(batch.images[0], batch.images[1])


def test_body_skin_gets_body_strength_and_face_and_hair_full_strength(swapped):
    swap = swapped.swap_mask
    strength = pipeline_mod.region_strength(swap, 0.3, grow=0)
    face_hair = masks.class_mask(swap.labels, ("face", "hair")) & swap.band
    body = masks.class_mask(swap.labels, ("torso", "arms", "legs")) & swap.band & ~face_hair
    assert face_hair.any() and body.any()
    assert np.all(strength[face_hair] == 1.0) and np.all(strength[body] == np.float32(0.3))
    assert np.all(strength[~swap.band] == 0.0)
    assert np.all(pipeline_mod.region_strength(swap, 1.0)[swap.band] == 1.0)


def test_lower_body_strength_keeps_body_skin_nearer_the_source_and_preservation_exact(pipe, photo):
    """Per-region strength: at body_strength 0.25 the body skin's latents are held to the source for
    the first three quarters of the schedule; the result differs from full strength and outside the
    band everything stays exact."""
    low = pipe.run(photo, opts(steps=8, body_strength=0.25, refine_faces=False))
    full = pipe.run(photo, opts(steps=8, body_strength=1.0, refine_faces=False))
    assert_preserved_exactly(photo, low)
    body = masks.class_mask(low.swap_mask.labels, ("arms", "legs")) & low.swap_mask.hard
    assert body.sum() > 50 and not np.array_equal(low.images[0][body], full.images[0][body])


def test_user_prompt_is_used_for_every_image(pipe, photo):
    result = pipe.run(photo, opts(prompt="a bald man", num_images=2, refine_faces=False))
    assert result.prompts == ["a bald man", "a bald man"]


def test_keeping_the_hair_preserves_hair_pixels(pipe, photo):
    keep_hair = tuple(c for c in masks.DEFAULT_REGENERATE if c != "hair")
    result = pipe.run(photo, opts(regenerate=keep_hair, grow=0, feather=0, refine_faces=False))
    hair = masks.class_mask(result.swap_mask.labels, "hair") & result.swap_mask.preserve
    assert hair.sum() > 30
    assert np.array_equal(result.images[0][hair], photo[hair])


def test_external_mask_replaces_the_parse(pipe, photo):
    ext = np.zeros(photo.shape[:2], np.float32)
    ext[10:40, 40:70] = 1.0
    result = pipe.run(photo, opts(grow=0, feather=0, refine_faces=False), external_mask=ext)
    assert np.array_equal(result.swap_mask.hard, ext > 0.5)
    assert_preserved_exactly(photo, result)


# ---------------------------------------------------------------------------- faces

def test_no_face_in_the_model_image_still_swaps_hair_and_skin_and_says_so(tmp_path, tiny_models_dir):
    back = tiny_models.back_view_photo(128)
    blind = load_pipeline([tiny_models.build_blind_insightface(tmp_path), tiny_models_dir], ModelChoice(),
                          device="cpu")
    result = blind.run(back, opts())
    assert not result.face_found and result.face_crops == []
    assert any("No face found in the model image" in n for n in result.notes)
    hard = result.swap_mask.hard
    assert (result.images[0][hard] != back[hard]).any(axis=-1).mean() > 0.5
    assert_preserved_exactly(back, result)


def test_face_reference_without_a_face_is_a_clear_error(pipe, photo):
    flat = np.full((128, 128, 3), 128, np.uint8)
    with pytest.raises(NoFaceError, match="No face found in the face reference"):
        pipe.run(photo, opts(), face_reference=flat)


def test_match_base_and_match_reference_give_different_results(pipe, photo):
    ref = tiny_models.astronaut(128)
    base = pipe.run(photo, opts(face_reference_mode="match_base"), face_reference=ref)
    refm = pipe.run(photo, opts(face_reference_mode="match_reference"), face_reference=ref)
    assert not np.array_equal(base.images[0], refm.images[0])
    assert_preserved_exactly(photo, base)
    assert_preserved_exactly(photo, refm)


def test_face_reference_changes_the_result_and_sets_the_skin_tone(pipe, photo, swapped):
    with_ref = pipe.run(photo, opts(), face_reference=tiny_models.astronaut(128))
    assert not np.array_equal(with_ref.images[0], swapped.images[0])
    assert "skin" in with_ref.prompts[0]


# ---------------------------------------------------------------------------- real photos, resolution

# The colour-keyed parser labels a real photo by nearest palette colour, so most of it reads as
# skin; regenerating face and hair only leaves a realistic share of preserved pixels to check.
REAL = dict(regenerate=("face", "hair"), grow=0, feather=3)


def test_astronaut_photo_preserved_exactly_at_processing_and_native_size(pipe):
    photo = tiny_models.astronaut()  # 512x512, processed smaller here to keep the test fast
    small = pipe.run(photo, opts(max_pixels=160 * 160, **REAL))
    assert small.processing_size == (160, 160) and small.images[0].shape == (160, 160, 3)
    native = pipe.run(photo, opts(max_pixels=160 * 160, output_size="native", **REAL))
    assert native.images[0].shape == photo.shape
    assert_preserved_exactly(photo, native)  # the original full-resolution pixels


def test_t1_group_photo_preserved_exactly(pipe, tmp_path, tiny_models_dir):
    t1 = tiny_models.t1_photo()
    group = load_pipeline([tiny_models.build_t1_insightface(tmp_path), tiny_models_dir], ModelChoice(),
                          device="cpu")
    result = group.run(t1, opts(max_pixels=256 * 184, output_size="native", **REAL))
    assert result.face_found
    assert result.images[0].shape == t1.shape
    assert_preserved_exactly(t1, result)


def test_input_above_1_05_mp_is_processed_at_most_1_05_mp_in_multiples_of_8(pipe):
    big = tiny_models.fashion_photo(1100)  # 1.21 MP
    result = pipe.run(big, opts(steps=1, refine_faces=False))
    h, w = result.processing_size
    assert h * w <= MAX_PIXELS and h % 8 == 0 and w % 8 == 0 and h == w
    assert result.images[0].shape == (h, w, 3)
    assert result.swap_mask.preserve.shape == (h, w)


def test_native_output_of_a_large_input_keeps_full_resolution_pixels(pipe):
    big = tiny_models.fashion_photo(640)
    result = pipe.run(big, opts(max_pixels=256 * 256, output_size="native", refine_faces=False))
    assert result.processing_size == (256, 256) and result.images[0].shape == big.shape
    assert_preserved_exactly(big, result)


@pytest.mark.parametrize("native, processing, size, expected", [
    ((3000, 2000), (1256, 832), "processing", (1256, 832)),
    ((3000, 2000), (1256, 832), "native", (3000, 2000)),
    ((3000, 2000), (1256, 832), "2k", (2048, 1365)),
    ((3000, 2000), (1256, 832), "4k", (3000, 2000)),
    ((2000, 6000), (592, 1776), "4k", (1365, 4096)),
    ((800, 600), (800, 600), "2k", (800, 600)),
])
def test_output_size_1k_2k_4k_native_gives_the_documented_size(native, processing, size, expected):
    assert output_hw(native, processing, size) == expected


def test_long_side_capped_output_keeps_the_scaled_inputs_pixels_outside_the_band(pipe, monkeypatch):
    big = tiny_models.fashion_photo(640)
    monkeypatch.setitem(contract.LONG_SIDE_CAPS, "2k", 400)  # 2048 px would be slow on CPU
    result = pipe.run(big, opts(max_pixels=256 * 256, output_size="2k", refine_faces=False))
    assert result.images[0].shape == (400, 400, 3)
    assert_preserved_exactly(resize(big, (400, 400)), result)


def test_odd_sized_input_is_padded_for_sampling_and_returned_at_its_size(pipe):
    odd = tiny_models.fashion_photo(128)[:125, :117]
    result = pipe.run(odd, opts(refine_faces=False))
    assert result.images[0].shape == (125, 117, 3)
    assert_preserved_exactly(odd, result)


# ---------------------------------------------------------------------------- models

def test_models_load_once_and_are_reused(pipe, tiny_models_dir):
    again = load_pipeline([tiny_models_dir], ModelChoice(faceid="ip-adapter-faceid_sdxl.bin"), device="cpu")
    assert again.engine is pipe.engine and again.parser is pipe.parser and again.analyzer is pipe.analyzer


def test_missing_models_are_all_listed_with_folder_file_and_source(tmp_path):
    lines = missing_models(requirements(ModelChoice(faceid="ip-adapter-faceid_sdxl.bin")), [tmp_path / "models"])
    text = "\n".join(lines)
    assert len(lines) == 4
    for expected in ("models/diffusers/", "models/human_parsing/", "models/insightface/models/",
                     "models/ipadapter/", "fashn-human-parser", "antelopev2", "ip-adapter-faceid_sdxl.bin",
                     "huggingface.co/h94/IP-Adapter-FaceID", "huggingface.co/fashn-ai/fashn-human-parser"):
        assert expected in text
    with pytest.raises(MissingModelError) as e:
        load_pipeline([tmp_path], ModelChoice(), device="cpu")
    assert "stable-diffusion-xl-1.0-inpainting-0.1" in str(e.value) and "fashn-human-parser" in str(e.value)


def test_face_reference_without_faceid_loaded_says_which_file_to_load(tiny_models_dir, photo):
    plain = load_pipeline([tiny_models_dir], ModelChoice(), device="cpu")
    with pytest.raises(InputValidationError, match="ip-adapter-faceid_sdxl.bin"):
        plain.run(photo, opts(), face_reference=tiny_models.astronaut(128))


# ---------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize(
    "options, words",
    [
        (dict(num_images=0), "num_images=0"),
        (dict(num_images=5), "num_images=5"),
        (dict(num_images=2.0), "num_images=2.0"),
        (dict(seed=-1), "seed=-1"),
        (dict(seed=2**32), "seed=4294967296"),
        (dict(seed=True), "seed=True"),
        (dict(face_reference_mode="match_face"), "match_face"),
        (dict(output_size="huge"), "huge"),
        (dict(steps=-1), "steps=-1 is out of range: give an integer from 1 to 150 (or 0 for the engine's own)"),
        (dict(steps=151), "steps=151 is out of range"),
        (dict(strength=0.0), "strength=0.0"),
    ],
)
def test_bad_options_are_rejected_before_any_work(pipe, photo, options, words):
    with pytest.raises(InputValidationError) as e:
        pipe.run(photo, opts(**options))
    assert words in str(e.value)


@pytest.mark.parametrize(
    "image, words",
    [
        (np.zeros((0, 0, 3), np.uint8), "too small or empty"),
        (np.zeros((64, 64, 7), np.uint8), "shape"),
        (np.full((64, 64, 3), np.nan, np.float32), "NaN"),
        ("not an image", "dtype"),
    ],
)
def test_empty_corrupt_or_misshapen_images_are_clear_errors(pipe, image, words):
    with pytest.raises(ImageLoadError) as e:
        pipe.run(image, opts())
    assert words in str(e.value)


def test_mask_of_the_wrong_size_is_a_clear_error(pipe, photo):
    with pytest.raises(InputValidationError, match="give a mask of the image's size"):
        pipe.run(photo, opts(), external_mask=np.ones((64, 64), np.float32))


def test_a_failed_request_does_not_break_the_next_one(pipe, photo, swapped):
    with pytest.raises(InputValidationError):
        pipe.run(photo, opts(num_images=9))
    assert np.array_equal(pipe.run(photo, opts()).images[0], swapped.images[0])

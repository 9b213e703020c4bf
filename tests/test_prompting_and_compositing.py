"""Automatic prompts (seeded identities, reference skin tone, framing) and exact compositing."""

import numpy as np
import pytest

from comfyui_model_swap.nodes.pipeline import compositing, prompting


def test_same_seed_draws_the_same_person_and_different_seeds_different_people():
    a = prompting.prompts_for([7, 8, 9, 10])[0]
    assert a == prompting.prompts_for([7, 8, 9, 10])[0]
    people = {prompting.random_identity(s) for s in range(20)}
    assert len(people) >= 18  # twenty seeds, (almost) twenty distinct people


def test_known_sex_and_age_are_kept_and_the_rest_is_drawn():
    for s in range(10):
        ident = prompting.random_identity(s, sex="female", age=34)
        assert ident.sex == "female" and ident.age_band == "thirties"
    assert "woman" in prompting.build_prompt(prompting.random_identity(3, sex="female"), "full-body shot")


def test_reference_skin_tone_is_used_for_every_seed():
    prompts, people = prompting.prompts_for([1, 2, 3], reference_skin_tone="deep brown")
    assert all(p.skin_tone == "deep brown" for p in people)
    assert all("deep brown skin" in p for p in prompts)


def test_user_prompt_is_used_as_given_plus_the_reference_skin_tone():
    prompts, _ = prompting.prompts_for([1, 2], user_prompt="a red-haired woman", reference_skin_tone="fair")
    assert prompts == ["a red-haired woman, fair skin"] * 2
    prompts, _ = prompting.prompts_for([1], user_prompt="a woman with olive skin", reference_skin_tone="fair")
    assert prompts == ["a woman with olive skin"]


@pytest.mark.parametrize("rgb, lighter_than", [((235, 205, 190), "tan"), ((90, 55, 40), None)])
def test_skin_tone_is_measured_on_the_cheeks(rgb, lighter_than):
    img = np.zeros((200, 200, 3), np.uint8)
    img[:] = rgb
    kps = np.array([[70, 80], [130, 80], [100, 110], [75, 140], [125, 140]], np.float32)
    tone = prompting.skin_tone_of(img, kps)
    order = prompting.SKIN_TONES
    if lighter_than:
        assert order.index(tone) < order.index(lighter_than)
    else:
        assert order.index(tone) >= order.index("brown")


def test_framing_reads_the_parse():
    labels = np.zeros((100, 100), np.uint8)
    labels[90:95, 40:60] = 15  # feet
    assert prompting.framing_of(labels) == "full-body shot"
    labels[:] = 0
    labels[10:60, 20:80] = 1  # a face filling the frame
    assert prompting.framing_of(labels) == "close-up portrait"


def test_composite_copies_the_original_exactly_where_alpha_is_zero():
    rng = np.random.default_rng(1)
    orig = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    gen = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    alpha = np.zeros((32, 32), np.float32)
    alpha[8:24, 8:24] = 1.0
    alpha[6:8, 8:24] = 0.5
    out = compositing.composite(orig, gen, alpha)
    assert np.array_equal(out[alpha == 0], orig[alpha == 0])
    assert np.array_equal(out[alpha == 1], gen[alpha == 1])


def test_composite_is_the_rounded_float_blend_at_every_pixel():
    rng = np.random.default_rng(3)
    orig = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    gen = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    alpha = rng.random((40, 50)).astype(np.float32)
    alpha[rng.random((40, 50)) < 0.3] = 0.0
    alpha[rng.random((40, 50)) < 0.3] = 1.0
    a = alpha[:, :, None]
    expected = np.clip(np.rint(orig.astype(np.float32) * (1.0 - a) + gen.astype(np.float32) * a), 0, 255)
    out = compositing.composite(orig, gen, alpha)
    assert out.dtype == np.uint8 and np.array_equal(out, expected.astype(np.uint8))
    assert np.array_equal(compositing.composite(orig, gen, np.zeros((40, 50), np.float32)), orig)


def test_native_output_keeps_full_resolution_pixels_outside_the_band():
    rng = np.random.default_rng(2)
    native = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    gen = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    alpha = np.zeros((100, 150), np.float32)
    alpha[40:60, 60:90] = 1.0
    out, alpha_up = compositing.to_native(native, gen, alpha)
    assert out.shape == native.shape and alpha_up.shape == (200, 300)
    assert np.array_equal(out[alpha_up == 0], native[alpha_up == 0])
    assert (alpha_up == 0).mean() > 0.9 and not np.array_equal(out, native)


def test_match_colour_moves_the_source_mean_to_the_target():
    src = np.full((40, 40, 3), (200, 150, 130), np.uint8)
    tgt = np.full((40, 40, 3), (110, 70, 50), np.uint8)
    m = np.ones((40, 40), bool)
    out = compositing.match_colour(src, tgt, m, m)
    assert np.abs(out.astype(int) - tgt.astype(int)).max() <= 3


def test_soft_paste_mask_is_zero_on_the_crop_border_and_one_deep_inside():
    m = np.ones((64, 64), bool)
    a = compositing.soft_paste_mask(m, feather=8)
    assert a[0].max() < 0.2 and a[:, 0].max() < 0.2 and a[32, 32] == 1.0

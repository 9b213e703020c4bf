"""Image validation/resizing and the model registry's missing-model messages."""

import numpy as np
import pytest

from comfyui_model_swap.nodes.pipeline import images, model_files
from comfyui_model_swap.nodes.pipeline.errors import ImageLoadError, InputValidationError, MissingModelError


def test_float_and_uint8_images_convert_to_the_same_uint8():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(images.as_rgb_uint8(u8.astype(np.float32) / 255.0), u8)
    assert np.array_equal(images.as_rgb_uint8(u8[None]), u8)  # batch of one


def test_grey_and_rgba_become_rgb():
    grey = np.full((20, 20), 7, np.uint8)
    assert images.as_rgb_uint8(grey).shape == (20, 20, 3)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 3] = 255
    assert images.as_rgb_uint8(rgba).shape == (20, 20, 3)


@pytest.mark.parametrize(
    "bad, words",
    [
        (None, "No image"),
        (np.zeros((0, 0, 3), np.uint8), "too small or empty"),
        (np.zeros((20, 20, 5), np.uint8), "shape"),
        (np.zeros((2, 20, 20, 3), np.uint8), "batch of 2"),
        (np.full((20, 20, 3), 2.0, np.float32), "[0, 1]"),
        (np.full((20, 20, 3), np.nan, np.float32), "NaN"),
        (np.zeros((20, 20, 3), np.complex64), "dtype"),
    ],
)
def test_bad_images_raise_a_clear_image_load_error(bad, words):
    with pytest.raises(ImageLoadError) as e:
        images.as_rgb_uint8(bad)
    assert words in str(e.value)


def test_mask_of_the_wrong_size_names_both_sizes():
    with pytest.raises(InputValidationError) as e:
        images.as_mask(np.zeros((10, 12), np.float32), (20, 30))
    assert "12x10" in str(e.value) and "30x20" in str(e.value)


def test_processing_size_caps_at_1_05_megapixels_in_multiples_of_8_keeping_aspect():
    h, w = images.processing_size(3000, 2000)
    assert h * w <= images.MAX_PIXELS and h % 8 == 0 and w % 8 == 0
    assert abs(h / w - 1.5) < 0.02
    assert images.processing_size(886, 1180) == (886, 1180)  # small inputs keep their size


def test_pad_to_multiple_pads_bottom_right_and_reports_original_size():
    img = np.arange(13 * 10 * 3, dtype=np.uint8).reshape(13, 10, 3)
    padded, hw = images.pad_to_multiple(img)
    assert padded.shape == (16, 16, 3) and hw == (13, 10)
    assert np.array_equal(padded[:13, :10], img)


def test_missing_model_error_names_folder_file_and_source(tmp_path):
    with pytest.raises(MissingModelError) as e:
        model_files.locate("faceid", [tmp_path])
    msg = str(e.value)
    assert "models/ipadapter" in msg and "ip-adapter-faceid_sdxl.bin" in msg
    assert "huggingface.co/h94/IP-Adapter-FaceID" in msg
    assert e.value.folder == "models/ipadapter" and e.value.filename == "ip-adapter-faceid_sdxl.bin"


def test_incomplete_model_folder_lists_the_missing_files(tmp_path):
    folder = tmp_path / "human_parsing" / "fashn-human-parser"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(MissingModelError) as e:
        model_files.locate("human_parser", [tmp_path])
    assert "lacks model.safetensors" in str(e.value)


def test_every_model_spec_names_a_source_size_and_licence():
    for spec in model_files.MODELS.values():
        assert spec.source and spec.size and spec.licence and spec.folder and spec.name

"""Tests for the API image input: data URIs, decoding, bomb/truncation refusal, orientation, colour modes."""

from __future__ import annotations

import base64
import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from comfyui_model_swap.nodes.fashn_api import image_input
from comfyui_model_swap.nodes.fashn_api.image_input import (
    decode_image,
    encode_png,
    is_data_uri,
    split_data_uri,
)
from comfyui_model_swap.nodes.pipeline.errors import ImageLoadError

WHAT = "model_image"


# --- helpers -------------------------------------------------------------------------------------


def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows) -> bytes:
    """A PNG built by hand (Pillow cannot write 48/64-bit colour); ``rows`` yields unfiltered scanlines."""
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bomb_png(side: int) -> bytes:
    """A valid, all-black 1-bit PNG of side x side pixels: a few KB declaring side**2 pixels."""
    row = bytes(side // 8)
    return raw_png(side, side, 1, 0, (row for _ in range(side)))


def assert_refused(excinfo: pytest.ExceptionInfo, *words: str) -> str:
    """The message names the input, says what is wrong (``words``) and how to fix it."""
    message = str(excinfo.value)
    assert message.startswith(f"{WHAT}: "), message
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    assert any(hint in message.lower() for hint in ("send", "save", "resize")), message
    return message


ASYM = np.array(  # 2x3, every pixel distinct, so any flip or rotation is visible
    [[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
     [[255, 255, 0], [0, 255, 255], [255, 0, 255]]], dtype=np.uint8)


@pytest.fixture(params=[False, True], ids=["strict", "load_truncated"])
def load_truncated(request, monkeypatch):
    """Run with Pillow's global LOAD_TRUNCATED_IMAGES off and on (ComfyUI users often turn it on)."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", request.param)
    return request.param


# --- round trips and formats ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt, options, tolerance", [
    ("PNG", {}, 0),
    ("BMP", {}, 0),
    ("TIFF", {}, 0),
    ("TIFF", {"compression": "tiff_lzw"}, 0),
    ("WEBP", {"lossless": True}, 0),
    ("JPEG", {"quality": 95, "subsampling": 0}, 12),
    ("JPEG", {"quality": 95, "subsampling": 0, "progressive": True}, 12),
    ("JPEG", {"quality": 95, "subsampling": 0, "restart_marker_blocks": 1}, 12),
])
def test_rgb_round_trip(fmt, options, tolerance, load_truncated):
    source = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    source = np.kron(source[::8, ::8], np.ones((8, 8, 1), np.uint8))  # 8x8 blocks keep JPEG error small
    out = decode_image(save(Image.fromarray(source), fmt, **options), what=WHAT)
    assert out.size == (64, 48) and out.mode == "RGB" and out.info == {}
    diff = np.abs(pixels(out).astype(int) - source.astype(int))
    assert diff.max() <= tolerance


def test_jpeg_with_bytes_after_its_end_is_accepted():
    source = np.full((16, 16, 3), 90, np.uint8)
    data = save(Image.fromarray(source), "JPEG", quality=95) + b"appended trailer \xff\xda junk"
    assert np.abs(pixels(decode_image(data, what=WHAT)).astype(int) - 90).max() <= 2


@pytest.mark.parametrize("fmt, options", [
    ("GIF", {}),
    ("PNG", {}),  # APNG
    ("WEBP", {"lossless": True}),
])
def test_animated_image_gives_first_frame(fmt, options):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert (pixels(decode_image(data, what=WHAT)) == (255, 0, 0)).all()


# --- EXIF orientation ----------------------------------------------------------------------------

# Upright pixels for each EXIF orientation, from the tag's definition (where stored row 0 / column 0 go).
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # row 0 is the left side, column 0 the top
    6: lambda a: np.rot90(a, -1),  # row 0 is the right side, column 0 the top: turn clockwise
    7: lambda a: np.rot90(a, -1)[::-1],  # row 0 is the right side, column 0 the bottom
    8: lambda a: np.rot90(a, 1),  # row 0 is the left side, column 0 the bottom: turn counter-clockwise
}


def with_orientation(source: np.ndarray, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 98, "subsampling": 0} if fmt == "JPEG" else {}
    return save(Image.fromarray(source), fmt, exif=exif.tobytes(), **options)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png_exact(orientation):
    out = decode_image(with_orientation(ASYM, "PNG", orientation), what=WHAT)
    np.testing.assert_array_equal(pixels(out), UPRIGHT[orientation](ASYM))
    assert "exif" not in out.info  # orientation is applied once, not left for a second pass


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(orientation):
    source = np.kron(ASYM, np.ones((16, 16, 1), np.uint8))  # 32x48 in solid 16x16 blocks
    out = pixels(decode_image(with_orientation(source, "JPEG", orientation), what=WHAT))
    expected = UPRIGHT[orientation](source)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 4


def test_broken_exif_block_is_ignored():
    data = save(Image.fromarray(ASYM), "PNG", exif=b"Exif\x00\x00not a tiff header at all")
    np.testing.assert_array_equal(pixels(decode_image(data, what=WHAT)), ASYM)


# --- colour modes ----------------------------------------------------------------------------------


def grey_rgb(values) -> np.ndarray:
    return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=-1)


def palette_image(transparent_index: int | None) -> Image.Image:
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30] + [0] * (256 - 3) * 3)
    image.putdata([0, 1, 2])
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


RGBA_PIXELS = np.array([[[0, 0, 0, 128], [200, 100, 50, 64], [10, 20, 30, 255], [10, 20, 30, 0]]], np.uint8)
# out = c * a / 255 + 255 * (1 - a / 255), rounded
RGBA_ON_WHITE = [[[127, 127, 127], [241, 216, 204], [10, 20, 30], [255, 255, 255]]]
# c, m, y, k values where Pillow's older (subtractive) and newer (multiplicative) formulas agree
CMYK_PIXELS = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 100, 0, 0], [0, 0, 0, 50]]], np.uint8)


@pytest.mark.parametrize("name, data, expected", [
    ("L", lambda: save(Image.fromarray(np.array([[0, 77, 255]], np.uint8)), "PNG"), grey_rgb([[0, 77, 255]])),
    ("1", lambda: save(Image.fromarray(np.array([[True, False, True]])), "PNG"), grey_rgb([[255, 0, 255]])),
    ("LA", lambda: save(Image.fromarray(np.array([[[0, 255], [0, 128], [200, 0]]], np.uint8), "LA"), "PNG"),
     grey_rgb([[0, 127, 255]])),
    ("P", lambda: save(palette_image(None), "PNG"), [[[255, 0, 0], [0, 0, 255], [10, 20, 30]]]),
    ("P+tRNS", lambda: save(palette_image(1), "PNG", transparency=1),
     [[[255, 0, 0], [255, 255, 255], [10, 20, 30]]]),
    ("P GIF+transparency", lambda: save(palette_image(0), "GIF", transparency=0),
     [[[255, 255, 255], [0, 0, 255], [10, 20, 30]]]),
    ("RGBA", lambda: save(Image.fromarray(RGBA_PIXELS, "RGBA"), "PNG"), RGBA_ON_WHITE),
    ("RGBA WEBP", lambda: save(Image.fromarray(RGBA_PIXELS, "RGBA"), "WEBP", lossless=True, exact=True),
     RGBA_ON_WHITE),
    ("CMYK", lambda: save(Image.fromarray(CMYK_PIXELS, "CMYK"), "TIFF"),
     [[[255, 255, 255], [0, 255, 255], [0, 0, 0], [255, 155, 255], [205, 205, 205]]]),
    ("I;16 PNG", lambda: save(Image.fromarray(np.array([[0, 32768, 65535, 257 * 100]], np.uint16)), "PNG"),
     grey_rgb([[0, 128, 255, 100]])),
    ("I;16B TIFF", lambda: save(Image.frombytes("I;16B", (3, 1), struct.pack(">3H", 0, 32768, 65535)), "TIFF"),
     grey_rgb([[0, 128, 255]])),
    ("I 32-bit TIFF", lambda: save(Image.fromarray(np.array([[0, 2**31 - 1, 2**30, -5]], np.int32)), "TIFF"),
     grey_rgb([[0, 255, 128, 0]])),
    ("I 32-bit TIFF, small values", lambda: save(Image.fromarray(np.array([[0, 65535, 2**23]], np.int32)), "TIFF"),
     grey_rgb([[0, 0, 1]])),  # scaled by the file's 32 bits, not guessed as 16-bit from the values
    ("F TIFF", lambda: save(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), "TIFF"),
     grey_rgb([[0, 128, 255]])),
    ("YCbCr TIFF", lambda: save(Image.new("YCbCr", (2, 1), (128, 128, 128)), "TIFF"), grey_rgb([[128, 128]])),
    ("48-bit RGB PNG", lambda: raw_png(2, 1, 16, 2, [struct.pack(">6H", 65535, 32768, 0, 0, 257 * 7, 65535)]),
     [[[255, 128, 0], [0, 7, 255]]]),
    ("64-bit RGBA PNG", lambda: raw_png(1, 1, 16, 6, [struct.pack(">4H", 0, 0, 0, 32896)]), [[[127, 127, 127]]]),
])
def test_colour_mode_to_rgb(name, data, expected):
    out = decode_image(data(), what=WHAT)
    np.testing.assert_array_equal(pixels(out), np.asarray(expected, np.uint8))


def test_16bit_grey_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256).astype(np.uint16)[None]
    out = pixels(decode_image(save(Image.fromarray(ramp), "PNG"), what=WHAT))[0, :, 0]
    np.testing.assert_array_equal(out, np.arange(256))  # convert('L') would clip nearly all to 255


def test_cmyk_jpeg_decodes():
    cmyk = Image.fromarray(np.tile(np.array([0, 255, 255, 0], np.uint8), (16, 16, 1)), "CMYK")
    out = pixels(decode_image(save(cmyk, "JPEG", quality=95), what=WHAT))
    assert np.abs(out.astype(int) - (255, 0, 0)).max() <= 6  # C=0 M=Y=100% is red


@pytest.mark.parametrize("mode, value, expected", [
    ("YCbCr", (76, 85, 255), (254, 0, 0)),
    ("La", (100, 255), (100, 100, 100)),
    ("RGBa", (0, 0, 0, 0), (255, 255, 255)),
    ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
    ("I;16L", 65535, (255, 255, 255)),
])
def test_uncommon_modes(mode, value, expected):
    """Modes no common file format opens in, through the converter itself."""
    out = image_input._to_rgb(Image.new(mode, (2, 2), value), what=WHAT)
    assert out.mode == "RGB"
    assert np.abs(pixels(out).astype(int) - expected).max() <= 1


# --- refusals ----------------------------------------------------------------------------------------


def test_decompression_bomb_refused_before_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("the pixels of a bomb must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    bomb = bomb_png(20_000)
    assert len(bomb) < 100_000
    limit_before = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    for max_image_pixels in (limit_before, None):  # Pillow's own check on, and switched off by another node
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", max_image_pixels)
        with pytest.raises(ImageLoadError) as excinfo:
            decode_image(bomb, what=WHAT)
        assert_refused(excinfo, "400000000 pixels" if max_image_pixels else "400,000,000 pixels", "40,000,000")
    assert time.perf_counter() - start < 1.0
    monkeypatch.undo()
    assert Image.MAX_IMAGE_PIXELS == limit_before  # the shared global is left alone


def test_image_just_over_the_limit_is_refused_and_under_is_accepted():
    data = save(Image.new("L", (100, 50)), "PNG")
    with pytest.raises(ImageLoadError) as excinfo:
        decode_image(data, what=WHAT, max_pixels=4999)
    assert_refused(excinfo, "100x50 = 5,000 pixels", "4,999 pixels")
    assert decode_image(data, what=WHAT, max_pixels=5000).size == (100, 50)


def test_bomb_warning_turned_into_error_is_reported(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,500 px: Pillow warns (errors below 2x)
    with pytest.warns(Image.DecompressionBombWarning):
        decode_image(save(Image.new("L", (50, 30)), "PNG"), what=WHAT)  # a warning alone does not refuse
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageLoadError) as excinfo:
            decode_image(save(Image.new("L", (50, 30)), "PNG"), what=WHAT)
    assert_refused(excinfo, "pixels")


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


NOISE = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("name, make, words", [
    ("PNG cut in half", lambda: _cut(save(Image.fromarray(NOISE), "PNG")), ["PNG", "truncated"]),
    ("PNG without IEND", lambda: save(Image.fromarray(NOISE), "PNG")[:-12], ["PNG", "IEND"]),
    ("PNG bad IDAT CRC", lambda: (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:])(
        save(Image.fromarray(NOISE), "PNG")), ["PNG", "CRC"]),
    ("JPEG cut in half", lambda: _cut(save(Image.fromarray(NOISE), "JPEG")), ["JPEG", "truncated"]),
    ("JPEG end missing", lambda: save(Image.fromarray(NOISE), "JPEG")[:-40], ["JPEG", "end-of-image"]),
    ("progressive JPEG cut", lambda: _cut(save(Image.fromarray(NOISE), "JPEG", progressive=True)), ["JPEG"]),
    ("GIF cut", lambda: _cut(save(Image.fromarray(NOISE).convert("P"), "GIF")), ["GIF", "truncated"]),
    ("BMP cut", lambda: _cut(save(Image.fromarray(NOISE), "BMP")), ["BMP", "truncated"]),
    ("TIFF cut", lambda: _cut(save(Image.fromarray(NOISE), "TIFF")), ["TIFF", "truncated"]),
    ("WEBP cut", lambda: _cut(save(Image.fromarray(NOISE), "WEBP")), []),
])
def test_truncated_or_corrupt_file_refused(name, make, words, load_truncated):
    with pytest.raises(ImageLoadError) as excinfo:
        decode_image(make(), what=WHAT)
    assert_refused(excinfo, *words)


@pytest.mark.parametrize("name, data, words", [
    ("empty", b"", ["empty", "PNG, JPEG or WEBP"]),
    ("random bytes", np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
     ["not an image", "PNG, JPEG or WEBP"]),
    ("text", b"<html>404 not found</html>", ["not an image", "PNG, JPEG or WEBP"]),
    ("PNG signature only", b"\x89PNG\r\n\x1a\n", ["PNG, JPEG or WEBP"]),
    ("format not accepted from the network (PPM)", save(Image.new("RGB", (4, 4)), "PPM"),
     ["not an image in a supported format"]),
])
def test_not_an_image_refused(name, data, words):
    with pytest.raises(ImageLoadError) as excinfo:
        decode_image(data, what=WHAT)
    assert_refused(excinfo, *words)


# --- data URIs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, mime, options, tolerance", [
    ("PNG", "image/png", {}, 0),
    ("JPEG", "image/jpeg", {"quality": 95, "subsampling": 0}, 8),
    ("WEBP", "image/webp", {"lossless": True}, 0),
])
def test_data_uri_decodes(fmt, mime, options, tolerance):
    source = np.kron(ASYM, np.ones((8, 8, 1), np.uint8))
    uri = data_uri(save(Image.fromarray(source), fmt, **options), mime)
    assert is_data_uri(uri)
    data, got_mime = split_data_uri(uri, what=WHAT)
    assert got_mime == mime
    out = pixels(decode_image(data, what=WHAT))
    assert np.abs(out.astype(int) - source.astype(int)).max() <= tolerance


def test_data_uri_uppercase_whitespace_and_parameters_accepted():
    png = save(Image.fromarray(ASYM), "PNG")
    payload = base64.b64encode(png).decode()
    for uri in (f"DATA:IMAGE/PNG;BASE64,{payload}",
                f"data:image/png;name=photo.png;base64,\n  {payload}\r\n",
                f"  data:image/png;base64,{payload}"):
        data, mime = split_data_uri(uri, what=WHAT)
        assert (data, mime) == (png, "image/png")


@pytest.mark.parametrize("value, expected", [
    ("data:image/png;base64,AAAA", True),
    ("DATA:image/png;base64,AAAA", True),
    ("https://example.com/a.png", False),
    ("", False),
    ("dat", False),
])
def test_is_data_uri(value, expected):
    assert is_data_uri(value) is expected


PNG_B64 = base64.b64encode(save(Image.new("RGB", (4, 4)), "PNG")).decode()


@pytest.mark.parametrize("name, uri, max_bytes, words", [
    ("http URL", "https://example.com/a.png", None, ["expected a data URI", "data:image/png;base64,"]),
    ("text/plain", "data:text/plain;base64,aGVsbG8=", None, ["text/plain", "not an image"]),
    ("no media type", "data:;base64,aGVsbG8=", None, ["text/plain"]),
    ("no base64 marker", f"data:image/png,{PNG_B64}", None, [";base64"]),
    ("no comma", "data:image/png;base64", None, ["','"]),
    ("invalid base64", "data:image/png;base64,iVBORw0K!!!*", None, ["not valid base64"]),
    ("bad padding", f"data:image/png;base64,{PNG_B64.rstrip('=')}A", None, ["not valid base64"]),
    ("inner whitespace", f"data:image/png;base64,{PNG_B64[:8]} {PNG_B64[8:]}", None, ["not valid base64"]),
    ("empty payload", "data:image/png;base64,  ", None, ["empty"]),
    ("huge payload refused before decoding", "data:image/png;base64," + "!" * 10_000, 100, ["100 bytes", "limit"]),
    ("decoded size over limit", "data:image/png;base64," + base64.b64encode(bytes(102)).decode(), 100,
     ["102 bytes", "limit"]),
])
def test_bad_data_uri_refused(name, uri, max_bytes, words):
    kwargs = {} if max_bytes is None else {"max_bytes": max_bytes}
    with pytest.raises(ImageLoadError) as excinfo:
        split_data_uri(uri, what=WHAT, **kwargs)
    message = assert_refused(excinfo, *words)
    assert "send" in message


def test_data_uri_at_the_size_limit_accepted():
    data, _ = split_data_uri("data:image/png;base64," + base64.b64encode(bytes(100)).decode(), what=WHAT,
                             max_bytes=100)
    assert data == bytes(100)


def test_what_is_named_for_other_inputs():
    with pytest.raises(ImageLoadError, match=r"^face_reference: "):
        split_data_uri("data:text/plain;base64,aGk=", what="face_reference")
    with pytest.raises(ImageLoadError, match=r"^face_reference: "):
        decode_image(b"nope", what="face_reference")


# --- PNG output ------------------------------------------------------------------------------------


def png_chunk_types(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        kinds.append(kind)
        pos += 12 + length
    return kinds


def test_encode_png_is_lossless_and_without_metadata():
    source = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    image = Image.fromarray(source)
    image.info.update({"icc_profile": b"fake profile", "transparency": (0, 0, 0), "exif": b"Exif\x00\x00"})
    data = encode_png(image)
    assert png_chunk_types(data) == [b"IHDR", b"IDAT", b"IEND"]
    np.testing.assert_array_equal(pixels(decode_image(data, what=WHAT)), source)


def test_encode_png_needs_rgb():
    with pytest.raises(ValueError, match="RGB"):
        encode_png(Image.new("RGBA", (2, 2)))

"""Turn API image inputs (data URIs, fetched bytes) into clean 8-bit RGB PIL images.

Every refusal is an :class:`ImageLoadError` whose message names the input (``what``),
the problem and the fix. Nothing here changes Pillow's global settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``): ComfyUI shares them.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..pipeline.errors import ImageLoadError

MAX_INPUT_PIXELS = 40_000_000  # decompression-bomb limit (pixels)
MAX_INPUT_BYTES = 25 * 1024 * 1024

_SEND_HINT = "send a PNG, JPEG or WEBP file"
_URI_HINT = "send data:image/png;base64,<base64 of the file>"
# Raster formats accepted from the network; others Pillow knows (EPS runs Ghostscript, ...) are refused.
# JPEG also opens MPO; AVIF and HEIF only where a plugin registers them.
_ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A JPEG marker inside entropy-coded data: 0xFF then not a stuffed 0x00, a restart marker or fill.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def is_data_uri(value: str) -> bool:
    """Whether ``value`` is a ``data:`` URI (case-insensitive)."""
    return isinstance(value, str) and value.lstrip()[:5].lower() == "data:"


def split_data_uri(uri: str, *, what: str, max_bytes: int = MAX_INPUT_BYTES) -> tuple[bytes, str]:
    """Return (decoded bytes, mime type) of a ``data:image/...;base64,...`` URI."""
    if not is_data_uri(uri):
        raise ImageLoadError(f"{what}: expected a data URI or an http(s) URL, got something else; {_URI_HINT}")
    header, comma, payload = uri.lstrip()[5:].partition(",")
    if not comma:
        raise ImageLoadError(f"{what}: the data URI has no ',' before its payload; {_URI_HINT}")
    params = [p.strip().lower() for p in header.split(";")]
    mime = params[0] or "text/plain"  # RFC 2397 default
    if not mime.startswith("image/"):
        raise ImageLoadError(f"{what}: the data URI's media type is {mime!r}, not an image; {_URI_HINT}")
    if "base64" not in params[1:]:
        raise ImageLoadError(
            f"{what}: the data URI is not base64-encoded (no ';base64' before the ','); {_URI_HINT}")
    payload = payload.strip()
    if not payload:
        raise ImageLoadError(f"{what}: the data URI's payload is empty; {_URI_HINT}")
    if len(payload) > 4 * -(-max_bytes // 3):  # longest encoding of max_bytes, checked before decoding
        raise ImageLoadError(
            f"{what}: the data URI holds about {len(payload) * 3 // 4:,} bytes, above the limit of "
            f"{max_bytes:,} bytes; send a smaller or more compressed image (e.g. JPEG or WEBP)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageLoadError(
            f"{what}: the data URI's base64 payload is not valid base64 (truncated or corrupted?); "
            f"{_URI_HINT}") from None
    if len(data) > max_bytes:
        raise ImageLoadError(
            f"{what}: the image is {len(data):,} bytes, above the limit of {max_bytes:,} bytes; "
            "send a smaller or more compressed image (e.g. JPEG or WEBP)")
    return data, mime


def decode_image(data: bytes, *, what: str, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """Fully decode image bytes (first frame) into an upright 8-bit RGB PIL image."""
    if not data:
        raise ImageLoadError(f"{what}: the image is empty (0 bytes); {_SEND_HINT}")
    try:
        image = Image.open(io.BytesIO(data), formats=_open_formats())
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"{what}: the bytes are not an image in a supported format; {_SEND_HINT}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(
            f"{what}: the image is too large to decode safely ({exc}); the limit is {max_pixels:,} pixels, "
            "send a smaller image (e.g. at most 4096 pixels on the long side)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ImageLoadError(f"{what}: the image header is unreadable ({exc}); {_SEND_HINT}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageLoadError(f"{what}: the image is {width}x{height} pixels (empty); {_SEND_HINT}")
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{what}: the image is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{max_pixels:,} pixels (decompression bomb?); send a smaller image "
            "(e.g. at most 4096 pixels on the long side)")
    try:
        problem = _truncation_problem(data, image)
    except (IndexError, TypeError, ValueError, struct.error):
        problem = "corrupt (its structure cannot be read)"
    if problem:
        raise ImageLoadError(f"{what}: the {image.format} file is {problem} (truncated download?); "
                             f"send the complete file ({_SEND_HINT})")
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"{what}: the image is too large to decode safely ({exc}); send a smaller image") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error) as exc:
        raise ImageLoadError(
            f"{what}: the {image.format} image could not be decoded ({exc}); it is corrupt or truncated, "
            f"send the complete file ({_SEND_HINT})") from None
    rgb = _to_rgb(_upright(image), what=what, source=image)
    rgb.info = {}
    return rgb


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG of an RGB PIL image, without metadata."""
    if image.mode != "RGB":
        raise ValueError(f"encode_png expects an RGB image, got mode {image.mode!r}; decode it with decode_image")
    clean = Image.frombytes("RGB", image.size, image.tobytes())  # drops info (ICC, EXIF, transparency)
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _open_formats() -> tuple[str, ...]:
    """The allowed formats this Pillow has a reader for (``Image.open`` fails on unknown names)."""
    Image.init()
    return tuple(name for name in _ALLOWED_FORMATS if name in Image.OPEN)


def _truncation_problem(data: bytes, image: Image.Image) -> str:
    """What is structurally wrong with the file ('' if nothing found).

    Pillow decodes a cut-off file without complaint when ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set
    (ComfyUI users often set it), so the file's own structure is checked; WEBP is refused by libwebp.
    """
    checks = {"PNG": _png_problem, "JPEG": _jpeg_problem, "MPO": _jpeg_problem, "GIF": _gif_problem}
    if image.format in checks:
        return checks[image.format](data)
    if image.format == "TIFF":
        return _tiff_problem(data, image)
    if image.format == "BMP":
        return _bmp_problem(data, image)
    return ""


def _png_problem(data: bytes) -> str:
    """Walk the PNG chunks up to IEND, checking lengths and the CRC of critical chunks."""
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            return f"cut off inside its {kind.decode('latin-1')!r} chunk"
        if kind[0] & 0x20 == 0:  # critical chunk (IHDR, PLTE, IDAT, IEND): its CRC must match
            (crc,) = struct.unpack(">I", data[end - 4:end])
            if zlib.crc32(data[pos + 4:end - 4]) != crc:
                return f"corrupt (bad CRC in its {kind.decode('latin-1')!r} chunk)"
        if kind == b"IEND":
            return ""
        pos = end
    return "cut off before its IEND chunk"


def _jpeg_problem(data: bytes) -> str:
    """Walk the JPEG markers of the first image up to its end-of-image marker (EOI)."""
    pos, size = 2, len(data)  # after SOI
    while pos < size:
        if data[pos] != 0xFF:
            return "corrupt (bytes where a marker should be)"
        while pos < size and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            return ""
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        if pos + 2 > size:
            break
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        pos += length
        if pos > size:
            break
        if marker == 0xDA:  # start of scan: skip the entropy-coded data to the next marker
            match = _JPEG_MARKER.search(data, pos)
            if match is None:
                break
            pos = match.start()
    return "cut off before its end-of-image marker"


def _gif_problem(data: bytes) -> str:
    """Walk the GIF blocks up to the end of the first frame's image data."""
    size = len(data)
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # header, screen, global palette
    while pos < size:
        block = data[pos]
        if block == 0x3B:  # trailer
            return "without any frame"
        if block == 0x21:  # extension: label, then sub-blocks
            pos += 2
        elif block == 0x2C:  # image descriptor, local palette, LZW code size, then sub-blocks
            flags = data[pos + 9] if pos + 9 < size else 0
            pos += 11 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        else:
            return "corrupt (unknown block)"
        while pos < size and data[pos]:  # sub-blocks end with a zero length
            pos += data[pos] + 1
        if pos >= size:
            break
        pos += 1
        if block == 0x2C:
            return ""
    return "cut off before the end of its first frame"


def _tiff_problem(data: bytes, image: Image.Image) -> str:
    """Check that every strip or tile of the first page lies inside the file."""
    tags = image.tag_v2
    offsets = _as_tuple(tags.get(273, tags.get(324, ())))  # StripOffsets or TileOffsets
    counts = _as_tuple(tags.get(279, tags.get(325, ())))  # StripByteCounts or TileByteCounts
    ends = [int(o) + int(c) for o, c in zip(offsets, counts)]
    return "cut off inside its pixel data" if ends and max(ends) > len(data) else ""


def _bmp_problem(data: bytes, image: Image.Image) -> str:
    """Check that uncompressed BMP rows lie inside the file (RLE files are left to Pillow)."""
    for name, _extents, offset, args in image.tile:
        stride = args[1] if name == "raw" and isinstance(args, tuple) and len(args) > 1 else 0
        if offset + abs(int(stride)) * image.height > len(data):
            return "cut off inside its pixel data"
    return ""


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (a broken EXIF block is ignored, not fatal)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # unreadable EXIF must not refuse a readable photo
        return image


def _to_rgb(image: Image.Image, *, what: str, source: Image.Image | None = None) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; alpha is flattened onto white.

    ``source`` is the opened file ``image`` was derived from (copies lose its format and TIFF tags).
    """
    mode = image.mode
    if mode == "La":  # premultiplied grey + alpha has no direct path to RGBA
        image, mode = image.convert("LA"), "LA"
    if mode.startswith("I;16") or mode == "I":
        return _gray_to_rgb(_int_to_uint8(image, source or image))
    if mode == "F":
        return _gray_to_rgb(_float_to_uint8(image))
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa") or (
        mode in ("1", "L", "P", "RGB") and "transparency" in image.info)
    try:
        if has_alpha:
            return _flatten_on_white(image.convert("RGBA"))
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(
            f"{what}: the image's colour mode {mode!r} cannot be converted to RGB ({exc}); "
            f"save it as 8-bit RGB and {_SEND_HINT}") from None


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")


def _int_bit_depth(image: Image.Image, source: Image.Image, values: np.ndarray) -> tuple[int, bool]:
    """(bits per sample, signed) of an integer grey image: from the file when it says, else from the values."""
    if image.mode.startswith("I;16") or source.format == "PNG":  # PNG's only integer grey is 16-bit
        return 16, False
    tags = getattr(source, "tag_v2", None)  # TIFF: BitsPerSample (258), SampleFormat (339)
    if tags is not None and 258 in tags:
        bits = int(_as_tuple(tags[258])[0])
        signed = int(_as_tuple(tags.get(339, 1))[0]) == 2
        if 8 <= bits <= 32:
            return bits, signed
    if values.size and values.min() >= 0 and values.max() <= 0xFFFF:
        return 16, False
    return 32, True


def _int_to_uint8(image: Image.Image, source: Image.Image) -> np.ndarray:
    """16/32-bit integer grey to 8-bit, scaled by the bit depth (65535 -> 255), not clipped."""
    values = np.asarray(image).astype(np.int64)
    bits, signed = _int_bit_depth(image, source, values)
    if bits >= 32 and not signed:
        values &= 0xFFFFFFFF  # Pillow stores unsigned 32-bit samples in int32
    top = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    scaled = np.rint(values.astype(np.float64) * (255.0 / top))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _float_to_uint8(image: Image.Image) -> np.ndarray:
    """Float grey to 8-bit: values in [0, 1] are scaled by 255, others taken as 0-255; NaN -> 0."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """CMYK to RGB through the embedded ICC profile when there is one, else Pillow's plain formula."""
    icc = image.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms
        except ImportError:  # Pillow built without littlecms
            return image.convert("RGB")
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # a broken profile: fall back to the plain conversion
    return image.convert("RGB")


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    """Alpha-weighted blend of an RGBA image onto white: out = c * a + 255 * (1 - a)."""
    pixels = np.asarray(rgba).astype(np.uint32)
    alpha = pixels[:, :, 3:4]
    blended = (pixels[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return Image.fromarray(blended.astype(np.uint8), "RGB")

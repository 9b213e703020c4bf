"""What an output image says about how it was made: XMP in the file, and an optional C2PA manifest.

Every image the pack writes carries an XMP packet with IPTC's Digital Source Type (a model swap is
``compositeWithTrainedAlgorithmicMedia``: a photo with regions inpainted by a trained model; a wholly
generated image, such as a face the face library creates, is ``trainedAlgorithmicMedia``) and the
pack's own record (:class:`Record`): engine, every model with its licence, seed, generation mode and
steps, pack version, and the prompt only when the user asked for it to be recorded.

:func:`add_xmp` splices the packet into PNG (an ``iTXt`` chunk ``XML:com.adobe.xmp``) or JPEG (an APP1
segment) bytes without decoding or re-encoding pixels. :func:`mark` adds the XMP and, when signing is
configured (:func:`signing_from_env`: ``MODELSWAP_C2PA_CERT`` and ``MODELSWAP_C2PA_KEY``), a C2PA
manifest signed with the user's certificate (``c2pa-python``, imported only then): a ``c2pa.opened``
action on the source photo (no thumbnail, no file name) and ``c2pa.edited`` with the source type, or
``c2pa.created`` when there is no source photo, plus the record as a signed assertion. Without a
certificate there is no manifest and no error. Comfy-free; README "Using outputs commercially".
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from .errors import InputValidationError

IPTC_SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
COMPOSITE = IPTC_SOURCE_TYPES + "compositeWithTrainedAlgorithmicMedia"  # a model swap: a photo, regions inpainted
TRAINED = IPTC_SOURCE_TYPES + "trainedAlgorithmicMedia"  # wholly generated (the face library's created faces)
NAMESPACE = "https://github.com/comfyui-model-swap/comfyui-model-swap/ns/provenance/1.0/"
PREFIX = "modelswap"
C2PA_LABEL = "com.github.comfyui-model-swap.record"  # the record as a signed C2PA assertion
PACK_NAME = "ComfyUI Model Swap"
FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
ENV_CERT, ENV_KEY, ENV_ALG, ENV_TSA = ("MODELSWAP_C2PA_CERT", "MODELSWAP_C2PA_KEY", "MODELSWAP_C2PA_ALG",
                                       "MODELSWAP_C2PA_TSA_URL")
ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEYWORD = b"XML:com.adobe.xmp"
_JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # characters XML 1.0 cannot hold


@functools.lru_cache(maxsize=1)
def pack_version() -> str:
    """The pack's version from its pyproject.toml ([project] version), or 'unknown'."""
    try:
        text = _PYPROJECT.read_text()
    except OSError:
        return "unknown"
    match = re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    return match.group(1) if match else "unknown"


@dataclass(frozen=True)
class ModelUse:
    """One model that touched the image: its file or folder name and the registry's title and licence."""
    name: str
    title: str
    licence: str
    non_commercial: bool


@dataclass(frozen=True)
class Record:
    """The pack's account of one output image. ``None`` fields are unknown and left out of the file.
    ``prompt`` is the user's text only where they chose to record it (privacy: README)."""
    source_type: str = COMPOSITE
    engine: str | None = None
    models: tuple[ModelUse, ...] = ()
    seed: int | None = None
    generation_mode: str | None = None
    steps: int | None = None
    refine_steps: int | None = None  # None: the face pass did not run
    refine_work_size: int | None = None
    face_reference: bool | None = None
    automatic_prompt: bool | None = None  # True: the prompt was drawn from the seed, none was written
    prompt: str | None = None
    pack_version: str = field(default_factory=pack_version)

    @property
    def non_commercial(self) -> bool:
        return any(m.non_commercial for m in self.models)

    def facts(self) -> dict:
        """The record as plain values (what the XMP and the C2PA assertion say), unknowns left out."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "models"}
        out["models"] = [asdict(m) for m in self.models]
        out["non_commercial_weights"] = self.non_commercial
        return out


# ------------------------------------------------------------------------------------------------ XMP

def _xml_text(value) -> str:
    text = ("True" if value else "False") if isinstance(value, bool) else str(value)
    return _NOT_XML.sub("", text)


def xmp_packet(record: Record) -> str:
    """The XMP packet: IPTC Digital Source Type, xmp:CreatorTool and the pack's record."""
    simple = {
        "PackVersion": record.pack_version, "Engine": record.engine, "Seed": record.seed,
        "GenerationMode": record.generation_mode, "Steps": record.steps, "RefineSteps": record.refine_steps,
        "RefineWorkSize": record.refine_work_size, "FaceReference": record.face_reference,
        "AutomaticPrompt": record.automatic_prompt, "NonCommercialWeights": record.non_commercial,
    }
    attrs = [f"Iptc4xmpExt:DigitalSourceType={quoteattr(record.source_type)}",
             f"xmp:CreatorTool={quoteattr(f'{PACK_NAME} {record.pack_version}')}"]
    attrs += [f"{PREFIX}:{k}={quoteattr(_xml_text(v))}" for k, v in simple.items() if v is not None]
    body = []
    if record.models:
        items = "".join(
            f'<rdf:li rdf:parseType="Resource"><{PREFIX}:Name>{escape(_xml_text(m.name))}</{PREFIX}:Name>'
            f"<{PREFIX}:Title>{escape(_xml_text(m.title))}</{PREFIX}:Title>"
            f"<{PREFIX}:Licence>{escape(_xml_text(m.licence))}</{PREFIX}:Licence>"
            f"<{PREFIX}:NonCommercial>{_xml_text(m.non_commercial)}</{PREFIX}:NonCommercial></rdf:li>"
            for m in record.models)
        body.append(f"<{PREFIX}:Models><rdf:Bag>{items}</rdf:Bag></{PREFIX}:Models>")
    if record.prompt is not None:
        body.append(f"<{PREFIX}:Prompt>{escape(_xml_text(record.prompt))}</{PREFIX}:Prompt>")
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:{PREFIX}="{NAMESPACE}" ' + " ".join(attrs) + ">"
        + "".join(body) + '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


def add_xmp(data: bytes, fmt: str, packet: str) -> bytes:
    """``data`` (PNG or JPEG bytes) with ``packet`` as its XMP, replacing any XMP it had; pixel data
    untouched."""
    if fmt == "png":
        return _png_with_xmp(data, packet.encode("utf-8"))
    if fmt == "jpeg":
        return _jpeg_with_xmp(data, packet.encode("utf-8"))
    raise InputValidationError(f"Cannot write XMP into {fmt!r} files: use one of {', '.join(FORMATS)}.")


def _png_with_xmp(data: bytes, packet: bytes) -> bytes:
    if not data.startswith(_PNG_SIGNATURE):
        raise InputValidationError("add_xmp: the bytes are not a PNG file (no PNG signature).")
    payload = _PNG_KEYWORD + b"\x00\x00\x00\x00\x00" + packet  # keyword, uncompressed, no language/translation
    chunk = struct.pack(">I", len(payload)) + b"iTXt" + payload + struct.pack(">I", zlib.crc32(b"iTXt" + payload))
    out, pos = [_PNG_SIGNATURE], len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        body = data[pos + 8:pos + 8 + length]
        if not (kind == b"iTXt" and body.startswith(_PNG_KEYWORD + b"\x00")):  # drop an older XMP chunk
            out.append(data[pos:end])
        if kind == b"IHDR":
            out.append(chunk)  # right after the header: readers find XMP before the image data
        pos = end
    return b"".join(out)


def _jpeg_with_xmp(data: bytes, packet: bytes) -> bytes:
    if not data.startswith(b"\xff\xd8"):
        raise InputValidationError("add_xmp: the bytes are not a JPEG file (no SOI marker).")
    payload = _JPEG_XMP + packet
    if len(payload) + 2 > 0xFFFF:
        raise InputValidationError(f"add_xmp: the XMP packet ({len(packet)} bytes) is too large for one JPEG "
                                   "APP1 segment; record less (e.g. a shorter prompt).")
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    out, pos, inserted = [data[:2]], 2, False
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA or not 0xE0 <= marker <= 0xEF:  # image data or tables: XMP goes before them
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        seg = data[pos:pos + 2 + length]
        if marker == 0xE0 and not inserted:  # JFIF's APP0 must stay first
            out.append(seg)
        elif not (marker == 0xE1 and seg[4:].startswith(_JPEG_XMP)):
            if not inserted:
                out.append(segment)
                inserted = True
            out.append(seg)
        pos += 2 + length
    if not inserted:
        out.append(segment)
    out.append(data[pos:])
    return b"".join(out)


# ----------------------------------------------------------------------------------------------- C2PA

@dataclass(frozen=True)
class Signing:
    """The user's C2PA signing settings: a PEM certificate chain (signing certificate first), its PEM
    private key, the algorithm and an optional RFC 3161 timestamp server."""
    cert_chain: bytes
    private_key: bytes
    alg: str = "es256"
    tsa_url: str | None = None


def signing_from_env(env=None) -> Signing | None:
    """Signing settings from ``MODELSWAP_C2PA_CERT`` / ``_KEY`` (file paths), ``_ALG`` (default es256) and
    ``_TSA_URL``; None when neither file is set. Half a setting, an unreadable file or a missing
    ``c2pa-python`` package is an error naming the fix."""
    env = os.environ if env is None else env
    cert, key = env.get(ENV_CERT, "").strip(), env.get(ENV_KEY, "").strip()
    if not cert and not key:
        return None
    if not cert or not key:
        given, absent = (ENV_CERT, ENV_KEY) if cert else (ENV_KEY, ENV_CERT)
        raise InputValidationError(f"C2PA signing: {given} is set but {absent} is not. Set both (the PEM "
                                   "certificate chain and its private key) or neither (no C2PA manifest).")
    alg = env.get(ENV_ALG, "").strip().lower() or "es256"
    if alg not in ALGORITHMS:
        raise InputValidationError(f"C2PA signing: {ENV_ALG}={alg!r} is not supported: use one of "
                                   f"{', '.join(ALGORITHMS)} (it must match the key).")
    if importlib.util.find_spec("c2pa") is None:
        raise InputValidationError(f"C2PA signing is configured ({ENV_CERT}, {ENV_KEY}) but the c2pa-python "
                                   "package is not installed: pip install c2pa-python (in ComfyUI's Python), "
                                   "or unset both variables to write XMP only.")
    files = {}
    for name, path in ((ENV_CERT, cert), (ENV_KEY, key)):
        try:
            files[name] = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise InputValidationError(f"C2PA signing: cannot read {name}={path!r}: {exc.strerror or exc}. "
                                       "Point it at a PEM file this process can read.") from None
    return Signing(files[ENV_CERT], files[ENV_KEY], alg, env.get(ENV_TSA, "").strip() or None)


def c2pa_manifest(record: Record, with_parent: bool) -> dict:
    """The manifest definition: the actions (opened + edited, or created) and the record."""
    agent = {"name": PACK_NAME, "version": record.pack_version}
    if with_parent:
        actions = [{"action": "c2pa.opened", "parameters": {"ingredientIds": ["source"]}},
                   {"action": "c2pa.edited", "digitalSourceType": record.source_type, "softwareAgent": agent,
                    "description": "Person regenerated (face, hair, skin); garments and background kept."}]
    else:
        actions = [{"action": "c2pa.created", "digitalSourceType": record.source_type, "softwareAgent": agent}]
    return {"claim_generator_info": [agent],
            "assertions": [{"label": "c2pa.actions", "data": {"actions": actions}},
                           {"label": C2PA_LABEL, "data": record.facts()}]}


def c2pa_context(trust_anchors: str | None = None):
    """A c2pa Context without thumbnails (the output is the picture; the source photo's person must not
    travel in it); ``trust_anchors`` (PEM) makes a reader validate against them."""
    import c2pa

    settings: dict = {"builder": {"thumbnail": {"enabled": False}}}
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors}
    return c2pa.Context.from_dict(settings)


def sign(data: bytes, fmt: str, record: Record, signing: Signing, parent: bytes | None = None) -> bytes:
    """``data`` with an embedded C2PA manifest signed per ``signing``; ``parent`` (the source photo's
    bytes: PNG, JPEG or WEBP; others are left out) becomes the ``parentOf`` ingredient, titled 'source
    photo'."""
    import io

    import c2pa

    parent_type = None if parent is None else _sniff(parent)
    info = c2pa.C2paSignerInfo(signing.alg, signing.cert_chain, signing.private_key, signing.tsa_url)
    try:
        signer = c2pa.Signer.from_info(info)
        builder = c2pa.Builder(c2pa_manifest(record, parent_type is not None), context=c2pa_context())
        if parent_type is not None:
            builder.add_ingredient({"title": "source photo", "relationship": "parentOf", "label": "source"},
                                   parent_type, io.BytesIO(parent))
        out = io.BytesIO()
        builder.sign(signer, FORMATS[fmt], io.BytesIO(data), out)
    except c2pa.C2paError as exc:
        raise InputValidationError(f"C2PA signing failed: {exc}. Check {ENV_CERT} (PEM chain, signing "
                                   f"certificate first), {ENV_KEY} and {ENV_ALG}.") from None
    return out.getvalue()


def _sniff(data: bytes) -> str | None:
    if data.startswith(_PNG_SIGNATURE):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def mark(data: bytes, fmt: str, record: Record | None, signing: Signing | None = None,
         parent: bytes | None = None) -> bytes:
    """The finished output: XMP added, then signed when ``signing`` is given. ``record`` None (the image
    did not come from the pack's sampler) leaves ``data`` as it is."""
    if record is None:
        return data
    data = add_xmp(data, fmt, xmp_packet(record))
    return data if signing is None else sign(data, fmt, record, signing, parent)

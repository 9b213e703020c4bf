"""The model swap end to end: parse -> identity -> generate -> refine -> composite.

Each stage is a function of explicit values returning a new, immutable value; the ComfyUI
nodes call them one by one and never copy what they receive:

    prepare(parser, photo, MaskSettings)           -> Prepared   (GarmentMask)
    encode(analyzer, prepared, reference, scale)   -> Encoded    (IdentityEncode)
    generate(engine, encoded, GenerateSettings)    -> Sampled    (ModelSwapSampler)
    face_refine.refine(engine, sampled, ...)       -> Sampled    (FaceRefine)
    finish(sampled)                                -> SwapResult (composite onto the input)

Stages reach a generation model only through the engine interface (engines/base.py).
Inputs are checked where they enter (node widgets, the HTTP protocol, :func:`validate_options`
for Python callers); the stages trust their callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np

from . import contract as c
from . import masks as masks_mod
from . import reframe
from .compositing import composite, to_native
from .engines.base import IdentityCondition, InpaintRequest
from .errors import InputValidationError
from .images import MAX_PIXELS, as_mask, as_rgb_uint8, pad_to_multiple, processing_size, resize
from .prompting import NEGATIVE_PROMPT, PERSONS, framing_of, prompts_for, skin_tone_of
from .timing import Timings, timed

DEFAULT_BODY_STRENGTH = c.DEFAULT_BODY_STRENGTH
FACEID_EMBEDDING_SIZE = 512  # ArcFace (insightface) embeddings, what IP-Adapter FaceID was trained on


@dataclass(frozen=True)
class MaskSettings:
    regenerate: tuple[str, ...] = masks_mod.DEFAULT_REGENERATE
    grow: int = c.GROW.default
    feather: int = c.FEATHER.default
    output_size: str = "processing"  # one of contract.OUTPUT_SIZES
    max_pixels: int = MAX_PIXELS
    aspect_ratio: str = c.ORIGINAL_RATIO  # contract.ASPECT_RATIO_CHOICES: extend the photo to it (reframe.py)


@dataclass(frozen=True)
class GenerateSettings:
    prompt: str = ""
    seed: int = c.SEED.default
    num_images: int = c.NUM_IMAGES.default
    steps: int = c.STEPS.default  # 0: the engine's (Capabilities.settings)
    strength: float = c.STRENGTH.default
    guidance_scale: float = c.GUIDANCE.default
    negative_prompt: str = NEGATIVE_PROMPT
    controlnet_scale: float = c.CONTROLNET_SCALE.default
    body_strength: float = c.BODY_STRENGTH.default  # body skin's share of the schedule; face and hair get all of it
    person: str = "auto"  # prompting.PERSONS: who the automatic prompt describes when analysis cannot tell

    def seeds(self) -> tuple[int, ...]:
        """Image i uses seed + i (wrapping past 2**32 - 1)."""
        return tuple((self.seed + i) % (c.SEED_MAX + 1) for i in range(self.num_images))


@dataclass(frozen=True)
class Prepared:
    native: np.ndarray  # the input, full size
    image: np.ndarray  # at processing size (on the canvas, with an aspect ratio)
    swap: masks_mod.SwapMask  # the person band (on the canvas, with an aspect ratio)
    output_size: str
    notes: tuple[str, ...] = ()
    timings: Timings = ()
    frame: reframe.Frame | None = None  # with an aspect ratio: where the photo sits on the canvas


def blend_alpha(prepared: Prepared) -> np.ndarray:
    """What the output takes from the generated image: the person band, and with an aspect ratio also the
    new canvas and its seam band (reframe.Frame.outpaint). Exactly 0 on every pixel kept from the input."""
    if prepared.frame is None:
        return prepared.swap.alpha
    return np.maximum(prepared.swap.alpha, prepared.frame.outpaint)


@dataclass(frozen=True)
class Encoded:
    prepared: Prepared
    base_face: Any = None  # identity.FaceInfo of the model's main face, or None
    reference: np.ndarray | None = None
    ref_face: Any = None
    identity: IdentityCondition | None = None
    ref_tone: str | None = None
    notes: tuple[str, ...] = ()
    timings: Timings = ()


@dataclass(frozen=True)
class Sampled:
    encoded: Encoded
    seeds: tuple[int, ...]
    prompts: tuple[str, ...]
    negative_prompt: str
    images: tuple[np.ndarray, ...]  # at processing size, not yet composited
    refined: bool = False
    face_crops: tuple[np.ndarray, ...] = ()
    face_masks: tuple[np.ndarray, ...] = ()
    timings: Timings = ()


@dataclass
class SwapResult:
    images: list[np.ndarray]  # uint8 (H, W, 3) each, at the output size
    swap_mask: masks_mod.SwapMask  # at the output size: alpha == 0 marks the exactly preserved pixels
    prompts: list[str]
    negative_prompt: str
    seeds: list[int]
    processing_size: tuple[int, int]
    face_found: bool
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    face_crops: list[np.ndarray] = field(default_factory=list)
    face_masks: list[np.ndarray] = field(default_factory=list)
    frame: reframe.Frame | None = None  # with an aspect ratio: the photo's place on the processing-size canvas


def output_hw(native_hw: tuple[int, int], processing_hw: tuple[int, int], output_size: str) -> tuple[int, int]:
    """(H, W) of the returned images for ``output_size`` (one of contract.OUTPUT_SIZES)."""
    if output_size == "processing":
        return tuple(processing_hw)
    h, w = native_hw
    cap = c.LONG_SIDE_CAPS.get(output_size)
    if cap is None or max(h, w) <= cap:
        return h, w
    scale = cap / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


# ----------------------------------------------------------------------------- stages


def prepare(parser, image, settings: MaskSettings = MaskSettings(), *, external_mask=None) -> Prepared:
    """GarmentMask: scale to processing size, parse, and build the regenerate mask.

    ``parser``: FASHN's human parser (parsing.HumanParser) or the selfie segmenter
    (segment_selfie.SelfieSegmenter): ``parse(rgb)`` gives a label map in parsing.LABELS and
    ``resolve_classes(names)``, where it has one, the regenerate selection it can express."""
    if parser is None and external_mask is None:
        raise InputValidationError(
            "No human parser is loaded and no mask was given: load the human parser "
            "(models/human_parsing/fashn-human-parser) or the selfie segmenter "
            "(models/mediapipe/selfie_multiclass_256x256.tflite), or supply a mask.")
    native = as_rgb_uint8(image, "model image")
    ext = None if external_mask is None else as_mask(external_mask, native.shape[:2], "external mask")
    ratio = None if reframe.is_original(settings.aspect_ratio) else settings.aspect_ratio
    budget = settings.max_pixels if ratio is None else reframe.photo_budget(native.shape[:2], ratio,
                                                                            settings.max_pixels)
    size = processing_size(*native.shape[:2], max_pixels=budget)
    scaled = resize(native, size)
    timings: list = []
    resolve = getattr(parser, "resolve_classes", None)  # optional: a parser without it takes every class as given
    regenerate = tuple(settings.regenerate) if ext is not None or resolve is None else resolve(settings.regenerate)
    with timed("cpu", timings, "garment_mask"):
        labels = None if ext is not None else parser.parse(scaled)
        ext = None if ext is None else np.clip(resize(ext, size), 0.0, 1.0)
        swap = masks_mod.build_swap_mask(labels, external=ext, regenerate=regenerate,
                                         grow=settings.grow, feather=settings.feather)
    notes = () if swap.band.any() or ratio is not None else (
        "The regenerate mask is empty (no person pixels found): the output equals the input.",)
    frame = None
    if ratio is not None:  # the photo on a canvas of the ratio; the new area is outpainted (reframe.py)
        frame = reframe.plan(size, ratio)
        scaled, native = reframe.extend(scaled, frame), reframe.extend_native(native, ratio)
        swap = masks_mod.SwapMask(
            labels=None if swap.labels is None else reframe.extend_zeros(swap.labels, frame),
            hard=reframe.extend_zeros(swap.hard, frame), alpha=reframe.extend_zeros(swap.alpha, frame),
            source=swap.source)
    return Prepared(native=native, image=scaled, swap=swap, output_size=settings.output_size, notes=notes,
                    timings=tuple(timings), frame=frame)


def encode(analyzer, prepared: Prepared, face_reference=None, *, identity_scale: float = c.IDENTITY_SCALE.default
           ) -> Encoded:
    """IdentityEncode: the model's main face and, with a reference, the identity to give it."""
    from .identity import encode_reference, main_face

    reference = None if face_reference is None else as_rgb_uint8(face_reference, "face reference")
    if reference is not None and analyzer is None:
        raise InputValidationError(
            "A face reference needs face analysis: load a face analyser (insightface antelopev2, or OpenCV "
            "YuNet + SFace).")
    timings: list = []
    with timed("cpu", timings, "identity"):
        base_face = None if analyzer is None else main_face(analyzer.analyze(prepared.image))
        ref_face = None if reference is None else encode_reference(analyzer, reference)
    notes = () if base_face is not None else (
        "No face found in the model image: hair and skin were regenerated, face stages skipped.",)
    identity = ref_tone = None
    if ref_face is not None:
        identity = IdentityCondition(embedding=ref_face.embedding, face_crop=ref_face.aligned, reference=reference,
                                     scale=float(identity_scale))
        ref_tone = skin_tone_of(reference, ref_face.kps)
    return Encoded(prepared=prepared, base_face=base_face, reference=reference, ref_face=ref_face, identity=identity,
                   ref_tone=ref_tone, notes=notes, timings=tuple(timings))


def region_strength(swap: masks_mod.SwapMask, body_strength: float, grow: int = 4) -> np.ndarray:
    """Per-pixel strength over the regenerate band: 1 on face and hair (grown by ``grow``), ``body_strength``
    on the rest of the person (torso, arms, hands, legs, feet), 0 outside the band."""
    band = swap.band
    strength = np.where(band, np.float32(body_strength), np.float32(0.0))
    if swap.labels is None or body_strength >= 1.0:
        return np.where(band, np.float32(1.0), strength).astype(np.float32)
    head = masks_mod.class_mask(swap.labels, ("face", "hair")).astype(np.uint8)
    if grow > 0:
        head = cv2.dilate(head, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    strength[(head > 0) & band] = 1.0
    return strength.astype(np.float32)


def check_takes_identity(caps) -> None:
    """Refuse a face reference for an engine that can carry no identity."""
    if not (caps.embedding_identity or caps.reference_image):
        raise InputValidationError(
            f"A face reference needs an identity-capable engine: the loaded {caps.label} engine has none. Load "
            "IP-Adapter FaceID (ip-adapter-faceid_sdxl.bin in models/ipadapter) with the SDXL pipeline, or use the "
            "FLUX.2 klein engine, which takes the identity from the reference image itself.")


def check_outpaints(caps, ratio: str) -> None:
    """Refuse an aspect ratio (a canvas to outpaint) for an engine that cannot fill one."""
    if not caps.outpaint:
        raise InputValidationError(
            f"aspect_ratio={ratio!r} extends the photo, which the engine must outpaint, and the loaded {caps.label} "
            "engine cannot: set aspect_ratio to 'original', or load FLUX.2 klein or the SDXL pipeline.")


def check_engine_fits(engine, encoded: Encoded, control_image) -> None:
    """Refuse, before any work, a face reference or control image the engine cannot use."""
    caps = engine.capabilities
    if encoded.identity is not None:
        check_takes_identity(caps)
    if encoded.prepared.frame is not None:
        check_outpaints(caps, encoded.prepared.frame.ratio)
    embedding = None if encoded.identity is None else encoded.identity.embedding
    if caps.embedding_identity and not caps.reference_image and embedding is not None \
            and np.asarray(embedding).size != FACEID_EMBEDDING_SIZE:
        raise InputValidationError(
            f"IP-Adapter FaceID needs insightface's {FACEID_EMBEDDING_SIZE}-d identity embedding, but the face "
            f"analyser gave {np.asarray(embedding).size}-d ones (OpenCV SFace): use the InsightFace loader "
            "(antelopev2) with the SDXL engine, or the FLUX.2 klein engine with the OpenCV analyser.")
    if control_image is not None and not caps.controlnet:
        raise InputValidationError(
            f"The loaded {caps.label} engine has no ControlNet, so it takes no control image: disconnect "
            "control_image, or load a ControlNet with an engine that supports one (the SDXL Pipeline Loader).")
    if caps.controlnet and control_image is None:
        raise InputValidationError(
            "A ControlNet and a control image go together: give both (pose/hand control) or neither.")


def generate(engine, encoded: Encoded, settings: GenerateSettings = GenerateSettings(), *, control_image=None,
             on_step: Callable[[int, int], None] | None = None) -> Sampled:
    """ModelSwapSampler: regenerate the masked region for every seed in one batch."""
    check_engine_fits(engine, encoded, control_image)
    prepared, face = encoded.prepared, encoded.base_face
    seeds = settings.seeds()
    prompts, _ = prompts_for(
        list(seeds), user_prompt=settings.prompt, framing=framing_of(prepared.swap.labels),
        sex=None if face is None else face.sex, age=None if face is None else face.age,
        reference_skin_tone=encoded.ref_tone, person=settings.person)
    multiple = engine.capabilities.side_multiple
    steps = engine.capabilities.settings(steps=settings.steps).steps
    timings: list = []
    with timed(engine.device, timings, "generate"):
        padded, (h, w) = pad_to_multiple(prepared.image, multiple)
        strength = region_strength(prepared.swap, settings.body_strength)
        if prepared.frame is not None:  # the new canvas and its seam band: regenerated (outpainted) too
            strength = np.maximum(strength, prepared.frame.outpaint)
        mask = pad_to_multiple(strength, multiple)[0]
        control = None
        if control_image is not None:
            control = pad_to_multiple(resize(as_rgb_uint8(control_image, "control image"), (h, w)), multiple)[0]
        images = engine.inpaint(InpaintRequest(
            image=padded, mask=mask, prompts=tuple(prompts), seeds=seeds, steps=steps,
            strength=settings.strength, negative_prompt=settings.negative_prompt,
            guidance_scale=settings.guidance_scale, identity=encoded.identity, control_image=control,
            controlnet_scale=settings.controlnet_scale), on_step)
    return Sampled(encoded=encoded, seeds=seeds, prompts=tuple(prompts), negative_prompt=settings.negative_prompt,
                   images=tuple(g[:h, :w] for g in images), timings=tuple(timings))


def finish(sampled: Sampled) -> SwapResult:
    """Composite every output onto the input: exact outside the feathered band."""
    encoded = sampled.encoded
    prepared = encoded.prepared
    swap, native, size = prepared.swap, prepared.native, prepared.image.shape[:2]
    alpha = blend_alpha(prepared)
    timings: list = []
    with timed("cpu", timings, "composite"):
        outputs = [composite(prepared.image, g, alpha) for g in sampled.images]
        out_mask = swap if prepared.frame is None else masks_mod.SwapMask(
            labels=swap.labels, hard=swap.hard | (alpha >= 1.0), alpha=alpha, source=swap.source)
        target = output_hw(native.shape[:2], size, prepared.output_size)
        if target != tuple(size):
            full = resize(native, target)  # the original pixels, only scaled when a long-side cap applies
            natives = [to_native(full, g, alpha) for g in sampled.images]
            outputs = [img for img, _ in natives]
            out_mask = masks_mod.SwapMask(labels=None, hard=natives[0][1] >= 1.0, alpha=natives[0][1])
    all_timings = prepared.timings + encoded.timings + sampled.timings + tuple(timings)
    return SwapResult(
        images=outputs, swap_mask=out_mask, prompts=list(sampled.prompts), negative_prompt=sampled.negative_prompt,
        seeds=list(sampled.seeds), processing_size=tuple(size), face_found=encoded.base_face is not None,
        notes=list(prepared.notes + encoded.notes), timings={k: v for k, v in all_timings},
        face_crops=list(sampled.face_crops), face_masks=list(sampled.face_masks), frame=prepared.frame)


# ----------------------------------------------------------------------------- Python entry point


@dataclass(frozen=True)
class SwapOptions:
    """Everything a Python caller can set; defaults are FASHN Model Swap's (seed 42, one image,
    match_reference). Checked once by :func:`validate_options`."""

    prompt: str = ""
    face_reference_mode: str = c.MODES[0]
    seed: int = c.SEED.default
    num_images: int = c.NUM_IMAGES.default
    steps: int = c.STEPS.default  # 0: the engine's (FLUX.2 klein 4, SDXL 30)
    strength: float = c.STRENGTH.default
    guidance_scale: float = c.GUIDANCE.default
    identity_scale: float = c.IDENTITY_SCALE.default
    body_strength: float = c.BODY_STRENGTH.default
    person: str = "auto"
    regenerate: tuple[str, ...] = masks_mod.DEFAULT_REGENERATE
    grow: int = c.GROW.default
    feather: int = c.FEATHER.default
    output_size: str = "processing"
    max_pixels: int = MAX_PIXELS
    aspect_ratio: str = c.ORIGINAL_RATIO  # or one of contract.ASPECT_RATIOS: extend the photo to it
    refine_faces: bool = True
    refine: Any = None  # face_refine.RefineSettings; None = its defaults
    controlnet_scale: float = c.CONTROLNET_SCALE.default
    negative_prompt: str = NEGATIVE_PROMPT

    def mask_settings(self) -> MaskSettings:
        return MaskSettings(regenerate=tuple(self.regenerate), grow=self.grow, feather=self.feather,
                            output_size=self.output_size, max_pixels=self.max_pixels,
                            aspect_ratio=self.aspect_ratio)

    def generate_settings(self) -> GenerateSettings:
        return GenerateSettings(prompt=self.prompt, seed=self.seed, num_images=self.num_images, steps=self.steps,
                                strength=self.strength, guidance_scale=self.guidance_scale,
                                negative_prompt=self.negative_prompt, controlnet_scale=self.controlnet_scale,
                                body_strength=self.body_strength, person=self.person)


def validate_options(o: SwapOptions) -> None:
    """The Python boundary's check, from the same declarations (contract.py) the widgets and the API use."""
    from .face_refine import RefineSettings

    for param in (c.NUM_IMAGES, c.SEED, c.STEPS, c.STRENGTH, c.GUIDANCE, c.IDENTITY_SCALE, c.BODY_STRENGTH,
                  c.CONTROLNET_SCALE, c.GROW, c.FEATHER):
        c.check(param, getattr(o, param.name))
    c.check(c.MAX_PIXELS_PARAM, o.max_pixels)
    if o.face_reference_mode not in c.MODES:
        raise InputValidationError(
            f"face_reference_mode={o.face_reference_mode!r} is not supported: use one of {', '.join(c.MODES)}.")
    if o.person not in PERSONS:
        raise InputValidationError(f"person={o.person!r}: use one of {', '.join(PERSONS)}.")
    if o.output_size not in c.OUTPUT_SIZES:
        raise InputValidationError(f"output_size={o.output_size!r}: use one of {', '.join(c.OUTPUT_SIZES)}.")
    problem = c.aspect_ratio_problem(o.aspect_ratio)
    if problem is not None:
        raise InputValidationError(problem)
    if not isinstance(o.prompt, str) or not isinstance(o.negative_prompt, str):
        raise InputValidationError("prompt and negative_prompt must be text.")
    (o.refine or RefineSettings()).check()


class ModelSwapPipeline:
    """Loaded models (immutable) and the whole swap in one call. Build once, call :meth:`run` many times."""

    def __init__(self, engine, parser=None, analyzer=None):
        self.engine = engine
        self.parser = parser
        self.analyzer = analyzer

    def run(self, image, options: SwapOptions | None = None, *, face_reference=None, external_mask=None,
            control_image=None, on_step: Callable[[int, int], None] | None = None) -> SwapResult:
        """The whole swap, as FASHN's Model Swap does it: every stage in order."""
        from . import face_refine

        options = options or SwapOptions()
        validate_options(options)
        if face_reference is not None:  # before any work
            check_takes_identity(self.engine.capabilities)
        if not reframe.is_original(options.aspect_ratio):
            check_outpaints(self.engine.capabilities, options.aspect_ratio)
        prepared = prepare(self.parser, image, options.mask_settings(), external_mask=external_mask)
        encoded = encode(self.analyzer, prepared, face_reference, identity_scale=options.identity_scale)
        sampled = generate(self.engine, encoded, options.generate_settings(), control_image=control_image,
                           on_step=on_step)
        if options.refine_faces:
            sampled = face_refine.refine(self.engine, sampled, options.refine or face_refine.RefineSettings(),
                                         mode=options.face_reference_mode, on_step=on_step)
        return finish(sampled)

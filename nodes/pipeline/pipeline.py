"""The model-swap pipeline end to end: parse -> identity -> generate -> refine -> composite.

``ModelSwapPipeline`` holds loaded models (load once, reuse for every call) and
runs one request in the order FASHN's Model Swap does. Each stage is also a
method of its own, which is what the ComfyUI nodes call.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from . import masks as masks_mod
from . import sampler
from .compositing import composite, to_native
from .errors import InputValidationError
from .contract import MODES, SEED_MAX
from .face_refine import RefineSettings, refine_faces
from .images import MAX_PIXELS, as_mask, as_rgb_uint8, pad_to_multiple, processing_size, resize
from .prompting import NEGATIVE_PROMPT, framing_of, prompts_for, skin_tone_of

# "processing": FASHN's <= 1.05 MP; "native": the input's size; "2k"/"4k": the input's size with the
# long side capped at 2048/4096 (FASHN's resolution setting).
OUTPUT_SIZES = ("processing", "native", "2k", "4k")
LONG_SIDE_CAPS = {"2k": 2048, "4k": 4096}
NEEDS_FACEID = ("A face reference needs IP-Adapter FaceID: load ip-adapter-faceid_sdxl.bin (models/ipadapter) "
                "with the pipeline.")


@dataclass
class SwapOptions:
    """What a caller can set; defaults are FASHN Model Swap's (seed 42, one image, match_reference)."""

    prompt: str = ""
    face_reference_mode: str = "match_reference"
    seed: int = 42
    num_images: int = 1
    steps: int = 30
    strength: float = 1.0
    guidance_scale: float = 5.0
    identity_scale: float = 0.8
    regenerate: tuple[str, ...] = masks_mod.DEFAULT_REGENERATE
    grow: int = 4
    feather: int = 8
    output_size: str = "processing"  # see OUTPUT_SIZES
    max_pixels: int = MAX_PIXELS
    refine_faces: bool = True
    refine: RefineSettings = field(default_factory=RefineSettings)
    controlnet_scale: float = 0.8
    negative_prompt: str = NEGATIVE_PROMPT

    def seeds(self) -> list[int]:
        """Image i uses seed + i (wrapping past 2**32 - 1)."""
        return [(self.seed + i) % (SEED_MAX + 1) for i in range(self.num_images)]


def output_hw(native_hw: tuple[int, int], processing_hw: tuple[int, int], output_size: str) -> tuple[int, int]:
    """(H, W) of the returned images for ``output_size`` (one of OUTPUT_SIZES)."""
    if output_size == "processing":
        return tuple(processing_hw)
    h, w = native_hw
    cap = LONG_SIDE_CAPS.get(output_size)
    if cap is None or max(h, w) <= cap:
        return h, w
    scale = cap / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def validate_options(o: SwapOptions) -> None:
    """Check every option before any work starts; errors quote the value and the allowed range."""
    if isinstance(o.num_images, bool) or not isinstance(o.num_images, (int, np.integer)) or not 1 <= o.num_images <= 4:
        raise InputValidationError(f"num_images={o.num_images!r} is out of range: give an integer from 1 to 4.")
    if isinstance(o.seed, bool) or not isinstance(o.seed, (int, np.integer)) or not 0 <= o.seed <= SEED_MAX:
        raise InputValidationError(f"seed={o.seed!r} is out of range: give an integer from 0 to {SEED_MAX}.")
    if o.face_reference_mode not in MODES:
        raise InputValidationError(
            f"face_reference_mode={o.face_reference_mode!r} is not supported: use one of {', '.join(MODES)}.")
    if o.output_size not in OUTPUT_SIZES:
        raise InputValidationError(f"output_size={o.output_size!r}: use one of {', '.join(OUTPUT_SIZES)}.")
    if not isinstance(o.steps, (int, np.integer)) or not 1 <= o.steps <= 150:
        raise InputValidationError(f"steps={o.steps!r} must be an integer from 1 to 150.")
    if not 0.0 < float(o.strength) <= 1.0:
        raise InputValidationError(f"strength={o.strength!r} must be in (0, 1].")
    if not 0.0 <= float(o.guidance_scale) <= 30.0:
        raise InputValidationError(f"guidance_scale={o.guidance_scale!r} must be in [0, 30].")
    if not 0.0 <= float(o.identity_scale) <= 2.0:
        raise InputValidationError(f"identity_scale={o.identity_scale!r} must be in [0, 2].")
    if not 64 * 64 <= int(o.max_pixels) <= 16_777_216:
        raise InputValidationError(f"max_pixels={o.max_pixels!r} must be between 4096 and 16777216.")
    if not isinstance(o.prompt, str):
        raise InputValidationError(f"prompt must be text, got {type(o.prompt).__name__}.")
    o.refine.check()


@dataclass
class SwapResult:
    images: list[np.ndarray]  # uint8 (H, W, 3) each, at processing or native size
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


@dataclass
class SwapJob:
    """One model image on its way through the stages; each stage fills its part."""

    native: np.ndarray  # the input, full size
    options: SwapOptions
    image: np.ndarray | None = None  # at processing size
    swap: masks_mod.SwapMask | None = None
    base_face: object = None  # identity.FaceInfo of the model's main face, or None
    reference: np.ndarray | None = None
    ref_face: object = None
    identity: object = None  # ip_adapter.IdentityCondition, or None
    ref_tone: str | None = None
    encoded: bool = False
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    generated: list[np.ndarray] = field(default_factory=list)  # at processing size, not yet composited
    refined: bool = False
    face_crops: list[np.ndarray] = field(default_factory=list)
    face_masks: list[np.ndarray] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class _Timer:
    def __init__(self, device, timings: dict[str, float]):
        self.timings = timings
        self._cuda = getattr(device, "type", str(device)) == "cuda"

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._cuda:
                import torch

                torch.cuda.synchronize()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


class ModelSwapPipeline:
    """Loaded models and the stages that use them. Build once, call :meth:`run` many times."""

    KEEP_ADAPTER = "keep"

    def __init__(self, engine, parser=None, analyzer=None, faceid=KEEP_ADAPTER):
        self.engine = engine
        self.parser = parser
        self.analyzer = analyzer
        # ip_adapter.FaceIDChoice, or None for plain SDXL: the adapter state this pipeline samples with,
        # re-applied before each run because cached engines are shared; KEEP_ADAPTER leaves the engine as is.
        self.faceid = faceid

    # -- stages -----------------------------------------------------------------------------
    def garment_mask(self, image: np.ndarray, *, regenerate=masks_mod.DEFAULT_REGENERATE, grow: int = 4,
                     feather: int = 8, external_mask=None) -> masks_mod.SwapMask:
        """GarmentMask: the parse, the regenerate mask and its feathered band for ``image``."""
        labels = None
        if self.parser is not None:
            labels = self.parser.parse(image)
        elif external_mask is None:
            raise InputValidationError(
                "No human parser is loaded and no mask was given: load the human parser "
                "(models/human_parsing/fashn-human-parser) or supply a mask.")
        ext = None if external_mask is None else as_mask(external_mask, image.shape[:2], "external mask")
        return masks_mod.build_swap_mask(labels, external=ext, regenerate=tuple(regenerate), grow=grow,
                                         feather=feather)

    def identity_encode(self, image: np.ndarray):
        """IdentityEncode: faces in ``image``, largest first (empty without an analyzer)."""
        if self.analyzer is None:
            return []
        return self.analyzer.analyze(image)

    # -- stage by stage (what the ComfyUI nodes call) -------------------------------------------
    def prepare(self, image, options: SwapOptions | None = None, *, external_mask=None) -> SwapJob:
        """Validate, scale to processing size and build the swap mask (GarmentMask)."""
        options = options or SwapOptions()
        validate_options(options)
        native = as_rgb_uint8(image, "model image")
        ext_native = None if external_mask is None else as_mask(external_mask, native.shape[:2], "external mask")
        job = SwapJob(native=native, options=options)
        timer = _Timer(getattr(self.engine, "device", "cpu"), job.timings)
        size = processing_size(*native.shape[:2], max_pixels=options.max_pixels)
        job.image = resize(native, size)
        with timer.stage("garment_mask"):
            ext = None if ext_native is None else np.clip(resize(ext_native, size), 0.0, 1.0)
            job.swap = self.garment_mask(job.image, regenerate=options.regenerate, grow=options.grow,
                                         feather=options.feather, external_mask=ext)
        if not job.swap.band.any():
            job.notes.append("The regenerate mask is empty (no person pixels found): the output equals the input.")
        return job

    def encode(self, job: SwapJob, face_reference=None) -> SwapJob:
        """Find the model's face and, with a reference, the identity to give it (IdentityEncode)."""
        from .identity import encode_reference, main_face
        from .ip_adapter import IdentityCondition

        reference = None if face_reference is None else as_rgb_uint8(face_reference, "face reference")
        if reference is not None and self.analyzer is None:
            raise InputValidationError(
                "A face reference needs face analysis: load insightface (models/insightface/models/antelopev2).")
        timer = _Timer(getattr(self.engine, "device", "cpu"), job.timings)
        with timer.stage("identity"):
            job.base_face = main_face(self.identity_encode(job.image))
            job.reference = reference
            job.ref_face = None if reference is None else encode_reference(self.analyzer, reference)
        job.encoded = True
        if job.base_face is None:
            job.notes.append("No face found in the model image: hair and skin were regenerated, face stages skipped.")
        if job.ref_face is not None:
            job.identity = IdentityCondition(embedding=job.ref_face.embedding, face_crop=job.ref_face.aligned,
                                             scale=float(job.options.identity_scale))
            job.ref_tone = skin_tone_of(reference, job.ref_face.kps)
        return job

    def generate(self, job: SwapJob, *, control_image=None,
                 on_step: Callable[[int, int], None] | None = None) -> SwapJob:
        """Regenerate the masked region for every seed in one batch (ModelSwapSampler)."""
        from .ip_adapter import ensure_faceid

        options = job.options
        validate_options(options)
        if self.faceid != self.KEEP_ADAPTER:
            ensure_faceid(self.engine, self.faceid)
        control = None if control_image is None else as_rgb_uint8(control_image, "control image")
        if job.identity is not None and getattr(self.engine, "ip_adapter", None) is None:
            raise InputValidationError(NEEDS_FACEID)
        if bool(getattr(self.engine, "has_controlnet", False)) != (control is not None):
            raise InputValidationError(
                "A ControlNet and a control image go together: give both (pose/hand control) or neither.")
        job.seeds = options.seeds()
        face = job.base_face
        job.prompts, _ = prompts_for(
            job.seeds, user_prompt=options.prompt, framing=framing_of(job.swap.labels),
            sex=None if face is None else face.sex, age=None if face is None else face.age,
            reference_skin_tone=job.ref_tone)
        timer = _Timer(getattr(self.engine, "device", "cpu"), job.timings)
        with timer.stage("generate"):
            padded, (h, w) = pad_to_multiple(job.image)
            band = pad_to_multiple(job.swap.band.astype(np.float32))[0]
            ctrl = None if control is None else pad_to_multiple(resize(control, job.image.shape[:2]))[0]
            generated = sampler.inpaint(
                self.engine, padded, band, prompt=job.prompts, negative_prompt=options.negative_prompt,
                seeds=job.seeds, steps=options.steps, strength=options.strength,
                guidance_scale=options.guidance_scale, identity=job.identity, control_image=ctrl,
                controlnet_scale=options.controlnet_scale, on_step=on_step)
        job.generated = [g[:h, :w] for g in generated]
        return job

    def refine(self, job: SwapJob, on_step: Callable[[int, int], None] | None = None) -> SwapJob:
        """Re-inpaint each output's face with the identity (FaceRefine); a no-op without a face."""
        from .identity import warp_face_onto
        from .ip_adapter import ensure_faceid

        if not job.generated:
            raise InputValidationError("FaceRefine needs sampled images: connect it after ModelSwapSampler.")
        if job.base_face is None or job.refined:
            return job
        if self.faceid != self.KEEP_ADAPTER:
            ensure_faceid(self.engine, self.faceid)
        timer = _Timer(getattr(self.engine, "device", "cpu"), job.timings)
        with timer.stage("face_refine"):
            job.generated, job.face_crops, job.face_masks = self._refine(
                job.image, job.generated, job.swap, job.base_face, job.ref_face, job.reference, job.identity,
                job.prompts, job.seeds, job.options, warp_face_onto, on_step)
        job.refined = True
        return job

    def finish(self, job: SwapJob) -> SwapResult:
        """Composite every output onto the input: exact outside the feathered band."""
        if not job.generated:
            raise InputValidationError("Nothing was sampled yet: run ModelSwapSampler before finishing.")
        timer = _Timer(getattr(self.engine, "device", "cpu"), job.timings)
        swap, native, size = job.swap, job.native, job.image.shape[:2]
        with timer.stage("composite"):
            outputs = [composite(job.image, g, swap.alpha) for g in job.generated]
            out_mask = swap
            target = output_hw(native.shape[:2], size, job.options.output_size)
            if target != tuple(size):
                full = resize(native, target)  # the original pixels, only scaled when a long-side cap applies
                natives = [to_native(full, g, swap.alpha) for g in job.generated]
                outputs = [img for img, _ in natives]
                alpha = natives[0][1]
                out_mask = masks_mod.SwapMask(labels=None, hard=alpha >= 1.0, alpha=alpha)
        return SwapResult(images=outputs, swap_mask=out_mask, prompts=list(job.prompts),
                          negative_prompt=job.options.negative_prompt, seeds=list(job.seeds),
                          processing_size=tuple(size), face_found=job.base_face is not None,
                          notes=list(job.notes), timings=dict(job.timings), face_crops=list(job.face_crops),
                          face_masks=list(job.face_masks))

    # -- end to end -------------------------------------------------------------------------
    def run(self, image, options: SwapOptions | None = None, *, face_reference=None, external_mask=None,
            control_image=None, on_step: Callable[[int, int], None] | None = None) -> SwapResult:
        """The whole swap, as FASHN's Model Swap does it: every stage in order."""
        options = options or SwapOptions()
        validate_options(options)
        plain = self.faceid is None or (self.faceid == self.KEEP_ADAPTER
                                        and getattr(self.engine, "ip_adapter", None) is None)
        if face_reference is not None and plain:  # fail before any work
            raise InputValidationError(NEEDS_FACEID)
        job = self.prepare(image, options, external_mask=external_mask)
        self.encode(job, face_reference)
        self.generate(job, control_image=control_image, on_step=on_step)
        if options.refine_faces:
            self.refine(job, on_step=on_step)
        return self.finish(job)

    def _refine(self, proc, generated, swap, base_face, ref_face, reference, identity, prompts: Sequence[str],
                seeds, options: SwapOptions, warp_face_onto, on_step):
        hard = swap.band
        if swap.labels is not None:
            region = masks_mod.class_mask(swap.labels, ("face", "hair")) & hard
            face_only = masks_mod.class_mask(swap.labels, ("face",)) & hard
            skin = masks_mod.class_mask(swap.labels, ("torso", "arms")) & hard
        else:  # an external mask: the face is the ellipse around the detected box
            x1, y1, x2, y2 = base_face.bbox
            ell = np.zeros(proc.shape[:2], np.uint8)
            cv2.ellipse(ell, (int((x1 + x2) / 2), int((y1 + y2) / 2)),
                        (max(1, int((x2 - x1) * 0.6)), max(1, int((y2 - y1) * 0.7))), 0, 0, 360, 1, -1)
            region = (ell > 0) & hard
            face_only = region
            skin = None
        warp = None
        if options.face_reference_mode == "match_reference" and ref_face is not None:
            warp = warp_face_onto(reference, ref_face.kps, base_face.kps, proc.shape[:2])
        result = refine_faces(
            self.engine, generated, source=proc, face_bbox=base_face.bbox, face_region=region,
            face_only=face_only, skin=skin, prompts=prompts, negative_prompt=options.negative_prompt,
            seeds=seeds, mode=options.face_reference_mode, identity=identity, reference_warp=warp,
            settings=options.refine, on_step=on_step)
        return result.images, result.crops, result.masks

"""FaceRefine: re-inpaint each output's face at the model's working size, with the identity.

Per output image: crop the face with a margin, build the starting crop for the
chosen mode, scale it to the working size, re-inpaint face and hairline at
moderate strength, scale back, colour-match to the neck and surrounding skin,
and paste with a mask that fades out before both the face edge and the crop
border (no square seams, no skin-tone jump).

Modes:
- ``match_base``: start from the source photo's own face, colour-matched to the
  new skin, so head angle, gaze and expression stay the source's.
- ``match_reference``: start from the reference face, aligned onto the base
  face's five keypoints by a similarity transform, and sample with a stronger
  identity weight, so the reference's features and expression dominate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from . import contract as c
from . import masks as masks_mod
from .compositing import composite, match_colour, soft_paste_mask
from .engines.base import InpaintRequest
from .images import resize
from .timing import timed



@dataclass(frozen=True)
class RefineSettings:
    strength: float = c.REFINE_STRENGTH.default
    steps: int = c.REFINE_STEPS.default  # steps actually run (the scheduler gets steps / strength); 0: the engine's
    guidance_scale: float = 5.0
    margin: float = c.REFINE_MARGIN.default  # added on every side, as a fraction of the face box's larger side
    work_size: int = c.REFINE_WORK_SIZE.default  # the crop is sampled at this size; 0: the engine's working size
    colour_match: float = 0.8  # 1 = match the neck skin fully; shadows on the neck argue for less
    reference_identity_boost: float = 1.5  # identity weight multiplier for match_reference

    def check(self) -> None:
        """The Python boundary's check, from the declarations the widgets and the runner use."""
        for param in (c.REFINE_STRENGTH, c.REFINE_STEPS, c.REFINE_WORK_SIZE, c.REFINE_MARGIN):
            c.check(param, getattr(self, param.name))

    def for_engine(self, caps) -> "RefineSettings":
        """These settings with every "the engine's" (0) filled from ``caps``."""
        preset = caps.settings(refine_steps=self.steps, refine_work_size=self.work_size)
        return dataclasses.replace(self, steps=preset.refine_steps, work_size=preset.refine_work_size)


@dataclass
class FaceRefineOutput:
    images: list[np.ndarray]
    crops: list[np.ndarray] = field(default_factory=list)  # refined crops at working size
    masks: list[np.ndarray] = field(default_factory=list)  # paste alphas at crop size


def face_crop_box(bbox: np.ndarray, image_hw: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """A square box around ``bbox`` grown by ``margin`` x its larger side on every side,
    shifted (not shrunk) to stay inside the image where possible."""
    h, w = image_hw
    x1, y1, x2, y2 = (float(v) for v in bbox[:4])
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    side = int(min(max(side, 16), h, w))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    x0 = int(round(min(max(cx - side / 2.0, 0), w - side)))
    y0 = int(round(min(max(cy - side / 2.0, 0), h - side)))
    return x0, y0, x0 + side, y0 + side


def _starting_crop(mode, generated_crop, source_crop, face_only_crop, region_crop, reference_crop, reference_valid):
    if mode == "match_reference" and reference_crop is not None:
        use = (region_crop > 0) & (reference_valid > 0)
        soft = cv2.GaussianBlur(use.astype(np.float32), (0, 0), max(1.0, generated_crop.shape[0] / 96))
        soft[~(region_crop > 0)] = 0.0
        return composite(generated_crop, reference_crop, soft)
    # match_base: the source's own face, in the new skin tone.
    toned = match_colour(source_crop, generated_crop, face_only_crop, face_only_crop)
    soft = cv2.GaussianBlur((region_crop > 0).astype(np.float32), (0, 0), max(1.0, generated_crop.shape[0] / 96))
    soft[~(region_crop > 0)] = 0.0
    return composite(generated_crop, toned, soft)


def refine(engine, sampled, settings: RefineSettings = RefineSettings(), *, mode: str = c.MODES[0],
           on_step: Callable[[int, int], None] | None = None):
    """FaceRefine as a stage: a new ``pipeline.Sampled`` whose images have refined faces (the same
    value back when the photo has no face). The one place that knows what each mode means."""
    from .identity import warp_face_onto

    encoded = sampled.encoded
    face = encoded.base_face
    if face is None or sampled.refined:
        return sampled
    proc, swap = encoded.prepared.image, encoded.prepared.swap
    hard = swap.band
    if swap.labels is not None:
        region = masks_mod.class_mask(swap.labels, ("face", "hair")) & hard
        face_only = masks_mod.class_mask(swap.labels, ("face",)) & hard
        skin = masks_mod.class_mask(swap.labels, ("torso", "arms")) & hard
    else:  # an external mask: the face is the ellipse around the detected box
        x1, y1, x2, y2 = face.bbox
        ell = np.zeros(proc.shape[:2], np.uint8)
        cv2.ellipse(ell, (int((x1 + x2) / 2), int((y1 + y2) / 2)),
                    (max(1, int((x2 - x1) * 0.6)), max(1, int((y2 - y1) * 0.7))), 0, 0, 360, 1, -1)
        region = face_only = (ell > 0) & hard
        skin = None
    warp = None
    if mode == "match_reference" and encoded.ref_face is not None:
        warp = warp_face_onto(encoded.reference, encoded.ref_face.kps, face.kps, proc.shape[:2])
    timings: list = []
    with timed(engine.device, timings, "face_refine"):
        out = refine_faces(
            engine, sampled.images, source=proc, face_bbox=face.bbox, face_region=region, face_only=face_only,
            skin=skin, prompts=sampled.prompts, negative_prompt=sampled.negative_prompt, seeds=sampled.seeds,
            mode=mode, identity=encoded.identity, reference_warp=warp, settings=settings, on_step=on_step)
    return dataclasses.replace(sampled, images=tuple(out.images), refined=True, face_crops=tuple(out.crops),
                               face_masks=tuple(out.masks), timings=sampled.timings + tuple(timings))


def refine_faces(
    engine,
    images: Sequence[np.ndarray],
    *,
    source: np.ndarray,
    face_bbox: np.ndarray,
    face_region: np.ndarray,
    face_only: np.ndarray,
    skin: np.ndarray | None,
    prompts: Sequence[str],
    negative_prompt: str,
    seeds: Sequence[int],
    mode: str = "match_base",
    identity=None,
    reference_warp: tuple[np.ndarray, np.ndarray] | None = None,
    settings: RefineSettings = RefineSettings(),
    on_step: Callable[[int, int], None] | None = None,
) -> FaceRefineOutput:
    """Refine the face in every image of ``images`` (all share the source's face position).

    ``face_region`` (H, W) bool: face and hairline pixels that may be re-inpainted.
    ``face_only`` (H, W) bool: the face's skin, used to measure and match colour.
    ``skin`` (H, W) bool or None: neck/torso/arm skin of the outputs, the colour target.
    ``reference_warp``: (reference image warped onto the base keypoints, validity mask),
    both at the images' size, for ``match_reference``.
    """
    settings = settings.for_engine(engine.capabilities)
    if identity is not None and mode == "match_reference":
        identity = dataclasses.replace(identity, scale=float(identity.scale) * settings.reference_identity_boost)

    x0, y0, x1, y1 = face_crop_box(face_bbox, source.shape[:2], settings.margin)
    crop = (slice(y0, y1), slice(x0, x1))
    region_c, face_c = face_region[crop], face_only[crop]
    if not region_c.any():
        return FaceRefineOutput(images=[im.copy() for im in images])
    skin_c = skin[crop] if skin is not None else None
    ref_c = valid_c = None
    if reference_warp is not None:
        ref_c, valid_c = reference_warp[0][crop], reference_warp[1][crop]

    ws = settings.work_size
    mask_work = (resize(region_c.astype(np.float32), (ws, ws)) > 0.5).astype(np.float32)
    paste_alpha = soft_paste_mask(region_c, feather=max(2, (x1 - x0) // 24))
    out = FaceRefineOutput(images=[])
    for image, prompt, seed in zip(images, prompts, seeds):
        gen_c = image[crop]
        start = _starting_crop(mode, gen_c, source[crop], face_c, region_c, ref_c, valid_c)
        refined_work = engine.inpaint(InpaintRequest(
            image=resize(start, (ws, ws)), mask=mask_work, prompts=(prompt,), seeds=(seed,),
            steps=c.refine_scheduler_steps(settings.steps, settings.strength), strength=settings.strength,
            negative_prompt=negative_prompt, guidance_scale=settings.guidance_scale, identity=identity), on_step)[0]
        refined = resize(refined_work, gen_c.shape[:2])
        # Match the refined face to the new body's skin (or, lacking visible skin, the generated face).
        target, target_mask = gen_c, face_c
        if skin_c is not None and skin_c.sum() >= 64:
            target_mask = skin_c
        refined = match_colour(refined, target, face_c, target_mask, strength=settings.colour_match)
        pasted = image.copy()
        pasted[crop] = composite(gen_c, refined, paste_alpha)
        out.images.append(pasted)
        out.crops.append(refined_work)
        out.masks.append(paste_alpha)
    return out

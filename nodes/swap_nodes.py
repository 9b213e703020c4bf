"""The four model-swap nodes: GarmentMask -> IdentityEncode -> ModelSwapSampler -> FaceRefine.

A MODELSWAP_JOB (a list: one immutable stage value per image of the input batch) travels
along the chain; each node calls one stage function of ``pipeline.pipeline`` and passes the
new values on, so ComfyUI's cache can re-run any later node safely. Widget ranges come from
``pipeline.contract``; defaults are FASHN Model Swap's (seed 42, one image, match_reference).
"""

from __future__ import annotations

import numpy as np
from comfy_api.latest import io

from . import comfy_glue as glue
from . import widgets
from .loader_nodes import FaceAnalyzerType, GeneratorType, ParserType
from .pipeline import contract as c

JobType = io.Custom("MODELSWAP_JOB")
DEFAULT_CLASSES = "face, hair, torso, arms, hands, legs, feet"


class GarmentMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{glue.PACK}_GarmentMask",
            display_name="GarmentMask",
            category=glue.CATEGORY,
            description="Parses the model photo (FASHN's 18 classes, or the selfie segmenter's 6) and builds the "
                        "regenerate mask (skin and "
                        "hair by default). Garments, accessories and background are preserved pixel for pixel.",
            inputs=[
                io.Image.Input("image", tooltip="The fashion model photo (a batch is processed image by image)."),
                ParserType.Input("parser", optional=True,
                                 tooltip="FASHN's human parser (Human Parser Loader) or the licence-clean selfie "
                                         "segmenter (Selfie Segmenter Loader); optional when a mask is given."),
                io.String.Input("regenerate", default=DEFAULT_CLASSES,
                                tooltip="Classes to regenerate, comma separated, from: face, hair, top, dress, skirt, "
                                        "pants, belt, bag, hat, scarf, glasses, arms, hands, legs, feet, torso, "
                                        "jewelry. Remove 'hair' to keep the hair."),
                widgets.number(c.GROW),
                widgets.number(c.FEATHER),
                io.Combo.Input("output_size", options=list(c.OUTPUT_SIZE_NAMES), default="1k",
                               tooltip="1k: process and return at most 1.05 MP like FASHN's API. 2k / 4k: return at "
                                       "the input's size with its long side capped at 2048 / 4096 px. native: "
                                       "return at the input's size. Outside the regenerated area the input's own "
                                       "pixels are kept (scaled only where a cap applies)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional regenerate mask (1 = regenerate) replacing the parser's; same size "
                                      "as the image."),
                io.Combo.Input("aspect_ratio", options=list(c.ASPECT_RATIO_CHOICES), default=c.ORIGINAL_RATIO,
                               optional=True,
                               tooltip="Marketplace format (width:height). original: keep the photo's frame. A ratio "
                                       "extends the photo (never crops it): centred left-right, new rows above the "
                                       "head; the engine outpaints the new area and a seam band, every other pixel "
                                       "outside the person is kept exactly. Sides are multiples of 8, so the ratio "
                                       "is met within one 8 px step."),
            ],
            outputs=[
                JobType.Output("job", tooltip="The swap job, for IdentityEncode."),
                io.Mask.Output("regenerate_mask", tooltip="Feathered regenerate mask at the output size."),
                io.Image.Output("parse_preview", tooltip="The parse in FASHN's class colours, for checking."),
            ],
        )

    @classmethod
    def execute(cls, image, regenerate, grow, feather, output_size, parser=None, mask=None,
                aspect_ratio=c.ORIGINAL_RATIO):
        from .pipeline import masks
        from .pipeline.compositing import upscale_alpha
        from .pipeline.pipeline import MaskSettings, blend_alpha, output_hw, prepare

        images = glue.images_from_tensor(image)
        ext = [None] * len(images) if mask is None else glue.masks_from_tensor(mask, len(images))
        settings = MaskSettings(regenerate=masks.class_names(regenerate), grow=grow, feather=feather,
                                output_size=c.OUTPUT_SIZE_NAMES[output_size], aspect_ratio=aspect_ratio)
        jobs = [prepare(parser, img, settings, external_mask=m) for img, m in zip(images, ext)]
        out_masks, previews = [], []
        for job in jobs:
            size = output_hw(job.native.shape[:2], job.image.shape[:2], job.output_size)
            out_masks.append(upscale_alpha(blend_alpha(job), size))
            shown = masks.preview(job.swap.labels) if job.swap.labels is not None else masks.overlay(job.image, job.swap)
            previews.append(shown)
        notes = [note for job in jobs for note in job.notes]  # in the history, for the catalogue runner
        return io.NodeOutput(jobs, glue.tensor_from_masks(_same_size(out_masks)),
                             glue.tensor_from_images(_same_size(previews)), ui={"notes": notes} if notes else None)


class IdentityEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{glue.PACK}_IdentityEncode",
            display_name="IdentityEncode",
            category=glue.CATEGORY,
            description="Finds the model's face (box, keypoints, apparent age and sex) and, with a face reference, "
                        "the identity embedding the new person will have.",
            inputs=[
                JobType.Input("job", tooltip="From GarmentMask."),
                FaceAnalyzerType.Input("face_analyzer", tooltip="From the InsightFace Loader."),
                io.Image.Input("face_reference", optional=True,
                               tooltip="Optional photo of the face the new person should have (one clear face)."),
                widgets.number(c.IDENTITY_SCALE),
            ],
            outputs=[
                JobType.Output("encoded_job", display_name="job", tooltip="The swap job, for ModelSwapSampler."),
                io.Image.Output("faces", tooltip="Aligned 112x112 crops: the model's face, then the reference's."),
            ],
        )

    @classmethod
    def execute(cls, job, face_analyzer, identity_scale, face_reference=None):
        from .pipeline.pipeline import encode

        refs = [None] if face_reference is None else glue.images_from_tensor(face_reference)
        out, crops = [], []
        for i, prepared in enumerate(job):
            encoded = encode(face_analyzer, prepared, refs[min(i, len(refs) - 1)], identity_scale=identity_scale)
            crops += [f.aligned for f in (encoded.base_face, encoded.ref_face) if f is not None]
            out.append(encoded)
        if not crops:
            crops = [np.zeros((112, 112, 3), np.uint8)]
        return io.NodeOutput(out, glue.tensor_from_images(crops))


class ModelSwapSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from .pipeline.prompting import NEGATIVE_PROMPT, PERSONS

        return io.Schema(
            node_id=f"{glue.PACK}_Sampler",
            display_name="ModelSwapSampler",
            category=glue.CATEGORY,
            description="Regenerates the person (skin, hair, face) with the loaded engine, all images in one batch. "
                        "Image i uses seed + i. An empty prompt draws a new identity from the seed. Face and hair are "
                        "regenerated fully, body skin at body_strength (shape and shading kept, tone changed).",
            inputs=[
                GeneratorType.Input("generator", tooltip="From a Model Swap engine loader (FLUX.2 klein, SDXL Pipeline or Engine Loader)."),
                JobType.Input("job", tooltip="From IdentityEncode."),
                io.String.Input("prompt", default="", multiline=True,
                                tooltip="Who the new person is. Empty: automatic (apparent sex and age kept, skin "
                                        "tone, ethnicity, hair and age band drawn from the seed)."),
                widgets.number(c.SEED),
                widgets.number(c.NUM_IMAGES),
                widgets.number(c.STEPS),
                widgets.number(c.GUIDANCE),
                widgets.number(c.STRENGTH),
                io.String.Input("negative_prompt", default=NEGATIVE_PROMPT, multiline=True,
                                tooltip="What to avoid."),
                io.Image.Input("control_image", optional=True,
                               tooltip="Pose/hand control image; required when the pipeline has a ControlNet."),
                widgets.number(c.CONTROLNET_SCALE),
                widgets.number(c.BODY_STRENGTH, optional=True),
                io.Combo.Input("person", options=list(PERSONS), default="auto", optional=True,
                               tooltip="Who the automatic prompt describes: auto = the sex face analysis reports "
                                       "(a neutral 'person' when the analyser has no age/sex model, e.g. OpenCV "
                                       "YuNet/SFace); woman or man to say it yourself. Ignored with a prompt."),
            ],
            outputs=[
                JobType.Output("sampled_job", display_name="job", tooltip="The swap job, for FaceRefine."),
                io.Image.Output("images", tooltip="The swapped images before face refinement, composited exactly."),
            ],
        )

    @classmethod
    def execute(cls, generator, job, prompt, seed, num_images, steps, guidance_scale, strength, negative_prompt,
                controlnet_scale, control_image=None, body_strength=c.BODY_STRENGTH.default, person="auto"):
        steps = generator.capabilities.settings(steps=steps).steps
        from .pipeline.pipeline import GenerateSettings, check_engine_fits, finish, generate

        controls = [None] if control_image is None else glue.images_from_tensor(control_image)
        settings = GenerateSettings(prompt=prompt, seed=seed, num_images=num_images, steps=steps,
                                    guidance_scale=guidance_scale, strength=strength, negative_prompt=negative_prompt,
                                    controlnet_scale=controlnet_scale, body_strength=body_strength, person=person)
        for i, encoded in enumerate(job):  # refuse what the engine cannot do before any sampling
            check_engine_fits(generator, encoded, controls[min(i, len(controls) - 1)])
        out, images = [], []
        for i, encoded in enumerate(job):
            sampled = generate(generator, encoded, settings, control_image=controls[min(i, len(controls) - 1)],
                               on_step=glue.step_callback(steps))
            images += finish(sampled).images
            out.append(sampled)
        return io.NodeOutput(out, glue.tensor_from_images(images))


class FaceRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{glue.PACK}_FaceRefine",
            display_name="FaceRefine",
            category=glue.CATEGORY,
            description="Re-inpaints each output's face at the engine's working size with the identity, colour-matched "
                        "to the neck and pasted without seams; then composites exactly onto the input.",
            inputs=[
                GeneratorType.Input("generator", tooltip="From a Model Swap engine loader (FLUX.2 klein, SDXL Pipeline or Engine Loader)."),
                JobType.Input("job", tooltip="From ModelSwapSampler."),
                io.Combo.Input("face_reference_mode", options=list(c.MODES),
                               default="match_reference",
                               tooltip="match_reference: the reference face's features and expression dominate. "
                                       "match_base: keep the source's head angle, gaze and expression."),
                io.Boolean.Input("enabled", default=True, tooltip="Off: pass the sampler's images through."),
                widgets.number(c.REFINE_STRENGTH),
                widgets.number(c.REFINE_STEPS),
                widgets.number(c.REFINE_WORK_SIZE),
                widgets.number(c.REFINE_MARGIN),
            ],
            outputs=[
                io.Image.Output("images", tooltip="The final images: garments and background identical to the input."),
                io.Image.Output("face_crops", tooltip="The refined face crops at working size."),
                io.Mask.Output("face_masks", tooltip="The paste masks of the face crops."),
            ],
        )

    @classmethod
    def validate_inputs(cls, work_size):
        """ComfyUI checks widget min/max when a graph is queued but not the step; work_size must also be a
        multiple of 16 (an API-format graph can carry any value). Refused here, at queue time, in the words
        the runner and the Python checks use."""
        return widgets.problems(f"{glue.PACK}_FaceRefine", work_size=work_size)

    @classmethod
    def execute(cls, generator, job, face_reference_mode, enabled, strength, steps, work_size, margin):
        from .pipeline.face_refine import RefineSettings, refine
        from .pipeline.pipeline import finish

        settings = RefineSettings(strength=strength, steps=steps, work_size=work_size, margin=margin)
        images, crops, crop_masks = [], [], []
        for sampled in job:
            if enabled:
                sampled = refine(generator, sampled, settings, mode=face_reference_mode,
                                 on_step=glue.step_callback(settings.for_engine(generator.capabilities).steps
                                                            * len(sampled.images)))
            result = finish(sampled)
            images += result.images
            crops += result.face_crops
            crop_masks += result.face_masks
        if not crops:  # no face anywhere: ComfyUI outputs cannot be empty
            crops, crop_masks = [np.zeros((64, 64, 3), np.uint8)], [np.zeros((64, 64), np.float32)]
        return io.NodeOutput(glue.tensor_from_images(images), glue.tensor_from_images(_same_size(crops)),
                             glue.tensor_from_masks(_same_size(crop_masks)))


def _same_size(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """ComfyUI batches share one size: pad smaller items (bottom/right, zeros) to the largest."""
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    out = []
    for a in arrays:
        pad = ((0, h - a.shape[0]), (0, w - a.shape[1])) + ((0, 0),) * (a.ndim - 2)
        out.append(np.pad(a, pad) if pad[0][1] or pad[1][1] else a)
    return out


SWAP_NODES = [GarmentMask, IdentityEncode, ModelSwapSampler, FaceRefine]

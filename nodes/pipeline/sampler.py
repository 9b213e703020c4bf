"""The batched inpainting sampler: one diffusers call makes every requested image.

:func:`inpaint` validates everything first (:func:`check_inputs`), then runs
``engine.pipe`` once with ``len(seeds)`` images, image ``i`` drawn from a CPU
``torch.Generator`` seeded with ``seeds[i]`` (the same seeds give bit-identical
results on the same device). Works with a 9-channel inpainting UNet and with a
4-channel base UNet (the pipeline then blends the kept area back into the
latents each step), with or without ControlNet and IP-Adapter FaceID.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import ip_adapter
from .contract import SEED_MAX
from .errors import ImageLoadError, InputValidationError
from .images import SIDE_MULTIPLE, as_mask, as_rgb_uint8

MAX_IMAGES = 4
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MAX_CONTROLNET_SCALE = 2.0


@dataclass
class CheckedInputs:
    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # float32 (H, W) in [0, 1]
    prompts: list[str]  # one per image
    negative_prompt: str
    seeds: list[int]
    control_image: np.ndarray | None


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) \
        and math.isfinite(float(value))


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, (bool, np.bool_)):
        raise InputValidationError(f"seeds is the number {seeds}; pass a list of 1 to {MAX_IMAGES} seeds, e.g. [{seeds}].")
    if not isinstance(seeds, (list, tuple)):
        raise InputValidationError(f"seeds is a {type(seeds).__name__}; pass a list of 1 to {MAX_IMAGES} integer seeds.")
    if not 1 <= len(seeds) <= MAX_IMAGES:
        raise InputValidationError(
            f"{len(seeds)} seeds were given; one image is made per seed and a batch holds 1 to {MAX_IMAGES}: "
            f"pass 1 to {MAX_IMAGES} seeds."
        )
    out = []
    for s in seeds:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise InputValidationError(f"The seed {s!r} is not an integer; seeds are integers from 0 to {SEED_MAX}.")
        if not 0 <= int(s) <= SEED_MAX:
            raise InputValidationError(f"The seed {int(s)} is out of range; seeds are integers from 0 to {SEED_MAX}.")
        out.append(int(s))
    return out


def _check_prompts(prompt, n: int) -> list[str]:
    if isinstance(prompt, str):
        return [prompt] * n
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        if len(prompt) != n:
            raise InputValidationError(
                f"{len(prompt)} prompts were given for {n} seeds; pass one prompt, or one per seed."
            )
        return list(prompt)
    raise InputValidationError(f"prompt is a {type(prompt).__name__}; pass a string (or one string per seed).")


def check_inputs(engine, image, mask, *, prompt, negative_prompt="", seeds, steps=20, strength=1.0,
                 guidance_scale=5.0, identity=None, control_image=None, controlnet_scale=0.8,
                 on_step=None) -> CheckedInputs:
    """Validate every argument of :func:`inpaint`; raise an error naming the problem and the fix."""
    if engine is None or getattr(engine, "pipe", None) is None:
        raise InputValidationError("No generation engine is loaded: load the SDXL inpainting model first.")
    if image is None:
        raise ImageLoadError("No image was given: pass the image to inpaint as an (H, W, 3) uint8 array.")
    img = as_rgb_uint8(image, "image to inpaint")
    h, w = img.shape[:2]
    if h % SIDE_MULTIPLE or w % SIDE_MULTIPLE:
        ph, pw = -(-h // SIDE_MULTIPLE) * SIDE_MULTIPLE, -(-w // SIDE_MULTIPLE) * SIDE_MULTIPLE
        raise InputValidationError(
            f"The image to inpaint is {w}x{h}; both sides must be multiples of {SIDE_MULTIPLE} (SDXL's VAE): "
            f"pad it to {pw}x{ph} (images.pad_to_multiple) or resize it, and crop the result back."
        )
    if mask is None:
        raise InputValidationError("No mask was given: pass a float32 (H, W) mask in [0, 1], 1 = regenerate.")
    m = as_mask(mask, (h, w), "inpainting mask")
    seed_list = _check_seeds(seeds)
    prompts = _check_prompts(prompt, len(seed_list))
    if negative_prompt is None:
        negative_prompt = ""
    if not isinstance(negative_prompt, str):
        raise InputValidationError(f"negative_prompt is a {type(negative_prompt).__name__}; pass a string.")
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) or not 1 <= int(steps) <= MAX_STEPS:
        raise InputValidationError(f"steps is {steps!r}; give an integer from 1 to {MAX_STEPS}.")
    if not _is_number(strength) or not 0.0 < float(strength) <= 1.0:
        raise InputValidationError(f"strength is {strength!r}; give a number above 0 and at most 1 (1 = regenerate fully).")
    if int(int(steps) * float(strength)) < 1:
        raise InputValidationError(
            f"steps x strength = {int(steps)} x {float(strength)} leaves no denoising step: raise steps or strength "
            "so that their product is at least 1."
        )
    if not _is_number(guidance_scale) or not 0.0 <= float(guidance_scale) <= MAX_GUIDANCE:
        raise InputValidationError(f"guidance_scale is {guidance_scale!r}; give a number from 0 to {MAX_GUIDANCE}.")
    if not _is_number(controlnet_scale) or not 0.0 <= float(controlnet_scale) <= MAX_CONTROLNET_SCALE:
        raise InputValidationError(
            f"controlnet_scale is {controlnet_scale!r}; give a number from 0 to {MAX_CONTROLNET_SCALE}."
        )
    if on_step is not None and not callable(on_step):
        raise InputValidationError(f"on_step is a {type(on_step).__name__}; pass a function (step, total) or None.")
    ip_adapter.check_identity(engine, identity)

    control = None
    if getattr(engine, "has_controlnet", False):
        if control_image is None:
            raise InputValidationError(
                "The engine has a ControlNet, so a control image is required: pass control_image (H, W, 3) uint8 "
                "of the image's size (e.g. an OpenPose render), or load the model without ControlNet."
            )
        control = as_rgb_uint8(control_image, "control image")
        if control.shape[:2] != (h, w):
            raise InputValidationError(
                f"The control image is {control.shape[1]}x{control.shape[0]} but the image is {w}x{h}; "
                "resize the control image to the image's size."
            )
    elif control_image is not None:
        raise InputValidationError(
            "A control image was given but the engine has no ControlNet: load a ControlNet with the model "
            "(models/controlnet), or leave control_image out."
        )
    return CheckedInputs(image=img, mask=m, prompts=prompts, negative_prompt=negative_prompt, seeds=seed_list,
                         control_image=control)


def _to_tensor(image: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def inpaint(engine, image, mask, *, prompt, negative_prompt: str = "", seeds: Sequence[int], steps: int = 20,
            strength: float = 1.0, guidance_scale: float = 5.0, identity=None, control_image=None,
            controlnet_scale: float = 0.8, on_step: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Inpaint ``image`` where ``mask`` is 1; one (H, W, 3) uint8 result per seed, in seed order.

    image: uint8 (H, W, 3), H and W multiples of 8; the pipeline works at this size.
    mask: float32 (H, W) in [0, 1], 1 = regenerate (diffusers binarises it at 0.5).
    prompt: a string, or one string per seed. negative_prompt: "" means SDXL's
        zeroed negative conditioning (force_zeros_for_empty_prompt).
    seeds: 1 to 4 integers in [0, 2**32 - 1]; all images are made in ONE batch, image
        i from ``torch.Generator("cpu").manual_seed(seeds[i])``.
    identity: an ip_adapter.IdentityCondition (needs FaceID loaded on the engine).
    control_image: uint8 (H, W, 3), required exactly when ``engine.has_controlnet``.
    on_step(step_index, total_steps): called after each denoising step (step_index
        from 0); an exception raised in it (e.g. Cancel) stops sampling and propagates.
    """
    import torch

    checked = check_inputs(
        engine, image, mask, prompt=prompt, negative_prompt=negative_prompt, seeds=seeds, steps=steps,
        strength=strength, guidance_scale=guidance_scale, identity=identity, control_image=control_image,
        controlnet_scale=controlnet_scale, on_step=on_step,
    )
    pipe = engine.pipe
    n = len(checked.seeds)
    h, w = checked.image.shape[:2]
    do_cfg = float(guidance_scale) > 1.0 and getattr(pipe.unet.config, "time_cond_proj_dim", None) is None

    kwargs = dict(
        image=_to_tensor(checked.image),
        mask_image=torch.from_numpy(np.ascontiguousarray(checked.mask, dtype=np.float32))[None, None],
        height=h,
        width=w,
        strength=float(strength),
        num_inference_steps=int(steps),
        guidance_scale=float(guidance_scale),
        negative_prompt=checked.negative_prompt or None,
        generator=[torch.Generator(device="cpu").manual_seed(s) for s in checked.seeds],
        output_type="np",
    )
    if len(set(checked.prompts)) == 1:
        kwargs.update(prompt=checked.prompts[0], num_images_per_prompt=n)
    else:
        kwargs.update(prompt=checked.prompts, num_images_per_prompt=1)
    kwargs.update(ip_adapter.prepare_identity(engine, identity, n, do_cfg))
    if checked.control_image is not None:
        kwargs.update(control_image=_to_tensor(checked.control_image),
                      controlnet_conditioning_scale=float(controlnet_scale))

    if on_step is not None:
        def _callback(pipeline, step_index, timestep, callback_kwargs):
            on_step(int(step_index), int(getattr(pipeline, "num_timesteps", 0) or steps))
            return callback_kwargs

        kwargs["callback_on_step_end"] = _callback

    result = pipe(**kwargs)
    images = np.asarray(result.images)
    if images.ndim != 4 or images.shape[0] != n:
        raise RuntimeError(f"The pipeline returned images of shape {images.shape}, expected ({n}, {h}, {w}, 3).")
    out = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(im) for im in out]

"""One batched SDXL inpaint call: seeds that keep their promise, and per-pixel strength.

``inpaint`` runs the engine's diffusers pipeline once for every seed (a CPU generator per
image). Two things diffusers does not do on its own are added here: the image is VAE-encoded
without sampling (so image i of a batch is the single run with seeds[i] up to float rounding), and a soft mask
becomes per-pixel strength through the step callback (differential diffusion, see base.py).
"""

from __future__ import annotations

import numpy as np

from .. import placement
from ..contract import steps_run
from . import common, diffusers_compat
from .base import InpaintRequest, StepCallback, is_binary, strength_thresholds


def inpaint(engine, req: InpaintRequest, on_step: StepCallback | None = None) -> list[np.ndarray]:
    import torch

    pipe, n = engine.pipe, len(req.seeds)
    encoder = engine.faceid.image_encoder if engine.faceid is not None else None
    placement.use_pipeline(pipe, engine.device, engine.offload, image_encoder=encoder)  # a memory host loads them
    h, w = req.image.shape[:2]
    steps, total = steps_run(req.steps, req.strength)
    binary = (req.mask > 0).astype(np.float32)
    do_cfg = req.guidance_scale > 1.0 and pipe.unet.config.time_cond_proj_dim is None
    kwargs = dict(
        image=torch.from_numpy(np.ascontiguousarray(req.image)).permute(2, 0, 1)[None].float() / 255.0,
        mask_image=torch.from_numpy(binary)[None, None], height=h, width=w, strength=float(req.strength),
        num_inference_steps=steps, guidance_scale=float(req.guidance_scale),
        negative_prompt=req.negative_prompt or None, generator=common.generators(req.seeds), output_type="np")
    if len(set(req.prompts)) == 1:
        kwargs.update(prompt=req.prompts[0], num_images_per_prompt=n)
    else:
        kwargs.update(prompt=list(req.prompts), num_images_per_prompt=1)
    if engine.faceid is not None:
        from . import faceid

        kwargs.update(faceid.identity_kwargs(pipe, engine.faceid, req.identity, n, do_cfg))
    if req.control_image is not None:
        kwargs.update(control_image=torch.from_numpy(np.ascontiguousarray(req.control_image)).permute(2, 0, 1)[None]
                      .float() / 255.0, controlnet_conditioning_scale=float(req.controlnet_scale))
    blend = None if is_binary(req.mask) else _differential(pipe, req, kwargs["image"])

    def callback(pipeline, i, t, tensors):
        if blend is not None:
            tensors["latents"] = blend(pipeline, i, tensors["latents"])
        if on_step is not None:
            on_step(int(i), total)
        return tensors

    kwargs["callback_on_step_end"] = callback
    with torch.inference_mode(), diffusers_compat.mode_only_encode(pipe.vae):
        images = pipe(**kwargs).images
    return common.to_uint8(images)


def _differential(pipe, req: InpaintRequest, pixels):
    """A step callback that holds each latent pixel at the noised source until the schedule reaches
    its mask value (see base.py): per-pixel strength for the soft mask."""
    import cv2
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    vae, scale = pipe.vae, pipe.vae_scale_factor
    lh, lw = req.image.shape[0] // scale, req.image.shape[1] // scale
    with torch.inference_mode():
        dtype = vae.dtype
        upcast = dtype == torch.float16 and vae.config.force_upcast  # SDXL's VAE overflows in fp16
        if upcast:
            vae.to(torch.float32)
        try:
            x = (pixels * 2.0 - 1.0).to(device=diffusers_compat.execution_device(pipe), dtype=torch.float32 if upcast else dtype)
            source = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
        finally:
            if upcast:
                vae.to(dtype)
    noise = torch.cat([randn_tensor((1, source.shape[1], lh, lw), generator=g, dtype=torch.float32)
                       for g in common.generators(req.seeds)])
    mask = torch.from_numpy(cv2.resize(req.mask, (lw, lh), interpolation=cv2.INTER_AREA))[None, None]
    run = steps_run(req.steps, req.strength)[1]
    thresholds = strength_thresholds(run)

    def blend(pipeline, i: int, latents):
        if i + 1 >= run:
            return latents
        sched = pipeline.scheduler
        t_next = sched.timesteps[len(sched.timesteps) - run + i + 1]
        held = sched.add_noise(source.to(latents), noise.to(latents), t_next.reshape(1))
        keep = (mask < thresholds[i + 1]).to(latents.device)
        return torch.where(keep, held, latents)

    return blend

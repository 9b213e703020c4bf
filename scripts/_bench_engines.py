"""The benchmark's generation groups: ``engine``, ``batch`` and ``modes`` (see benchmark.py).

* ``engine``: per engine, the pack's generate stage (``pipeline.generate``: prompt building, soft
  mask, padding, ``engine.inpaint`` with its deterministic encode and differential-diffusion
  callback) against the BARE diffusers call of the same pipeline object at the same size, steps,
  guidance and batch (binary mask, prompts as text for SDXL, cached prompt embeddings for klein,
  whose pipeline holds no text encoder); the ratio is the pack's overhead. The whole swap
  (parse, faces, generate, face refine, composite) follows, per stage.
* ``batch``: the pack's generate stage for 4 images against 1.
* ``modes``: the whole swap in each generation mode of ``the engine's presets (engines/base.py Capabilities.presets)``.

Models: on CPU the tests' tiny SDXL and tiny klein (diffusers folders built in the temporary
folder, loaded through the engines' loaders); on CUDA the full-size architectures with random
weights: SDXL in fp16 from the shipped configs, klein 4B in bf16 and, on GPUs with FP8
(compute capability >= 8.9), with its transformer stored in FP8. The photo is the tests' painted
fashion model with a colour-keyed parser, so the mask covers face, hair, neck, arms and hands and
is soft where the body keeps 70 % strength; the face analyser finds the painted face.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from _bench_core import Case, logged, stage_medians

ENGINES = ("sdxl", "flux2_klein")


def _cuda(ctx) -> bool:
    return ctx.device == "cuda"


def timed_run(ctx, fn: Callable[[], Any], peaks: dict, key: str) -> Callable[[], Any]:
    """``fn`` with the device finished inside the timer and, on CUDA, its peak memory recorded."""
    if not _cuda(ctx):
        return fn
    import torch

    def run():
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peaks[key] = max(peaks.get(key, 0.0), torch.cuda.max_memory_allocated() / 2**30)
        return out

    return run


def full_size_sdxl_folder(folder: Path, dtype) -> Path:
    """Full-size SDXL inpainting architecture from the shipped configs, random weights (CUDA)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from comfyui_model_swap.nodes.pipeline.engines import sdxl

    cfg = sdxl.CONFIG_DIR
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"), in_channels=9).to(dtype)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae"))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder")).to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(cfg / "text_encoder_2")).to(dtype)
    for m in (unet, vae, te1, te2):
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(0.1)  # keep random activations finite in fp16
    sched = EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(cfg / "scheduler"))
    tok = CLIPTokenizer.from_pretrained(cfg / "tokenizer", local_files_only=True)
    tok2 = CLIPTokenizer.from_pretrained(cfg / "tokenizer_2", local_files_only=True)
    pipe = StableDiffusionXLInpaintPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                            tokenizer_2=tok2, unet=unet, scheduler=sched)
    out = folder / "diffusers" / "stable-diffusion-xl-1.0-inpainting-0.1"
    pipe.save_pretrained(out, safe_serialization=True, variant="fp16" if dtype == torch.float16 else None)
    del pipe, unet, vae, te1, te2
    torch.cuda.empty_cache()
    return out


def engine_names(ctx) -> list[str]:
    """The engines to time: ``--engine``, plus klein in FP8 on CUDA GPUs that have FP8."""
    chosen = list(ENGINES) if ctx.args.engine == "all" else [ctx.args.engine]
    if _cuda(ctx) and "flux2_klein" in chosen:
        import torch

        if torch.cuda.get_device_capability() >= (8, 9):
            chosen.insert(chosen.index("flux2_klein") + 1, "flux2_klein fp8")
    return chosen


def engine(ctx, name: str):
    """The loaded engine ``name`` (built once per run); what it is goes into ``ctx.meta``."""

    def build():
        import torch

        from comfyui_model_swap.nodes.pipeline.engines import flux2_klein, sdxl

        start = time.perf_counter()
        if name == "sdxl":
            if _cuda(ctx):
                folder = full_size_sdxl_folder(ctx.root / "sdxl-full", torch.float16)
                what = "full-size SDXL inpainting architecture, fp16, random weights"
            else:
                import tiny_sdxl

                folder = tiny_sdxl.build_sdxl_inpaint_folder(ctx.root / "sdxl-tiny")
                what = "tiny SDXL inpainting architecture (tests/tiny_sdxl.py)"
            eng = sdxl.load(sdxl.Files(model=folder), device=ctx.device,
                            dtype=torch.float16 if _cuda(ctx) else None)
        elif _cuda(ctx):
            import tiny_klein

            fp8 = name.endswith("fp8")
            eng = tiny_klein.build_random_klein("cuda", torch.bfloat16, fp8=fp8)
            what = f"FLUX.2 klein 4B architecture, bf16{' + FP8 transformer storage' if fp8 else ''}, random weights"
        else:
            import tiny_klein

            paths = tiny_klein.build(ctx.root / "klein-tiny")
            eng = flux2_klein.load(flux2_klein.Files(folder=paths["folder"]), device="cpu")
            what = "tiny FLUX.2 klein architecture (tests/tiny_klein.py)"
        ctx.meta.setdefault("engines", {})[name] = f"{what}; built and loaded in {time.perf_counter() - start:.1f} s"
        return eng

    return ctx.once(f"engine:{name}", build)


def mode_table(name: str) -> dict:
    from comfyui_model_swap.nodes.pipeline.engines import capabilities

    return capabilities("flux2_klein" if name.startswith("flux2_klein") else name).presets


def gen_inputs(ctx):
    """The painted fashion photo at the generation size, its colour-keyed parser and a face analyser
    that finds its painted face: (image, parser, analyzer)."""

    def build():
        import tiny_insightface
        import tiny_models
        import tiny_parser

        from comfyui_model_swap.nodes.pipeline.identity import FaceAnalyzer
        from comfyui_model_swap.nodes.pipeline.parsing import HumanParser

        side = ctx.args.gen_size
        image = tiny_models.fashion_photo(side)
        parser = HumanParser.load(tiny_parser.build_colour_keyed_parser(ctx.root / "gen" / "keyed-parser"),
                                  device=ctx.device)
        face = tiny_insightface.place_face((0.35 * side, 0.13 * side, 0.52 * side, 0.33 * side), (side, side))
        root = ctx.root / "gen" / "faces"
        folder = tiny_insightface.build_insightface_pack(root, "antelopev2", faces=(face,))
        analyzer = FaceAnalyzer.load(folder.parents[1], name="antelopev2", device=ctx.device)
        return image, parser, analyzer

    return ctx.once("gen_inputs", build)


def encoded(ctx):
    """The prepared and encoded photo (parse and face analysis done once, outside the timers)."""
    from comfyui_model_swap.nodes.pipeline import pipeline

    def build():
        image, parser, analyzer = gen_inputs(ctx)
        return pipeline.encode(analyzer, pipeline.prepare(parser, image))

    return ctx.once("encoded", build)


def settings(ctx, name: str, num_images: int = 1, mode: str = "balanced"):
    from comfyui_model_swap.nodes.pipeline.pipeline import GenerateSettings

    steps = ctx.args.steps or mode_table(name)[mode].steps
    return GenerateSettings(num_images=num_images, steps=steps)


def bare_call(ctx, name: str, num_images: int) -> Callable[[], Any]:
    """The diffusers pipeline of ``name``'s engine called directly, as a plain script would, with
    what the pack's generate stage hands it: size, steps, guidance, prompts, seeds, batch."""
    import numpy as np
    import torch
    from PIL import Image

    from comfyui_model_swap.nodes.pipeline import pipeline

    eng, enc = engine(ctx, name), encoded(ctx)
    gen = settings(ctx, name, num_images)
    sampled = pipeline.generate(eng, enc, gen)  # the prompts the pack builds, so both sides get the same
    multiple = eng.capabilities.side_multiple
    padded, _ = pipeline.pad_to_multiple(enc.prepared.image, multiple)
    band = pipeline.pad_to_multiple(enc.prepared.swap.band.astype(np.float32), multiple)[0]
    image, mask = Image.fromarray(padded), Image.fromarray(((band > 0) * 255).astype(np.uint8), mode="L")
    h, w = padded.shape[:2]
    seeds = sampled.seeds

    def generators():
        return [torch.Generator("cpu").manual_seed(s) for s in seeds]

    if name == "sdxl":
        prompt = sampled.prompts[0] if len(set(sampled.prompts)) == 1 else list(sampled.prompts)
        per_prompt = num_images if isinstance(prompt, str) else 1

        def call():
            with torch.inference_mode():
                return eng.pipe(prompt=prompt, negative_prompt=gen.negative_prompt, image=image, mask_image=mask,
                                height=h, width=w, strength=1.0, num_inference_steps=gen.steps,
                                guidance_scale=gen.guidance_scale, num_images_per_prompt=per_prompt,
                                generator=generators(), output_type="np").images

        return call
    embeds = eng.prompt_embeds(tuple(sampled.prompts))  # klein's pipeline holds no text encoder

    def call():
        with torch.inference_mode():
            return eng.pipe(image=image, mask_image=mask, prompt_embeds=embeds, height=h, width=w, strength=1.0,
                            num_inference_steps=gen.steps, guidance_scale=1.0, generator=generators(),
                            output_type="np").images

    return call


def swap_options(ctx, name: str, mode: str, num_images: int = 1):
    from comfyui_model_swap.nodes.pipeline.face_refine import RefineSettings
    from comfyui_model_swap.nodes.pipeline.pipeline import SwapOptions

    m = mode_table(name)[mode]
    work = m.refine_work_size
    if not _cuda(ctx):  # tiny models on CPU: the work size scaled like the photo (1024 px -> gen size)
        work = max(64, round(work * ctx.args.gen_size / 1024 / 16) * 16)
    steps = ctx.args.steps  # --steps caps the face refine's steps too
    return SwapOptions(num_images=num_images, steps=steps or m.steps,
                       refine=RefineSettings(work_size=work, steps=min(steps, m.refine_steps) if steps
                                             else m.refine_steps))


def stage_summary(ctx, log: list, runs: int, peaks: dict, key: str, what: str):
    def summary(result):
        medians = stage_medians(log, runs)
        parts = ", ".join(f"{k} {v:.3f}" for k, v in medians.items())
        extra = {"stages_s": medians, "face_found": result.face_found}
        note = f"{what}; stage medians s: {parts}"
        if key in peaks:
            extra["peak_vram_gib"] = peaks[key]
            note += f"; peak VRAM {peaks[key]:.1f} GiB"
        return note, extra

    return summary


def peak_summary(peaks: dict, key: str, what: str):
    def summary(_):
        if key not in peaks:
            return what, {}
        return f"{what}; peak VRAM {peaks[key]:.1f} GiB", {"peak_vram_gib": peaks[key]}

    return summary


def whole_swap(ctx, name: str, mode: str, peaks: dict, key: str, runs: int):
    from comfyui_model_swap.nodes.pipeline.pipeline import ModelSwapPipeline

    image, parser, analyzer = gen_inputs(ctx)
    pipe = ModelSwapPipeline(engine(ctx, name), parser=parser, analyzer=analyzer)
    options = swap_options(ctx, name, mode)
    log: list = []
    run = logged(timed_run(ctx, lambda: pipe.run(image, options), peaks, key), log)
    what = (f"{options.steps} steps, refine {options.refine.steps} steps at {options.refine.work_size} px, "
            f"{image.shape[1]}x{image.shape[0]}")
    return run, stage_summary(ctx, log, runs, peaks, key, what)


def engine_group(ctx) -> list:
    """Per engine: bare diffusers call, the pack's generate stage (overhead ratio), the whole swap."""
    from comfyui_model_swap.nodes.pipeline import pipeline

    cases, peaks = [], {}
    for name in engine_names(ctx):
        eng, enc, gen = engine(ctx, name), encoded(ctx), settings(ctx, name)
        bare = f"bare diffusers call ({name})"
        what = f"{gen.steps} steps, 1 image, {enc.prepared.image.shape[1]}x{enc.prepared.image.shape[0]}"
        cases.append(Case("engine", bare, timed_run(ctx, bare_call(ctx, name, 1), peaks, bare),
                          summary=peak_summary(peaks, bare, what)))
        key = f"pack generate ({name})"
        cases.append(Case("engine", key, timed_run(ctx, lambda e=eng, g=gen: pipeline.generate(e, enc, g), peaks, key),
                          baseline=bare, target=1.10, summary=peak_summary(peaks, key, what)))
        key = f"whole swap, balanced ({name})"
        run, summary = whole_swap(ctx, name, "balanced", peaks, key, ctx.args.runs)
        cases.append(Case("engine", key, run, baseline=bare, summary=summary))
    return cases


def batch_group(ctx) -> list:
    """The pack's generate stage: 4 images in one batch against 1."""
    from comfyui_model_swap.nodes.pipeline import pipeline

    cases, peaks = [], {}
    enc = encoded(ctx)
    for name in engine_names(ctx):
        eng = engine(ctx, name)
        one = f"1 image ({name})"
        for n, key in ((1, one), (4, f"4 images ({name})")):
            gen = settings(ctx, name, n)
            cases.append(Case("batch", key, timed_run(ctx, lambda e=eng, g=gen: pipeline.generate(e, enc, g), peaks, key),
                              baseline=None if n == 1 else one, target=None if n == 1 else 2.5,
                              summary=peak_summary(peaks, key, f"generate stage, {gen.steps} steps")))
    return cases


def modes_group(ctx) -> list:
    """The whole swap in fast / balanced / quality (steps, refine steps, refine work size)."""
    cases, peaks = [], {}
    for name in engine_names(ctx):
        fast = f"fast ({name})"
        for mode in ("fast", "balanced", "quality"):
            key = f"{mode} ({name})"
            run, summary = whole_swap(ctx, name, mode, peaks, key, ctx.args.swap_runs)
            cases.append(Case("modes", key, run, baseline=None if mode == "fast" else fast, summary=summary))
    return cases

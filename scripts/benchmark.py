"""Benchmark the model-swap pipeline: per-stage time and peak memory for a 1 MP input.

    python scripts/benchmark.py                 # CPU: tiny SDXL-architecture diffusion models,
                                                #      full-size SegFormer-B4 parser (random weights)
    python scripts/benchmark.py --device cuda   # GPU: full-size SDXL architecture (random weights, fp16)

Random weights give real timings (the arithmetic is the same as with trained
weights) but meaningless pictures. Models are built in a temporary folder with
the published layouts and loaded through the pack's real loaders. The first
run is a warm-up; the table reports the mean of the timed runs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _import_pack():
    sys.path.insert(0, str(ROOT / "scripts"))
    import _pack

    _pack.import_pack()


def _full_size_sdxl_folder(folder: Path, dtype) -> Path:
    """Full-size SDXL inpainting architecture from the shipped configs, random weights."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    import tiny_sdxl
    from comfyui_model_swap.nodes.pipeline import sdxl_loader

    cfg = sdxl_loader.prepare_config_dir(9)
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet")).to(dtype)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae"))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder")).to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(cfg / "text_encoder_2")).to(dtype)
    for m in (unet, vae, te1, te2):
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(0.1)  # keep random activations finite in fp16
    sched = EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(cfg / "scheduler"))
    tiny_sdxl.write_tokenizer(folder / "tok")
    tok = CLIPTokenizer.from_pretrained(folder / "tok", local_files_only=True)
    tiny_sdxl.write_tokenizer(folder / "tok2", pad_token="!")
    tok2 = CLIPTokenizer.from_pretrained(folder / "tok2", local_files_only=True)
    pipe = StableDiffusionXLInpaintPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                            tokenizer_2=tok2, unet=unet, scheduler=sched)
    out = folder / "diffusers" / "stable-diffusion-xl-1.0-inpainting-0.1"
    pipe.save_pretrained(out, safe_serialization=True, variant="fp16" if dtype == torch.float16 else None)
    del pipe, unet, vae, te1, te2
    torch.cuda.empty_cache()
    return out


def build_models(root: Path, device: str):
    import torch

    import tiny_insightface
    import tiny_parser
    import tiny_sdxl

    tiny_parser.build_human_parser(root / "human_parsing" / "fashn-human-parser",
                                   config=tiny_parser.build_full_size_parser_config())
    tiny_insightface.build_insightface_pack(root, "antelopev2", faces=(tiny_insightface.place_face(
        (440, 180, 600, 380), image_size=(1024, 1024)),))
    if device == "cuda":
        _full_size_sdxl_folder(root, torch.float16)
    else:
        tiny_sdxl.build_sdxl_inpaint_folder(root / "diffusers" / "stable-diffusion-xl-1.0-inpainting-0.1")


def test_image(size: int = 1024):
    import numpy as np
    from skimage import data

    import cv2

    img = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_LANCZOS4)
    return np.ascontiguousarray(img)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: 2 on CPU, 30 on CUDA)")
    ap.add_argument("--num-images", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2, help="timed runs after one warm-up")
    ap.add_argument("--size", type=int, default=1024, help="square input side (1024 = 1.05 MP)")
    ap.add_argument("--refine-size", type=int, default=None, help="FaceRefine working size (default 1024 CUDA, 256 CPU)")
    args = ap.parse_args(argv)

    import torch

    torch.set_flush_denormal(True)
    _import_pack()
    from comfyui_model_swap.nodes.pipeline.face_refine import RefineSettings
    from comfyui_model_swap.nodes.pipeline.loading import ModelChoice, load_pipeline
    from comfyui_model_swap.nodes.pipeline.pipeline import SwapOptions

    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available on this machine; run without --device cuda.", file=sys.stderr)
        return 2
    steps = args.steps or (30 if args.device == "cuda" else 2)
    refine_size = args.refine_size or (1024 if args.device == "cuda" else 256)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build_models(root, args.device)
        built = time.perf_counter() - t0
        tok = root / "tok" if args.device == "cuda" else None
        t0 = time.perf_counter()
        pipe = load_pipeline([root], ModelChoice(), device=args.device, tokenizer_dir=tok)
        load_s = time.perf_counter() - t0
        image = test_image(args.size)
        options = SwapOptions(num_images=args.num_images, steps=steps,
                              refine=RefineSettings(work_size=refine_size, steps=max(1, steps // 2)))
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runs = []
        for i in range(args.runs + 1):
            t0 = time.perf_counter()
            result = pipe.run(image, options)
            total = time.perf_counter() - t0
            if i:
                runs.append((result.timings, total))
    stages = list(runs[0][0])
    print(f"\nModel swap benchmark: device={args.device}, input {args.size}x{args.size} "
          f"({args.size * args.size / 1e6:.2f} MP), processing {result.processing_size[1]}x{result.processing_size[0]}, "
          f"num_images={args.num_images}, steps={steps}, refine {refine_size}px, face found: {result.face_found}")
    print(f"models: {'full-size SDXL architecture, fp16' if args.device == 'cuda' else 'tiny SDXL architecture'}"
          f" + SegFormer-B4 parser, random weights; built in {built:.1f} s, loaded in {load_s:.1f} s")
    print(f"\n| stage | mean s ({args.runs} runs) |\n|---|---|")
    for s in stages:
        print(f"| {s} | {statistics.mean(r[0].get(s, 0.0) for r in runs):.3f} |")
    mean_total = statistics.mean(t for _, t in runs)
    print(f"| **total** | **{mean_total:.3f}** |")
    print(f"| per image | {mean_total / args.num_images:.3f} |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak process RSS: {rss:.0f} MiB")
    if args.device == "cuda":
        print(f"peak CUDA memory allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB "
              f"on {torch.cuda.get_device_name()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the model swap against its peers on the same work, in one process and one run.

    python scripts/benchmark.py                       # CPU: every group, full-size SegFormer-B4 parser
    python scripts/benchmark.py --only parse,nongen   # some groups
    python scripts/benchmark.py --json speed.json     # also write the table as JSON
    python scripts/benchmark.py --device cuda         # the swap on the full-size SDXL architecture (fp16)

Groups (each adds rows to one markdown table):

* ``parse``: the pack's human parse vs ``fashn-human-parser``'s ``predict`` (FASHN's own package) on
  the same random-weight SegFormer-B4 folder and the same photo; label agreement printed. Also the
  licence-clean selfie segmenter on that photo (its real pre/post-processing and edge refinement, a tiny
  stand-in network in the published .tflite format).
* ``nongen``: every non-generative stage of a swap (parse, face analysis, masks, composite, face
  crops) vs the parser's forward pass alone. The whole swap runs with an engine that returns its
  input, so its time is everything but sampling.
* ``swap``: the whole swap with the SDXL engine, per stage (tiny SDXL architecture on CPU).
* ``catalogue``: N photos (``--catalogue-photos``) through the headless runner in one
  scripts/run_catalogue.py command against N scripts/run_workflow.py calls, on a real ComfyUI with
  the tests' tiny models (scripts/_bench_catalogue.py; needs ComfyUI as the tests find it).

Random weights give real timings (the arithmetic is the same as with trained weights) but
meaningless pictures. Models are built in a temporary folder with the published layouts and
loaded through the pack's real loaders. The face analyser is the tests' tiny synthetic
insightface pack, so face-analysis times are not those of antelopev2.

Repetitions are interleaved (A B C, B C A, C A B, ...) after one warm-up round, so load changes
on a shared machine hit every row of a group alike. Each row gives the median and the spread
(min-max) of its repetitions and, against its baseline row, the median of the per-repetition
ratios. Targets are design goals printed in the table; nothing here asserts them.

Adding rows: write ``def my_group(ctx: Context) -> list[Case]`` and register it in ``GROUPS``
(its name becomes an ``--only`` choice). A :class:`Case` is a name, a ``run`` callable (one
repetition), optionally the name of its ``baseline`` case in the same group, a ``target`` ratio,
and a ``summary`` callable that turns the last outputs into a note and JSON fields once timing is
done. :class:`Context` builds and caches models and the photo; command-line options live in
``ctx.args``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


sys.path.insert(0, str(ROOT / "scripts"))
from _bench_core import Case, Row, logged, markdown, measure, rows_of, stage_medians  # noqa: E402,F401


def _import_pack():
    sys.path.insert(0, str(ROOT / "scripts"))
    import _pack

    _pack.import_pack()


# ----------------------------------------------------------------------------- shared set-up


def photo(width: int, height: int):
    """A real portrait (scikit-image's astronaut) resized to ``width`` x ``height`` (uint8 RGB)."""
    import cv2
    import numpy as np
    from skimage import data

    return np.ascontiguousarray(cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_LANCZOS4))


def photo_face(width: int, height: int):
    """Where the tiny face detector reports the astronaut's face in :func:`photo`'s picture."""
    import tiny_insightface

    sx, sy = width / 512.0, height / 512.0
    x1, y1, x2, y2 = 178, 70, 268, 165
    kps = [(204, 101), (245, 104), (221, 125), (205, 143), (245, 143)]
    return tiny_insightface.place_face((x1 * sx, y1 * sy, x2 * sx, y2 * sy), (width, height),
                                       kps_px=[(x * sx, y * sy) for x, y in kps])


class Context:
    """What the groups share: options, a temporary models folder, the photo and loaded models."""

    def __init__(self, args, root: Path):
        self.args = args
        self.root = root
        self.device = args.device
        self.width, self.height = args.photo
        self.image = photo(self.width, self.height)
        self.meta: dict = {}
        self._cache: dict = {}

    def once(self, key: str, build: Callable[[], Any]):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def parser_folder(self) -> Path:
        def build():
            if self.args.parser_folder:
                self.meta["parser"] = f"the parser in {self.args.parser_folder}"
                return Path(self.args.parser_folder)
            import tiny_parser

            full = self.args.parser == "full"
            self.meta["parser"] = ("SegFormer-B4 (FASHN's parser's shape), random weights" if full
                                   else "tiny SegFormer, random weights")
            return tiny_parser.build_human_parser(
                self.root / "human_parsing" / "fashn-human-parser",
                config=tiny_parser.build_full_size_parser_config() if full else None)

        return self.once("parser_folder", build)

    def parser(self):
        from comfyui_model_swap.nodes.pipeline.parsing import HumanParser

        return self.once("parser", lambda: HumanParser.load(self.parser_folder(), device=self.device))

    def analyzer(self):
        def build():
            import tiny_insightface
            from comfyui_model_swap.nodes.pipeline.identity import FaceAnalyzer

            folder = tiny_insightface.build_insightface_pack(self.root, "antelopev2",
                                                             faces=(photo_face(self.width, self.height),))
            return FaceAnalyzer.load(folder.parents[1], name="antelopev2", device=self.device)

        return self.once("analyzer", build)


# ----------------------------------------------------------------------------- groups


def parse_group(ctx: Context) -> list[Case]:
    """The pack's parse vs FASHN's own parser package on the same folder and photo."""
    from fashn_human_parser import FashnHumanParser

    folder = ctx.parser_folder()
    fashn = FashnHumanParser(str(folder), device=ctx.device)
    ours = ctx.parser()
    image = ctx.image
    fashn_name = "fashn-human-parser predict"
    fashn_case = Case("parse", fashn_name, lambda: fashn.predict(image))

    def agreement(labels):
        import numpy as np

        reference = np.asarray(fashn_case.last)
        same = float((labels == reference).mean())
        differing = int((labels != reference).sum())
        return (f"label agreement {100 * same:.4f}% ({differing} of {labels.size} px differ)",
                {"agreement": same, "differing_pixels": differing, "agreement_target": 0.999})

    # The licence-clean segmenter on the same photo: LiteRT, stretch to 256x256, softmax and the guided-filter
    # refinement at the photo's size are the pack's real code; the network is the tests' tiny stand-in in the
    # published format (the real model's weights are not here), so its inference time is not the real one's.
    import tiny_selfie
    from comfyui_model_swap.nodes.pipeline.segment_selfie import SelfieSegmenter

    selfie = SelfieSegmenter.load(tiny_selfie.install(ctx.root))
    return [fashn_case, Case("parse", "pack parse", lambda: ours.parse(image), baseline=fashn_name, target=0.8,
                             summary=agreement),
            Case("parse", "selfie segmenter parse (tiny .tflite; refine at full size)", lambda: selfie.parse(image),
                 baseline=fashn_name)]


class NullEngine:
    """An engine that returns its input: a swap through it costs everything but sampling."""

    def __init__(self, device="cpu"):
        import torch

        from comfyui_model_swap.nodes.pipeline import engines

        self.capabilities = dataclasses.replace(engines.capabilities(engines.DEFAULT_ENGINE), name="null",
                                                embedding_identity=False, reference_image=False, controlnet=False)
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.source = "benchmark null engine"

    def inpaint(self, request, on_step=None):
        return [request.image.copy() for _ in request.seeds]


def nongen_group(ctx: Context) -> list[Case]:
    """Every stage of a swap that is not sampling, against the parser's forward pass."""
    import numpy as np
    import torch

    from comfyui_model_swap.nodes.pipeline import compositing, masks
    from comfyui_model_swap.nodes.pipeline.parsing import preprocess
    from comfyui_model_swap.nodes.pipeline.pipeline import ModelSwapPipeline, SwapOptions

    from transformers import SegformerForSemanticSegmentation

    parser, analyzer, image = ctx.parser(), ctx.analyzer(), ctx.image
    x = torch.from_numpy(preprocess(image))[None].to(parser.device, parser.dtype)
    # The model as published (the pack's parser rewrites its own copy), as FASHN's package runs it.
    published = SegformerForSemanticSegmentation.from_pretrained(
        str(ctx.parser_folder()), local_files_only=True, dtype=parser.dtype).to(parser.device).eval()

    def forward():
        with torch.inference_mode():
            out = published(pixel_values=x).logits
        if parser.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    labels = parser.parse(image)
    swap = masks.build_swap_mask(labels, grow=4, feather=8)
    generated = np.ascontiguousarray(image[:, ::-1])  # any other picture of the same size
    pipe = ModelSwapPipeline(NullEngine(ctx.device), parser=parser, analyzer=analyzer)
    options = SwapOptions(steps=1)

    log: list = []

    def stages(result):
        medians = stage_medians(log, ctx.args.runs)
        found = "face found" if result.face_found else "NO face found"
        parts = ", ".join(f"{k} {v:.3f}" for k, v in medians.items())
        return f"{found}; stage medians s: {parts}", {"stages_s": medians, "face_found": result.face_found}

    base = "parser forward (SegFormer as published)"
    return [
        Case("nongen", base, forward),
        Case("nongen", "pack parse", lambda: parser.parse(image), baseline=base),
        Case("nongen", "face analysis", lambda: analyzer.analyze(image), baseline=base,
             note="tiny synthetic insightface models"),
        Case("nongen", "masks (grow 4, feather 8)", lambda: masks.build_swap_mask(labels, grow=4, feather=8),
             baseline=base),
        Case("nongen", "composite", lambda: compositing.composite(image, generated, swap.alpha), baseline=base),
        Case("nongen", "all non-generative stages (swap with a null engine)",
             logged(lambda: pipe.run(image, options), log), baseline=base, target=1.5, summary=stages),
    ]


def _engines():
    """scripts/_bench_engines.py, the generation groups, with this module as its kit."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    import _bench_engines

    return _bench_engines


def _catalogue():
    """scripts/_bench_catalogue.py: N photos in one catalogue command against N single runner calls."""
    import _bench_catalogue

    return _bench_catalogue


def swap_group(ctx: Context) -> list[Case]:
    """The whole swap with the SDXL engine; per-stage times of the last run in the note and JSON."""
    import torch

    import tiny_sdxl
    from comfyui_model_swap.nodes.pipeline.face_refine import RefineSettings
    from comfyui_model_swap.nodes.pipeline.loading import ModelChoice, load_pipeline
    from comfyui_model_swap.nodes.pipeline.pipeline import SwapOptions

    args = ctx.args
    ctx.parser_folder()
    ctx.analyzer()  # the insightface pack under ctx.root
    start = time.perf_counter()
    if ctx.device == "cuda":
        _engines().full_size_sdxl_folder(ctx.root, torch.float16)
    else:
        tiny_sdxl.build_sdxl_inpaint_folder(ctx.root / "diffusers" / "stable-diffusion-xl-1.0-inpainting-0.1")
    built = time.perf_counter() - start
    start = time.perf_counter()
    pipe = load_pipeline([ctx.root], ModelChoice(), device=ctx.device)
    loaded = time.perf_counter() - start
    steps = args.steps or (30 if ctx.device == "cuda" else 2)
    refine_size = args.refine_size or (1024 if ctx.device == "cuda" else 256)
    options = SwapOptions(num_images=args.num_images, steps=steps,
                          refine=RefineSettings(work_size=refine_size, steps=max(1, steps // 2)))
    model = "full-size SDXL architecture, fp16" if ctx.device == "cuda" else "tiny SDXL architecture"
    ctx.meta["swap"] = (f"{model}, random weights; built in {built:.1f} s, loaded in {loaded:.1f} s; "
                        f"num_images={args.num_images}, steps={steps}, refine {refine_size}px")
    if ctx.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    log: list = []

    def stages(result):
        medians = stage_medians(log, args.swap_runs)
        parts = ", ".join(f"{k} {v:.3f}" for k, v in medians.items())
        extra = {"stages_s": medians, "face_found": result.face_found,
                 "processing_size": list(result.processing_size)}
        if ctx.device == "cuda":
            extra["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return f"{model}, {args.num_images} image(s), {steps} steps; stage medians s: {parts}", extra

    return [Case("swap", "whole swap (sdxl)", logged(lambda: pipe.run(ctx.image, options), log), summary=stages)]


# name -> (group builder, repetitions option).
GROUPS: dict[str, tuple[Callable[[Context], list[Case]], str]] = {
    "parse": (parse_group, "runs"),
    "nongen": (nongen_group, "runs"),
    "swap": (swap_group, "swap_runs"),
    "engine": (lambda ctx: _engines().engine_group(ctx), "runs"),
    "batch": (lambda ctx: _engines().batch_group(ctx), "runs"),
    "modes": (lambda ctx: _engines().modes_group(ctx), "swap_runs"),
    "catalogue": (lambda ctx: _catalogue().catalogue_group(ctx), "swap_runs"),
}
SUITE = ("parse", "engine", "batch", "modes")
# Defaults of the options a suite sets differently: (plain run, CPU suite, CUDA suite). The CPU suite is
# sized for a test (tiny models, small pictures, one timed round); the CUDA one for < 8 minutes on an H100.
DEFAULTS = {
    "runs": (5, 1, 2),
    "swap_runs": (2, 1, 1),
    "photo": ((864, 1216), (128, 160), (864, 1216)),
    "parser": ("full", "tiny", "full"),
    "gen_size": (256, 128, 1024),
}


# ----------------------------------------------------------------------------- command line


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 864x1216") from None
    if w < 64 or h < 64:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be at least 64 px")
    return w, h


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--only", default=None,
                    help=f"comma-separated groups to run (default: all of {', '.join(GROUPS)})")
    ap.add_argument("--suite", action="store_true",
                    help=f"the compact check: groups {', '.join(SUITE)} (unless --only), few rounds; on CPU tiny "
                         "models and small pictures, on CUDA full-size models at 1 MP")
    ap.add_argument("--engine", default="all", choices=("all", "sdxl", "flux2_klein"),
                    help="engine(s) of the engine, batch and modes groups")
    ap.add_argument("--gen-size", type=int, default=None,
                    help="square side of the engine/batch/modes photo (default 256 CPU, 1024 CUDA; suite 128 CPU)")
    ap.add_argument("--runs", type=int, default=None, help="timed repetitions per row after one warm-up round "
                                                           "(default 5; suite 1 CPU, 2 CUDA)")
    ap.add_argument("--swap-runs", type=int, default=None,
                    help="timed repetitions of the whole swaps (swap, modes; default 2; suite 1)")
    ap.add_argument("--photo", type=_size, default=None,
                    help="parse/nongen photo WIDTHxHEIGHT (default 864x1216, 1.05 MP; CPU suite 128x160)")
    ap.add_argument("--size", type=int, default=None, help="square photo side instead of --photo (1024 = 1.05 MP)")
    ap.add_argument("--parser", default=None, choices=("full", "tiny"),
                    help="random-weight SegFormer to build: B4 as FASHN's (default) or a tiny one (CPU suite)")
    ap.add_argument("--parser-folder", default=None, help="use this parser folder instead of building one")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--steps", type=int, default=None,
                    help="sampling steps (default: swap 2 on CPU, 30 on CUDA; engine groups the mode's steps)")
    ap.add_argument("--num-images", type=int, default=1)
    ap.add_argument("--catalogue-photos", type=int, default=4, help="photos per set in the catalogue group")
    ap.add_argument("--refine-size", type=int, default=None,
                    help="FaceRefine working size for the swap (default 1024 CUDA, 256 CPU)")
    ap.add_argument("--json", default=None, help="also write the table and its samples to this JSON file")
    args = ap.parse_args(argv)
    column = 0 if not args.suite else 2 if args.device == "cuda" else 1
    for key, values in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, values[column])
    if args.size is not None:
        args.photo = (args.size, args.size)
    if args.gen_size < 64 or args.gen_size % 16:
        ap.error(f"--gen-size {args.gen_size}: give a multiple of 16, at least 64")
    args.only = args.only or ",".join(SUITE if args.suite else GROUPS)
    args.only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in args.only if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    return args


def machine(device: str) -> dict:
    import torch

    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "platform": platform.platform(), "python": platform.python_version()}
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run(args) -> dict:
    """Build, time and tabulate the chosen groups; returns the JSON document."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_flush_denormal(True)  # random weights produce denormals, up to 4x slower without this
    if args.threads:
        torch.set_num_threads(args.threads)
    _import_pack()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(args, Path(tmp))
        for name in args.only:
            build, runs_option = GROUPS[name]
            cases = build(ctx)
            measure(cases, getattr(args, runs_option), progress=True)
            rows.extend(rows_of(cases))
    meta = {"device": args.device, "photo": f"{ctx.width}x{ctx.height}", "suite": args.suite,
            "gen_photo": f"{args.gen_size}x{args.gen_size}",
            "megapixels": round(ctx.width * ctx.height / 1e6, 3), "runs": args.runs, "groups": args.only,
            "machine": machine(args.device), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **ctx.meta}
    return {"meta": meta, "table_markdown": markdown(rows), "rows": [dataclasses.asdict(r) for r in rows]}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("benchmark: --device cuda was asked but CUDA is not available here (torch "
                  f"{torch.__version__}, torch.cuda.is_available() is False); nothing was run. Run it on a machine "
                  "with an NVIDIA GPU and a CUDA build of torch, or leave out --device cuda for the CPU benchmark.",
                  file=sys.stderr)
            return 2
    doc = run(args)
    meta = doc["meta"]
    m = meta["machine"]
    print(f"\nModel swap benchmark: device={meta['device']}, photo {meta['photo']} ({meta['megapixels']} MP), "
          f"{m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}"
          + (f", {m['gpu']}" if "gpu" in m else "")
          + (f", load average {m['load_average'][0]:.1f} at the end" if "load_average" in m else ""))
    for key in ("parser", "swap"):
        if key in meta:
            print(f"{key}: {meta[key]}")
    for name, what in meta.get("engines", {}).items():
        print(f"engine {name}: {what}")
    print()
    print(doc["table_markdown"])
    print(f"\npeak process RSS: {meta['peak_rss_mib']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

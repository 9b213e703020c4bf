"""Run an exported Model Swap workflow headlessly on one image and write the results.

    python scripts/run_workflow.py workflows/api/model_swap_api.json --image photo.jpg --out results/ \\
        [--face-reference face.jpg | --face NAME] [--seed 42] [--num-images 1] [--prompt TEXT] \\
        [--face-reference-mode match_reference|match_base] [--aspect-ratio 4:5] [--set NODE.INPUT=VALUE ...] \\
        [--server http://127.0.0.1:8188 | --comfyui PATH/TO/ComfyUI] [--models-dir DIR ...] \\
        [-- EXTRA COMFYUI FLAGS, e.g. --cpu --base-directory DIR]

Exit codes: 0 done (the written files are printed as JSON), 1 the job failed,
2 a usage error (bad option, missing input file), 3 models are missing (the list of
what to download and where is printed first; scripts/get_models.py fetches them).

When the ComfyUI that --comfyui starts stops while starting, the cause is read from its
log and the fix is said: no CUDA GPU (add `-- --cpu`), its port in use (`-- --port N`),
a missing Python package (the pip command).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pack import report_missing_models, split_comfy_args  # noqa: E402


def _runner():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _pack

    _pack.import_pack()
    return importlib.import_module("comfyui_model_swap.nodes.workflow_runner")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflow", type=Path, help="an API-format workflow (workflows/api/*_api.json or 'Export (API)')")
    ap.add_argument("--image", type=Path, required=True, help="the model photo")
    ap.add_argument("--face-reference", type=Path, help="a photo of the face to give the model")
    ap.add_argument("--face", metavar="NAME",
                    help="a face saved in the face library (Save Face: <models>/modelswap_faces/NAME/) as the face "
                         "reference; the library is found in --comfyui's models folders or --models-dir")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--num-images", type=int)
    ap.add_argument("--prompt")
    ap.add_argument("--face-reference-mode", choices=("match_reference", "match_base"))
    ap.add_argument("--mode", choices=("fast", "balanced", "quality"),
                    help="a generation mode: the workflow's engine's own steps, face-refine steps and work size "
                         "for it (as the HTTP API's generation_mode); --set wins over it")
    ap.add_argument("--aspect-ratio", metavar="W:H",
                    help="a marketplace format, one of FASHN's aspect ratios (e.g. 1:1, 4:5, 3:4, 9:16; a wrong one "
                         "is refused with the list), or 'original': the photo is extended to it by outpainting, "
                         "never cropped (GarmentMask's aspect_ratio)")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                    help="set any widget, e.g. ModelSwap_FaceRefine.strength=0.5 (repeatable)")
    ap.add_argument("--segmenter", choices=("fashn", "selfie"),
                    help="GarmentMask's parser: fashn (FASHN's human parser, non-commercial) or selfie (the MediaPipe "
                         "selfie segmenter, Apache-2.0); default: the workflow's own")
    ap.add_argument("--out", type=Path, required=True, help="folder for the output images")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="URL of a running ComfyUI, e.g. http://127.0.0.1:8188")
    where.add_argument("--comfyui", type=Path, help="a ComfyUI folder to start headless for this job")
    ap.add_argument("--models-dir", type=Path, action="append", default=[],
                    help="models folder(s) to check before starting (default with --comfyui: the folders that "
                         "ComfyUI will use: <ComfyUI>/models, or <--base-directory>/models, plus "
                         "extra_model_paths.yaml)")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.epilog = "Everything after '--' goes to ComfyUI when --comfyui starts it, e.g. -- --cpu"
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, comfy_args = split_comfy_args(argv)
    args = parser().parse_args(own)
    wr = _runner()
    if comfy_args and not args.comfyui:
        print("error: ComfyUI flags after '--' need --comfyui (a running --server has its own)", file=sys.stderr)
        return wr.EXIT_USAGE
    for label, path in (("--image", args.image), ("--face-reference", args.face_reference),
                        ("workflow", args.workflow)):
        if path is not None and not path.is_file():
            print(f"error: {label} {path} does not exist", file=sys.stderr)
            return wr.EXIT_USAGE
    if args.face is not None:
        if args.face_reference is not None:
            print("error: give --face NAME or --face-reference FILE, not both", file=sys.stderr)
            return wr.EXIT_USAGE
        try:
            args.face_reference = wr.saved_face(args.face, args.comfyui, comfy_args, args.models_dir)
        except (wr.WorkflowError, ValueError) as exc:
            print(f"error: --face: {exc}", file=sys.stderr)
            return wr.EXIT_USAGE
    if args.comfyui and not (args.comfyui / "main.py").is_file():
        print(f"error: --comfyui {args.comfyui} is not a ComfyUI folder (no main.py)", file=sys.stderr)
        return wr.EXIT_USAGE
    overrides = wr.Overrides(image=args.image, face_reference=args.face_reference, seed=args.seed,
                             num_images=args.num_images, prompt=args.prompt,
                             face_reference_mode=args.face_reference_mode, settings=args.set, mode=args.mode,
                             aspect_ratio=args.aspect_ratio)
    try:
        graph = wr.load_workflow(args.workflow)
        graph = importlib.import_module("comfyui_model_swap.nodes.segmenters").use_segmenter(graph, args.segmenter)
        uploads = {"model": args.image.name, **({"face_reference": args.face_reference.name}
                                                 if args.face_reference else {})}
        wr.apply_overrides(graph, overrides, uploads)  # every value checked before anything starts
    except (wr.WorkflowError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return wr.EXIT_USAGE
    try:
        if report_missing_models(wr, graph, args.workflow, args.comfyui, comfy_args, args.models_dir):
            return wr.EXIT_MISSING_MODELS
        if args.server:
            result = wr.run(wr.ComfyClient(args.server), graph, overrides, args.out, args.timeout)
        else:
            with wr.LocalComfy(args.comfyui, comfy_args) as client:
                result = wr.run(client, graph, overrides, args.out, args.timeout)
    except wr.WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return wr.EXIT_FAILED
    print(json.dumps({"prompt_id": result.prompt_id, "files": [str(f) for f in result.files]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

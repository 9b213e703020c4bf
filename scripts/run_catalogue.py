"""Run a Model Swap workflow over a whole set of photos with one ComfyUI start and one model load.

    python scripts/run_catalogue.py workflows/api/model_swap_api.json PHOTOS --out results/ \\
        [--comfyui PATH/TO/ComfyUI | --server http://127.0.0.1:8188] [--face-reference face.jpg] \\
        [--seed 42] [--prompt TEXT] [--num-images 1] [--mode fast|balanced|quality] [--set NODE.INPUT=VALUE] \\
        [--in-flight 2] [-- EXTRA COMFYUI FLAGS, e.g. --cpu]
    python scripts/run_catalogue.py PHOTOS --api http://127.0.0.1:8188 --out results/ [--api-key KEY] \
        [--seed 42] [--prompt TEXT] [--mode fast] [--face-reference face.jpg] [--in-flight 4]

With --api the set goes through the pack's FASHN-compatible HTTP API (the server's own workflow; --mode
is its generation_mode) with at most --in-flight predictions open; a Redis cluster of servers spreads
them over its GPUs. Outputs, manifest, resume and contact sheet are the same.

PHOTOS is a folder (its .png/.jpg/.jpeg/.webp/.bmp/.tif files), a quoted glob ("shoot/*.jpg") or a CSV
manifest with a header row and the columns image (required), face (a saved face's name), face_reference,
seed, prompt, aspect_ratio, output
(the outputs' file name; default the photo's); paths in it are relative to the CSV's folder, and a
column's value wins over the command's option for that row.

Photos are checked, uploaded and queued while ComfyUI works, --in-flight at a time. A photo that
cannot be read or whose job fails is recorded with its error and the set goes on. Outputs are
<out>/<name>_<k>.png; <out>/manifest.json and manifest.csv (input, outputs, seed, face reference,
status ok/note/error, error, notes, seconds) are rewritten after each photo, and
<out>/contact_sheet.html shows every input beside its outputs. For photos made with a face, each output's
identity cosine to it (or "no face") is added to the manifest, the sheet and the summary, and drifted ones
go to <out>/rerun.csv with the command that makes them again (README "Catalogue runs"; needs the face
analyser's models: --comfyui's or --models-dir's facedetection/). Running the same command again skips
the photos whose outputs are there, so a crash or Ctrl-C costs only the photos in flight.

Exit codes: 0 every photo made (some may carry a note, e.g. no person found), 1 some photos failed
(see the summary, the manifest or the contact sheet) or ComfyUI failed, 2 a usage error (bad option,
source, CSV column or workflow), 3 models are missing (what to download and where is printed),
130 interrupted (Ctrl-C; run the same command again to finish).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pack import report_missing_models, split_comfy_args  # noqa: E402
from run_workflow import _runner  # noqa: E402


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflow", type=Path, nargs="?",
                    help="an API-format workflow (workflows/api/*_api.json or 'Export (API)'); none with --api")
    ap.add_argument("photos", help="a folder of photos, a quoted glob, or a CSV manifest")
    ap.add_argument("--out", type=Path, required=True, help="folder for the outputs, manifest and contact sheet")
    ap.add_argument("--face-reference", type=Path, help="one face for every photo (a CSV row's own wins)")
    ap.add_argument("--face", metavar="NAME", help="a saved face of the face library for every photo (see "
                    "run_workflow.py --face; a CSV row's face or face_reference wins)")
    ap.add_argument("--seed", type=int, help="the seed of every photo (a CSV row's own wins)")
    ap.add_argument("--num-images", type=int)
    ap.add_argument("--prompt")
    ap.add_argument("--face-reference-mode", choices=("match_reference", "match_base"))
    ap.add_argument("--aspect-ratio", metavar="W:H",
                    help="a marketplace format for every photo (see run_workflow.py; a CSV row's own wins)")
    ap.add_argument("--mode", choices=("fast", "balanced", "quality"), help="a generation mode (see run_workflow.py)")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                    help="set any widget, e.g. ModelSwap_FaceRefine.strength=0.5 (repeatable)")
    ap.add_argument("--segmenter", choices=("fashn", "selfie"), help="GarmentMask's parser (see run_workflow.py)")
    ap.add_argument("--in-flight", type=int, default=2,
                    help="jobs queued in ComfyUI at once (default 2: one running, the next ready)")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="URL of a running ComfyUI, e.g. http://127.0.0.1:8188")
    where.add_argument("--comfyui", type=Path, help="a ComfyUI folder to start headless once for the whole set")
    where.add_argument("--api", metavar="URL",
                       help="send the set through the FASHN-compatible API at URL (this pack in a running ComfyUI, "
                            "or any of a Redis cluster's) instead of a workflow; --in-flight predictions at once")
    ap.add_argument("--api-key", default=os.environ.get("MODELSWAP_API_KEY") or os.environ.get("FASHN_API_KEY"),
                    help="the API's key (default: $MODELSWAP_API_KEY or $FASHN_API_KEY)")
    ap.add_argument("--models-dir", type=Path, action="append", default=[],
                    help="models folder(s) to check before starting (default with --comfyui: ComfyUI's own); also where "
                         "the face analyser (facedetection/) and the face library are found to measure a face "
                         "set's consistency (with --server or --api: give the server's models folder)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds one photo may take")
    ap.epilog = "Everything after '--' goes to ComfyUI when --comfyui starts it, e.g. -- --cpu"
    return ap


def main(argv=None, stream=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, comfy_args = split_comfy_args(argv)
    args = parser().parse_args(own)
    wr = _runner()
    cat = importlib.import_module("comfyui_model_swap.nodes.headless.catalogue")
    run_mod = importlib.import_module("comfyui_model_swap.nodes.headless.catalogue_run")
    sheet = importlib.import_module("comfyui_model_swap.nodes.headless.contact_sheet")

    def usage(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return wr.EXIT_USAGE

    if args.api:
        return _api_run(args, own, comfy_args, wr, cat, sheet, usage, stream)
    if args.workflow is None:
        return usage("give the workflow to run (e.g. workflows/api/model_swap_api.json), or --api URL")
    if args.face is not None and args.face_reference is not None:
        return usage("give --face NAME or --face-reference FILE, not both")
    if comfy_args and not args.comfyui:
        return usage("ComfyUI flags after '--' need --comfyui (a running --server has its own)")
    if not args.workflow.is_file():
        return usage(f"workflow {args.workflow} does not exist")
    if args.face_reference is not None and not args.face_reference.is_file():
        return usage(f"--face-reference {args.face_reference} does not exist")
    if args.comfyui and not (args.comfyui / "main.py").is_file():
        return usage(f"--comfyui {args.comfyui} is not a ComfyUI folder (no main.py)")
    if args.in_flight < 1:
        return usage("--in-flight must be at least 1")
    try:
        items = cat.read_source(args.photos)
        _saved_faces(args, items, comfy_args, wr)
    except (wr.WorkflowError, ValueError) as exc:
        return usage(str(exc))
    base = wr.Overrides(image=Path("photo"), face_reference=args.face_reference, seed=args.seed,
                        num_images=args.num_images, prompt=args.prompt, face_reference_mode=args.face_reference_mode,
                        settings=args.set, mode=args.mode, aspect_ratio=args.aspect_ratio)
    try:
        graph = wr.load_workflow(args.workflow)
        graph = importlib.import_module("comfyui_model_swap.nodes.segmenters").use_segmenter(graph, args.segmenter)
        needs_face = args.face_reference is not None or any(i.face_reference for i in items)
        wr.apply_overrides(graph, base, {"model": "photo.png", **({"face_reference": "face.png"} if needs_face
                                                                   else {})})  # checked before anything starts
    except (wr.WorkflowError, ValueError) as exc:
        return usage(str(exc))
    try:
        if report_missing_models(wr, graph, args.workflow, args.comfyui, comfy_args, args.models_dir):
            return wr.EXIT_MISSING_MODELS
        print(f"Catalogue: {len(items)} photos -> {args.out}", file=stream or sys.stderr)
        try:
            if args.server:
                summary = run_mod.run_catalogue(wr.ComfyClient(args.server), graph, base, items, args.out,
                                                in_flight=args.in_flight, timeout=args.timeout, stream=stream)
            else:
                with wr.LocalComfy(args.comfyui, comfy_args) as client:
                    summary = run_mod.run_catalogue(client, graph, base, items, args.out, in_flight=args.in_flight,
                                                    timeout=args.timeout, stream=stream)
        finally:
            if args.out.is_dir():
                sheet.write(args.out, items, title=f"Catalogue: {args.photos}")
        folders = wr.model_folders(args.comfyui, comfy_args, args.models_dir) if (
            args.models_dir or args.comfyui) else None
        _consistency(args, own, items, folders, {}, sheet, stream)
    except wr.WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return wr.EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\nInterrupted: run the same command again to finish the rest (results so far: "
              f"{args.out / 'manifest.csv'}).", file=sys.stderr)
        return 130
    print(f"{summary.line()}; manifest: {args.out / 'manifest.csv'}; contact sheet: "
          f"{args.out / 'contact_sheet.html'}", file=stream or sys.stderr)
    return wr.EXIT_FAILED if summary.failed else 0


def _saved_faces(args, items, comfy_args, wr) -> None:
    """Saved faces' names (--face, a CSV's face column) -> their pictures, looked up once each."""
    names = {args.face, *(item.face for item in items)} - {None}
    pictures = {}
    for name in sorted(names):
        try:
            pictures[name] = wr.saved_face(name, args.comfyui, comfy_args, args.models_dir)
        except (wr.WorkflowError, ValueError) as exc:
            raise wr.WorkflowError(f"face {name!r}: {exc}") from exc
    if args.face is not None:
        args.face_reference = pictures[args.face]
    for item in items:
        if item.face:
            item.face_reference = pictures[item.face]


def _api_run(args, own, comfy_args, wr, cat, sheet, usage, stream) -> int:
    """The set through the HTTP API: the server's own workflow; --mode is its generation_mode."""
    api = importlib.import_module("comfyui_model_swap.nodes.headless.catalogue_api")
    unused = [flag for flag, value in (("a workflow", args.workflow), ("--set", args.set),
                                       ("--segmenter", args.segmenter), ("flags after '--'", comfy_args)) if value]
    if unused:
        return usage(f"--api runs the server's own workflow: leave out {', '.join(unused)}")
    if args.face_reference is not None and not args.face_reference.is_file():
        return usage(f"--face-reference {args.face_reference} does not exist")
    if args.in_flight < 1:
        return usage("--in-flight must be at least 1")
    try:
        items = cat.read_source(args.photos)
    except wr.WorkflowError as exc:
        return usage(str(exc))
    if args.face is not None and args.face_reference is not None:
        return usage("give --face NAME or --face-reference FILE, not both")
    inputs = {"seed": args.seed, "prompt": args.prompt, "num_images": args.num_images, "face": args.face,
              "face_reference_mode": args.face_reference_mode, "generation_mode": args.mode,
              "aspect_ratio": args.aspect_ratio,
              "face_reference": args.face_reference}
    print(f"Catalogue: {len(items)} photos -> {args.out} through {args.api}", file=stream or sys.stderr)
    try:
        summary = api.run_catalogue_api(args.api, items, args.out, inputs=inputs, api_key=args.api_key,
                                        concurrency=args.in_flight, timeout=args.timeout, stream=stream)
    except wr.WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return wr.EXIT_FAILED
    except KeyboardInterrupt:
        print("\nInterrupted: run the same command again to finish the rest.", file=sys.stderr)
        return 130
    finally:
        if args.out.is_dir():
            sheet.write(args.out, items, title=f"Catalogue: {args.photos}")
    pictures = {}  # saved faces' pictures for measuring, where --models-dir holds the library
    for name in sorted({args.face, *(item.face for item in items)} - {None}) if args.models_dir else ():
        try:
            pictures[name] = wr.saved_face(name, None, [], args.models_dir)
        except (wr.WorkflowError, ValueError):
            pass
    _consistency(args, own, items, wr.model_folders(None, [], args.models_dir) if args.models_dir else None,
                 pictures, sheet, stream)
    print(f"{summary.line()}; manifest: {args.out / 'manifest.csv'}; contact sheet: "
          f"{args.out / 'contact_sheet.html'}", file=stream or sys.stderr)
    return wr.EXIT_FAILED if summary.failed else 0


def _consistency(args, own, items, folders, pictures, sheet, stream) -> None:
    """Consistency, measured (nodes/headless/consistency.py): identity figures in the manifest, the contact
    sheet and the summary, drifted photos in <out>/rerun.csv with the command that re-runs them."""
    if not args.out.is_dir():
        return
    try:
        measure = importlib.import_module("comfyui_model_swap.nodes.headless.consistency").measure_set
    except ImportError as exc:  # numpy / OpenCV missing where the runner runs
        print(f"Consistency not measured: the face analyser cannot be imported here ({exc}).", file=stream or sys.stderr)
        return
    command = list(own)
    for k, token in enumerate(command):
        if token == args.photos:
            command[k] = "{csv}"
        elif token == "--out" and k + 1 < len(command):
            command[k + 1] = "{out}"
    hint = shlex.join(["python", "scripts/run_catalogue.py", *command]).replace("'{csv}'", "{csv}").replace("'{out}'", "{out}")
    for line in measure(args.out, items, folders, pictures, rerun_hint=hint):
        print(line, file=stream or sys.stderr)
    sheet.write(args.out, items, title=f"Catalogue: {args.photos}")


if __name__ == "__main__":
    sys.exit(main())

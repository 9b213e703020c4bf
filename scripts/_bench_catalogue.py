"""The ``catalogue`` group of scripts/benchmark.py: N photos through the headless runner, one command
(scripts/run_catalogue.py) against N single calls (scripts/run_workflow.py), on a real ComfyUI with the
tests' tiny models (CPU).

Rows, all for the same N photos (``--catalogue-photos``, default 4) at ``--gen-size`` px:

* ``N single calls, warm server``: run_workflow.py --server once per photo against a ComfyUI that is
  already running with its models loaded (each photo's cost when nothing has to start);
* ``one command, warm server``: run_catalogue.py --server over the N photos (the next photo queued
  while one runs); target: <= 1.15x the single calls, i.e. a set costs no more per photo than warm
  single jobs;
* ``N single calls, each starting ComfyUI``: run_workflow.py --comfyui per photo (start-up and model
  load paid N times, as before the catalogue runner);
* ``one command, starting ComfyUI once``: run_catalogue.py --comfyui (start-up and load paid once).

Every call gets a new seed, so ComfyUI's cache never serves a result. The notes give photos per minute.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "api" / "model_swap_api.json"
FAST = ["--set", "ModelSwap_FaceRefine.work_size=256"]


def catalogue_group(ctx) -> list:
    from _bench_core import Case

    for folder in (ROOT / "tests", ROOT / "scripts"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    import comfy_harness
    import run_catalogue
    import run_workflow
    import tiny_models
    from PIL import Image

    n = ctx.args.catalogue_photos
    root = ctx.root / "catalogue"
    models = root / "models"
    tiny_models.build_all(models)
    photos = root / "photos"
    photos.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(tiny_models.fashion_photo(ctx.args.gen_size, seed=i)).save(photos / f"look_{i:02d}.png")
    server = comfy_harness.ComfyServer(root / "warm", models_dir=models)
    server.start()
    atexit.register(server.stop)
    cold = comfy_harness.ComfyServer(root / "cold", models_dir=models)
    cold._prepare_base()  # the same base folder layout, for ComfyUI started by the runner itself
    os.environ.update(cold.environment())  # the torchvision stand-in where torchvision is absent
    comfy_args = ["--cpu", "--base-directory", str(cold.base_dir), "--disable-api-nodes", "--database-url",
                  "sqlite:///:memory:"]
    if not comfy_harness.frontend_installed():
        (cold.base_dir / "frontend-none").mkdir(exist_ok=True)
        comfy_args += ["--front-end-root", str(cold.base_dir / "frontend-none")]
    seeds = itertools.count(1000)
    files = sorted(photos.iterdir())

    def quiet(main, argv) -> None:
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            code = main(argv)
        if code != 0:
            raise RuntimeError(f"{main.__module__} {' '.join(argv)} exited {code}: {sink.getvalue()[-2000:]}")

    def out_dir(name: str) -> Path:
        folder = root / "out" / name
        shutil.rmtree(folder, ignore_errors=True)
        return folder

    def singles(where: list[str]):
        def run():
            for photo in files:
                quiet(run_workflow.main, [str(WORKFLOW), "--image", str(photo), "--seed", str(next(seeds)),
                                          "--out", str(out_dir("single")), *FAST, *where])
        return run

    def one_command(where: list[str]):
        def run():
            quiet(run_catalogue.main, [str(WORKFLOW), str(photos), "--seed", str(next(seeds)),
                                       "--out", str(out_dir("set")), *FAST, *where])
        return run

    warm = ["--server", server.url]
    started = ["--comfyui", str(comfy_harness.comfyui_path()), "--", *comfy_args]
    ctx.meta["catalogue"] = (f"{n} photos of {ctx.args.gen_size} px, workflows/api/model_swap_api.json with "
                             "FaceRefine work_size 256, tiny random-weight models, ComfyUI on the CPU")
    cases = [
        Case("catalogue", f"{n} single calls, warm server", singles(warm)),
        Case("catalogue", "one command, warm server", one_command(warm), baseline=f"{n} single calls, warm server",
             target=1.15),
        Case("catalogue", f"{n} single calls, each starting ComfyUI", singles(started)),
        Case("catalogue", "one command, starting ComfyUI once", one_command(started),
             baseline=f"{n} single calls, each starting ComfyUI"),
    ]
    for case in cases:  # read once timing is done: the case's own median
        case.summary = _per_minute(case, n)
    return cases


def _per_minute(case, n: int):
    def summary(_):
        median = statistics.median(case.samples)
        rate = 60.0 * n / median
        return f"{rate:.1f} photos/min, {median / n:.2f} s per photo", {"photos_per_minute": rate, "photos": n}
    return summary

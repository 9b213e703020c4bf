"""Fill the shipped API-format workflow from a request: the one place the API meets the graph."""

from __future__ import annotations

from pathlib import Path

from ..workflow_runner import Overrides, apply_overrides, load_workflow
from ..pipeline import engines
from ..segmenters import use_segmenter
from .protocol import RunRequest

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def workflow_files(engine: str) -> tuple[Path, Path]:
    """(workflow without, with a face reference) that requests on ``engine`` fill: the engine module's
    ``API_WORKFLOWS`` (names in the pack's workflows/ folder, or absolute paths)."""
    names = engines.engine_module(engine).API_WORKFLOWS
    return tuple(WORKFLOWS / name for name in names)


def fill(request: RunRequest, images: dict[str, str], filename_prefix: str, engine: str = engines.DEFAULT_ENGINE,
         segmenter: str = "") -> dict:
    """The API graph for ``request`` on ``engine``'s shipped workflow; ``images`` maps 'model' (and
    'face_reference') to LoadImage names. The generation mode's numbers are the engine's own presets,
    applied by the graph filling the runner uses too (``run_workflow.py --mode``)."""
    plain, with_reference = workflow_files(engine)
    path = with_reference if request.face_reference is not None else plain
    overrides = Overrides(image=Path(images["model"]), seed=request.seed, num_images=request.num_images,
                          prompt=request.prompt, face_reference_mode=request.face_reference_mode,
                          filename_prefix=filename_prefix, mode=request.generation_mode,
                          values={"ModelSwap_GarmentMask": {"output_size": request.resolution}},  # contract.py spelling
                          aspect_ratio=request.aspect_ratio)
    # segmenter (MODELSWAP_API_SEGMENTER): "fashn" or "selfie" replaces the workflow's parser loader; "" keeps it
    return use_segmenter(apply_overrides(load_workflow(path), overrides, images), segmenter)


def output_node(graph: dict) -> str:
    """Id of the save node (the pack's ModelSwap_SaveImage, or ComfyUI's SaveImage) whose images are the
    prediction's outputs."""
    ids = [nid for nid, node in graph.items() if node["class_type"] in ("ModelSwap_SaveImage", "SaveImage")]
    if len(ids) != 1:
        raise ValueError(f"The API workflow must have exactly one save node (ModelSwap_SaveImage); it has {len(ids)}.")
    return ids[0]

"""Fill the shipped API-format workflow from a request: the one place the API meets the graph."""

from __future__ import annotations

from pathlib import Path

from ..workflow_runner import Overrides, apply_overrides, load_workflow
from .protocol import RunRequest

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
# engine (setting MODELSWAP_API_ENGINE) -> (workflow without, with a face reference)
WORKFLOW_FILES = {
    "flux2_klein": (WORKFLOWS / "model_swap_api.json", WORKFLOWS / "model_swap_face_reference_api.json"),
    "sdxl": (WORKFLOWS / "model_swap_sdxl_api.json", WORKFLOWS / "model_swap_sdxl_face_reference_api.json"),
}

# engine -> generation_mode -> sampler steps, face-refine steps and the size the face crop is sampled at.
# "quality" is the shipped workflow's own settings. FLUX.2 klein is distilled to 4 steps: its modes differ
# in the face pass, not in the main sampling.
GENERATION_MODES = {
    "flux2_klein": {
        "fast": {"steps": 4, "refine_steps": 2, "work_size": 512},
        "balanced": {"steps": 4, "refine_steps": 4, "work_size": 768},
        "quality": {"steps": 4, "refine_steps": 4, "work_size": 1024},
    },
    "sdxl": {
        "fast": {"steps": 12, "refine_steps": 6, "work_size": 512},
        "balanced": {"steps": 20, "refine_steps": 10, "work_size": 768},
        "quality": {"steps": 30, "refine_steps": 12, "work_size": 1024},
    },
}
# resolution -> GarmentMask.output_size ("1k": <= 1.05 MP; "2k"/"4k": input size, long side capped).
RESOLUTIONS = {"1k": "1k", "2k": "2k", "4k": "4k"}


def fill(request: RunRequest, images: dict[str, str], filename_prefix: str, engine: str = "flux2_klein") -> dict:
    """The API graph for ``request`` on ``engine``'s shipped workflow; ``images`` maps 'model' (and
    'face_reference') to LoadImage names."""
    plain, with_reference = WORKFLOW_FILES[engine]
    path = with_reference if request.face_reference is not None else plain
    mode = GENERATION_MODES[engine][request.generation_mode]
    settings = [
        f"ModelSwap_Sampler.steps={mode['steps']}",
        f"ModelSwap_FaceRefine.steps={mode['refine_steps']}",
        f"ModelSwap_FaceRefine.work_size={mode['work_size']}",
        f'ModelSwap_GarmentMask.output_size="{RESOLUTIONS[request.resolution]}"',
    ]
    overrides = Overrides(image=Path(images["model"]), seed=request.seed, num_images=request.num_images,
                          prompt=request.prompt, face_reference_mode=request.face_reference_mode,
                          filename_prefix=filename_prefix, settings=settings)
    return apply_overrides(load_workflow(path), overrides, images)


def output_node(graph: dict) -> str:
    """Id of the save node (the pack's ModelSwap_SaveImage, or ComfyUI's SaveImage) whose images are the
    prediction's outputs."""
    ids = [nid for nid, node in graph.items() if node["class_type"] in ("ModelSwap_SaveImage", "SaveImage")]
    if len(ids) != 1:
        raise ValueError(f"The API workflow must have exactly one save node (ModelSwap_SaveImage); it has {len(ids)}.")
    return ids[0]

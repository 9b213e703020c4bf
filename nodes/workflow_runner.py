"""Run an exported API-format workflow headlessly: fill its inputs, queue it, collect the images.

Comfy-free (standard library only), so it works from any Python:

    python scripts/run_workflow.py workflows/api/model_swap_api.json --image photo.jpg --out results/
        [--face-reference face.jpg] [--seed 7] [--num-images 2] [--prompt "..."]
        [--server http://127.0.0.1:8188 | --comfyui /path/to/ComfyUI] [--models-dir DIR] [-- COMFYUI FLAGS]

This module is the runner's public face (what scripts/run_workflow.py, scripts/get_models.py and the
tests import); the work is done by role in ``nodes/headless/``: ``graph`` (read and fill a workflow,
which models it needs), ``client`` (the one HTTP client for ComfyUI and the job it drives),
``launcher`` (a private ComfyUI for one job, its start-up failures diagnosed), and
``nodes/model_folders.py`` (ComfyUI's model folders and the one ``missing_models``).
"""

from __future__ import annotations

from .headless.client import ComfyClient, JobResult, encode_multipart, failure_event, run
from .headless.graph import Overrides, apply_overrides, image_roles, load_workflow, required_models
from .headless.launcher import LocalComfy, diagnose_startup
from .model_folders import (LEGACY_FOLDERS, ModelFolders, WorkflowError, comfy_args_value, missing_models,
                            model_folders, read_extra_model_paths)
from .pipeline import model_files

__all__ = ["ComfyClient", "JobResult", "encode_multipart", "failure_event", "run", "Overrides", "apply_overrides",
           "image_roles", "load_workflow", "required_models", "LocalComfy", "diagnose_startup", "LEGACY_FOLDERS",
           "ModelFolders", "WorkflowError", "comfy_args_value", "missing_models", "model_folders",
           "read_extra_model_paths", "model_files", "saved_face", "EXIT_FAILED", "EXIT_USAGE", "EXIT_MISSING_MODELS"]

# Exit codes of the headless runner (and of scripts/get_models.py, which shares the first three).
EXIT_FAILED = 1  # the job failed (or, for the installer, a download failed)
EXIT_USAGE = 2  # a bad command line or input file (argparse uses 2 as well)
EXIT_MISSING_MODELS = 3  # models are missing; what to download and where is printed


def saved_face(name: str, comfyui=None, comfy_args=None, models_dirs=None):
    """The picture (a Path) of face ``name`` of the face library (``<models>/modelswap_faces/NAME/face.png``), looked
    up in the models folders ComfyUI uses (:func:`model_folders`): the runners' ``--face NAME``. A bad name, or one
    not saved (the message lists the saved faces), raises ``ValueError``; no models folder, :class:`WorkflowError`."""
    from .pipeline import face_library as fl

    fl.check_name(name)
    if not (comfyui or models_dirs or comfy_args_value(list(comfy_args or []), "--base-directory")):
        raise WorkflowError(f"the face library is in ComfyUI's models folder ({fl.FOLDER}/): give --comfyui, "
                            "or --models-dir with the models folder of the ComfyUI at --server")
    return fl.face_folder(model_folders(comfyui, comfy_args, models_dirs).dirs(fl.FOLDER), name) / fl.PICTURE

"""What the nodes need from ComfyUI's internals: model folders, tensors, progress.

The node modules themselves import only ComfyUI's public node API (``comfy_api.latest``);
everything else the nodes need from ComfyUI (``folder_paths``, ``comfy.utils``,
``comfy.model_management``) goes through here, imported lazily so the pack's import stays
cheap, except model memory: ``comfy_memory.py`` hands the pack's torch models to ComfyUI's
memory management (``comfy.model_patcher``, ``load_models_gpu``). The HTTP API is the other user of ComfyUI internals: ``fashn_api/register.py`` and
``fashn_api/comfy_backend.py`` read the server (``server.PromptServer``, ``comfy.cli_args``)
and ``folder_paths``. The comfy-free pipeline (``pipeline/``) never sees ComfyUI.
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from .pipeline.contract import CHECKPOINT_SUFFIXES

PACK = "ModelSwap"
CATEGORY = "Model Swap"
WEIGHT_EXTENSIONS = {*CHECKPOINT_SUFFIXES, ".bin"}
# The pack's own models sub-folders (ComfyUI knows the others it reads: diffusers, checkpoints, controlnet,
# loras, clip_vision, diffusion_models, text_encoders, vae) and the file types listed in them.
PACK_FOLDERS = {"ipadapter": WEIGHT_EXTENSIONS, "insightface": WEIGHT_EXTENSIONS | {".onnx"},
                "human_parsing": WEIGHT_EXTENSIONS, "facedetection": {".onnx"}, "mediapipe": {".tflite"},
                "modelswap_faces": {".png"}}  # the face library: one sub-folder per saved face (face_nodes.py)


def register_model_folders() -> None:
    """Add the pack's folders to ComfyUI's ``folder_paths`` without overriding paths the user set
    (extra_model_paths.yaml or another pack may already have registered them)."""
    import folder_paths

    for name, extensions in PACK_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, exts = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            if isinstance(exts, set):
                exts.update(extensions)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(extensions))


def folder_roots(name: str) -> list[str]:
    import folder_paths

    try:
        return folder_paths.get_folder_paths(name)
    except KeyError:
        return []


def list_subfolders(name: str, marker: str | None = None, sub: str = "") -> list[str]:
    """Sub-folders of every registered ``name`` folder (optionally those holding ``marker``)."""
    found = set()
    for root in folder_roots(name):
        base = os.path.join(root, sub)
        if not os.path.isdir(base):
            continue
        for entry in os.listdir(base):
            path = os.path.join(base, entry)
            if os.path.isdir(path) and (marker is None or _has(path, marker)):
                found.add(entry)
    return sorted(found)


def _has(path: str, marker: str) -> bool:
    if marker.startswith("*"):
        return any(f.endswith(marker[1:]) for f in os.listdir(path))
    return os.path.exists(os.path.join(path, marker))


def list_files(name: str) -> list[str]:
    import folder_paths

    try:
        return list(folder_paths.get_filename_list(name))
    except KeyError:
        return []


def with_default(options: list[str], default: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Dropdown options: what is installed, plus the default name even when it is missing, so an
    exported workflow validates and the loader can say exactly what to download."""
    out = list(extra)
    if default and default not in options:
        out.append(default)
    return out + [o for o in options if o not in out]


def model_path(kind: str, name: str, sub: str = "") -> str:
    """Full path of ``name`` in the first registered ``kind`` folder that has it; when none has it,
    the path where it belongs (the loader then says what to download)."""
    roots = folder_roots(kind)
    for root in roots:
        path = os.path.join(root, sub, name)
        if os.path.exists(path):
            return path
    import folder_paths

    return os.path.join(roots[0] if roots else os.path.join(folder_paths.models_dir, kind), sub, name)


def output_file(subfolder: str, filename: str) -> str:
    """Where a file ComfyUI's save helper reported (subfolder, filename) lies in the output folder."""
    import folder_paths

    return os.path.join(folder_paths.get_output_directory(), subfolder, filename)


def input_file(name: str) -> str | None:
    """The file a LoadImage name points at in ComfyUI's input folder, or None when there is none."""
    import folder_paths

    path = folder_paths.get_annotated_filepath(name)
    return path if os.path.isfile(path) else None


def require_module(module: str, node: str, pip_name: str | None = None):
    """Import an optional dependency or raise an error naming the node that needs it and the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeError(
            f"{node} needs the Python package '{pip_name or module}', which is not installed "
            f"({exc}). Install it into ComfyUI's Python: pip install {pip_name or module}"
        ) from exc


def torch_device(choice: str):
    """'auto' means ComfyUI's own device choice (respects --cpu, --cuda-device ...)."""
    if choice == "auto":
        import comfy.model_management as mm

        return mm.get_torch_device()
    return choice


def step_callback(total_hint: int = 0):
    """A sampler ``on_step`` that moves ComfyUI's progress bar and is a cancel point."""
    import comfy.model_management as mm
    import comfy.utils

    bar = comfy.utils.ProgressBar(max(1, total_hint))

    def on_step(index: int, total: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(index + 1, total)

    return on_step


# -- tensors <-> numpy -------------------------------------------------------------------------

def images_from_tensor(image) -> list[np.ndarray]:
    """ComfyUI IMAGE [B, H, W, C] float in [0, 1] -> list of uint8 (H, W, 3)."""
    if image.ndim == 3:
        image = image.unsqueeze(0)
    arr = image.detach().cpu().float().numpy()
    return [np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)[:, :, :3] for a in arr]


def tensor_from_images(images: list[np.ndarray]):
    import torch

    if not images:
        raise ValueError("no images to return")
    return torch.from_numpy(np.stack(images).astype(np.float32) / 255.0)


def masks_from_tensor(mask, count: int) -> list[np.ndarray]:
    """ComfyUI MASK [B, H, W] or [H, W] -> ``count`` float32 (H, W) masks (a single mask is reused)."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    arr = mask.detach().cpu().float().numpy()
    if arr.shape[0] not in (1, count):
        raise ValueError(f"The mask batch has {arr.shape[0]} masks for {count} images; give one mask or one per image.")
    return [arr[min(i, arr.shape[0] - 1)] for i in range(count)]


def tensor_from_masks(masks: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack([m.astype(np.float32) for m in masks]))

"""SDXL inpainting as an engine, loaded on diffusers' own paths.

* A **diffusers folder** (``models/diffusers/stable-diffusion-xl-1.0-inpainting-0.1``):
  ``StableDiffusionXLInpaintPipeline.from_pretrained`` (the ``fp16`` variant when the folder
  holds it and the dtype wants it).
* A **single file** in Stability's key layout (``models/checkpoints``, base or inpainting):
  ``UNet2DConditionModel.from_single_file(..., in_channels=<read from the header>)`` and the
  pipeline's ``from_single_file`` against the configs and CLIP tokenizers shipped in
  ``configs/sdxl``; never the hub.
* An optional SDXL **ControlNet**: ``StableDiffusionXLControlNetInpaintPipeline.from_pipe``
  over the same components.
* Optional **IP-Adapter FaceID** (``faceid.attach``): a pipeline of its own whose UNet shares
  the base weights, so engines with different adapters never change each other.

Engines are cached per files and settings (one base SDXL at a time); a removed or replaced
file is loaded again.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import model_files
from ..contract import CHECKPOINT_SUFFIXES, SAFETENSORS_SUFFIXES
from ..errors import InputValidationError, ModelSwapError
from . import common, diffusers_compat
from .base import Capabilities, InpaintRequest, Preset, StepCallback

CAPABILITIES = Capabilities(
    name="sdxl", reference_image=False, embedding_identity=True, controlnet=True, guidance=True,
    work_size=1024, side_multiple=8, display_name="SDXL inpainting", outpaint=True,
    licence="CreativeML Open RAIL++-M (SDXL base and inpainting)", commercial_use=True,
    text_to_image=True,  # the inpainting UNet with everything masked draws from the prompt (Create Face)
    presets={"fast": Preset(steps=12, refine_steps=6, refine_work_size=512),
             "balanced": Preset(steps=20, refine_steps=10, refine_work_size=768),
             "quality": Preset(steps=30, refine_steps=12, refine_work_size=1024)})
# The shipped API-format workflows the HTTP API fills for this engine: (without, with a face reference).
API_WORKFLOWS = ("api/model_swap_sdxl_api.json", "api/model_swap_sdxl_face_reference_api.json")
# Where the Engine Loader finds the main model: an SDXL checkpoint, or a diffusers folder.
MODEL_FOLDERS = ("checkpoints", "diffusers")
LOADER_NODE = "ModelSwap_PipelineLoader"  # the engine-specific loader node (with FaceID and ControlNet)
DEFAULT_MODEL = "stable-diffusion-xl-1.0-inpainting-0.1"  # the registry's sdxl_inpaint (test_engine_seam checks)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "sdxl"
CONTROLNET_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "controlnet_sdxl" / "config.json"
CONVERT_HINT = ("Use an SDXL checkpoint (e.g. sd_xl_base_1.0.safetensors or an SDXL inpainting checkpoint) in "
                "ComfyUI/models/checkpoints, or the diffusers folder stable-diffusion-xl-1.0-inpainting-0.1 in "
                "ComfyUI/models/diffusers")
# Keys of Stability's original SDXL layout, and what other files look like.
KEY_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
KEY_ADD_EMBED = "model.diffusion_model.label_emb.0.0.weight"
KEY_CLIP_L = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
KEY_OPEN_CLIP_G = "conditioner.embedders.1.model.positional_embedding"
NOT_SDXL = (
    ("conditioner.embedders.0.model.positional_embedding", "an SDXL refiner checkpoint (it cannot inpaint people)"),
    ("cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
     "a Stable Diffusion 1.x checkpoint"),
    ("cond_stage_model.transformer.embeddings.position_embedding.weight", "a Stable Diffusion 1.x checkpoint"),
    ("cond_stage_model.model.positional_embedding", "a Stable Diffusion 2.x checkpoint"),
)
MAX_CACHED_BASES = 1  # SDXL is ~7 GB in fp16: free the previous one before loading another
MAX_CACHED_ATTACHED = 4

_LOCK = threading.RLock()
_BASES: dict[tuple, "SDXLEngine"] = {}
_ATTACHED: dict[tuple, "SDXLEngine"] = {}


@dataclass(frozen=True)
class Files:
    model: Path  # diffusers folder or single-file checkpoint
    controlnet: Path | None = None  # diffusers folder or single file
    faceid: Any = None  # faceid.FaceIDFiles, or None
    config: Path | None = None  # a diffusers-layout SDXL config folder replacing the shipped one (single files)


@dataclass(frozen=True)
class SDXLEngine:
    pipe: Any
    device: Any
    dtype: Any
    source: str
    capabilities: Capabilities
    offload: str = "none"
    faceid: Any = None  # faceid.FaceIDState when an adapter is attached

    def inpaint(self, request: InpaintRequest, on_step: StepCallback | None = None) -> list[np.ndarray]:
        from .sdxl_inpaint import inpaint

        return inpaint(self, request, on_step)


def clear_cache() -> None:
    with _LOCK:
        had = bool(_BASES or _ATTACHED)
        _BASES.clear()
        _ATTACHED.clear()
    if had:
        common.free_accelerator_memory()


def load_model(model: Path, locate, *, device: Any = "auto", dtype: Any = None, offload: str = "none") -> SDXLEngine:
    """The Engine Loader's entry: the SDXL model alone (no FaceID, no ControlNet: the Pipeline Loader
    adds those)."""
    return load(Files(model=Path(model)), device=device, dtype=dtype, offload=offload)


def load(files: Files, *, device: Any = "auto", dtype: Any = None, offload: str = "none") -> SDXLEngine:
    """The SDXL engine for ``files`` (cached); FaceID, when named, on a pipeline of its own."""
    diffusers_compat.check("sdxl")
    dev = common.resolve_device(device)
    torch_dtype = common.resolve_dtype(dtype, dev)
    offload = common.check_offload(offload, dev)
    model, control = Path(files.model).expanduser(), files.controlnet and Path(files.controlnet).expanduser()
    kind = _classify(model)
    if control:
        _check_controlnet_path(control)
    key = (common.stamp(model), control and common.stamp(control), files.config and str(files.config),
           str(dev), str(torch_dtype), offload)
    with _LOCK:
        base = _BASES.get(key)
        if base is None:
            if _BASES:
                _BASES.clear()
                _ATTACHED.clear()
                common.free_accelerator_memory()
            base = _load_base(model, kind, control, files.config, dev, torch_dtype, offload)
            _BASES[key] = base
        if files.faceid is None:
            return base
        fkey = (key, files.faceid, tuple(common.stamp(p) for p in dataclasses.astuple(files.faceid)
                                          if isinstance(p, (str, Path))))
        if fkey not in _ATTACHED:
            from . import faceid

            pipe, state = faceid.attach(base.pipe, files.faceid, offload=offload)
            while len(_ATTACHED) >= MAX_CACHED_ATTACHED:
                _ATTACHED.pop(next(iter(_ATTACHED)))
            _ATTACHED[fkey] = dataclasses.replace(
                base, pipe=pipe, faceid=state, source=f"{base.source} + {Path(files.faceid.adapter).name}",
                capabilities=dataclasses.replace(base.capabilities, embedding_identity=True))
        return _ATTACHED[fkey]


def _load_base(model: Path, kind: str, control: Path | None, config: Path | None, dev, torch_dtype,
               offload: str) -> SDXLEngine:
    pipe = _from_folder(model, torch_dtype) if kind == "diffusers" else _from_single_file(model, torch_dtype, config)
    if control:
        from diffusers import StableDiffusionXLControlNetInpaintPipeline

        cn = _load_controlnet(control, torch_dtype, config, pipe.unet)
        pipe = StableDiffusionXLControlNetInpaintPipeline.from_pipe(pipe, controlnet=cn)
    common.place(pipe, dev, offload)
    caps = dataclasses.replace(CAPABILITIES, embedding_identity=False, controlnet=control is not None)
    return SDXLEngine(pipe=pipe, device=dev, dtype=torch_dtype, source=str(model), capabilities=caps,
                      offload=offload)


# ----------------------------------------------------------------------------- loading


def _classify(path: Path) -> str:
    """"diffusers" or "single_file"; a missing or wrong path names folder, file and source."""
    if not path.exists():
        model_files.require(model_files.generator_key(path.name), path)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            files = sorted(p.name for p in path.iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES)
            hint = f"; it holds {', '.join(files[:3])}: choose that file instead of the folder" if files else ""
            raise model_files.missing_error(model_files.MODELS["sdxl_inpaint"], path,
                                            "this folder has no model_index.json" + hint, path.name)
        model_files.require("sdxl_inpaint", path)
        return "diffusers"
    model_files.require("sdxl_checkpoint", path)
    return "single_file"


def _from_folder(path: Path, torch_dtype):
    import torch
    from diffusers import StableDiffusionXLInpaintPipeline

    cls_name = str(_read_json(path / "model_index.json").get("_class_name", ""))
    if not cls_name.startswith("StableDiffusionXL") or "Refiner" in cls_name:
        raise InputValidationError(
            f"Folder '{path.name}' holds a {cls_name or 'unknown'} pipeline, not SDXL base/inpainting. {CONVERT_HINT}.")
    weights = {c: [f.name for f in (path / c).glob("*") if f.suffix in (".safetensors", ".bin")]
               for c in ("unet", "vae", "text_encoder", "text_encoder_2") if (path / c).is_dir()}
    has_fp16 = all(any(".fp16." in n for n in names) for names in weights.values())
    has_full = all(any(".fp16." not in n for n in names) for names in weights.values())
    if not (has_fp16 or has_full):
        lacking = [c for c, names in weights.items() if not names] or ["a complete set of"]
        raise model_files.missing_error(model_files.MODELS["sdxl_inpaint"], path,
                                        f"no weights in {', '.join(lacking)}", path.name)
    variant = "fp16" if has_fp16 and (torch_dtype == torch.float16 or not has_full) else None
    try:
        pipe = StableDiffusionXLInpaintPipeline.from_pretrained(
            str(path), torch_dtype=torch_dtype, local_files_only=True, variant=variant, add_watermarker=False)
    except Exception as exc:
        raise InputValidationError(
            f"Could not load the SDXL diffusers folder {path} ({type(exc).__name__}: {exc}). A component is missing or "
            f"corrupt: re-download it from {model_files.MODELS['sdxl_inpaint'].source}.") from exc
    _check_no_meta(pipe, path)
    return pipe


def _from_single_file(path: Path, torch_dtype, config: Path | None):
    from diffusers import StableDiffusionXLInpaintPipeline, UNet2DConditionModel

    in_channels = inspect_checkpoint(path)
    config = Path(config) if config else CONFIG_DIR
    try:
        unet = UNet2DConditionModel.from_single_file(
            str(path), config=str(config), subfolder="unet", in_channels=in_channels, torch_dtype=torch_dtype,
            local_files_only=True)
        pipe = StableDiffusionXLInpaintPipeline.from_single_file(
            str(path), config=str(config), unet=unet, torch_dtype=torch_dtype, local_files_only=True,
            add_watermarker=False)
    except ModelSwapError:
        raise
    except Exception as exc:
        raise InputValidationError(
            f"'{path.name}' could not be loaded with the SDXL configs in {config} ({type(exc).__name__}: "
            f"{str(exc)[:300]}). It is not a standard SDXL checkpoint (another architecture, or pruned); "
            f"{CONVERT_HINT}.") from exc
    _check_no_meta(pipe, path)
    return pipe


def inspect_checkpoint(path: Path) -> int:
    """The UNet's input width (9 = inpainting, 4 = base) of an SDXL single file, read from its keys
    without loading tensors; any other file is refused saying what it looks like."""
    suffix = path.suffix.lower()
    if suffix == ".sft":
        raise InputValidationError(
            f"'{path.name}' has the short safetensors suffix .sft, which diffusers' single-file loader does not "
            f"read: rename it to '{path.stem}.safetensors' (the content stays as it is).")
    if suffix not in CHECKPOINT_SUFFIXES:
        raise InputValidationError(f"'{path.name}' is not a checkpoint file ({suffix or 'no extension'}). {CONVERT_HINT}.")
    return unet_width_from_keys(path.name, _key_shapes(path))


def unet_width_from_keys(name: str, shapes: dict[str, tuple]) -> int:
    """The UNet input width an SDXL key layout says; other layouts are refused naming what they are."""
    path = Path(name)
    if KEY_CONV_IN in shapes and KEY_CLIP_L in shapes and KEY_OPEN_CLIP_G in shapes and KEY_ADD_EMBED in shapes:
        width = int(shapes[KEY_CONV_IN][1])
        if width not in (4, 9):
            raise InputValidationError(
                f"'{path.name}' has an SDXL UNet with {width} input channels; only base (4) and inpainting (9) "
                f"UNets run here. {CONVERT_HINT}.")
        if not any(k.startswith("first_stage_model.") for k in shapes):
            raise InputValidationError(f"'{path.name}' has no VAE weights (first_stage_model.*). {CONVERT_HINT}.")
        return width
    what = next((w for key, w in NOT_SDXL if key in shapes), None)
    if what is None:
        keys = list(shapes)
        if any(k.startswith(("lora_", "lora_unet_")) or ".lora_" in k for k in keys):
            what = "a LoRA, not a full checkpoint (LoRAs go in models/loras)"
        elif any(k.startswith(("conv_in.", "down_blocks.", "encoder.down_blocks.")) for k in keys):
            what = "a single diffusers-format component (UNet or VAE weights), not a full checkpoint"
        else:
            what = "an empty file" if not keys else f"not an SDXL checkpoint (first keys: {', '.join(sorted(keys)[:3])})"
    raise InputValidationError(f"'{path.name}' is not an SDXL checkpoint: it looks like {what}. {CONVERT_HINT}.")


def _key_shapes(path: Path) -> dict[str, tuple]:
    from .weights import read_state_dict

    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:
            raise InputValidationError(
                f"'{path.name}' cannot be read as a safetensors file ({type(exc).__name__}: {exc}); it is corrupt or "
                f"truncated: re-download it. {CONVERT_HINT}.") from exc
    state = read_state_dict(path, "SDXL checkpoint")
    while isinstance(state.get("state_dict"), dict):  # Lightning-style checkpoints nest their weights
        state = state["state_dict"]
    return {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}


def _check_controlnet_path(path: Path) -> None:
    if not path.exists():
        raise model_files.missing_error(model_files.MODELS["controlnet"], path, "nothing at this path", path.name)
    if path.is_dir():
        model_files.require("controlnet", path)
    elif path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise InputValidationError(
            f"ControlNet '{path.name}' is neither a .safetensors file nor a diffusers folder with config.json: choose "
            "the ControlNet's folder (e.g. models/controlnet/controlnet-openpose-sdxl-1.0) or its .safetensors file.")


def _load_controlnet(path: Path, torch_dtype, config: Path | None, unet):
    from diffusers import ControlNetModel

    source = model_files.MODELS["controlnet"].source
    try:
        if path.is_dir():
            names = [f.name for f in path.glob("diffusion_pytorch_model*")]
            if not names:
                raise model_files.missing_error(model_files.MODELS["controlnet"], path,
                                                "config.json without diffusion_pytorch_model.safetensors", path.name)
            variant = "fp16" if all(".fp16." in n for n in names) else None
            cn = ControlNetModel.from_pretrained(str(path), torch_dtype=torch_dtype, local_files_only=True,
                                                 variant=variant)
        else:
            beside = [c for c in (path.with_suffix(".json"), path.parent / "config.json") if c.is_file()]
            cfg = beside[0] if beside else (Path(config) / "controlnet" / "config.json"
                                            if config and (Path(config) / "controlnet").is_dir() else CONTROLNET_CONFIG)
            cn = ControlNetModel.from_single_file(str(path), config=str(cfg.parent), torch_dtype=torch_dtype,
                                                  local_files_only=True)
    except ModelSwapError:
        raise
    except Exception as exc:
        raise InputValidationError(
            f"ControlNet '{path.name}' could not be loaded ({type(exc).__name__}: {str(exc)[:300]}). Use an SDXL "
            f"ControlNet as a diffusers folder (config.json + diffusion_pytorch_model.safetensors), e.g. {source}.") from exc
    a, b = cn.config, unet.config
    if a.cross_attention_dim != b.cross_attention_dim or list(a.block_out_channels) != list(b.block_out_channels):
        raise InputValidationError(
            f"ControlNet '{path.name}' does not fit this SDXL model (cross-attention {a.cross_attention_dim} vs "
            f"{b.cross_attention_dim}, blocks {list(a.block_out_channels)} vs {list(b.block_out_channels)}): it is "
            f"probably an SD1.5 ControlNet. Use an SDXL ControlNet, e.g. {source}.")
    if any(p.is_meta for p in cn.parameters()):
        raise InputValidationError(f"ControlNet '{path.name}' lacks weights its config names: use its diffusers folder.")
    return cn


def _check_no_meta(pipe, path: Path) -> None:
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        meta = [n for n, p in getattr(pipe, name).named_parameters() if p.is_meta]
        if meta:
            raise InputValidationError(
                f"'{path.name}' lacks {len(meta)} weights of the {name} (e.g. {meta[0]}): the file does not match the "
                f"SDXL architecture (pruned or another model). {CONVERT_HINT}.")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputValidationError(f"{path} is not readable JSON ({exc}); re-download or restore it.") from exc

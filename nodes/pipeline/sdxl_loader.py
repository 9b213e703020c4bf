"""Load the SDXL inpainting engine from a diffusers folder or a single-file checkpoint.

Two ways to hold SDXL:

* a **diffusers folder** (``model_index.json`` + component sub-folders, e.g.
  ``models/diffusers/stable-diffusion-xl-1.0-inpainting-0.1``), loaded with
  ``StableDiffusionXLInpaintPipeline.from_pretrained`` (the ``fp16`` variant when
  that is what the folder holds or what the dtype wants);
* a **single-file checkpoint** in Stability's original key layout (what
  ``models/checkpoints`` holds: ``sd_xl_base_1.0.safetensors`` or any SDXL
  inpainting/fine-tuned checkpoint), loaded with ``from_single_file`` against the
  component configs shipped in ``configs/sdxl`` -- never the Hub. The UNet's
  input-conv width (9 = inpainting, 4 = base) is read from the file header and the
  UNet config adjusted to it. Tokenizers come from ``tokenizer_dir`` (ComfyUI's own
  ``comfy/sd1_tokenizer`` when running inside ComfyUI).

An optional SDXL ControlNet turns the engine into a
``StableDiffusionXLControlNetInpaintPipeline`` built from the same component
objects (no second copy of the UNet, VAE or text encoders).

Loaded engines are cached per (path, mtime, ControlNet, device, dtype, offload,
configs, tokenizers); :func:`clear_cache` empties the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import model_files
from .engine import Engine
from .errors import InputValidationError, MissingModelError, ModelSwapError

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
SDXL_CONFIG_DIR = CONFIG_ROOT / "sdxl"
CONTROLNET_CONFIG_DIR = CONFIG_ROOT / "controlnet_sdxl"

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
OFFLOAD_MODES = ("none", "model")
# Files from_single_file reads from a config folder (tokenizers are passed in as objects).
CONFIG_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "scheduler/scheduler_config.json",
)
TOKENIZER_FILES = ("vocab.json", "merges.txt")
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")

# Keys of Stability's original (SGM) SDXL layout.
KEY_UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
KEY_UNET_ADD_EMBED = "model.diffusion_model.label_emb.0.0.weight"
KEY_CLIP_L = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
KEY_OPEN_CLIP_G = "conditioner.embedders.1.model.positional_embedding"
OPEN_CLIP_G_PREFIX = "conditioner.embedders.1."
KEY_REFINER_CLIP = "conditioner.embedders.0.model.positional_embedding"
KEY_SD1_CLIP = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
KEY_SD1_CLIP_OLD = "cond_stage_model.transformer.embeddings.position_embedding.weight"
KEY_SD2_CLIP = "cond_stage_model.model.positional_embedding"
VAE_PREFIXES = ("first_stage_model.",)

CONVERT_HINT = (
    "Use an SDXL checkpoint (e.g. sd_xl_base_1.0.safetensors or an SDXL inpainting checkpoint) in "
    "ComfyUI/models/checkpoints, or the diffusers folder stable-diffusion-xl-1.0-inpainting-0.1 in "
    "ComfyUI/models/diffusers"
)

MAX_CACHED_ENGINES = 1  # SDXL is ~7 GB in fp16: keep one engine, free the previous one first
_CACHE: "OrderedDict[tuple, Engine]" = OrderedDict()
_LOCK = threading.RLock()


# ------------------------------------------------------------------ public API


@dataclass(frozen=True)
class CheckpointInfo:
    """What a single-file checkpoint holds, read from its header (no tensors loaded)."""

    path: Path
    fmt: str  # "safetensors" | "torch"
    in_channels: int  # 9 = inpainting UNet, 4 = base UNet
    num_keys: int

    @property
    def is_inpainting(self) -> bool:
        return self.in_channels == 9


def clear_cache() -> None:
    """Forget every cached engine (their memory is freed once no caller holds them)."""
    with _LOCK:
        had = bool(_CACHE)
        _CACHE.clear()
    if had:
        _free_accelerator_memory()


def cached_engines() -> list[Engine]:
    with _LOCK:
        return list(_CACHE.values())


def load_engine(
    path: str | os.PathLike,
    *,
    controlnet_path: str | os.PathLike | None = None,
    device: Any = "cpu",
    dtype: Any = None,
    offload: str = "none",
    config_dir: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    cache: bool = True,
) -> Engine:
    """Load (or return the cached) SDXL inpainting engine.

    ``path``: a diffusers SDXL folder (has model_index.json) or an SDXL single-file
    checkpoint (.safetensors; .ckpt/.pt/.pth are read with ``weights_only=True``).
    ``controlnet_path``: optional SDXL ControlNet, diffusers folder or single file.
    ``device``: "cpu", "cuda", "cuda:N" or "auto"; ``dtype``: None (float16 on CUDA,
    float32 on CPU), "fp16", "bf16", "fp32" or a torch dtype. ``offload="model"``
    enables diffusers' model CPU offload (CUDA only). ``config_dir`` replaces the
    shipped SDXL component configs for single files; ``tokenizer_dir`` is a folder
    with CLIP vocab.json + merges.txt (default: ComfyUI's comfy/sd1_tokenizer).
    """
    import torch

    path = Path(path).expanduser()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    offload = _check_offload(offload, dev)
    cn_path = Path(controlnet_path).expanduser() if controlnet_path not in (None, "") else None

    kind = _classify_path(path)
    if cn_path is not None:  # before spending minutes on the base model
        _check_controlnet_path(cn_path)
    cfg_dir = Path(config_dir).expanduser() if config_dir not in (None, "") else None
    tok_dir = Path(tokenizer_dir).expanduser() if tokenizer_dir not in (None, "") else None

    key = (
        str(path.resolve()), _stamp(path),
        str(cn_path.resolve()) if cn_path else None, _stamp(cn_path) if cn_path else None,
        str(dev), str(torch_dtype), offload,
        str(cfg_dir.resolve()) if cfg_dir else None,
        str(tok_dir.resolve()) if tok_dir else None,
    )
    with _LOCK:
        if cache and key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        if cache:
            # free the previous engine(s) before loading another: never hold two SDXLs at once
            if len(_CACHE) >= MAX_CACHED_ENGINES:
                while len(_CACHE) >= MAX_CACHED_ENGINES:
                    _CACHE.popitem(last=False)
                _free_accelerator_memory()

        extras: dict = {"format": kind}
        if kind == "diffusers":
            pipe = _load_diffusers_folder(path, torch_dtype, extras)
        else:
            pipe = _load_single_file(path, torch_dtype, cfg_dir, tok_dir, extras)
        extras["in_channels"] = int(pipe.unet.config.in_channels)

        if cn_path is not None:
            controlnet = _load_controlnet(cn_path, torch_dtype, cfg_dir, pipe.unet)
            pipe = _controlnet_pipeline(pipe, controlnet)
            extras["controlnet"] = str(cn_path)

        extras["attention"] = _use_sdpa(pipe)
        _place(pipe, dev, offload)
        extras["vae_upcast"] = bool(torch_dtype == torch.float16 and pipe.vae.config.get("force_upcast", True))
        pipe.set_progress_bar_config(disable=True)

        engine = Engine(
            pipe=pipe, device=dev, dtype=torch_dtype, has_controlnet=cn_path is not None,
            offload=offload, source=str(path), extras=extras,
        )
        if cache:
            _CACHE[key] = engine
        return engine


def resolve_device(device: Any):
    """"auto" -> cuda when available else cpu; a CUDA request without CUDA is an error."""
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as exc:
        raise InputValidationError(
            f"Unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputValidationError(
            f"Device {device!r} was requested but CUDA is not available in this PyTorch "
            f"({torch.__version__}): use device='cpu' (slow) or install a CUDA build of PyTorch."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputValidationError("Device 'mps' was requested but is not available: use device='cpu'.")
    return dev


_DTYPE_NAMES = {
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}


def resolve_dtype(dtype: Any, device) -> Any:
    """None/"auto" -> float16 on CUDA, float32 elsewhere; names or torch dtypes otherwise."""
    import torch

    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() in ("", "auto", "default")):
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float16, torch.bfloat16, torch.float32):
            return dtype
    elif isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in _DTYPE_NAMES:
        return getattr(torch, _DTYPE_NAMES[dtype.strip().lower().removeprefix("torch.")])
    raise InputValidationError(
        f"Unsupported dtype {dtype!r}: use 'fp16' (CUDA default), 'bf16' or 'fp32' (CPU default)."
    )


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Check that ``path`` is an SDXL single-file checkpoint and read its UNet input width.

    Reads only the safetensors header (or a memory-mapped, ``weights_only`` torch
    file); raises InputValidationError saying what the file is instead.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise InputValidationError(
            f"'{path.name}' is not a checkpoint file this pack loads ({suffix or 'no extension'}): "
            f"SDXL single files are .safetensors (or .ckpt/.pt). {CONVERT_HINT}."
        )
    if suffix == ".safetensors":
        shapes = _safetensors_shapes(path)
        fmt = "safetensors"
    else:
        state = _torch_state_dict(path)
        shapes = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
        del state
        fmt = "torch"
    _check_sdxl_keys(path, shapes)
    in_channels = int(shapes[KEY_UNET_CONV_IN][1])
    if in_channels not in (4, 9):
        raise InputValidationError(
            f"'{path.name}' has an SDXL UNet with {in_channels} input channels; this pack runs base (4) "
            f"or inpainting (9) SDXL UNets only. {CONVERT_HINT}."
        )
    return CheckpointInfo(path=path, fmt=fmt, in_channels=in_channels, num_keys=len(shapes))


def prepare_config_dir(in_channels: int, config_dir: str | os.PathLike | None = None) -> Path:
    """The component-config folder for a single-file load, with the UNet's ``in_channels``.

    Uses ``config_dir`` (or the shipped ``configs/sdxl``) as is when it already fits,
    else writes an adjusted copy of its config files into the pack's cache folder.
    """
    src = Path(config_dir) if config_dir is not None else SDXL_CONFIG_DIR
    missing = [f for f in CONFIG_FILES if not (src / f).is_file()]
    if missing:
        shipped = config_dir is None
        raise MissingModelError(
            f"SDXL config folder {src} lacks {', '.join(missing)}. "
            + ("Reinstall ComfyUI Model Swap: the pack ships these files in nodes/pipeline/configs/sdxl."
               if shipped else
               "Pass a folder laid out like a diffusers SDXL repo (model_index.json, unet/config.json, "
               "vae/config.json, text_encoder/config.json, text_encoder_2/config.json, "
               "scheduler/scheduler_config.json), or leave config_dir unset to use the shipped SDXL configs."),
            folder=str(src), filename=", ".join(missing),
            source="nodes/pipeline/configs/sdxl in this pack, or any SDXL diffusers repo "
                   "(https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0)",
        )
    unet_cfg = _read_json(src / "unet/config.json")
    if int(unet_cfg.get("in_channels", 4)) == in_channels:
        return src

    texts = {f: (src / f).read_text(encoding="utf-8") for f in CONFIG_FILES}
    digest = hashlib.sha256(
        json.dumps([str(src.resolve()), texts, in_channels], sort_keys=True).encode()
    ).hexdigest()[:16]
    dest = _cache_root() / f"sdxl-config-in{in_channels}-{digest}"
    if all((dest / f).is_file() for f in CONFIG_FILES):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        for f, text in texts.items():
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            if f == "unet/config.json":
                text = json.dumps({**unet_cfg, "in_channels": in_channels}, indent=2)
            (tmp / f).write_text(text, encoding="utf-8")
        try:
            os.replace(tmp, dest)
        except OSError:  # another process wrote it first
            if not all((dest / f).is_file() for f in CONFIG_FILES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def find_tokenizer_dirs(
    tokenizer_dir: str | os.PathLike | None = None, config_dir: str | os.PathLike | None = None
) -> tuple[Path, Path | None]:
    """Where the CLIP tokenizers for a single-file load come from.

    Returns (tokenizer folder, tokenizer_2 folder or None). None for the second
    means: the same vocabulary with SDXL's second-tokenizer pad token "!".
    Order: ``tokenizer_dir`` (a folder with vocab.json + merges.txt, or a diffusers
    SDXL folder with tokenizer/ and tokenizer_2/), ``config_dir``'s tokenizer/
    folders, ComfyUI's ``comfy/sd1_tokenizer``.
    """
    if tokenizer_dir is not None:
        tok = Path(tokenizer_dir)
        if _has_tokenizer(tok / "tokenizer"):
            return tok / "tokenizer", tok / "tokenizer_2" if _has_tokenizer(tok / "tokenizer_2") else None
        missing = [f for f in TOKENIZER_FILES if not (tok / f).is_file()]
        if missing and not _has_tokenizer(tok):
            raise MissingModelError(
                f"Tokenizer folder {tok} lacks {', '.join(missing)}. Point tokenizer_dir at a folder holding "
                "CLIP's vocab.json and merges.txt: ComfyUI ships one at ComfyUI/comfy/sd1_tokenizer, and every "
                "SDXL diffusers repo has one in tokenizer/.",
                folder=str(tok), filename=", ".join(missing),
                source="ComfyUI/comfy/sd1_tokenizer, or tokenizer/ of "
                       "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0",
            )
        return tok, None
    if config_dir is not None and _has_tokenizer(Path(config_dir) / "tokenizer"):
        second = Path(config_dir) / "tokenizer_2"
        return Path(config_dir) / "tokenizer", second if _has_tokenizer(second) else None
    for candidate in _comfy_tokenizer_candidates():
        if _has_tokenizer(candidate):
            return candidate, None
    raise MissingModelError(
        "No CLIP tokenizer found for the single-file SDXL checkpoint. Pass tokenizer_dir pointing at a "
        "folder with vocab.json and merges.txt (inside ComfyUI this is ComfyUI/comfy/sd1_tokenizer; "
        "any SDXL diffusers repo has one in tokenizer/).",
        folder="comfy/sd1_tokenizer", filename="vocab.json, merges.txt",
        source="ComfyUI/comfy/sd1_tokenizer, or tokenizer/ of "
               "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0",
    )


# ------------------------------------------------------------------ checks


def _classify_path(path: Path) -> str:
    """"diffusers" or "single_file"; raises MissingModelError naming folder, file and source."""
    looks_like_file = path.suffix.lower() in CHECKPOINT_SUFFIXES
    if not path.exists():
        key = "sdxl_checkpoint" if looks_like_file else "sdxl_inpaint"
        model_files.require(key, path)  # raises with folder, name and source
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            hint = ""
            files = sorted(p.name for p in path.glob("*") if p.suffix.lower() in CHECKPOINT_SUFFIXES)
            if files:
                hint = (f"; it holds checkpoint files ({', '.join(files[:3])}): pass one of those files "
                        "instead of the folder")
            spec = model_files.MODELS["sdxl_inpaint"]
            err = model_files.missing_error(
                spec, path, "this folder is not a diffusers pipeline: it has no model_index.json" + hint,
                path.name,
            )
            raise err
        model_files.require("sdxl_inpaint", path)
        return "diffusers"
    model_files.require("sdxl_checkpoint", path)
    return "single_file"


def _check_offload(offload: str, dev) -> str:
    mode = (offload or "none").strip().lower()
    if mode not in OFFLOAD_MODES:
        raise InputValidationError(
            f"Unknown offload mode {offload!r}: use 'none' (everything on the device) or 'model' "
            "(model CPU offload for GPUs with little VRAM)."
        )
    if mode == "model" and dev.type != "cuda":
        raise InputValidationError(
            f"offload='model' needs a CUDA device (it moves models between CPU and GPU) but the device is "
            f"'{dev}': use offload='none' on {dev.type}, or device='cuda' on a machine with an NVIDIA GPU."
        )
    return mode


def _stamp(path: Path | None) -> tuple:
    if path is None or not path.exists():
        return (None,)
    st = path.stat()
    if path.is_dir():
        marks = [st.st_mtime_ns]
        for name in ("model_index.json", "config.json"):
            if (path / name).is_file():
                marks.append((path / name).stat().st_mtime_ns)
        return tuple(marks)
    return (st.st_mtime_ns, st.st_size)


def _safetensors_shapes(path: Path) -> dict[str, tuple]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise InputValidationError(
            f"'{path.name}' cannot be read as a safetensors file ({type(exc).__name__}: {exc}); it is corrupt, "
            f"truncated or not a model. Re-download it. {CONVERT_HINT}."
        ) from exc


def _torch_state_dict(path: Path) -> dict:
    """A .ckpt/.pt state dict through ``torch.load(weights_only=True)`` (memory-mapped when possible)."""
    import torch

    mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise InputValidationError(
            f"'{path.name}' cannot be loaded safely as a PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). It is corrupt, or it holds pickled Python objects "
            "that weights_only loading refuses. Use the .safetensors release of the model instead. "
            f"{CONVERT_HINT}."
        ) from exc
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InputValidationError(
            f"'{path.name}' does not hold a state dict (found {type(obj).__name__}). {CONVERT_HINT}."
        )
    return obj


def _check_sdxl_keys(path: Path, shapes: dict) -> None:
    keys = shapes.keys()
    what = None
    if KEY_UNET_CONV_IN in keys and KEY_OPEN_CLIP_G in keys and KEY_CLIP_L in keys:
        if KEY_UNET_ADD_EMBED not in keys:
            what = "an SDXL-like file whose UNet lacks the text_time embedding (label_emb)"
        elif not any(k.startswith(VAE_PREFIXES) for k in keys):
            what = "an SDXL UNet and text encoders without VAE weights (first_stage_model.*)"
        else:
            return
    elif KEY_REFINER_CLIP in keys:
        what = "an SDXL refiner checkpoint (it has only the OpenCLIP text encoder and cannot inpaint people)"
    elif KEY_SD1_CLIP in keys or KEY_SD1_CLIP_OLD in keys:
        what = "a Stable Diffusion 1.x checkpoint"
    elif KEY_SD2_CLIP in keys:
        what = "a Stable Diffusion 2.x checkpoint"
    elif any(k.startswith(("conv_in.", "down_blocks.", "encoder.down_blocks.")) for k in keys):
        what = "a single diffusers-format component (UNet/VAE weights), not a full checkpoint"
    elif any(k.startswith(("lora_", "lora_unet_")) or ".lora_" in k for k in keys):
        what = "a LoRA, not a full checkpoint (LoRAs go in models/loras)"
    elif not keys:
        what = "an empty file"
    else:
        what = f"not a Stable Diffusion checkpoint (first keys: {', '.join(sorted(keys)[:3])})"
    raise InputValidationError(
        f"'{path.name}' is not an SDXL checkpoint: it looks like {what}. "
        f"SDXL checkpoints have model.diffusion_model.*, first_stage_model.* and conditioner.embedders.0/1.* "
        f"weights. {CONVERT_HINT}."
    )


def _check_controlnet_path(path: Path) -> None:
    spec = model_files.MODELS["controlnet"]
    if not path.exists():
        raise model_files.missing_error(spec, path, "nothing at this path", path.name)
    if path.is_dir():
        model_files.require("controlnet", path)
    elif path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise InputValidationError(
            f"ControlNet '{path.name}' is not a .safetensors/.ckpt file or a diffusers folder with config.json: "
            "pass the ControlNet's diffusers folder (e.g. models/controlnet/controlnet-openpose-sdxl-1.0) "
            "or its .safetensors file."
        )


# ------------------------------------------------------------------ loading


def _load_diffusers_folder(path: Path, torch_dtype, extras: dict):
    from diffusers import StableDiffusionXLInpaintPipeline

    index = _read_json(path / "model_index.json")
    cls_name = str(index.get("_class_name", ""))
    if not cls_name.startswith("StableDiffusionXL") or "Refiner" in cls_name:
        raise InputValidationError(
            f"Folder '{path.name}' holds a {cls_name or 'unknown'} pipeline, not SDXL base/inpainting. "
            f"{CONVERT_HINT}."
        )
    variant = _folder_variant(path, torch_dtype)
    extras["variant"] = variant
    try:
        pipe = StableDiffusionXLInpaintPipeline.from_pretrained(
            str(path), torch_dtype=torch_dtype, local_files_only=True, variant=variant, add_watermarker=False,
        )
    except ModelSwapError:
        raise
    except Exception as exc:
        raise InputValidationError(
            f"Could not load the SDXL diffusers folder {path} ({type(exc).__name__}: {exc}). A component is "
            "missing or corrupt: re-download the folder from "
            f"{model_files.MODELS['sdxl_inpaint'].source}."
        ) from exc
    _check_no_meta(pipe, path)
    return pipe


def _weights_in(folder: Path, fp16: bool) -> bool:
    if not folder.is_dir():
        return False
    for f in folder.iterdir():
        name = f.name
        if not name.endswith((".safetensors", ".bin")):
            continue
        is_fp16 = ".fp16." in name or ".fp16-" in name
        if is_fp16 == fp16:
            return True
    return False


def _folder_variant(path: Path, torch_dtype) -> str | None:
    import torch

    comps = [c for c in WEIGHT_COMPONENTS if (path / c).is_dir()]
    have_fp16 = all(_weights_in(path / c, True) for c in comps)
    have_plain = all(_weights_in(path / c, False) for c in comps)
    if have_fp16 and (torch_dtype == torch.float16 or not have_plain):
        return "fp16"
    if have_plain:
        return None
    lacking = [c for c in WEIGHT_COMPONENTS if not (_weights_in(path / c, False) or _weights_in(path / c, True))]
    spec = model_files.MODELS["sdxl_inpaint"]
    problem = (f"no weights in {', '.join(c + '/' for c in lacking)}" if lacking else
               "its components mix fp16-only and full-precision weights; download one complete set")
    raise model_files.missing_error(spec, path, problem, path.name)


def _load_single_file(path: Path, torch_dtype, cfg_dir: Path | None, tok_dir: Path | None, extras: dict):
    from diffusers import StableDiffusionXLInpaintPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    info = inspect_checkpoint(path)
    config = prepare_config_dir(info.in_channels, cfg_dir)
    tok1_dir, tok2_dir = find_tokenizer_dirs(tok_dir, cfg_dir)
    tokenizer, tokenizer_2 = _load_tokenizers(tok1_dir, tok2_dir)
    extras.update(config_dir=str(config), tokenizer_dir=str(tok1_dir), checkpoint_format=info.fmt)

    passed: dict = {}
    if _text_encoders_same_width(config):
        # diffusers tells CLIP-L from OpenCLIP-G by the width of the position embedding
        # (768 vs 1280). When both have the same width (small test models), it would load
        # the CLIP-L weights into text_encoder_2; build that encoder from the OpenCLIP keys only.
        passed["text_encoder_2"] = _open_clip_encoder(info, config, torch_dtype)
    try:
        pipe = StableDiffusionXLInpaintPipeline.from_single_file(
            str(path), config=str(config), local_files_only=True, torch_dtype=torch_dtype,
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, add_watermarker=False, **passed,
        )
    except ModelSwapError:
        raise
    except SingleFileComponentError as exc:
        raise InputValidationError(
            f"'{path.name}' lacks weights of an SDXL component: {str(exc).splitlines()[0]} {CONVERT_HINT}."
        ) from exc
    except Exception as exc:
        raise InputValidationError(
            f"'{path.name}' could not be loaded with the SDXL configs in {config} ({type(exc).__name__}: "
            f"{str(exc)[:300]}). The file is not a standard SDXL checkpoint (different architecture or pruned); "
            f"{CONVERT_HINT}."
        ) from exc
    _check_no_meta(pipe, path)
    return pipe


def _text_encoders_same_width(config: Path) -> bool:
    a = _read_json(config / "text_encoder/config.json").get("hidden_size")
    b = _read_json(config / "text_encoder_2/config.json").get("hidden_size")
    return a is not None and a == b


def _open_clip_encoder(info: CheckpointInfo, config: Path, torch_dtype):
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModelWithProjection

    if info.fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(str(info.path), framework="pt") as f:
            subset = {k: f.get_tensor(k) for k in f.keys() if k.startswith(OPEN_CLIP_G_PREFIX)}
    else:
        subset = {k: v for k, v in _torch_state_dict(info.path).items() if k.startswith(OPEN_CLIP_G_PREFIX)}
    return create_diffusers_clip_model_from_ldm(
        CLIPTextModelWithProjection, checkpoint=subset, config=str(config), subfolder="text_encoder_2",
        torch_dtype=torch_dtype, local_files_only=True,
    )


def _load_tokenizers(tok1_dir: Path, tok2_dir: Path | None):
    from transformers import CLIPTokenizer

    try:
        tok1 = CLIPTokenizer.from_pretrained(str(tok1_dir), local_files_only=True)
        if tok2_dir is not None:
            tok2 = CLIPTokenizer.from_pretrained(str(tok2_dir), local_files_only=True)
        else:
            # SDXL's second tokenizer is CLIP's vocabulary padded with "!" (id 0)
            tok2 = CLIPTokenizer.from_pretrained(str(tok1_dir), local_files_only=True, pad_token="!")
    except Exception as exc:
        raise InputValidationError(
            f"The CLIP tokenizer in {tok1_dir} could not be loaded ({type(exc).__name__}: {exc}). Point "
            "tokenizer_dir at a folder with CLIP's vocab.json and merges.txt (ComfyUI/comfy/sd1_tokenizer)."
        ) from exc
    return tok1, tok2


def _load_controlnet(path: Path, torch_dtype, cfg_dir: Path | None, unet):
    from diffusers import ControlNetModel

    try:
        if path.is_dir():
            variant = "fp16" if (_weights_in(path, True) and (not _weights_in(path, False)
                                                               or str(torch_dtype) == "torch.float16")) else None
            if not (_weights_in(path, True) or _weights_in(path, False)):
                raise model_files.missing_error(
                    model_files.MODELS["controlnet"], path,
                    "the folder has config.json but no diffusion_pytorch_model.safetensors", path.name,
                )
            controlnet = ControlNetModel.from_pretrained(
                str(path), torch_dtype=torch_dtype, local_files_only=True, variant=variant
            )
        else:
            config = _controlnet_config(path, cfg_dir)
            controlnet = ControlNetModel.from_single_file(
                str(path), config=str(config), local_files_only=True, torch_dtype=torch_dtype
            )
    except ModelSwapError:
        raise
    except Exception as exc:
        raise InputValidationError(
            f"ControlNet '{path.name}' could not be loaded ({type(exc).__name__}: {str(exc)[:300]}). Use an SDXL "
            f"ControlNet as a diffusers folder (config.json + diffusion_pytorch_model.safetensors), e.g. "
            f"{model_files.MODELS['controlnet'].source}."
        ) from exc
    cn_cfg, u_cfg = controlnet.config, unet.config
    if (cn_cfg.cross_attention_dim != u_cfg.cross_attention_dim
            or cn_cfg.get("addition_embed_type") != u_cfg.get("addition_embed_type")
            or list(cn_cfg.block_out_channels) != list(u_cfg.block_out_channels)):
        raise InputValidationError(
            f"ControlNet '{path.name}' does not match this SDXL model (ControlNet cross-attention dim "
            f"{cn_cfg.cross_attention_dim}, blocks {list(cn_cfg.block_out_channels)}; UNet "
            f"{u_cfg.cross_attention_dim}, {list(u_cfg.block_out_channels)}): it is probably an SD1.5 "
            f"ControlNet. Use an SDXL ControlNet, e.g. {model_files.MODELS['controlnet'].source}."
        )
    for p in controlnet.parameters():
        if p.is_meta:
            raise InputValidationError(
                f"ControlNet '{path.name}' lacks some weights (its config does not match the file): use the "
                "ControlNet's diffusers folder (config.json + diffusion_pytorch_model.safetensors)."
            )
    return controlnet


def _controlnet_config(path: Path, cfg_dir: Path | None) -> Path:
    """Config for a single-file ControlNet: beside the file, in config_dir/controlnet, or shipped."""
    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.is_file():
            return candidate
    if cfg_dir is not None and (cfg_dir / "controlnet" / "config.json").is_file():
        return cfg_dir / "controlnet" / "config.json"
    return CONTROLNET_CONFIG_DIR / "config.json"


def _controlnet_pipeline(base, controlnet):
    """The ControlNet inpaint pipeline over the SAME component objects as ``base``."""
    from diffusers import StableDiffusionXLControlNetInpaintPipeline

    comps = base.components
    return StableDiffusionXLControlNetInpaintPipeline(
        vae=comps["vae"], text_encoder=comps["text_encoder"], text_encoder_2=comps["text_encoder_2"],
        tokenizer=comps["tokenizer"], tokenizer_2=comps["tokenizer_2"], unet=comps["unet"],
        controlnet=controlnet, scheduler=comps["scheduler"],
        requires_aesthetics_score=bool(base.config.get("requires_aesthetics_score", False)),
        force_zeros_for_empty_prompt=bool(base.config.get("force_zeros_for_empty_prompt", True)),
        add_watermarker=False,
        feature_extractor=comps.get("feature_extractor"), image_encoder=comps.get("image_encoder"),
    )


def _place(pipe, dev, offload: str) -> None:
    if offload == "model":
        pipe.enable_model_cpu_offload(device=dev)
    else:
        pipe.to(dev)


def _use_sdpa(pipe) -> str:
    """Make sure the UNet (and ControlNet) use PyTorch SDPA attention (diffusers' AttnProcessor2_0)."""
    import torch.nn.functional as F
    from diffusers.models.attention_processor import AttnProcessor2_0

    if not hasattr(F, "scaled_dot_product_attention"):
        return "default"
    for name in ("unet", "controlnet"):
        model = getattr(pipe, name, None)
        if model is None or not hasattr(model, "attn_processors"):
            continue
        if not all(isinstance(p, AttnProcessor2_0) for p in model.attn_processors.values()):
            model.set_attn_processor(AttnProcessor2_0())
    return "sdpa"


def _check_no_meta(pipe, path: Path) -> None:
    for name in WEIGHT_COMPONENTS:
        model = getattr(pipe, name, None)
        if model is None:
            continue
        meta = [n for n, p in model.named_parameters() if p.is_meta]
        if meta:
            raise InputValidationError(
                f"'{path.name}' lacks {len(meta)} weights of the {name} (e.g. {meta[0]}): the file does not match "
                f"the SDXL architecture (pruned or different model). {CONVERT_HINT}."
            )


# ------------------------------------------------------------------ small helpers


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputValidationError(
            f"{path} is not readable JSON ({exc}); re-download or restore this config file."
        ) from exc


def _has_tokenizer(folder: Path) -> bool:
    """CLIP's vocab.json + merges.txt, or the tokenizer.json transformers >= 5 saves."""
    return all((folder / f).is_file() for f in TOKENIZER_FILES) or (folder / "tokenizer.json").is_file()


def _comfy_tokenizer_candidates() -> list[Path]:
    import importlib.util

    found = []
    try:
        spec = importlib.util.find_spec("comfy")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        found += [Path(p) / "sd1_tokenizer" for p in spec.submodule_search_locations]
    # this pack lives in ComfyUI/custom_nodes/<pack>/nodes/pipeline/
    here = Path(__file__).resolve()
    if len(here.parents) > 4:
        found.append(here.parents[4] / "comfy" / "sd1_tokenizer")
    return found


def _cache_root() -> Path:
    root = os.environ.get("COMFYUI_MODEL_SWAP_CACHE")
    return Path(root) if root else Path(tempfile.gettempdir()) / "comfyui_model_swap"


def _free_accelerator_memory() -> None:
    """Return the dropped engine's GPU memory to the driver (CPU memory goes by refcount)."""
    import gc

    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()

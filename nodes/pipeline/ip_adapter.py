"""Identity adapters: IP-Adapter FaceID / FaceID PlusV2 (SDXL) on the loaded engine.

:func:`load_faceid` attaches an adapter (and its LoRA) to ``engine.pipe`` through
diffusers' ``load_ip_adapter``; :func:`prepare_identity` turns an
:class:`IdentityCondition` (an insightface embedding, plus the aligned face crop
for PlusV2) into the extra keyword arguments of one pipeline call.

The published files (https://huggingface.co/h94/IP-Adapter-FaceID):

* ``ip-adapter-faceid_sdxl.bin`` / ``ip-adapter-faceid-plusv2_sdxl.bin``: a nested
  ``{"image_proj": {...}, "ip_adapter": {...}}`` dict. ``image_proj`` is the ID
  projection (``proj.0``, ``proj.2``, ``norm``; PlusV2 adds ``perceiver_resampler.*``),
  ``ip_adapter`` holds ``{idx}.to_k_ip.weight`` / ``{idx}.to_v_ip.weight`` for every
  cross-attention processor and the FaceID LoRA as ``{idx}.to_{q,k,v,out}_lora.{down,up}.weight``
  for every processor (``idx`` = position in ``unet.attn_processors``).
  A ``.safetensors`` copy holds the same keys flattened as ``image_proj.*`` / ``ip_adapter.*``.
* ``ip-adapter-faceid*_sdxl_lora.safetensors``: that LoRA again, converted for
  WebUI/ComfyUI (kohya ``lora_unet_*`` keys). h94: the .bin "includes the adapter
  and lora"; the LoRA file "is the lora part of the model".

So the LoRA is applied once: from ``lora_path`` when one is given, else from the
LoRA keys inside the adapter file, as the peft adapter ``faceid_lora`` with
weight ``lora_scale`` (0 leaves it out).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputValidationError, MissingModelError
from .model_files import MODELS, describe, missing_error, require

log = logging.getLogger(__name__)

FACEID = "faceid"
FACEID_PLUSV2 = "faceid_plusv2"
LORA_ADAPTER = "faceid_lora"
ID_DIM = 512
CLIP_VISION_H_CONFIG = Path(__file__).resolve().parent / "configs" / "clip_vision_h.json"
MAX_IDENTITY_SCALE = 5.0
MAX_LORA_SCALE = 2.0

_IP_LORA_KEY = re.compile(r"^(\d+)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
# the first SDXL FaceID LoRA upload: kohya-style names without the prefix, q_proj/k_proj/v_proj/out_proj
_BARE_KOHYA_KEY = re.compile(
    r"^((?:down_blocks|up_blocks|mid_block)_\w+?_attn[12])_(q|k|v|out)_proj\.(lora_down\.weight|lora_up\.weight|alpha)$"
)


@dataclass
class IdentityCondition:
    """Whose face to keep, and how strongly.

    embedding: float32 (512,) L2-normalised insightface embedding (``normed_embedding``).
    face_crop: uint8 (H, W, 3) RGB aligned face crop; FaceID PlusV2 needs it (CLIP
        image features), plain FaceID ignores it.
    scale: IP-Adapter scale (the identity weight), 0 turns the identity off.
    shortcut_scale: FaceID PlusV2 only, the weight of the CLIP structure term
        (IP-Adapter's ``s_scale``; 1.0 as published).
    """

    embedding: Any
    face_crop: Any = None
    scale: float = 1.0
    shortcut_scale: float = 1.0


# --------------------------------------------------------------------------------------------
# reading and checking files


def _adapter_spec_key(path: Path) -> str:
    return FACEID_PLUSV2 if "plus" in path.name.lower() else FACEID


def _read_tensors(path: Path, what: str) -> dict:
    """A state dict from .safetensors (flat) or a pickle read with ``weights_only=True``."""
    import torch

    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if suffix in (".bin", ".pt", ".pth", ".ckpt"):
            try:
                data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
                data = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(data, dict):
                raise InputValidationError(
                    f"The {what} {path.name} holds a {type(data).__name__}, not a dict of weights: "
                    "use the file as published (re-download it)."
                )
            return data
    except InputValidationError:
        raise
    except Exception as exc:  # corrupt, truncated, or a pickle with code in it
        raise InputValidationError(
            f"The {what} {path.name} could not be read ({type(exc).__name__}: {exc}). Only plain weight files load "
            "(safetensors, or .bin readable with torch.load(weights_only=True)): re-download the file."
        ) from exc
    raise InputValidationError(
        f"The {what} {path.name} has the extension '{path.suffix}'; use a .bin or .safetensors file."
    )


def _nest_adapter(raw: dict, path: Path) -> dict:
    if "image_proj" in raw or "ip_adapter" in raw:
        nested = {"image_proj": raw.get("image_proj"), "ip_adapter": raw.get("ip_adapter")}
    else:
        nested = {"image_proj": {}, "ip_adapter": {}}
        for key, value in raw.items():
            group, _, rest = str(key).partition(".")
            if group in nested and rest:
                nested[group][rest] = value
    if not isinstance(nested["image_proj"], dict) or not isinstance(nested["ip_adapter"], dict) or not (
        nested["image_proj"] and nested["ip_adapter"]
    ):
        hint = ""
        keys = [str(k) for k in raw]
        if any(k.startswith("lora_unet_") or "lora" in k for k in keys[:50]):
            hint = " It looks like a LoRA: pass it as the FaceID LoRA (models/loras), not as the adapter."
        raise InputValidationError(
            f"{path.name} is not an IP-Adapter file: it lacks the image_proj and ip_adapter weight groups.{hint} "
            f"Use {MODELS[FACEID].name} (or {MODELS[FACEID_PLUSV2].name}) from {MODELS[FACEID].source}."
        )
    return nested


@dataclass
class AdapterInfo:
    kind: str  # FACEID | FACEID_PLUSV2
    num_tokens: int
    clip_hidden: int | None  # PlusV2: hidden size of the CLIP image encoder it expects
    has_lora: bool


def _unet_attn_names(unet) -> list[str]:
    """The UNet's attention processor names in ``attn_processors`` order, without those of a
    loaded PlusV2 perceiver (``encoder_hid_proj.*``), which the published indices do not count."""
    return [n for n in unet.attn_processors.keys() if not n.startswith("encoder_hid_proj.")]


def attn_layout(unet) -> list[tuple[int, str, int, int | None]]:
    """(idx, processor name, hidden size, cross-attention dim or None), as diffusers' loader computes them."""
    channels = list(unet.config.block_out_channels)
    layout = []
    for idx, name in enumerate(_unet_attn_names(unet)):
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        layout.append((idx, name, hidden, cross))
    return layout


def inspect_adapter(state_dict: dict, unet, name: str = "the adapter file") -> AdapterInfo:
    """Check that ``state_dict`` is an IP-Adapter FaceID (or PlusV2) made for this UNet."""
    proj, ip = state_dict["image_proj"], state_dict["ip_adapter"]
    get_started = f"Use {MODELS[FACEID].name} or {MODELS[FACEID_PLUSV2].name} from {MODELS[FACEID].source}."
    if "perceiver_resampler.proj_in.weight" in proj:
        kind = FACEID_PLUSV2
    elif "proj.weight" in proj:
        raise InputValidationError(
            f"{name} is a plain IP-Adapter (CLIP image prompt), not IP-Adapter FaceID. {get_started}"
        )
    elif "latents" in proj:
        raise InputValidationError(
            f"{name} is an IP-Adapter Plus / Plus Face (CLIP image prompt), not IP-Adapter FaceID. {get_started}"
        )
    elif "proj.3.weight" in proj:
        raise InputValidationError(f"{name} is an IP-Adapter Full Face model, not IP-Adapter FaceID. {get_started}")
    elif "proj.0.weight" in proj and "proj.2.weight" in proj:
        if "norm.weight" not in proj:
            raise InputValidationError(
                f"{name} has an ID projection but no image_proj norm.weight: it is truncated or not a FaceID "
                f"model. Re-download it. {get_started}"
            )
        kind = FACEID
    else:
        raise InputValidationError(f"{name} is not an IP-Adapter FaceID model (unknown image_proj layout). {get_started}")

    missing = [k for k in ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias")
               if k not in proj]
    if missing:
        raise InputValidationError(f"{name} lacks image_proj {', '.join(missing)}: re-download it. {get_started}")
    id_dim = int(proj["proj.0.weight"].shape[1])
    if id_dim != ID_DIM:
        raise InputValidationError(
            f"{name} expects {id_dim}-dim face embeddings, not insightface's {ID_DIM}: it is not IP-Adapter FaceID. "
            f"{get_started}"
        )
    cad = int(unet.config.cross_attention_dim)
    file_cad = int(proj["norm.weight"].shape[0])
    if file_cad != cad:
        made_for = {768: "SD 1.5", 1024: "SD 2.x", 2048: "SDXL"}.get(file_cad, f"a model with cross-attention dim {file_cad}")
        raise InputValidationError(
            f"{name} was made for {made_for} but the loaded UNet has cross-attention dim {cad} (SDXL: 2048): "
            f"use the _sdxl FaceID file. {get_started}"
        )
    out_dim = int(proj["proj.2.weight"].shape[0])
    if out_dim % cad:
        raise InputValidationError(f"{name} has an ID projection of {out_dim} outputs, not a multiple of {cad}: re-download it.")

    layout = attn_layout(unet)
    cross = [(idx, hidden) for idx, _n, hidden, c in layout if c is not None]
    n_ip = sum(1 for k in ip if str(k).endswith(".to_k_ip.weight"))
    if n_ip != len(cross):
        raise InputValidationError(
            f"{name} has IP-Adapter weights for {n_ip} cross-attention layers but this UNet has {len(cross)}: "
            f"it was made for another base model (use the _sdxl FaceID file with an SDXL model). {get_started}"
        )
    for idx, hidden in cross:
        for part in ("to_k_ip", "to_v_ip"):
            w = ip.get(f"{idx}.{part}.weight")
            if w is None or tuple(w.shape) != (hidden, cad):
                got = "missing" if w is None else tuple(w.shape)
                raise InputValidationError(
                    f"{name}: ip_adapter {idx}.{part}.weight is {got}, expected {(hidden, cad)} for this UNet: "
                    f"the file does not fit the loaded model. {get_started}"
                )

    clip_hidden = None
    if kind == FACEID_PLUSV2:
        pr = "perceiver_resampler"
        needed = [f"{pr}.proj_out.weight", f"{pr}.norm_out.weight", f"{pr}.layers.0.0.to_q.weight"]
        absent = [k for k in needed if k not in proj]
        if absent:
            raise InputValidationError(f"{name} lacks image_proj {', '.join(absent)}: re-download it. {get_started}")
        if int(proj[f"{pr}.layers.0.0.to_q.weight"].shape[0]) % 64:
            raise InputValidationError(f"{name}: the perceiver's attention width is not a multiple of 64: re-download it.")
        clip_hidden = int(proj[f"{pr}.proj_in.weight"].shape[1])

    has_lora = any(_IP_LORA_KEY.match(str(k)) for k in ip)
    return AdapterInfo(kind=kind, num_tokens=out_dim // cad, clip_hidden=clip_hidden, has_lora=has_lora)


# --------------------------------------------------------------------------------------------
# LoRA


def _lora_from_adapter(ip: dict, unet) -> dict:
    """The LoRA keys inside an adapter file, renamed the way diffusers' own loader does."""
    names = _unet_attn_names(unet)
    out = {}
    for key, value in ip.items():
        m = _IP_LORA_KEY.match(str(key))
        if m is None:
            continue
        idx = int(m.group(1))
        if idx >= len(names):
            raise InputValidationError(
                f"The FaceID LoRA names attention layer {idx} but this UNet has {len(names)}: it was made for "
                "another base model; use the _sdxl files."
            )
        out[f"unet.{names[idx]}.{m.group(2)}_lora.{m.group(3)}.weight"] = value
    return out


def _normalise_lora(raw: dict, unet, name: str) -> dict:
    """A LoRA state dict diffusers' ``load_lora_weights`` understands, from the forms FaceID LoRAs come in."""
    if "image_proj" in raw or "ip_adapter" in raw or any(str(k).startswith("image_proj.") for k in raw):
        ip = raw.get("ip_adapter")
        if ip is None:
            ip = {str(k)[len("ip_adapter."):]: v for k, v in raw.items() if str(k).startswith("ip_adapter.")}
        lora = _lora_from_adapter(ip, unet)
        if not lora:
            raise InputValidationError(
                f"{name} is an IP-Adapter file without LoRA weights, not a LoRA: pass it as the adapter and give "
                f"{MODELS['faceid_lora'].name} (models/loras) as the LoRA."
            )
        return lora
    keys = [str(k) for k in raw]
    if keys and all(_IP_LORA_KEY.match(k) for k in keys):
        return _lora_from_adapter(raw, unet)
    if any(_BARE_KOHYA_KEY.match(k) for k in keys):
        out = {}
        for k, v in raw.items():
            m = _BARE_KOHYA_KEY.match(str(k))
            if m is None:
                out[k] = v
                continue
            target = "to_out_0" if m.group(2) == "out" else f"to_{m.group(2)}"
            out[f"lora_unet_{m.group(1)}_{target}.{m.group(3)}"] = v
        return out
    if any(k.startswith(("lora_unet_", "unet.", "lora_te")) or ".lora_A." in k or ".lora.down." in k
           or ".lora_down." in k for k in keys):
        return dict(raw)
    raise InputValidationError(
        f"{name} is not a LoRA (no lora_unet_/unet. LoRA keys). Use {MODELS['faceid_lora'].name} from "
        f"{MODELS['faceid_lora'].source} in models/loras."
    )


def _expected_lora_targets(lora: dict) -> int:
    targets = set()
    for k in lora:
        k = str(k)
        if k.startswith(("lora_te", "text_encoder")):
            continue
        for marker in (".lora_down.weight", "_lora.down.weight", ".lora.down.weight", ".lora_A.weight"):
            if k.endswith(marker):
                targets.add(k[: -len(marker)])
    return len(targets)


def _lora_modules(unet, adapter: str) -> int:
    return sum(1 for m in unet.modules() if hasattr(m, "lora_A") and adapter in getattr(m, "lora_A", {}))


def _lora_adapters(pipe) -> set[str]:
    try:
        return {a for names in pipe.get_list_adapters().values() for a in names}
    except Exception:  # no peft layers anywhere yet
        return set()


def set_lora_weight(engine, adapter: str, weight: float) -> None:
    """Activate ``adapter`` at ``weight`` and keep the other active LoRAs at theirs.

    Weights live in ``engine.extras["lora_weights"]`` (adapter name -> weight) so
    loaders of other LoRAs can use the same record; an unknown one counts as 1.0.
    """
    pipe = engine.pipe
    weights = engine.extras.setdefault("lora_weights", {})
    weights[adapter] = float(weight)
    active = [a for a in pipe.get_active_adapters() if a != adapter] + [adapter]
    pipe.set_adapters(active, adapter_weights=[float(weights.get(a, 1.0)) for a in active])


def _load_lora(engine, lora: dict, scale: float, source: str) -> int:
    pipe = engine.pipe
    expected = _expected_lora_targets(lora)
    try:
        pipe.load_lora_weights(lora, adapter_name=LORA_ADAPTER)
    except Exception as exc:
        if LORA_ADAPTER in _lora_adapters(pipe):
            pipe.delete_adapters([LORA_ADAPTER])
        raise InputValidationError(
            f"The FaceID LoRA ({source}) does not fit the loaded UNet ({type(exc).__name__}: {exc}). Use the _sdxl "
            f"LoRA that belongs to the adapter ({MODELS['faceid_lora'].name} or {MODELS['faceid_plusv2_lora'].name})."
        ) from exc
    found = _lora_modules(pipe.unet, LORA_ADAPTER)
    if found == 0 or (expected and found < expected):
        if LORA_ADAPTER in _lora_adapters(pipe):
            pipe.delete_adapters([LORA_ADAPTER])
        raise InputValidationError(
            f"The FaceID LoRA ({source}) matched {found} of its {expected} layers in the loaded UNet: it was made "
            "for another base model. Use the _sdxl LoRA that belongs to the adapter."
        )
    set_lora_weight(engine, LORA_ADAPTER, scale)
    return found


# --------------------------------------------------------------------------------------------
# CLIP image encoder (PlusV2)


def _clip_config(config_override):
    from transformers import CLIPVisionConfig

    if config_override is None:
        return CLIPVisionConfig.from_json_file(str(CLIP_VISION_H_CONFIG))
    if isinstance(config_override, CLIPVisionConfig):
        return config_override
    if isinstance(config_override, dict):
        return CLIPVisionConfig(**config_override)
    return CLIPVisionConfig.from_json_file(str(config_override))


def load_image_encoder(path, *, dtype=None, device=None, config_override=None):
    """CLIP ViT-H/14 image encoder (``CLIPVisionModelWithProjection``), from a single
    .safetensors in transformers' key layout (ComfyUI models/clip_vision) or a transformers folder."""
    import torch
    from transformers import CLIPVisionModelWithProjection

    spec = MODELS["clip_vision_h"]
    path = Path(path)
    if path.is_dir():  # a transformers folder (config.json + weights)
        if not (path / "config.json").is_file():
            raise missing_error(spec, path, "the folder lacks config.json (a transformers CLIP vision model)")
    else:
        path = require("clip_vision_h", path)
    dtype = dtype or torch.float32
    if path.is_dir():
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        except Exception as exc:
            raise InputValidationError(
                f"The CLIP image encoder folder {path} could not be loaded ({type(exc).__name__}: {exc}). "
                f"{describe(MODELS['clip_vision_h'])}."
            ) from exc
        return model.to(device=device or "cpu").eval()

    from accelerate import init_empty_weights

    config = _clip_config(config_override)
    raw = _read_tensors(path, "CLIP image encoder")
    sd = {str(k): v for k, v in raw.items() if str(k) != "vision_model.embeddings.position_ids"}
    if not any(k.startswith("vision_model.") for k in sd):
        layout = "open_clip ('visual.*')" if any(k.startswith("visual.") for k in sd) else "an unknown"
        raise InputValidationError(
            f"{path.name} is in {layout} key layout, not transformers' CLIPVisionModelWithProjection "
            f"('vision_model.*'). {describe(MODELS['clip_vision_h'])}."
        )
    with init_empty_weights(include_buffers=False):
        model = CLIPVisionModelWithProjection(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    if missing == ["visual_projection.weight"]:  # a CLIPVisionModel without projection: PlusV2 never uses it
        sd["visual_projection.weight"] = torch.zeros(expected["visual_projection.weight"].shape)
        missing = []
    wrong = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or wrong:
        hidden = sd.get("vision_model.pre_layrnorm.weight")
        what = f"hidden size {hidden.shape[0]}" if hidden is not None else "another architecture"
        detail = (f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing
                  else f"{wrong[0][0]} is {wrong[0][1]}, expected {wrong[0][2]}")
        raise InputValidationError(
            f"{path.name} is not the CLIP ViT-H/14 image encoder FaceID PlusV2 needs ({what}; {detail}). "
            f"{describe(MODELS['clip_vision_h'])}."
        )
    model.load_state_dict({k: sd[k] for k in expected}, strict=True, assign=True)
    return model.to(device=device or "cpu", dtype=dtype).eval()


# --------------------------------------------------------------------------------------------
# loading


def unload_faceid(engine) -> None:
    """Remove the FaceID adapter, its LoRA and image encoder from the engine."""
    pipe = engine.pipe
    if getattr(pipe.unet, "encoder_hid_proj", None) is not None and engine.ip_adapter is not None:
        pipe.unload_ip_adapter()
    adapters = _lora_adapters(pipe)
    stale = [a for a in (LORA_ADAPTER, "faceid_0") if a in adapters]
    if stale:
        pipe.delete_adapters(stale)
        for a in stale:
            engine.extras.get("lora_weights", {}).pop(a, None)
    engine.ip_adapter = None
    engine.image_encoder = None
    engine.extras.pop("faceid", None)


def load_faceid(engine, adapter_path, *, lora_path=None, lora_scale: float = 1.0, image_encoder_path=None,
                config_override=None):
    """Load IP-Adapter FaceID or FaceID PlusV2 (SDXL) into ``engine.pipe``.

    adapter_path: ``ip-adapter-faceid_sdxl.bin`` or ``ip-adapter-faceid-plusv2_sdxl.bin``
        (or a ``.safetensors`` with flat ``image_proj.*`` / ``ip_adapter.*`` keys); the
        kind is read from the keys (PlusV2 has ``perceiver_resampler.*``).
    lora_path: optional FaceID LoRA (``*_sdxl_lora.safetensors``); when absent the LoRA
        inside the adapter file (if any) is used. lora_scale: its weight, 0 = no LoRA.
    image_encoder_path: PlusV2 only: CLIP ViT-H/14 image encoder, a single
        .safetensors (transformers key layout) or a transformers folder.
    config_override: CLIPVisionConfig (or dict / JSON path) replacing the shipped
        ViT-H/14 config for a single-file encoder (tests use a tiny one).

    Sets ``engine.ip_adapter`` ("faceid" | "faceid_plusv2") and ``engine.image_encoder``;
    returns ``engine``. A previously loaded FaceID adapter is replaced.
    """
    import torch

    path = Path(adapter_path)
    path = require(_adapter_spec_key(path), path)
    if not isinstance(lora_scale, (int, float)) or isinstance(lora_scale, bool) or not math.isfinite(lora_scale) \
            or not 0.0 <= lora_scale <= MAX_LORA_SCALE:
        raise InputValidationError(f"lora_scale is {lora_scale!r}; give a number from 0 to {MAX_LORA_SCALE}.")
    pipe = engine.pipe
    unet = pipe.unet
    state_dict = _nest_adapter(_read_tensors(path, "IP-Adapter file"), path)
    info = inspect_adapter(state_dict, unet, path.name)
    lora_spec = "faceid_plusv2_lora" if info.kind == FACEID_PLUSV2 else "faceid_lora"

    # Everything that can fail on the user's files is read and checked before the pipeline changes.
    encoder = None
    if info.kind == FACEID_PLUSV2:
        if image_encoder_path is None:
            spec = MODELS["clip_vision_h"]
            raise MissingModelError(
                f"{path.name} is FaceID PlusV2, which needs the CLIP ViT-H/14 image encoder: give its path. "
                f"{describe(spec)}.",
                folder=f"models/{spec.folder}", filename=spec.name, source=spec.source,
            )
        on_device = engine.device if getattr(engine, "offload", "none") == "none" else torch.device("cpu")
        encoder = load_image_encoder(image_encoder_path, dtype=engine.dtype, device=on_device,
                                     config_override=config_override)
        if int(encoder.config.hidden_size) != info.clip_hidden:
            raise InputValidationError(
                f"The image encoder has hidden size {encoder.config.hidden_size} but {path.name} expects "
                f"{info.clip_hidden} (CLIP ViT-H/14: 1280). {describe(MODELS['clip_vision_h'])}."
            )

    lora, lora_source = None, None
    if lora_scale > 0:
        if lora_path is not None:
            lpath = require(lora_spec, lora_path)
            lora = _normalise_lora(_read_tensors(lpath, "FaceID LoRA"), unet, lpath.name)
            lora_source = str(lpath)
            if info.has_lora:
                log.info("%s carries its LoRA too; using %s instead (h94: the same weights)", path.name, lpath.name)
        elif info.has_lora:
            lora = _lora_from_adapter(state_dict["ip_adapter"], unet)
            lora_source = f"embedded in {path.name}"
    elif lora_path is not None:
        require(lora_spec, lora_path)

    if engine.ip_adapter is not None or getattr(unet, "encoder_hid_proj", None) is not None:
        unload_faceid(engine)
    adapter_only = {
        "image_proj": state_dict["image_proj"],
        "ip_adapter": {k: v for k, v in state_dict["ip_adapter"].items() if not _IP_LORA_KEY.match(str(k))},
    }
    try:
        pipe.load_ip_adapter(adapter_only, subfolder="", weight_name=path.name, image_encoder_folder=None)
    except Exception as exc:
        raise InputValidationError(
            f"{path.name} could not be loaded into the UNet ({type(exc).__name__}: {exc}). "
            f"Use {MODELS[FACEID].name} or {MODELS[FACEID_PLUSV2].name} from {MODELS[FACEID].source}."
        ) from exc
    try:
        lora_layers = _load_lora(engine, lora, float(lora_scale), lora_source) if lora is not None else 0
    except Exception:
        pipe.unload_ip_adapter()
        raise
    engine.ip_adapter = info.kind
    engine.image_encoder = encoder
    engine.extras["faceid"] = {
        "adapter": str(path), "kind": info.kind, "num_tokens": info.num_tokens,
        "lora": lora_source, "lora_scale": float(lora_scale) if lora is not None else 0.0,
        "lora_layers": lora_layers,
    }
    return engine


# --------------------------------------------------------------------------------------------
# conditioning


def _no_adapter_error() -> InputValidationError:
    spec = MODELS[FACEID]
    return InputValidationError(
        "An identity (face reference) was given but no IP-Adapter FaceID is loaded: load "
        f"{spec.name} (ComfyUI/models/{spec.folder}/, from {spec.source}) with the FaceID loader, "
        "or run without the face reference."
    )


def check_identity(engine, condition: IdentityCondition | None) -> None:
    """Validate ``condition`` against the engine without running anything."""
    if condition is None:
        return
    if not isinstance(condition, IdentityCondition):
        raise InputValidationError(
            f"identity is a {type(condition).__name__}; pass an IdentityCondition (embedding, face_crop, scale)."
        )
    if getattr(engine, "ip_adapter", None) is None:
        raise _no_adapter_error()
    emb = np.asarray(condition.embedding)
    if emb.shape not in ((ID_DIM,), (1, ID_DIM)) or not np.issubdtype(emb.dtype, np.floating):
        raise InputValidationError(
            f"The identity embedding has shape {emb.shape} and dtype {emb.dtype}; pass insightface's float32 "
            f"({ID_DIM},) normed_embedding of the reference face."
        )
    if not np.isfinite(emb).all() or float(np.linalg.norm(emb)) < 1e-6:
        raise InputValidationError(
            "The identity embedding is zero or not finite; pass insightface's normed_embedding of a detected face."
        )
    for label, value, hi in (("scale", condition.scale, MAX_IDENTITY_SCALE),
                             ("shortcut_scale", condition.shortcut_scale, MAX_IDENTITY_SCALE)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(value)) or not 0.0 <= float(value) <= hi:
            raise InputValidationError(f"The identity {label} is {value!r}; give a number from 0 to {hi}.")
    if engine.ip_adapter == FACEID_PLUSV2:
        crop = condition.face_crop
        if crop is None:
            raise InputValidationError(
                "FaceID PlusV2 needs the aligned face crop (IdentityCondition.face_crop, uint8 RGB) besides the "
                "embedding: pass the crop insightface aligned, or load plain FaceID (ip-adapter-faceid_sdxl.bin)."
            )
        crop = np.asarray(crop)
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8 or min(crop.shape[:2]) < 16:
            raise InputValidationError(
                f"The face crop has shape {crop.shape} and dtype {crop.dtype}; pass an (H, W, 3) uint8 RGB image of "
                "at least 16x16 (the aligned face)."
            )
        if engine.image_encoder is None:
            raise InputValidationError(
                "FaceID PlusV2 is loaded without its CLIP image encoder: reload it with image_encoder_path "
                f"({describe(MODELS['clip_vision_h'])})."
            )


def _projection_layer(engine):
    proj = getattr(engine.pipe.unet, "encoder_hid_proj", None)
    layers = getattr(proj, "image_projection_layers", None)
    if not layers:
        raise InputValidationError(
            "The engine says an IP-Adapter is loaded but the UNet has none: load IP-Adapter FaceID again."
        )
    return layers[0]


def _clip_features(engine, face_crop: np.ndarray):
    """Penultimate-layer CLIP hidden states of (zeros, face): (2, tokens, hidden), the negative first."""
    import torch
    from transformers import CLIPImageProcessor

    encoder = engine.image_encoder
    size = int(encoder.config.image_size)
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pixels = processor(images=np.ascontiguousarray(face_crop), return_tensors="pt").pixel_values
    pixels = torch.cat([torch.zeros_like(pixels), pixels])  # IP-Adapter's negative: an all-zero input
    moved = getattr(engine, "offload", "none") != "none"
    if moved:
        encoder.to(engine.device)
    try:
        with torch.inference_mode():
            p = next(encoder.parameters())
            hidden = encoder(pixels.to(device=p.device, dtype=p.dtype), output_hidden_states=True).hidden_states[-2]
    finally:
        if moved:
            encoder.to("cpu")
    return hidden


def prepare_identity(engine, condition: IdentityCondition | None, num_images: int, do_cfg: bool) -> dict:
    """Extra pipeline kwargs for ``condition`` (``{}`` when no adapter and no condition).

    ``ip_adapter_image_embeds=[(2|1, 1, 512)]``: the zero (negative) embedding first
    when ``do_cfg``; the pipeline repeats it per image. With an adapter loaded and no
    condition, a zero embedding at scale 0 (the UNet requires one). For PlusV2 the
    CLIP hidden states of the face crop (and of an all-zero image, negative) go onto
    the projection layer as ``clip_embeds`` ``(2N|N, 1, tokens, hidden)`` with the
    shortcut on, as diffusers expects.
    """
    import torch

    check_identity(engine, condition)
    if engine.ip_adapter is None:
        return {}
    if not isinstance(num_images, int) or num_images < 1:
        raise InputValidationError(f"num_images is {num_images!r}; give a positive integer.")
    device, dtype = engine.device, engine.dtype
    if condition is None:
        embed = torch.zeros(1, 1, ID_DIM)
        scale = 0.0
    else:
        emb = torch.from_numpy(np.asarray(condition.embedding, dtype=np.float32).reshape(ID_DIM).copy())
        embed = (emb / emb.norm()).reshape(1, 1, ID_DIM)
        scale = float(condition.scale)
    if do_cfg:
        embed = torch.cat([torch.zeros_like(embed), embed])

    if engine.ip_adapter == FACEID_PLUSV2:
        layer = _projection_layer(engine)
        if condition is None:
            cfg = engine.image_encoder.config if engine.image_encoder is not None else None
            tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1 if cfg is not None else 1
            hidden_size = cfg.hidden_size if cfg is not None else layer.proj_in.in_features
            feats = torch.zeros(2, tokens, hidden_size)
            shortcut_scale = 0.0
        else:
            feats = _clip_features(engine, np.asarray(condition.face_crop))
            shortcut_scale = float(condition.shortcut_scale)
        neg, pos = feats[:1].repeat(num_images, 1, 1), feats[1:].repeat(num_images, 1, 1)
        clip = torch.cat([neg, pos]) if do_cfg else pos
        layer.clip_embeds = clip.unsqueeze(1).to(device=device, dtype=dtype)
        layer.shortcut = True
        layer.shortcut_scale = shortcut_scale

    engine.pipe.set_ip_adapter_scale(scale)
    return {"ip_adapter_image_embeds": [embed.to(device=device, dtype=dtype)]}


@dataclass(frozen=True)
class FaceIDChoice:
    """Which FaceID files a pipeline wants on its engine (paths as strings, or None)."""

    adapter: str
    lora: str | None = None
    image_encoder: str | None = None


def ensure_faceid(engine, choice: FaceIDChoice | None) -> None:
    """Bring a (possibly shared, cached) engine to the FaceID state ``choice`` asks for.

    Engines are cached and shared between pipelines; one pipeline may want FaceID
    and its LoRA, another a plain SDXL. Each run calls this first, so a pipeline
    always samples with exactly its own adapter state, and nothing is reloaded
    when the engine already matches.
    """
    current = engine.extras.get("faceid_choice")
    if choice == current and (choice is None) == (engine.ip_adapter is None):
        return
    if choice is None:
        unload_faceid(engine)
    else:
        load_faceid(engine, choice.adapter, lora_path=choice.lora, image_encoder_path=choice.image_encoder)
    engine.extras["faceid_choice"] = choice

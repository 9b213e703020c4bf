"""IP-Adapter FaceID / FaceID PlusV2 (SDXL) as a pipeline of its own, beside the base one.

:func:`attach` builds a new inpainting pipeline over the base's text encoders and VAE with a
UNet module tree of its own whose parameters ARE the base UNet's (no copy), and loads the adapter
into it the diffusers way: ``load_ip_adapter`` (which loads a FaceID file's own LoRA as the peft
adapter ``faceid_0``), ``load_lora_weights`` for a separate LoRA, ``set_adapters`` for its weight.
Processors, projection and LoRA layers so belong to the attached pipeline alone: the base and
every other attached pipeline never change. Files (h94/IP-Adapter-FaceID) are checked against the
UNet first, in diffusers' processor order: a wrong one gets a message naming it, the fault and
what to download.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputValidationError, MissingModelError
from ..model_files import MODELS, describe, faceid_key, faceid_lora_key, missing_error, require
from . import diffusers_compat
from .weights import read_state_dict

FACEID, FACEID_PLUSV2 = "faceid", "faceid_plusv2"
LORA_ADAPTER = "faceid_0"  # the peft adapter name diffusers gives the LoRA inside a FaceID file
ID_DIM = 512
CLIP_VISION_H_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "clip_vision_h.json"
_IP_LORA = re.compile(r"^(\d+)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
# the first SDXL FaceID LoRA upload: kohya module names without "lora_unet_", q_proj/k_proj/v_proj/out_proj
_BARE_KOHYA = re.compile(r"^((?:down_blocks|up_blocks|mid_block)_\w+?_attn[12])_(q|k|v|out)_proj\.(.+)$")
_LORA_DOWN = ("lora_down.weight", "lora.down.weight", "lora_A.weight")  # one per adapted layer, in every form


@dataclass(frozen=True)
class FaceIDFiles:
    adapter: Path  # ip-adapter-faceid[-plusv2]_sdxl.bin (nested) or .safetensors (flat)
    lora: Path | None = None  # a separate FaceID LoRA (kohya or diffusers keys); None: the one inside the adapter
    image_encoder: Path | None = None  # PlusV2: CLIP ViT-H/14, one .safetensors (transformers keys) or a folder
    lora_scale: float = 1.0  # 0 leaves the LoRA out


@dataclass(frozen=True)
class FaceIDState:
    kind: str  # FACEID | FACEID_PLUSV2
    image_encoder: Any = None  # CLIPVisionModelWithProjection (PlusV2) or None
    lora: str | None = None  # where the LoRA came from; None: no LoRA loaded
    lora_scale: float = 0.0
    offload: str = "none"  # "model": the image encoder waits on the CPU between calls


def _error(message: str) -> InputValidationError:
    hint = f"Use {MODELS[FACEID].name} or {MODELS[FACEID_PLUSV2].name} from {MODELS[FACEID].source}."
    return InputValidationError(f"{message} {hint}")


def read_adapter(path: Path) -> dict:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from a nested .bin or a flat .safetensors (the same
    keys as ``image_proj.*`` / ``ip_adapter.*``). ``ip_adapter`` holds ``{idx}.to_k_ip/to_v_ip.weight`` per
    cross-attention processor and the LoRA as ``{idx}.to_{q,k,v,out}_lora.{down,up}.weight``."""
    raw, groups = read_state_dict(path, "IP-Adapter file"), ("image_proj", "ip_adapter")
    nested = any(g in raw for g in groups)
    sd = {g: raw.get(g) if nested else {str(k)[len(g) + 1:]: v for k, v in raw.items() if str(k).startswith(g + ".")}
          for g in groups}
    if not all(isinstance(v, dict) and v for v in sd.values()):
        hint = " It looks like a LoRA: pass it as the FaceID LoRA (models/loras), not as the adapter."
        raise _error(f"{path.name} is not an IP-Adapter file: it lacks the image_proj and ip_adapter weight groups."
                     + (hint if any("lora" in str(k) for k in list(raw)[:50]) else ""))
    return sd


def check_adapter(sd: dict, unet, name: str) -> tuple[str, int | None]:
    """(kind, CLIP hidden size PlusV2 expects or None), or an error saying why ``sd`` does not fit ``unet``."""
    proj, ip = sd["image_proj"], sd["ip_adapter"]
    for marker, what in (("proj.weight", "a plain IP-Adapter (CLIP image prompt)"),
                         ("latents", "an IP-Adapter Plus / Plus Face (CLIP image prompt)"),
                         ("proj.3.weight", "an IP-Adapter Full Face model")):
        if marker in proj and "perceiver_resampler.proj_in.weight" not in proj:
            raise _error(f"{name} is {what}, not IP-Adapter FaceID.")
    absent = [k for k in ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight",
                          "norm.bias") if k not in proj]
    if absent:
        raise _error(f"{name} is not an IP-Adapter FaceID model (unknown image_proj layout)." if "proj.0.weight"
                     in absent else f"{name} lacks image_proj {', '.join(absent)}: it is truncated or not a FaceID "
                     "model; re-download it.")
    if proj["proj.0.weight"].shape[1] != ID_DIM:
        raise _error(f"{name} expects {proj['proj.0.weight'].shape[1]}-dim face embeddings, not insightface's "
                     f"{ID_DIM}: it is not IP-Adapter FaceID.")
    cad, file_cad = int(unet.config.cross_attention_dim), int(proj["norm.weight"].shape[0])
    if file_cad != cad:
        made_for = {768: "SD 1.5", 1024: "SD 2.x", 2048: "SDXL"}.get(file_cad, f"cross-attention dim {file_cad}")
        raise _error(f"{name} was made for {made_for} but the loaded UNet has cross-attention dim {cad} "
                     "(SDXL: 2048): use the _sdxl FaceID file.")
    # diffusers' own processor order: ip_adapter key {idx} is position idx in unet.attn_processors
    cross = [(i, n) for i, n in enumerate(unet.attn_processors) if not n.endswith("attn1.processor")]
    n_ip = sum(1 for k in ip if str(k).endswith(".to_k_ip.weight"))
    if n_ip != len(cross):
        raise _error(f"{name} has IP-Adapter weights for {n_ip} cross-attention layers but this UNet has "
                     f"{len(cross)}: it was made for another base model (use the _sdxl file with an SDXL model).")
    for idx, proc in cross:
        want = (unet.get_submodule(proc.rsplit(".", 1)[0]).to_q.in_features, cad)
        for part in ("to_k_ip", "to_v_ip"):
            w = ip.get(f"{idx}.{part}.weight")
            if w is None or tuple(w.shape) != want:
                raise _error(f"{name}: ip_adapter {idx}.{part}.weight is "
                             f"{'missing' if w is None else tuple(w.shape)}, expected {want} for this UNet.")
    if "perceiver_resampler.proj_in.weight" not in proj:
        return FACEID, None
    pr = [f"perceiver_resampler.{k}" for k in ("proj_out.weight", "norm_out.weight", "layers.0.0.to_q.weight")]
    if any(k not in proj for k in pr):
        raise _error(f"{name} lacks image_proj {', '.join(k for k in pr if k not in proj)}: re-download it.")
    return FACEID_PLUSV2, int(proj["perceiver_resampler.proj_in.weight"].shape[1])


def read_lora(path: Path, unet) -> dict:
    """A FaceID LoRA as ``load_lora_weights`` takes it: kohya and diffusers keys pass through, the
    unprefixed first upload and the adapter's own ``{idx}.to_q_lora`` keys are renamed, text-encoder keys
    dropped (the text encoders are shared with the base pipeline; FaceID LoRAs never hold any)."""
    raw = {str(k): v for k, v in read_state_dict(path, "FaceID LoRA").items()}
    if any(k in ("image_proj", "ip_adapter") or k.startswith(("image_proj.", "ip_adapter.")) for k in raw):
        raise InputValidationError(
            f"{path.name} is an IP-Adapter file, not a LoRA: pass it as the adapter (its LoRA, if any, is used "
            f"with it) and {MODELS['faceid_lora'].name} (models/loras) as the LoRA.")
    names, out = list(unet.attn_processors), {}
    for k, v in raw.items():
        if k.startswith(("lora_te", "text_encoder", "te_")):
            continue
        if m := _IP_LORA.match(k):
            if int(m[1]) >= len(names):
                raise InputValidationError(f"{path.name} names attention layer {m[1]} but this UNet has {len(names)}:"
                                           " it was made for another base model; use the _sdxl LoRA.")
            k = f"unet.{names[int(m[1])]}.{m[2]}_lora.{m[3]}.weight"  # the names diffusers gives them
        elif m := _BARE_KOHYA.match(k):
            k = f"lora_unet_{m[1]}_{'to_out_0' if m[2] == 'out' else 'to_' + m[2]}.{m[3]}"
        out[k] = v
    if not any(k.endswith(_LORA_DOWN) for k in out):
        raise InputValidationError(f"{path.name} is not a LoRA (no lora_unet_/unet. LoRA keys). Use "
                                   f"{MODELS['faceid_lora'].name} from {MODELS['faceid_lora'].source} in models/loras.")
    return out


def load_image_encoder(path, *, dtype=None, device="cpu", config=None):
    """CLIP ViT-H/14 (``CLIPVisionModelWithProjection``) from a transformers folder or one .safetensors in
    transformers' key layout; ``config`` (a CLIPVisionConfig or JSON path) replaces the shipped one."""
    import torch
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    spec, path = MODELS["clip_vision_h"], Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise missing_error(spec, path, "the folder lacks config.json (a transformers CLIP vision model)")
        model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        return model.to(device).eval()
    sd = read_state_dict(require("clip_vision_h", path), "CLIP image encoder")
    if not any(str(k).startswith("vision_model.") for k in sd):
        layout = "open_clip ('visual.*')" if any(str(k).startswith("visual.") for k in sd) else "an unknown"
        raise InputValidationError(f"{path.name} is in {layout} key layout, not transformers' "
                                   f"CLIPVisionModelWithProjection ('vision_model.*'). {describe(spec)}.")
    if not isinstance(config, CLIPVisionConfig):
        config = CLIPVisionConfig.from_json_file(str(config or CLIP_VISION_H_CONFIG))
    with init_empty_weights():
        model = CLIPVisionModelWithProjection(config)
    expected = model.state_dict()
    # a CLIPVisionModel without the projection: PlusV2 reads hidden states only, never the projection
    sd.setdefault("visual_projection.weight", torch.zeros(expected["visual_projection.weight"].shape))
    wrong = [f"missing {k}" if k not in sd else f"{k} is {tuple(sd[k].shape)}, expected {tuple(v.shape)}"
             for k, v in expected.items() if k not in sd or sd[k].shape != v.shape]
    if wrong:
        hidden = sd.get("vision_model.pre_layrnorm.weight")
        what = "another architecture" if hidden is None else f"hidden size {hidden.shape[0]}"
        raise InputValidationError(f"{path.name} is not the CLIP ViT-H/14 image encoder FaceID PlusV2 needs "
                                   f"({what}; {wrong[0]}). {describe(spec)}.")
    model.load_state_dict({k: sd[k] for k in expected}, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def _clone_unet(unet):
    """A UNet module tree of its own whose parameters and buffers are ``unet``'s own objects: no copy, and
    a device move of either (model offload) moves both."""
    import torch

    with torch.device("meta"):
        clone = type(unet).from_config(unet.config)
    clone.load_state_dict(unet.state_dict(keep_vars=True), strict=True, assign=True)
    for name, buf in unet.named_buffers():  # non-persistent ones too
        owner, _, leaf = name.rpartition(".")
        clone.get_submodule(owner)._buffers[leaf] = buf  # torch's own registry: keeps non-persistent buffers
    return clone.eval()


def _new_pipeline(base, unet):
    """``from_pipe(base, unet=unet)`` with a scheduler of its own (it holds per-call state) and without
    from_pipe's final ``to(dtype)``, which casts every shared component to one dtype (float32 unless
    told) and so would change the base's fp16 text encoders or its fp32 VAE."""
    cls = type(base)
    modules, optional = diffusers_compat.signature_keys(cls, base)
    kwargs = {k: v for k, v in base.components.items() if k in modules}
    kwargs.update({k: base.config[k] for k in optional if k in base.config})
    if "add_watermarker" in optional:
        kwargs["add_watermarker"] = getattr(base, "watermark", None) is not None
    pipe = cls(**{**kwargs, "unet": unet, "scheduler": type(base.scheduler).from_config(base.scheduler.config)})
    pipe.set_progress_bar_config(**diffusers_compat.progress_bar_config(base))
    return pipe


def _lora_error(source: str, problem: str) -> InputValidationError:
    return InputValidationError(
        f"The FaceID LoRA ({source}) {problem}: it was made for another base model. Use the _sdxl LoRA that "
        f"belongs to the adapter ({MODELS['faceid_lora'].name} or {MODELS['faceid_plusv2_lora'].name}).")


def _lora_layers(unet) -> int:
    return sum(1 for m in unet.modules() if LORA_ADAPTER in getattr(m, "lora_A", {}))


def attach(base_pipe, files: FaceIDFiles, *, offload: str = "none", clip_config=None) -> tuple[Any, FaceIDState]:
    """A new pipeline of ``base_pipe``'s class with FaceID loaded (see the module docstring), and its state.
    ``offload``: "none" or "model" (the base uses diffusers' model CPU offload). ``clip_config`` replaces the
    shipped ViT-H/14 config of a single-file image encoder (tests use a tiny one)."""
    diffusers_compat.check("faceid")
    adapter = require(faceid_key(Path(files.adapter).name), files.adapter)
    sd = read_adapter(adapter)
    unet = _clone_unet(base_pipe.unet)
    kind, clip_hidden = check_adapter(sd, unet, adapter.name)
    encoder = None
    if kind == FACEID_PLUSV2:
        if files.image_encoder is None:
            spec = MODELS["clip_vision_h"]
            raise MissingModelError(f"{adapter.name} is FaceID PlusV2, which needs the CLIP ViT-H/14 image encoder: "
                                    f"give its path. {describe(spec)}.", folder=f"models/{spec.folder}",
                                    filename=spec.name, source=spec.source)
        encoder = load_image_encoder(files.image_encoder, dtype=unet.dtype, config=clip_config,
                                     device="cpu" if offload != "none" else unet.device)
        if encoder.config.hidden_size != clip_hidden:
            raise InputValidationError(f"The image encoder has hidden size {encoder.config.hidden_size} but "
                                       f"{adapter.name} expects {clip_hidden} (CLIP ViT-H/14: 1280). "
                                       f"{describe(MODELS['clip_vision_h'])}.")
    lora, source = None, None
    embedded = {k: v for k, v in sd["ip_adapter"].items() if _IP_LORA.match(str(k))}
    if files.lora is not None:
        lora_path = require(faceid_lora_key(Path(files.lora).name), files.lora)
        if files.lora_scale > 0:
            lora, source = read_lora(lora_path, unet), str(lora_path)
    elif embedded and files.lora_scale > 0:
        lora, source = embedded, f"embedded in {adapter.name}"  # diffusers' load_ip_adapter loads it
    if lora is not embedded:  # replaced, or weighted 0: keep diffusers from loading it
        sd = {"image_proj": sd["image_proj"], "ip_adapter": {k: v for k, v in sd["ip_adapter"].items()
                                                             if k not in embedded}}
    pipe = _new_pipeline(base_pipe, unet)
    try:
        pipe.load_ip_adapter(sd, subfolder="", weight_name=adapter.name, image_encoder_folder=None)
    except Exception as exc:
        raise _error(f"{adapter.name} could not be loaded into the UNet ({type(exc).__name__}: {str(exc)[:300]}).") from exc
    if lora is not None and lora is not embedded:
        try:
            pipe.load_lora_weights(lora, adapter_name=LORA_ADAPTER)
        except Exception as exc:
            raise _lora_error(source, f"does not fit the loaded UNet ({type(exc).__name__}: {str(exc)[:300]})") from exc
    if lora is not None:
        expected, found = sum(1 for k in lora if str(k).endswith(_LORA_DOWN)), _lora_layers(unet)
        if found < max(expected, 1):
            raise _lora_error(source, f"matched {found} of its {expected} layers in the loaded UNet")
        pipe.set_adapters([LORA_ADAPTER], adapter_weights=[float(files.lora_scale)])
    if offload == "model":
        # diffusers' own (its LoRA loader does this too on seeing the base's hooks): the shared components'
        # hooks join this chain, and each pipeline re-hooks its own at the end of every call.
        pipe.enable_model_cpu_offload(device=diffusers_compat.offload_device(base_pipe))
    return pipe, FaceIDState(kind=kind, image_encoder=encoder, lora=source,
                             lora_scale=float(files.lora_scale) if lora is not None else 0.0, offload=offload)


def _clip_features(state: FaceIDState, face_crop, device):
    """Penultimate CLIP hidden states of (an all-zero image, the face): (2, tokens, hidden), the negative
    first, as IP-Adapter FaceID PlusV2 computes them (diffusers leaves this to the caller)."""
    import torch
    from transformers import CLIPImageProcessor

    encoder, size = state.image_encoder, int(state.image_encoder.config.image_size)
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pixels = processor(images=np.ascontiguousarray(face_crop), return_tensors="pt").pixel_values
    pixels = torch.cat([torch.zeros_like(pixels), pixels])
    try:
        with torch.no_grad():
            encoder.to(device)  # a no-op unless offloaded
            return encoder(pixels.to(device, encoder.dtype), output_hidden_states=True).hidden_states[-2]
    finally:
        encoder.to("cpu" if state.offload != "none" else device)


def identity_kwargs(pipe, state: FaceIDState, identity, num_images: int, do_cfg: bool) -> dict:
    """Extra call kwargs: ``ip_adapter_image_embeds=[(2|1, 1, 512)]``, the zero negative first when
    ``do_cfg``. ``identity`` None: a zero embedding at scale 0 (the adapted UNet needs one). PlusV2 also
    puts the face crop's CLIP features (and the zero image's) on its projection layer as ``clip_embeds``
    ``(2N|N, 1, tokens, hidden)`` with the shortcut on, as diffusers expects."""
    import torch

    device, dtype = diffusers_compat.execution_device(pipe), pipe.unet.dtype
    if identity is None:
        embed, scale = torch.zeros(1, 1, ID_DIM), 0.0
    else:
        emb = np.asarray(identity.embedding if identity.embedding is not None else np.zeros(0), np.float32)
        if emb.size != ID_DIM or not np.isfinite(emb).all() or float(np.linalg.norm(emb)) < 1e-6:
            raise InputValidationError(f"The identity embedding (shape {emb.shape}) is not a finite, non-zero "
                                       f"({ID_DIM},) vector: pass insightface's normed_embedding of a detected face.")
        if state.kind == FACEID_PLUSV2 and identity.face_crop is None:
            raise InputValidationError("FaceID PlusV2 needs the aligned face crop (IdentityCondition.face_crop) "
                                       "besides the embedding, or load plain FaceID (ip-adapter-faceid_sdxl.bin).")
        emb = torch.from_numpy(emb.reshape(ID_DIM).copy())
        embed, scale = (emb / emb.norm()).reshape(1, 1, ID_DIM), float(identity.scale)
    if do_cfg:
        embed = torch.cat([torch.zeros_like(embed), embed])
    if state.kind == FACEID_PLUSV2:
        layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        if identity is None:
            cfg = state.image_encoder.config
            feats = torch.zeros(2, (cfg.image_size // cfg.patch_size) ** 2 + 1, cfg.hidden_size)
        else:
            feats = _clip_features(state, identity.face_crop, device)
        neg, pos = feats[:1].repeat(num_images, 1, 1), feats[1:].repeat(num_images, 1, 1)
        layer.clip_embeds = (torch.cat([neg, pos]) if do_cfg else pos).unsqueeze(1).to(device=device, dtype=dtype)
        layer.shortcut, layer.shortcut_scale = True, 0.0 if identity is None else 1.0
    pipe.set_ip_adapter_scale(scale)
    return {"ip_adapter_image_embeds": [embed.to(device=device, dtype=dtype)]}

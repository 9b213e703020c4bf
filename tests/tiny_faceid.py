"""Tiny random-weight IP-Adapter FaceID files, laid out like the published h94 ones.

The published SDXL files (https://huggingface.co/h94/IP-Adapter-FaceID) and what
the tiny ones here keep of them:

``ip-adapter-faceid_sdxl.bin``: ``torch.save`` of a nested dict
    ``{"image_proj": {...}, "ip_adapter": {...}}``.

    image_proj (the ID projection, ``MLPProjModel`` + LayerNorm)::

        proj.0.weight [2*512, 512]   proj.0.bias [2*512]
        proj.2.weight [cad*4, 1024]  proj.2.bias [cad*4]
        norm.weight [cad]            norm.bias [cad]

    ip_adapter, ``idx`` = position of the processor in ``unet.attn_processors``
    (self-attention ``attn1`` at even positions, cross-attention ``attn2`` at
    odd ones), ``hidden`` = the block's channel count::

        {idx}.to_q_lora.down.weight [rank, hidden]     {idx}.to_q_lora.up.weight [hidden, rank]
        {idx}.to_k_lora.down.weight [rank, kv_in]      {idx}.to_k_lora.up.weight [hidden, rank]
        {idx}.to_v_lora.down.weight [rank, kv_in]      {idx}.to_v_lora.up.weight [hidden, rank]
        {idx}.to_out_lora.down.weight [rank, hidden]   {idx}.to_out_lora.up.weight [hidden, rank]
        {idx}.to_k_ip.weight [hidden, cad]             (cross-attention processors only)
        {idx}.to_v_ip.weight [hidden, cad]             (cross-attention processors only)

    with ``kv_in`` = hidden for self-attention, cad for cross-attention. The
    LoRA keys are on every processor (the published .bin carries the LoRA; the
    ``_lora.safetensors`` is the same LoRA converted for WebUI/ComfyUI).

``ip-adapter-faceid-plusv2_sdxl.bin``: as above plus, in image_proj, the
    ``FacePerceiverResampler`` (depth 4, dim_head 64, heads = cad // 64)::

        perceiver_resampler.proj_in.weight [cad, clip_hidden]  .proj_in.bias [cad]
        perceiver_resampler.proj_out.weight [cad, cad]         .proj_out.bias [cad]
        perceiver_resampler.norm_out.weight [cad]              .norm_out.bias [cad]
        perceiver_resampler.layers.{0..3}.0.norm1.weight/.bias [cad]
        perceiver_resampler.layers.{0..3}.0.norm2.weight/.bias [cad]
        perceiver_resampler.layers.{0..3}.0.to_q.weight [64*heads, cad]
        perceiver_resampler.layers.{0..3}.0.to_kv.weight [2*64*heads, cad]
        perceiver_resampler.layers.{0..3}.0.to_out.weight [cad, 64*heads]
        perceiver_resampler.layers.{0..3}.1.0.weight/.bias [cad]      (LayerNorm)
        perceiver_resampler.layers.{0..3}.1.1.weight [4*cad, cad]
        perceiver_resampler.layers.{0..3}.1.3.weight [cad, 4*cad]

``*_lora.safetensors``: kohya/WebUI LoRA form,
    ``lora_unet_<module path, dots as underscores>.{lora_down.weight, lora_up.weight, alpha}``
    for ``to_q``, ``to_k``, ``to_v``, ``to_out_0`` of every attention.

The tiny UNet (tests/tiny_sdxl.py) has cad = 64, so heads = 1 and every tensor
above is small; 512 (insightface embedding) and the 2x ID MLP stay as published.
A ``.safetensors`` FaceID file is the same dict flattened to
``image_proj.<key>`` / ``ip_adapter.<key>`` (how diffusers reads one).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import tiny_sdxl

ID_DIM = 512
NUM_TOKENS = 4
LORA_RANK = 4
CLIP_HIDDEN = 32
LORA_PARTS = ("to_q", "to_k", "to_v", "to_out")


def tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=32, in_channels=9, out_channels=4, **tiny_sdxl.UNET_KWARGS)


def attn_layout(unet=None) -> list[tuple[int, str, int, int | None]]:
    """(idx, processor name, hidden size, cross-attention dim or None) in ``unet.attn_processors`` order,
    the order diffusers' ``load_ip_adapter`` numbers the ``ip_adapter`` keys by."""
    unet = unet if unet is not None else tiny_unet()
    cad = unet.config.cross_attention_dim
    return [(idx, name, unet.get_submodule(name.rsplit(".", 1)[0]).to_q.in_features,
             None if name.endswith("attn1.processor") else cad)
            for idx, name in enumerate(unet.attn_processors)]


def _rand(gen: torch.Generator, *shape: int, std: float = 0.05) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std


def _layernorm(prefix: str, dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1.0 + _rand(gen, dim, std=0.01), f"{prefix}.bias": _rand(gen, dim, std=0.01)}


def faceid_state_dict(
    unet=None, *, plus: bool = False, lora: bool = True, lora_rank: int = LORA_RANK,
    clip_hidden: int = CLIP_HIDDEN, seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """The nested ``{"image_proj", "ip_adapter"}`` dict of a FaceID (or PlusV2) SDXL file."""
    unet = unet if unet is not None else tiny_unet()
    cad = unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(seed)

    proj: dict[str, torch.Tensor] = {
        "proj.0.weight": _rand(gen, 2 * ID_DIM, ID_DIM),
        "proj.0.bias": _rand(gen, 2 * ID_DIM),
        "proj.2.weight": _rand(gen, cad * NUM_TOKENS, 2 * ID_DIM),
        "proj.2.bias": _rand(gen, cad * NUM_TOKENS),
        **_layernorm("norm", cad, gen),
    }
    if plus:
        heads, dim_head = max(1, cad // 64), 64
        inner = heads * dim_head
        pr = "perceiver_resampler"
        proj.update({
            f"{pr}.proj_in.weight": _rand(gen, cad, clip_hidden),
            f"{pr}.proj_in.bias": _rand(gen, cad),
            f"{pr}.proj_out.weight": _rand(gen, cad, cad),
            f"{pr}.proj_out.bias": _rand(gen, cad),
            **_layernorm(f"{pr}.norm_out", cad, gen),
        })
        for i in range(4):
            lp = f"{pr}.layers.{i}"
            proj.update({
                **_layernorm(f"{lp}.0.norm1", cad, gen),
                **_layernorm(f"{lp}.0.norm2", cad, gen),
                f"{lp}.0.to_q.weight": _rand(gen, inner, cad),
                f"{lp}.0.to_kv.weight": _rand(gen, 2 * inner, cad),
                f"{lp}.0.to_out.weight": _rand(gen, cad, inner),
                **_layernorm(f"{lp}.1.0", cad, gen),
                f"{lp}.1.1.weight": _rand(gen, 4 * cad, cad),
                f"{lp}.1.3.weight": _rand(gen, cad, 4 * cad),
            })

    ip: dict[str, torch.Tensor] = {}
    for idx, _name, hidden, cross in attn_layout(unet):
        if lora:
            kv_in = cross or hidden
            ip[f"{idx}.to_q_lora.down.weight"] = _rand(gen, lora_rank, hidden, std=0.2)
            ip[f"{idx}.to_q_lora.up.weight"] = _rand(gen, hidden, lora_rank, std=0.2)
            ip[f"{idx}.to_k_lora.down.weight"] = _rand(gen, lora_rank, kv_in, std=0.2)
            ip[f"{idx}.to_k_lora.up.weight"] = _rand(gen, hidden, lora_rank, std=0.2)
            ip[f"{idx}.to_v_lora.down.weight"] = _rand(gen, lora_rank, kv_in, std=0.2)
            ip[f"{idx}.to_v_lora.up.weight"] = _rand(gen, hidden, lora_rank, std=0.2)
            ip[f"{idx}.to_out_lora.down.weight"] = _rand(gen, lora_rank, hidden, std=0.2)
            ip[f"{idx}.to_out_lora.up.weight"] = _rand(gen, hidden, lora_rank, std=0.2)
        if cross is not None:
            ip[f"{idx}.to_k_ip.weight"] = _rand(gen, hidden, cross, std=0.3)
            ip[f"{idx}.to_v_ip.weight"] = _rand(gen, hidden, cross, std=0.3)
    return {"image_proj": proj, "ip_adapter": ip}


def kohya_lora_from(state_dict: dict, unet=None) -> dict[str, torch.Tensor]:
    """The FaceID LoRA in the kohya/WebUI form of the ``*_lora.safetensors`` files."""
    unet = unet if unet is not None else tiny_unet()
    ip = state_dict["ip_adapter"]
    out: dict[str, torch.Tensor] = {}
    for idx, name, _hidden, _cross in attn_layout(unet):
        module = name[: -len(".processor")].replace(".", "_")
        for part in LORA_PARTS:
            if f"{idx}.{part}_lora.down.weight" not in ip:
                continue
            target = "to_out_0" if part == "to_out" else part
            key = f"lora_unet_{module}_{target}"
            down = ip[f"{idx}.{part}_lora.down.weight"]
            out[f"{key}.lora_down.weight"] = down.clone()
            out[f"{key}.lora_up.weight"] = ip[f"{idx}.{part}_lora.up.weight"].clone()
            out[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))  # alpha == rank: scale 1
    return out


def without_lora(state_dict: dict) -> dict:
    """The same adapter with its LoRA keys removed (what ComfyUI_IPAdapter_plus keeps of it)."""
    return {
        "image_proj": dict(state_dict["image_proj"]),
        "ip_adapter": {k: v for k, v in state_dict["ip_adapter"].items() if "_lora." not in k},
    }


def save_bin(state_dict: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    return path


def save_flat_safetensors(state_dict: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {f"{group}.{k}": v.contiguous() for group in ("image_proj", "ip_adapter") for k, v in state_dict[group].items()}
    save_file(flat, str(path))
    return path


def clip_vision_config(hidden: int = CLIP_HIDDEN):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
        patch_size=8, image_size=32, projection_dim=16, hidden_act="gelu",
    )


def save_clip_vision(folder: Path, *, seed: int = 0, hidden: int = CLIP_HIDDEN) -> tuple[Path, Path]:
    """A tiny CLIPVisionModelWithProjection: (single .safetensors file, its config.json)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionModelWithProjection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = clip_vision_config(hidden)
    model = CLIPVisionModelWithProjection(config).eval()
    weights = folder / "tiny-clip-vision.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    cfg = folder / "tiny-clip-vision.json"
    cfg.write_text(json.dumps(config.to_dict()))
    return weights, cfg


def build_all(root: Path, unet=None) -> dict[str, Path]:
    """Every tiny FaceID file under ComfyUI's folder names, keyed by what it is."""
    from safetensors.torch import save_file

    root = Path(root)
    unet = unet if unet is not None else tiny_unet()
    plain = faceid_state_dict(unet, seed=1)
    plus = faceid_state_dict(unet, plus=True, seed=2)
    paths = {
        "faceid_bin": save_bin(plain, root / "ipadapter" / "ip-adapter-faceid_sdxl.bin"),
        "faceid_safetensors": save_flat_safetensors(
            without_lora(plain), root / "ipadapter" / "ip-adapter-faceid_sdxl.safetensors"
        ),
        "faceid_nolora_bin": save_bin(without_lora(plain), root / "ipadapter" / "ip-adapter-faceid_sdxl_nolora.bin"),
        "faceid_plusv2": save_bin(plus, root / "ipadapter" / "ip-adapter-faceid-plusv2_sdxl.bin"),
    }
    lora_dir = root / "loras"
    lora_dir.mkdir(parents=True, exist_ok=True)
    paths["faceid_lora"] = lora_dir / "ip-adapter-faceid_sdxl_lora.safetensors"
    save_file(kohya_lora_from(plain, unet), str(paths["faceid_lora"]))
    paths["faceid_plusv2_lora"] = lora_dir / "ip-adapter-faceid-plusv2_sdxl_lora.safetensors"
    save_file(kohya_lora_from(plus, unet), str(paths["faceid_plusv2_lora"]))
    paths["clip_vision"], paths["clip_vision_config"] = save_clip_vision(root / "clip_vision")
    return paths

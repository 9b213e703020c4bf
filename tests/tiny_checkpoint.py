"""Tiny single-file SDXL checkpoints in the ORIGINAL (Stability SGM / LDM) key layout.

ComfyUI users mostly hold SDXL as one ``.safetensors`` file (``models/checkpoints``)
whose keys follow Stability's training code, not diffusers:

* ``model.diffusion_model.*``   UNet (input_blocks / middle_block / output_blocks)
* ``first_stage_model.*``       KL VAE (encoder.down.N.block.M, mid.attn_1 as 1x1 convs)
* ``conditioner.embedders.0.transformer.text_model.*``  CLIP ViT-L (Hugging Face layout)
* ``conditioner.embedders.1.model.*``  OpenCLIP ViT-bigG (resblocks, fused in_proj_weight,
  ``text_projection`` stored as [width, dim])

This module converts the tiny diffusers components of ``tiny_sdxl.build_components``
to that layout with its own key table, so the pack's single-file loading runs the
real ``from_single_file`` conversion on CPU in tests. The inverse conversion is
verified by tests/test_sdxl_loader.py (every loaded tensor equals its source).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

import tiny_sdxl

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# ---------------------------------------------------------------- UNet

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _unet_block_tables(config) -> tuple[dict, dict]:
    """Map diffusers block prefixes to SGM block prefixes for this UNet's config.

    Returns (module_map, resnet_prefixes): ``module_map`` maps e.g.
    ``down_blocks.0.resnets.1`` -> ``input_blocks.2.0``; resnet prefixes need their
    layer names renamed too.
    """
    n = len(config["block_out_channels"])
    per = config["layers_per_block"]
    mapping: dict[str, str] = {}
    resnets: set[str] = set()

    idx = 1  # input_blocks.0 is conv_in
    for b in range(n):
        for j in range(per):
            mapping[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks.{idx}.0"
            resnets.add(f"down_blocks.{b}.resnets.{j}")
            mapping[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{idx}.1"
            idx += 1
        if b != n - 1:
            mapping[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{idx}.0.op"
            idx += 1

    mapping["mid_block.resnets.0"] = "middle_block.0"
    mapping["mid_block.attentions.0"] = "middle_block.1"
    mapping["mid_block.resnets.1"] = "middle_block.2"
    resnets.update({"mid_block.resnets.0", "mid_block.resnets.1"})

    up_types = config["up_block_types"]
    idx = 0
    for b in range(n):
        has_attn = "CrossAttn" in up_types[b]
        for j in range(per + 1):
            mapping[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks.{idx}.0"
            resnets.add(f"up_blocks.{b}.resnets.{j}")
            mapping[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{idx}.1"
            if j == per and b != n - 1:
                mapping[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{idx}.{2 if has_attn else 1}.conv"
            idx += 1
    return mapping, resnets


def unet_to_original(state_dict: dict, config) -> dict:
    """diffusers UNet2DConditionModel keys -> SGM ``model.diffusion_model.*`` keys."""
    blocks, resnets = _unet_block_tables(config)
    out = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP:
            out[f"{UNET_PREFIX}{_UNET_TOP[module]}.{param}"] = value
            continue
        # longest block prefix that owns this key
        owner = max((p for p in blocks if module == p or module.startswith(p + ".")), key=len, default=None)
        if owner is None:
            raise KeyError(f"tiny_checkpoint: no SGM name for UNet key {key!r}")
        rest = module[len(owner):].lstrip(".")
        if owner in resnets:
            rest = _UNET_RESNET[rest]
        # transformer internals (norm, proj_in, transformer_blocks.N.attn1.to_q ...) keep their names
        new_module = blocks[owner] + ("." + rest if rest else "")
        out[f"{UNET_PREFIX}{new_module}.{param}"] = value
    return out


# ---------------------------------------------------------------- VAE

_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_original(state_dict: dict, config) -> dict:
    """diffusers AutoencoderKL keys -> SGM ``first_stage_model.*`` keys (attention as 1x1 convs)."""
    n_up = len(config["up_block_types"])
    out = {}
    for key, value in state_dict.items():
        new = key
        m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key)
        if m:
            side, layer, param = m.groups()
            if param == "weight" and layer != "group_norm":
                value = value[:, :, None, None]  # linear -> 1x1 conv
            out[f"{VAE_PREFIX}{side}.mid.attn_1.{_VAE_ATTN[layer]}.{param}"] = value
            continue
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.resnets\.",
            lambda mm: f"decoder.up.{n_up - 1 - int(mm.group(1))}.block.", new,
        )
        new = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda mm: f"decoder.up.{n_up - 1 - int(mm.group(1))}.upsample.", new,
        )
        new = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda mm: f".mid.block_{int(mm.group(1)) + 1}.", new)
        new = new.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
        out[VAE_PREFIX + new] = value
    return out


# ---------------------------------------------------------------- text encoders


def clip_l_to_original(state_dict: dict) -> dict:
    """CLIPTextModel keys -> ``conditioner.embedders.0.transformer.text_model.*``.

    transformers >= 5.6 flattened CLIPTextModel (no ``text_model.`` level); the
    original checkpoints always have it.
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        inner = key if key.startswith("text_model.") else "text_model." + key
        out[CLIP_L_PREFIX + inner] = value
    return out


_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_to_original(state_dict: dict) -> dict:
    """CLIPTextModelWithProjection keys -> OpenCLIP ``conditioner.embedders.1.model.*`` keys."""
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items() if not k.endswith("position_ids")}
    out = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
        "text_projection": sd.pop("text_projection.weight").T.contiguous(),  # stored [width, dim]
    }
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        src = f"encoder.layers.{i}."
        dst = f"transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{param}"] = torch.cat(
                [sd.pop(f"{src}self_attn.{p}_proj.{param}") for p in ("q", "k", "v")], dim=0
            )
            for d_name, o_name in _OPEN_CLIP_LAYER.items():
                out[f"{dst}{o_name}.{param}"] = sd.pop(f"{src}{d_name}.{param}")
    if sd:
        raise KeyError(f"tiny_checkpoint: no OpenCLIP name for {sorted(sd)}")
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


# ---------------------------------------------------------------- builders


def components_to_original(components: dict) -> dict:
    """All four weight-bearing components -> one SGM-layout state dict."""
    out: dict = {}
    out.update(unet_to_original(components["unet"].state_dict(), components["unet"].config))
    out.update(vae_to_original(components["vae"].state_dict(), components["vae"].config))
    out.update(clip_l_to_original(components["text_encoder"].state_dict()))
    out.update(open_clip_to_original(components["text_encoder_2"].state_dict()))
    # two entries the released SDXL files carry that no diffusers module owns
    n_pos = components["text_encoder"].config.max_position_embeddings
    out[CLIP_L_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(n_pos).unsqueeze(0)
    out[OPEN_CLIP_PREFIX + "logit_scale"] = torch.tensor(4.6052)
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def build_tiny_checkpoint(path: Path, in_channels: int = 9, seed: int = 0, fmt: str = "safetensors") -> dict:
    """Write a tiny SDXL single-file checkpoint; return the diffusers components it came from.

    ``fmt`` is "safetensors" or "ckpt" (a torch zip file holding {"state_dict": ...},
    like the original .ckpt releases).
    """
    components = tiny_sdxl.build_components(in_channels=in_channels, seed=seed)
    state = components_to_original(components)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif fmt == "ckpt":
        torch.save({"state_dict": state}, str(path))
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return components


def build_sd15_like_checkpoint(path: Path) -> Path:
    """A small file with SD1.x key names (cond_stage_model, 4-channel UNet, no conditioner)."""
    from safetensors.torch import save_file

    state = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
        "model.diffusion_model.input_blocks.0.0.bias": torch.zeros(32),
        "model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(77, 32),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(32, 3, 3, 3),
    }
    save_file(state, str(path))
    return Path(path)


def build_tiny_controlnet(folder: Path, seed: int = 1) -> Path:
    """Save a tiny SDXL ControlNetModel (matching tiny_sdxl's UNet) as a diffusers folder."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    # a ControlNet is the UNet's encoder half: same kwargs, no up blocks
    kwargs = {k: v for k, v in tiny_sdxl.UNET_KWARGS.items() if k != "up_block_types"}
    controlnet = ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(8, 16, 16, 16), **kwargs)
    folder = Path(folder)
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder

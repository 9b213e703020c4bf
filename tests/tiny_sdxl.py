"""Tiny random-weight SDXL inpainting models, saved like the published ones.

Same architecture classes as SDXL (two CLIP text encoders, UNet with
text_time conditioning, KL VAE), a few MB in all, so the pack's real diffusers
loading and sampling code runs on CPU in tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

UNET_KWARGS = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=80,  # 6 * 8 time ids + 32 pooled (text_encoder_2's projection)
    cross_attention_dim=80,  # 32 (CLIP-L-like) + 48 (OpenCLIP-G-like) hidden states, concatenated as in SDXL
)
CROSS_ATTENTION_DIM = 80
# The two text encoders differ in width like SDXL's (768 / 1280): diffusers' single-file loader tells
# CLIP-L from OpenCLIP-G by it.
TEXT_ENCODER_WIDTHS = (32, 48)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> None:
    """A byte-level CLIP BPE tokenizer with no merges: 514 ids, all < vocab_size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>", "pad_token": pad_token})
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
                    "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>", "pad_token": pad_token,
                    "do_lower_case": True})
    )


def text_encoder_config(hidden_size: int = TEXT_ENCODER_WIDTHS[0]):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=hidden_size, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
        vocab_size=1000, projection_dim=32, bos_token_id=514, eos_token_id=515, pad_token_id=515,
    )


def build_components(in_channels: int = 9, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=32, in_channels=in_channels, out_channels=4, **UNET_KWARGS)
    # Four blocks like SDXL's VAE, so latents are 1/8 of the image (a 2-block VAE would give
    # 1/2 and make its mid-block attention quadratic in a megapixel image).
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 32, 32],
        layers_per_block=1,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        sample_size=128,
    )
    te1 = CLIPTextModel(text_encoder_config())
    te2 = CLIPTextModelWithProjection(text_encoder_config(TEXT_ENCODER_WIDTHS[1]))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, timestep_spacing="leading",
    )
    return dict(unet=unet, vae=vae, text_encoder=te1, text_encoder_2=te2, scheduler=scheduler)


def build_sdxl_inpaint_folder(folder: Path, in_channels: int = 9, seed: int = 0) -> Path:
    """Save a tiny SDXL inpainting pipeline as a diffusers folder (model_index.json ...)."""
    from diffusers import StableDiffusionXLInpaintPipeline
    from transformers import CLIPTokenizer

    folder = Path(folder)
    tok_dir = folder.parent / (folder.name + "-tokenizer-src")
    write_tokenizer(tok_dir)
    tok = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    write_tokenizer(tok_dir.with_name(tok_dir.name + "2"), pad_token="!")
    tok2 = CLIPTokenizer.from_pretrained(tok_dir.with_name(tok_dir.name + "2"), local_files_only=True)
    pipe = StableDiffusionXLInpaintPipeline(
        tokenizer=tok, tokenizer_2=tok2, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True,
        **build_components(in_channels=in_channels, seed=seed),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder

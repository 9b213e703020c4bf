"""Tiny random-weight FLUX.2 klein models in the published layouts, built offline.

``build(root)`` writes, under ``root``:
- ``diffusers/FLUX.2-klein-tiny/``: the diffusers folder layout of black-forest-labs/FLUX.2-klein-4B
  (model_index.json with is_distilled, transformer/, text_encoder/ (Qwen3), tokenizer/ (a
  byte-level BPE trained here, with Qwen's special tokens and the pack's chat template), vae/,
  scheduler/);
- ``configs/``: the same configs and tokenizer without weights, in the layout of the pack's
  ``configs/flux2_klein_4b`` (for ``build_random_klein``);
- single files as ComfyUI users have them, which the engine loads with the pack's own configs and
  Qwen tokenizer (it reads the sizes from the weights): ``diffusion_models/klein-tiny.safetensors`` (BFL's
  original key layout), ``diffusion_models/klein-tiny-fp8.safetensors`` (the same, FP8 weights),
  ``text_encoders/qwen-tiny.safetensors`` (transformers' Qwen3 keys without the tied lm_head),
  ``vae/flux2-vae-tiny.safetensors`` (BFL's original VAE key layout).

The tiny transformer keeps the real geometry that matters: 8x VAE and 2x2 patches (16 pixels
per token), 28 text-encoder layers so the pipeline's hidden-state indices (9, 18, 27) exist,
``joint_attention_dim`` = 3 x the text encoder's width, ``in_channels`` = 4 x latent channels.

``build_random_klein(device, dtype)`` builds the full-size klein 4B architecture with random
weights (for the benchmark on a GPU; nothing is downloaded).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

PACK_CONFIGS = Path(__file__).resolve().parents[1] / "nodes" / "pipeline" / "configs" / "flux2_klein_4b"

TEXT_HIDDEN = 16
LATENT_CHANNELS = 4
TRANSFORMER = dict(patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * TEXT_HIDDEN,
                   timestep_guidance_channels=32, mlp_ratio=2.0, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)
# GroupNorm over all 8 channels: the engine reads every VAE size from a single file but the group count,
# which it takes as 32 (FLUX.2's) or, for narrower VAEs, the largest divisor of 32 dividing every width.
VAE = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=LATENT_CHANNELS, norm_num_groups=8,
           sample_size=64)
# Qwen's vocabulary size, so the text encoder works with the pack's real Qwen tokenizer (single files).
TEXT_VOCAB = 151936
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CORPUS = ["a photo of a woman in a red dress", "a man wearing a dark suit, studio light", "portrait of a person",
          "fashion catalogue photograph, natural skin, detailed face", "user assistant"]


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tok = Qwen2TokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                             unk_token=None, bos_token=None)
    tok.save_pretrained(folder)
    shutil.copy(PACK_CONFIGS / "tokenizer" / "chat_template.jinja", folder / "chat_template.jinja")
    return Qwen2TokenizerFast.from_pretrained(folder, local_files_only=True)


def _models():
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(**TRANSFORMER)
    vae = AutoencoderKLFlux2(**VAE)
    with torch.no_grad():  # a BatchNorm with statistics, so the normalisation is exercised
        vae.bn.running_mean.uniform_(-0.5, 0.5)
        vae.bn.running_var.uniform_(0.5, 2.0)
    config = Qwen3Config(vocab_size=TEXT_VOCAB, hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=28,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                         tie_word_embeddings=True, rope_theta=1000000)
    text_encoder = Qwen3ForCausalLM(config).eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(PACK_CONFIGS, subfolder="scheduler")
    return transformer, vae, text_encoder, scheduler


# --------------------------------------------------------------------------- original key layouts


def transformer_to_bfl(state: dict) -> dict:
    """diffusers' Flux2Transformer2DModel keys -> BFL's original layout (the inverse of diffusers'
    single-file converter): fused qkv, (shift, scale) order in the final modulation, norm scales."""
    import torch

    renames = [
        ("x_embedder.", "img_in."), ("context_embedder.", "txt_in."),
        ("time_guidance_embed.timestep_embedder.linear_1.", "time_in.in_layer."),
        ("time_guidance_embed.timestep_embedder.linear_2.", "time_in.out_layer."),
        ("double_stream_modulation_img.linear.", "double_stream_modulation_img.lin."),
        ("double_stream_modulation_txt.linear.", "double_stream_modulation_txt.lin."),
        ("single_stream_modulation.linear.", "single_stream_modulation.lin."),
        ("proj_out.", "final_layer.linear."),
    ]
    double = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
              "attn.to_out.0": "img_attn.proj", "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
              "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
              "attn.to_add_out": "txt_attn.proj", "ff_context.linear_in": "txt_mlp.0",
              "ff_context.linear_out": "txt_mlp.2"}
    single = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2", "attn.norm_q": "norm.query_norm",
              "attn.norm_k": "norm.key_norm"}
    out: dict = {}
    for key, value in state.items():
        if key.startswith("norm_out.linear."):
            shift_first = torch.cat(list(value.chunk(2, dim=0))[::-1], dim=0)
            out["final_layer.adaLN_modulation.1." + key.rsplit(".", 1)[1]] = shift_first
            continue
        parts = key.split(".")
        if parts[0] in ("transformer_blocks", "single_transformer_blocks"):
            index, inner, param = parts[1], ".".join(parts[2:-1]), parts[-1]
            if parts[0] == "transformer_blocks":
                if inner in ("attn.to_q", "attn.add_q_proj"):
                    stream = "img" if inner == "attn.to_q" else "txt"
                    names = ("to_q", "to_k", "to_v") if stream == "img" else ("add_q_proj", "add_k_proj", "add_v_proj")
                    out[f"double_blocks.{index}.{stream}_attn.qkv.{param}"] = torch.cat(
                        [state[f"transformer_blocks.{index}.attn.{n}.{param}"] for n in names], dim=0)
                    continue
                if inner in ("attn.to_k", "attn.to_v", "attn.add_k_proj", "attn.add_v_proj"):
                    continue
                new = double[inner]
                prefix = f"double_blocks.{index}."
            else:
                new = single[inner]
                prefix = f"single_blocks.{index}."
            if "norm" in new and param == "weight":
                param = "scale"
            out[f"{prefix}{new}.{param}"] = value
            continue
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def vae_to_bfl(state: dict, num_blocks: int) -> dict:
    """diffusers' AutoencoderKLFlux2 keys -> BFL's original (LDM-style) VAE layout."""
    out: dict = {}
    for key, value in state.items():
        if key == "bn.num_batches_tracked":
            continue
        new = key
        for side in ("encoder", "decoder"):
            new = new.replace(f"{side}.conv_norm_out.", f"{side}.norm_out.")
            new = new.replace(f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.")
            for k in range(2):
                new = new.replace(f"{side}.mid_block.resnets.{k}.", f"{side}.mid.block_{k + 1}.")
        for i in range(num_blocks):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            j = num_blocks - 1 - i
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{j}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{j}.upsample.")
        new = new.replace("conv_shortcut.", "nin_shortcut.")
        if new.startswith("quant_conv."):
            new = "encoder." + new
        if new.startswith("post_quant_conv."):
            new = "decoder." + new
        if ".mid.attn_1." in new:
            for old, rep in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                             ("to_out.0.", "proj_out.")):
                new = new.replace("attn_1." + old, "attn_1." + rep)
            if value.ndim == 2:  # LDM stores the attention projections as 1x1 convolutions
                value = value[:, :, None, None]
        out[new] = value
    return out


# --------------------------------------------------------------------------- build


def build(root: Path) -> dict:
    """Write every tiny klein file under ``root``; returns their paths by name."""
    import torch
    from diffusers import Flux2KleinPipeline
    from safetensors.torch import save_file

    root = Path(root)
    folder = root / "diffusers" / "FLUX.2-klein-tiny"
    configs = root / "configs"
    tokenizer = _tokenizer(root / "tokenizer-build")
    transformer, vae, text_encoder, scheduler = _models()
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=True)
    pipe.save_pretrained(folder)
    shutil.copy(PACK_CONFIGS / "tokenizer" / "chat_template.jinja", folder / "tokenizer" / "chat_template.jinja")

    for sub in ("transformer", "text_encoder", "vae", "scheduler"):
        (configs / sub).mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "scheduler_config.json", "generation_config.json"):
            if (folder / sub / name).is_file():
                shutil.copy(folder / sub / name, configs / sub / name)
    shutil.copytree(folder / "tokenizer", configs / "tokenizer")
    shutil.copy(folder / "model_index.json", configs / "model_index.json")

    bfl = {k: v.contiguous() for k, v in transformer_to_bfl(transformer.state_dict()).items()}
    paths = {"folder": folder, "configs": configs,
             "transformer": root / "diffusion_models" / "klein-tiny.safetensors",
             "transformer_fp8": root / "diffusion_models" / "klein-tiny-fp8.safetensors",
             "transformer_fp8_upcast": root / "diffusion_models" / "klein-tiny-fp8-upcast.safetensors",
             "text_encoder": root / "text_encoders" / "qwen-tiny.safetensors",
             "vae": root / "vae" / "flux2-vae-tiny.safetensors"}
    for key in ("transformer", "text_encoder", "vae"):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
    save_file(bfl, str(paths["transformer"]))
    # FP8: the matrices in float8_e4m3fn (norms and biases too small to matter stay float32), and the
    # same values upcast to float32, so a test can compare FP8 storage against exact upcast weights.
    fp8 = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 else v) for k, v in bfl.items()}
    save_file(fp8, str(paths["transformer_fp8"]))
    save_file({k: v.to(torch.float32) for k, v in fp8.items()}, str(paths["transformer_fp8_upcast"]))
    te_state = {k: v.contiguous() for k, v in text_encoder.state_dict().items() if k != "lm_head.weight"}
    save_file(te_state, str(paths["text_encoder"]))
    save_file({k: v.contiguous() for k, v in vae_to_bfl(vae.state_dict(), len(VAE["block_out_channels"])).items()},
              str(paths["vae"]))
    (root / "built.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return paths


def install_defaults(models_root: Path, built: dict | None = None) -> dict:
    """Put the tiny klein into a ComfyUI models folder under the names the shipped workflows use:
    the single files as ComfyUI's templates name them and the diffusers folder as
    ``diffusers/FLUX.2-klein-4B`` (hard links where possible). Returns the installed paths."""
    import os

    from comfyui_model_swap.nodes.pipeline import model_files

    built = built or build(Path(models_root) / ".klein-build")
    models_root = Path(models_root)
    installed = {}
    for key, source in (("flux2_klein_transformer", built["transformer"]), ("flux2_klein_text_encoder", built["text_encoder"]),
                        ("flux2_vae", built["vae"]), ("flux2_klein", built["folder"])):
        spec = model_files.MODELS[key]
        target = models_root / spec.folder / spec.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(source).is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            try:
                os.link(source, target)
            except OSError:
                shutil.copy(source, target)
        installed[key] = target
    return installed


_BUILT: dict = {}


def build_once(tmp_path_factory) -> dict:
    """The tiny models of this test session, built on first use."""
    if "paths" not in _BUILT:
        _BUILT["paths"] = build(tmp_path_factory.mktemp("klein"))
    return _BUILT["paths"]


def build_random_klein(device="cuda", dtype=None, *, fp8: bool = False, offload: str = "none", configs=None):
    """A FLUX.2 klein 4B engine of the published architecture (the pack's shipped configs and
    tokenizer) with random weights, for speed and memory benchmarks: nothing is downloaded and
    nothing is written to disk. bf16 on CUDA by default; ``fp8=True`` stores the transformer's
    weights in float8_e4m3fn (diffusers' layerwise casting) and computes in ``dtype``. ``configs``
    (default: the pack's) lets a test build the same way from tiny configs."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinInpaintPipeline,
                           Flux2Transformer2DModel)
    from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from comfyui_model_swap.nodes.pipeline.engines import common, flux2_klein

    dev = common.resolve_device(device)
    dtype = common.resolve_dtype(dtype, dev, cuda_default="bf16")
    configs = Path(configs or flux2_klein.CONFIG_DIR)

    def materialise(model):
        # Random weights straight on the target device (fast, and no 16 GB of CPU RAM); to_empty also
        # empties buffers (rotary frequencies, BatchNorm statistics), so they are put back.
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        model.to_empty(device=dev if offload == "none" else "cpu")
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
            for name, p in model.named_parameters():
                if "norm" in name and p.ndim == 1:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02)
        return model.to(dtype)

    with init_empty_weights(include_buffers=False):
        transformer = Flux2Transformer2DModel.from_config(Flux2Transformer2DModel.load_config(configs / "transformer"))
        vae = AutoencoderKLFlux2.from_config(AutoencoderKLFlux2.load_config(configs / "vae"))
        text_encoder = Qwen3ForCausalLM(Qwen3Config.from_pretrained(configs / "text_encoder"))
    transformer, vae = materialise(transformer), materialise(vae)
    text_encoder = materialise(text_encoder)
    text_encoder.tie_weights()
    text_encoder.to("cpu")  # the engine keeps the text encoder on the CPU between prompts
    if fp8:
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    pipe = Flux2KleinInpaintPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(configs, subfolder="scheduler"),
        vae=vae, text_encoder=None, tokenizer=None, transformer=transformer, is_distilled=True)
    common.place(pipe, dev, common.check_offload(offload, dev))
    tokenizer = Qwen2TokenizerFast.from_pretrained(configs / "tokenizer", local_files_only=True)
    return flux2_klein.Flux2KleinEngine(pipe, text_encoder, tokenizer, dev, dtype, offload,
                                        source="random FLUX.2 klein 4B", fp8=fp8)

"""Reading FLUX.2 klein's single files: ComfyUI's transformer (BFL's key layout, bf16 or FP8),
Qwen3 text encoder and FLUX.2 VAE (BFL's layout or diffusers'), into diffusers and transformers
models built from the pack's shipped configs with the sizes read from the weights.

Every wrong or unreadable file raises MissingModelError naming the file, its ComfyUI folder and
where it is published (from the model table, model_files.MODELS).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..errors import MissingModelError

# model_files.MODELS keys of what this engine loads
FOLDER_KEY, TRANSFORMER_KEY, TEXT_ENCODER_KEY, VAE_KEY = (
    "flux2_klein", "flux2_klein_transformer", "flux2_klein_text_encoder", "flux2_vae")


def missing(key: str, path: Path | None, problem: str) -> MissingModelError:
    from .. import model_files

    spec = model_files.MODELS[key]
    folder, name, source = spec.folder, spec.name, spec.source
    where = f" ({path})" if path is not None else ""
    return MissingModelError(
        f"FLUX.2 klein 4B: {problem}{where}. Place '{name}' in ComfyUI/models/{folder}/ (download from {source}).",
        folder=f"models/{folder}", filename=name, source=source)


# --------------------------------------------------------------------------- single-file readers


def _read_safetensors(key: str, path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise missing(key, path, f"the file cannot be read as safetensors ({type(exc).__name__}: {exc}); "
                                  "it is incomplete or not a safetensors file, download it again") from exc


def _strip_prefix(state: dict, prefixes: tuple[str, ...]) -> dict:
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _dequantize_fp8(state: dict) -> tuple[dict, bool]:
    """(state dict, was plain FP8). Scaled FP8 (a ``*.weight_scale``/``*.scale_weight`` beside a
    weight) is multiplied out; activation scales and quantisation metadata are dropped."""
    import torch

    fp8 = {torch.float8_e4m3fn, torch.float8_e5m2}
    has_fp8 = any(v.dtype in fp8 for v in state.values())
    scale_keys = [k for k in state if k.endswith((".weight_scale", ".scale_weight"))]
    if not has_fp8:
        return state, False
    out = {}
    for k, v in state.items():
        if k.endswith((".weight_scale", ".scale_weight", ".input_scale", ".scale_input", "comfy_quant")):
            continue
        if v.dtype in fp8 and scale_keys:
            base = k[: -len(".weight")] if k.endswith(".weight") else k
            scale = state.get(base + ".weight_scale", state.get(base + ".scale_weight"))
            v = v.to(torch.float32) * (scale.to(torch.float32) if scale is not None else 1.0)
        out[k] = v
    return out, not scale_keys


def _blocks(state: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)})


def _transformer_sizes(key: str, path: Path, state: dict) -> dict:
    """The transformer's sizes, read from its weights as ComfyUI does (config overrides for
    from_single_file); the shipped config supplies the rest."""
    try:
        hidden, in_channels = state["img_in.weight"].shape
        head_dim = state["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
        sizes = dict(
            in_channels=int(in_channels), attention_head_dim=int(head_dim), num_attention_heads=int(hidden // head_dim),
            num_layers=_blocks(state, "double_blocks."), num_single_layers=_blocks(state, "single_blocks."),
            joint_attention_dim=int(state["txt_in.weight"].shape[1]),
            timestep_guidance_channels=int(state["time_in.in_layer.weight"].shape[1]),
            mlp_ratio=state["double_blocks.0.img_mlp.0.weight"].shape[0] / (2.0 * hidden),
            axes_dims_rope=(int(head_dim) // 4,) * 4, guidance_embeds="guidance_in.in_layer.weight" in state)
    except (KeyError, IndexError, ValueError) as exc:
        raise missing(key, path, f"the FLUX.2 transformer file is incomplete ({type(exc).__name__}: {exc})") from exc
    if sizes["guidance_embeds"]:
        raise missing(key, path, "the file is FLUX.2 [dev] (it has a guidance embedding), not FLUX.2 [klein]")
    return sizes


def _text_encoder_config(configs: Path, state: dict):
    """The shipped Qwen3 config with the sizes read from the weights."""
    from transformers import Qwen3Config

    vocab, hidden = state["model.embed_tokens.weight"].shape
    head_dim = state["model.layers.0.self_attn.q_norm.weight"].shape[0]
    values = json.loads((configs / "text_encoder" / "config.json").read_text())
    values.pop("layer_types", None)  # derived from num_hidden_layers
    values.update(vocab_size=int(vocab), hidden_size=int(hidden), head_dim=int(head_dim),
                  num_hidden_layers=_blocks(state, "model.layers."),
                  num_attention_heads=int(state["model.layers.0.self_attn.q_proj.weight"].shape[0] // head_dim),
                  num_key_value_heads=int(state["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim),
                  intermediate_size=int(state["model.layers.0.mlp.gate_proj.weight"].shape[0]))
    return Qwen3Config(**values)


def _vae_config(configs: Path, state: dict) -> dict:
    """The shipped VAE config with the sizes read from (diffusers-layout) weights. GroupNorm's group
    count is not in the weights: 32 as in FLUX.2's VAE, fewer only for narrower (test) VAEs."""
    import math

    from diffusers import AutoencoderKLFlux2

    config = dict(AutoencoderKLFlux2.load_config(str(configs / "vae"), local_files_only=True))
    blocks = _blocks(state, "encoder.down_blocks.")
    widths = [int(state[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in range(blocks)]
    config.update(block_out_channels=widths, down_block_types=["DownEncoderBlock2D"] * blocks,
                  up_block_types=["UpDecoderBlock2D"] * blocks, in_channels=int(state["encoder.conv_in.weight"].shape[1]),
                  layers_per_block=_blocks(state, "encoder.down_blocks.0.resnets."),
                  latent_channels=int(state["encoder.conv_out.weight"].shape[0] // 2),
                  norm_num_groups=math.gcd(32, *widths),
                  mid_block_add_attention=any(k.startswith("encoder.mid_block.attentions.") for k in state))
    return config


def load_transformer_file(path: Path, configs: Path, dtype):
    from diffusers import Flux2Transformer2DModel

    key = TRANSFORMER_KEY
    state = _strip_prefix(_read_safetensors(key, path), ("model.diffusion_model.", "diffusion_model."))
    if "single_stream_modulation.lin.weight" not in state:
        raise missing(key, path, "the file is not a FLUX.2 transformer in BFL's layout (no "
                                  "single_stream_modulation.lin.weight)")
    overrides = _transformer_sizes(key, path, state)
    state, plain_fp8 = _dequantize_fp8(state)
    try:
        model = Flux2Transformer2DModel.from_single_file(
            state, config=str(configs), subfolder="transformer", torch_dtype=dtype, local_files_only=True, **overrides)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise missing(key, path, f"diffusers could not load the transformer ({type(exc).__name__}: {exc})") from exc
    if plain_fp8:
        import torch

        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    return model, plain_fp8


def load_text_encoder_file(path: Path, configs: Path, dtype):
    import torch
    from accelerate import init_empty_weights
    from transformers import Qwen3ForCausalLM

    key = TEXT_ENCODER_KEY
    state = _read_safetensors(key, path)
    if any(v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.uint8) for v in state.values()):
        raise missing(key, path, "quantised (FP8/FP4) Qwen3 files are not supported; use the bf16 "
                                  "qwen_3_4b.safetensors")
    state = _strip_prefix(state, ("text_encoders.qwen3_4b.transformer.", "transformer."))
    if not any(k.startswith("model.") for k in state):
        state = {f"model.{k}" if not k.startswith("lm_head.") else k: v for k, v in state.items()}
    if "model.layers.0.self_attn.q_norm.weight" not in state or "model.embed_tokens.weight" not in state:
        raise missing(key, path, "the file is not a Qwen3 text encoder (no model.embed_tokens / q_norm weights)")
    config = _text_encoder_config(configs, state)
    if config.vocab_size < len(tokenizer(configs / "tokenizer")):
        raise missing(key, path, f"the Qwen3 file's vocabulary ({config.vocab_size}) is smaller than the Qwen "
                                  "tokenizer's: it is not Qwen3")
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    with init_empty_weights(), no_init_weights():  # every weight comes from the file: skip random init
        model = Qwen3ForCausalLM(config)
    wanted = set(model.state_dict())
    absent = sorted(wanted - set(state) - {"lm_head.weight"})
    if absent:
        raise missing(key, path, f"the Qwen3 file lacks {len(absent)} weights, e.g. {absent[:3]}")
    state = {k: v.to(dtype) for k, v in state.items() if k in wanted}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    if model.lm_head.weight.is_meta:  # untied config without lm_head: hidden states need no head
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


_VAE_EXTRA = {
    "encoder.quant_conv.weight": "quant_conv.weight", "encoder.quant_conv.bias": "quant_conv.bias",
    "decoder.post_quant_conv.weight": "post_quant_conv.weight", "decoder.post_quant_conv.bias": "post_quant_conv.bias",
    "bn.running_mean": "bn.running_mean", "bn.running_var": "bn.running_var",
}


def load_vae_file(path: Path, configs: Path, dtype):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLFlux2
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    key = VAE_KEY
    state = _strip_prefix(_read_safetensors(key, path), ("first_stage_model.", "vae."))
    if "bn.running_mean" not in state or "encoder.conv_in.weight" not in state:
        raise missing(key, path, "the file is not the FLUX.2 VAE (no bn.running_mean; FLUX.1's ae.safetensors "
                                  "is another VAE)")
    if any(k.startswith("encoder.down.") for k in state):  # BFL's / ComfyUI's original layout
        blocks = ["DownEncoderBlock2D"] * _blocks(state, "encoder.down.")
        converted = convert_ldm_vae_checkpoint(state, {"down_block_types": blocks, "up_block_types": blocks})
        converted.update({new: state[old] for old, new in _VAE_EXTRA.items() if old in state})
        state = converted
    config = _vae_config(configs, state)
    with init_empty_weights(include_buffers=False):
        model = AutoencoderKLFlux2.from_config(config)
    own = model.state_dict()
    state.setdefault("bn.num_batches_tracked", own["bn.num_batches_tracked"])
    absent = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if absent or unexpected:
        raise missing(key, path, f"the VAE's weights do not match the FLUX.2 VAE (missing {absent[:3]}, "
                                  f"unexpected {unexpected[:3]})")
    for k, v in list(state.items()):
        if tuple(v.shape) != tuple(own[k].shape):
            raise missing(key, path, f"the VAE weight {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        if v.is_floating_point():
            state[k] = v.to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()




@functools.lru_cache(maxsize=4)
def tokenizer(folder: Path):
    """The Qwen tokenizer in ``folder``, read once per process (building it from vocab and merges
    takes seconds; it is not changed by use)."""
    from transformers import Qwen2TokenizerFast

    return Qwen2TokenizerFast.from_pretrained(folder, local_files_only=True)

"""nodes/pipeline/sdxl_loader.py: loading the SDXL inpaint engine from folders and single files.

Everything runs the real diffusers loaders (from_pretrained, from_single_file) on
tiny random-weight models built here; nothing is downloaded.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import tiny_checkpoint
import tiny_sdxl
from comfyui_model_swap.nodes.pipeline import sdxl_loader
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError, MissingModelError

WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny SDXL as a diffusers folder, single files (9- and 4-channel, .safetensors and .ckpt), ControlNet."""
    root = tmp_path_factory.mktemp("sdxl")
    folder = tiny_sdxl.build_sdxl_inpaint_folder(root / "diffusers" / "sdxl-tiny-inpaint", in_channels=9)
    ckpt_dir = root / "checkpoints"
    comps9 = tiny_checkpoint.build_tiny_checkpoint(ckpt_dir / "tiny_inpaint.safetensors", in_channels=9, seed=0)
    comps4 = tiny_checkpoint.build_tiny_checkpoint(ckpt_dir / "tiny_base.safetensors", in_channels=4, seed=3)
    tiny_checkpoint.build_tiny_checkpoint(ckpt_dir / "tiny_base.ckpt", in_channels=4, seed=3, fmt="ckpt")
    controlnet = tiny_checkpoint.build_tiny_controlnet(root / "controlnet" / "tiny-controlnet")
    tok = root / "sd1_tokenizer"
    tiny_sdxl.write_tokenizer(tok)
    return dict(
        root=root, folder=folder, ckpt9=ckpt_dir / "tiny_inpaint.safetensors",
        ckpt4=ckpt_dir / "tiny_base.safetensors", ckpt4_torch=ckpt_dir / "tiny_base.ckpt",
        comps9=comps9, comps4=comps4, controlnet=controlnet, tokenizer=tok,
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_MODEL_SWAP_CACHE", str(tmp_path / "cache"))
    sdxl_loader.clear_cache()
    yield
    sdxl_loader.clear_cache()


def _single(tiny, path=None, **kw):
    kw.setdefault("config_dir", tiny["folder"])
    return sdxl_loader.load_engine(path or tiny["ckpt9"], **kw)


def _assert_same_weights(pipe, comps, names=WEIGHTED):
    for name in names:
        got = getattr(pipe, name).state_dict()
        want = comps[name].state_dict()
        assert set(got) == set(want), f"{name}: key sets differ"
        bad = [k for k in want if not torch.equal(got[k], want[k])]
        assert not bad, f"{name}: {len(bad)} tensors differ from the source, e.g. {bad[:3]}"


def _inpaint_inputs(size=64):
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return image, mask


# ------------------------------------------------------------------ diffusers folder


def test_diffusers_folder_loads_inpaint_pipeline(tiny):
    from diffusers import StableDiffusionXLInpaintPipeline

    engine = sdxl_loader.load_engine(tiny["folder"])
    assert type(engine.pipe) is StableDiffusionXLInpaintPipeline
    assert engine.has_controlnet is False
    assert engine.device == torch.device("cpu") and engine.dtype == torch.float32
    assert engine.extras["format"] == "diffusers" and engine.extras["in_channels"] == 9
    assert engine.pipe.unet.dtype == torch.float32
    assert engine.pipe._progress_bar_config == {"disable": True}
    # same seed as the 9-channel single file: the folder's weights are the source weights
    _assert_same_weights(engine.pipe, tiny["comps9"], names=("unet", "vae"))


def test_fp16_only_folder_is_loaded_through_the_fp16_variant(tiny, tmp_path):
    base = sdxl_loader.load_engine(tiny["folder"], cache=False)
    only_fp16 = tmp_path / "fp16-only"
    base.pipe.save_pretrained(only_fp16, variant="fp16", safe_serialization=True)
    assert list(only_fp16.glob("unet/*.fp16.safetensors"))

    engine = sdxl_loader.load_engine(only_fp16, cache=False)
    assert engine.extras["variant"] == "fp16"
    assert engine.dtype == torch.float32  # fp16 files, upcast on CPU
    # and a full-precision folder asked for fp32 keeps the plain weights
    assert sdxl_loader._folder_variant(tiny["folder"], torch.float32) is None


# ------------------------------------------------------------------ single file


def test_single_file_load_reproduces_every_source_tensor(tiny):
    from diffusers import StableDiffusionXLInpaintPipeline

    engine = _single(tiny)
    assert type(engine.pipe) is StableDiffusionXLInpaintPipeline
    assert engine.extras["format"] == "single_file"
    assert engine.extras["checkpoint_format"] == "safetensors"
    _assert_same_weights(engine.pipe, tiny["comps9"])


def test_single_file_text_encoder_2_comes_from_openclip_keys_not_clip_l(tiny):
    """Both tiny encoders are 32 wide; diffusers alone would load CLIP-L into text_encoder_2."""
    engine = _single(tiny)
    te1 = engine.pipe.text_encoder.state_dict()
    te2 = engine.pipe.text_encoder_2.state_dict()
    assert not torch.equal(te1["embeddings.token_embedding.weight"], te2["text_model.embeddings.token_embedding.weight"])
    assert torch.equal(
        te2["text_projection.weight"], tiny["comps9"]["text_encoder_2"].state_dict()["text_projection.weight"]
    )


def test_ckpt_file_loads_through_weights_only(tiny):
    engine = _single(tiny, tiny["ckpt4_torch"])
    assert engine.extras["checkpoint_format"] == "torch"
    _assert_same_weights(engine.pipe, tiny["comps4"])


def test_inpainting_and_base_unets_are_told_apart_from_the_header(tiny):
    assert sdxl_loader.inspect_checkpoint(tiny["ckpt9"]).in_channels == 9
    assert sdxl_loader.inspect_checkpoint(tiny["ckpt9"]).is_inpainting
    info4 = sdxl_loader.inspect_checkpoint(tiny["ckpt4"])
    assert info4.in_channels == 4 and not info4.is_inpainting
    assert sdxl_loader.inspect_checkpoint(tiny["ckpt4_torch"]).in_channels == 4

    base = _single(tiny, tiny["ckpt4"])  # the tiny config folder says 9: the loader must adapt it
    assert base.pipe.unet.config.in_channels == 4
    assert base.extras["in_channels"] == 4
    assert base.pipe.unet.conv_in.weight.shape[1] == 4
    assert base.extras["config_dir"] != str(tiny["folder"])
    _assert_same_weights(base.pipe, tiny["comps4"], names=("unet",))

    inpaint = _single(tiny, tiny["ckpt9"])
    assert inpaint.pipe.unet.config.in_channels == 9
    assert inpaint.extras["config_dir"] == str(tiny["folder"])  # fits as is: no copy


def test_shipped_config_adapts_in_channels_without_touching_the_original(tmp_path):
    import json

    cfg9 = sdxl_loader.prepare_config_dir(9)
    assert json.loads((cfg9 / "unet/config.json").read_text())["in_channels"] == 9
    assert cfg9 != sdxl_loader.SDXL_CONFIG_DIR
    assert str(cfg9).startswith(str(tmp_path / "cache"))
    assert sdxl_loader.prepare_config_dir(4) == sdxl_loader.SDXL_CONFIG_DIR
    assert json.loads((sdxl_loader.SDXL_CONFIG_DIR / "unet/config.json").read_text())["in_channels"] == 4
    assert sdxl_loader.prepare_config_dir(9) == cfg9  # reused


def test_shipped_configs_describe_real_sdxl(tmp_path):
    """The shipped configs build SDXL's published parameter counts, and the original SDXL key
    layout written from them is what diffusers recognises as SDXL and converts back exactly."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = sdxl_loader.SDXL_CONFIG_DIR
    with init_empty_weights():
        comps = dict(
            unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet")),
            vae=AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae")),
            text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder")),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(cfg / "text_encoder_2")),
        )
        controlnet = ControlNetModel.from_config(ControlNetModel.load_config(sdxl_loader.CONTROLNET_CONFIG_DIR))

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(comps["unet"]) == 2_567_463_684
    assert count(comps["vae"]) == 83_653_863
    assert count(comps["text_encoder"]) == 123_060_480
    assert count(comps["text_encoder_2"]) == 694_659_840
    assert controlnet.config.cross_attention_dim == comps["unet"].config.cross_attention_dim == 2048
    assert comps["vae"].config.scaling_factor == 0.13025 and comps["vae"].config.force_upcast

    original = {}
    original.update(tiny_checkpoint.unet_to_original(comps["unet"].state_dict(), comps["unet"].config))
    original.update(tiny_checkpoint.vae_to_original(comps["vae"].state_dict(), comps["vae"].config))
    original.update(tiny_checkpoint.clip_l_to_original(comps["text_encoder"].state_dict()))
    original.update(tiny_checkpoint.open_clip_to_original(comps["text_encoder_2"].state_dict()))
    assert infer_diffusers_model_type(original) == "xl_base"
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in original  # SGM upsampler position
    assert set(convert_ldm_unet_checkpoint(original, comps["unet"].config)) == set(comps["unet"].state_dict())
    assert set(convert_ldm_vae_checkpoint(original, comps["vae"].config)) == set(comps["vae"].state_dict())
    sdxl_loader._check_sdxl_keys(tmp_path / "x.safetensors", {k: tuple(v.shape) for k, v in original.items()})


def test_tokenizer_dir_supplies_both_sdxl_tokenizers(tiny):
    engine = _single(tiny, tokenizer_dir=tiny["tokenizer"])
    assert engine.extras["tokenizer_dir"] == str(tiny["tokenizer"])
    assert engine.pipe.tokenizer.pad_token == "<|endoftext|>"
    assert engine.pipe.tokenizer_2.pad_token == "!"  # SDXL's second tokenizer pads with "!"
    assert engine.pipe.tokenizer_2.pad_token_id == 0


def test_single_file_without_any_tokenizer_names_the_fix(tiny, tmp_path):
    with pytest.raises(MissingModelError) as err:
        sdxl_loader.load_engine(tiny["ckpt9"])  # shipped configs hold no tokenizer; no ComfyUI here
    assert "sd1_tokenizer" in str(err.value) and "tokenizer_dir" in str(err.value)

    empty = tmp_path / "empty_tok"
    empty.mkdir()
    with pytest.raises(MissingModelError) as err:
        sdxl_loader.load_engine(tiny["ckpt9"], tokenizer_dir=empty)
    assert "vocab.json" in str(err.value) and "merges.txt" in str(err.value)


def test_incomplete_config_dir_names_missing_files(tiny, tmp_path):
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    (partial / "model_index.json").write_text("{}")
    (partial / "unet" / "config.json").write_text("{}")
    with pytest.raises(MissingModelError) as err:
        sdxl_loader.load_engine(tiny["ckpt9"], config_dir=partial, tokenizer_dir=tiny["tokenizer"])
    for name in ("vae/config.json", "text_encoder_2/config.json", "scheduler/scheduler_config.json"):
        assert name in str(err.value)


# ------------------------------------------------------------------ ControlNet


def test_controlnet_folder_builds_controlnet_inpaint_pipeline_on_shared_components(tiny):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetInpaintPipeline

    engine = _single(tiny, controlnet_path=tiny["controlnet"])
    pipe = engine.pipe
    assert type(pipe) is StableDiffusionXLControlNetInpaintPipeline
    assert engine.has_controlnet is True
    assert isinstance(pipe.controlnet, ControlNetModel)
    saved = ControlNetModel.from_pretrained(tiny["controlnet"], local_files_only=True).state_dict()
    assert all(torch.equal(pipe.controlnet.state_dict()[k], v) for k, v in saved.items())
    _assert_same_weights(pipe, tiny["comps9"], names=("unet", "text_encoder_2"))
    assert pipe.config.force_zeros_for_empty_prompt is True

    image, mask = _inpaint_inputs()
    out = pipe(
        prompt="a person", image=image, mask_image=mask, control_image=image, height=64, width=64,
        num_inference_steps=2, strength=1.0, output_type="np", generator=torch.Generator("cpu").manual_seed(0),
    ).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_controlnet_single_file_uses_config_beside_it(tiny):
    from diffusers import StableDiffusionXLControlNetInpaintPipeline

    single = tiny["controlnet"] / "diffusion_pytorch_model.safetensors"
    engine = _single(tiny, controlnet_path=single)
    assert type(engine.pipe) is StableDiffusionXLControlNetInpaintPipeline
    assert engine.pipe.controlnet.config.conditioning_embedding_out_channels == [8, 16, 16, 16]


def test_missing_controlnet_names_controlnet_folder(tiny, tmp_path):
    with pytest.raises(MissingModelError) as err:
        _single(tiny, controlnet_path=tmp_path / "controlnet-openpose-sdxl-1.0")
    assert err.value.folder == "models/controlnet"
    assert "huggingface.co/xinsir/controlnet-openpose-sdxl-1.0" in str(err.value)


# ------------------------------------------------------------------ cache


def test_cache_returns_same_engine_and_separates_dtype_controlnet_and_mtime(tiny):
    first = _single(tiny)
    assert _single(tiny) is first
    assert _single(tiny, device="cpu", dtype="fp32") is first  # same key spelled differently
    assert _single(tiny, device=torch.device("cpu"), dtype=torch.float32) is first

    bf16 = _single(tiny, dtype="bf16")
    assert bf16 is not first and bf16.dtype == torch.bfloat16
    assert bf16.pipe.unet.dtype == torch.bfloat16

    with_cn = _single(tiny, controlnet_path=tiny["controlnet"])
    assert with_cn is not first and with_cn is not bf16 and with_cn.has_controlnet
    assert _single(tiny, controlnet_path=tiny["controlnet"]) is with_cn

    st = os.stat(tiny["ckpt9"])
    os.utime(tiny["ckpt9"], ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    assert _single(tiny, controlnet_path=tiny["controlnet"]) is not with_cn  # file changed: reload

    uncached = _single(tiny, cache=False)
    assert _single(tiny, cache=False) is not uncached


def test_clear_cache_forces_a_reload(tiny):
    first = _single(tiny)
    sdxl_loader.clear_cache()
    assert sdxl_loader.cached_engines() == []
    assert _single(tiny) is not first


def test_cache_keeps_devices_apart(tiny, monkeypatch):
    """A CUDA engine is never the CPU one. Without a GPU the device is faked: placement is
    stubbed, so this checks the cache key and the CUDA defaults (fp16, VAE upcast)."""
    cpu = _single(tiny)
    monkeypatch.setattr(
        sdxl_loader, "resolve_device", lambda d: torch.device("cuda" if "cuda" in str(d) else "cpu")
    )
    monkeypatch.setattr(sdxl_loader, "_place", lambda pipe, dev, offload: None)
    cuda = _single(tiny, device="cuda")
    assert cuda is not cpu
    assert cuda.device == torch.device("cuda") and cuda.dtype == torch.float16
    assert cuda.pipe.unet.dtype == torch.float16
    assert cuda.extras["vae_upcast"] is True  # SDXL's VAE decodes in fp32 under fp16
    assert cpu.extras["vae_upcast"] is False
    assert _single(tiny, device="cuda") is cuda


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputValidationError) as err:
        sdxl_loader.resolve_device("cuda")
    assert "device='cpu'" in str(err.value)
    assert sdxl_loader.resolve_device("auto") == torch.device("cpu")
    assert sdxl_loader.resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert sdxl_loader.resolve_dtype(None, torch.device("cpu")) == torch.float32


# ------------------------------------------------------------------ errors


def test_missing_checkpoint_file_names_checkpoints_folder_and_source(tmp_path):
    with pytest.raises(MissingModelError) as err:
        sdxl_loader.load_engine(tmp_path / "sd_xl_base_1.0.safetensors")
    assert err.value.folder == "models/checkpoints"
    assert err.value.filename == "sd_xl_base_1.0.safetensors"
    assert "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0" in str(err.value)
    assert "models/checkpoints" in str(err.value)


def test_missing_diffusers_folder_names_diffusers_folder_and_source(tmp_path):
    with pytest.raises(MissingModelError) as err:
        sdxl_loader.load_engine(tmp_path / "stable-diffusion-xl-1.0-inpainting-0.1")
    assert err.value.folder == "models/diffusers"
    assert "https://huggingface.co/diffusers/stable-diffusion-xl-1.0-inpainting-0.1" in str(err.value)
    assert "models/diffusers" in str(err.value)


def test_folder_without_model_index_is_a_clear_error(tmp_path, tiny):
    folder = tmp_path / "not-a-pipeline"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(tiny["ckpt9"].read_bytes())
    with pytest.raises(MissingModelError) as err:
        sdxl_loader.load_engine(folder)
    msg = str(err.value)
    assert "model_index.json" in msg and "model.safetensors" in msg and "models/diffusers" in msg


def test_non_sdxl_diffusers_folder_is_rejected(tmp_path):
    folder = tmp_path / "stable-diffusion-v1-5"
    for sub in ("unet", "vae"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "config.json").write_text("{}")
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(InputValidationError) as err:
        sdxl_loader.load_engine(folder)
    assert "StableDiffusionPipeline" in str(err.value) and "not SDXL" in str(err.value)


def test_sd15_checkpoint_is_rejected_as_not_sdxl(tmp_path):
    path = tiny_checkpoint.build_sd15_like_checkpoint(tmp_path / "v1-5-pruned-emaonly.safetensors")
    with pytest.raises(InputValidationError) as err:
        sdxl_loader.load_engine(path)
    msg = str(err.value)
    assert "not an SDXL checkpoint" in msg and "Stable Diffusion 1.x" in msg
    assert "models/checkpoints" in msg  # names what to use instead


@pytest.mark.parametrize("name", ["broken.safetensors", "broken.ckpt"])
def test_corrupt_file_is_rejected_with_a_clear_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(os.urandom(4096))
    with pytest.raises(InputValidationError) as err:
        sdxl_loader.load_engine(path)
    msg = str(err.value)
    assert name in msg and ("corrupt" in msg) and "SDXL checkpoint" in msg


def test_unsupported_file_type_is_rejected(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(InputValidationError) as err:
        sdxl_loader.load_engine(path)
    assert ".safetensors" in str(err.value)


def test_offload_model_on_cpu_is_rejected_before_loading(tmp_path):
    # the path does not even exist: the offload check comes first and names the fix
    with pytest.raises(InputValidationError) as err:
        sdxl_loader.load_engine(tmp_path / "missing.safetensors", device="cpu", offload="model")
    msg = str(err.value)
    assert "offload='none'" in msg and "cuda" in msg.lower()
    with pytest.raises(InputValidationError):
        sdxl_loader.load_engine(tmp_path / "missing.safetensors", offload="sequential")


def test_bad_dtype_is_rejected():
    with pytest.raises(InputValidationError) as err:
        sdxl_loader.resolve_dtype("int8", torch.device("cpu"))
    assert "fp16" in str(err.value) and "fp32" in str(err.value)


# ------------------------------------------------------------------ generation


def test_two_step_generation_through_loaded_single_file_engine(tiny):
    engine = _single(tiny)
    image, mask = _inpaint_inputs()
    out = engine.pipe(
        prompt="a person in a red jacket", image=image, mask_image=mask, height=64, width=64,
        num_inference_steps=2, strength=1.0, output_type="np", generator=torch.Generator("cpu").manual_seed(0),
    ).images
    assert out.shape == (1, 64, 64, 3)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_two_step_generation_with_base_unet(tiny):
    engine = _single(tiny, tiny["ckpt4"])
    image, mask = _inpaint_inputs()
    out = engine.pipe(
        prompt="a person", image=image, mask_image=mask, height=64, width=64, num_inference_steps=2,
        strength=1.0, output_type="np", generator=torch.Generator("cpu").manual_seed(0),
    ).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()

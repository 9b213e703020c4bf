"""The SDXL engine (nodes/pipeline/engines/sdxl.py): diffusers' own loading paths and batched inpainting.

Everything runs the real diffusers loaders (from_pretrained, from_single_file, from_pipe) and
pipelines on tiny random-weight models built here; nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_checkpoint
from same_picture import assert_same_picture
import tiny_sdxl
from comfyui_model_swap.nodes.pipeline.engines import base, common, diffusers_compat, sdxl, sdxl_inpaint
from comfyui_model_swap.nodes.pipeline.engines.base import InpaintRequest
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError, MissingModelError

WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")
SIZE = 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny SDXL as a diffusers folder, single files (9- and 4-channel, .safetensors and .ckpt), ControlNet."""
    root = tmp_path_factory.mktemp("sdxl")
    folder = tiny_sdxl.build_sdxl_inpaint_folder(root / "diffusers" / "sdxl-tiny-inpaint", in_channels=9)
    ckpt = root / "checkpoints"
    comps9 = tiny_checkpoint.build_tiny_checkpoint(ckpt / "tiny_inpaint.safetensors", in_channels=9, seed=0)
    comps4 = tiny_checkpoint.build_tiny_checkpoint(ckpt / "tiny_base.safetensors", in_channels=4, seed=3)
    tiny_checkpoint.build_tiny_checkpoint(ckpt / "tiny_base.ckpt", in_channels=4, seed=3, fmt="ckpt")
    controlnet = tiny_checkpoint.build_tiny_controlnet(root / "controlnet" / "tiny-controlnet")
    return dict(root=root, folder=folder, ckpt9=ckpt / "tiny_inpaint.safetensors", ckpt4=ckpt / "tiny_base.safetensors",
                ckpt4_torch=ckpt / "tiny_base.ckpt", comps9=comps9, comps4=comps4, controlnet=controlnet)


@pytest.fixture(autouse=True)
def _fresh_cache():
    sdxl.clear_cache()
    yield
    sdxl.clear_cache()


def single(tiny, path=None, **kw):
    files = sdxl.Files(model=path or tiny["ckpt9"], controlnet=kw.pop("controlnet", None), config=tiny["folder"])
    return sdxl.load(files, **{"device": "cpu", **kw})


def assert_same_weights(pipe, comps, names=WEIGHTED):
    for name in names:
        got, want = getattr(pipe, name).state_dict(), comps[name].state_dict()
        assert set(got) == set(want), f"{name}: key sets differ"
        bad = [k for k in want if not torch.equal(got[k], want[k])]
        assert not bad, f"{name}: {len(bad)} tensors differ from the source, e.g. {bad[:3]}"


def request(seeds=(7,), *, mask=None, steps=2, **kw) -> InpaintRequest:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    if mask is None:
        mask = np.zeros((SIZE, SIZE), np.float32)
        mask[8:56, 8:56] = 1.0
    prompts = kw.pop("prompts", ("a person in a red coat",) * len(seeds))
    return InpaintRequest(image=image, mask=mask, prompts=tuple(prompts), seeds=tuple(seeds), steps=steps, **kw)


def differs(a, b) -> bool:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) > 0


# ------------------------------------------------------------------ loading


def test_diffusers_folder_loads_through_from_pretrained(tiny):
    from diffusers import StableDiffusionXLInpaintPipeline

    engine = sdxl.load(sdxl.Files(model=tiny["folder"]), device="cpu")
    assert isinstance(engine, base.Engine) and type(engine.pipe) is StableDiffusionXLInpaintPipeline
    assert engine.capabilities.name == "sdxl" and not engine.capabilities.controlnet
    assert not engine.capabilities.embedding_identity  # no FaceID attached
    assert engine.device == torch.device("cpu") and engine.dtype == torch.float32
    assert diffusers_compat.progress_bar_config(engine.pipe) == {"disable": True}
    assert_same_weights(engine.pipe, tiny["comps9"], names=("unet", "vae"))


def test_fp16_only_folder_is_loaded_through_the_fp16_variant(tiny, tmp_path):
    engine = sdxl.load(sdxl.Files(model=tiny["folder"]), device="cpu")
    only_fp16 = tmp_path / "fp16-only"
    engine.pipe.save_pretrained(only_fp16, variant="fp16", safe_serialization=True)
    assert list(only_fp16.glob("unet/*.fp16.safetensors"))
    again = sdxl.load(sdxl.Files(model=only_fp16), device="cpu")
    assert again.dtype == torch.float32  # fp16 files, upcast on CPU
    assert again.pipe.unet.config.in_channels == 9


def test_single_file_load_reproduces_every_source_tensor_with_the_right_text_encoders(tiny):
    engine = single(tiny)
    assert_same_weights(engine.pipe, tiny["comps9"])  # CLIP-L in text_encoder, OpenCLIP-G in text_encoder_2
    assert engine.pipe.tokenizer_2.pad_token == "!"


def test_ckpt_file_loads_through_weights_only(tiny, monkeypatch):
    real_load, weights_only = torch.load, []

    def recording_load(*args, **kwargs):
        weights_only.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    assert_same_weights(single(tiny, tiny["ckpt4_torch"]).pipe, tiny["comps4"])
    assert weights_only and all(w is True for w in weights_only)  # the header check and diffusers' loader alike


def test_base_and_inpainting_unets_are_told_apart_from_the_header_and_set_by_keyword(tiny):
    assert sdxl.inspect_checkpoint(tiny["ckpt9"]) == 9
    assert sdxl.inspect_checkpoint(tiny["ckpt4"]) == 4 == sdxl.inspect_checkpoint(tiny["ckpt4_torch"])
    engine = single(tiny, tiny["ckpt4"])  # the config folder says 9: from_single_file(in_channels=4) adapts it
    assert engine.pipe.unet.config.in_channels == 4 == engine.pipe.unet.conv_in.weight.shape[1]
    assert_same_weights(engine.pipe, tiny["comps4"], names=("unet",))
    assert '"in_channels": 9' in (tiny["folder"] / "unet" / "config.json").read_text()  # untouched


def test_shipped_tokenizers_are_sdxls_two_clip_tokenizers():
    from transformers import CLIPTokenizer

    one = CLIPTokenizer.from_pretrained(sdxl.CONFIG_DIR / "tokenizer", local_files_only=True)
    two = CLIPTokenizer.from_pretrained(sdxl.CONFIG_DIR / "tokenizer_2", local_files_only=True)
    assert len(one) == len(two) == 49408 and one.model_max_length == 77
    assert one.pad_token == "<|endoftext|>" and two.pad_token == "!" and two.pad_token_id == 0
    assert one("a photo of a woman").input_ids == [49406, 320, 1125, 539, 320, 2308, 49407]  # CLIP BPE ids


def test_shipped_configs_describe_real_sdxl():
    """The shipped configs build SDXL's published parameter counts, and the original key layout written
    from them is what diffusers recognises as SDXL base and what the pack's header check accepts."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = sdxl.CONFIG_DIR
    with init_empty_weights():
        comps = dict(
            unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet")),
            vae=AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae")),
            text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder")),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(cfg / "text_encoder_2")),
        )
        controlnet = ControlNetModel.from_config(ControlNetModel.load_config(sdxl.CONTROLNET_CONFIG.parent))

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(comps["unet"]) == 2_567_463_684 and count(comps["vae"]) == 83_653_863
    assert count(comps["text_encoder"]) == 123_060_480 and count(comps["text_encoder_2"]) == 694_659_840
    assert controlnet.config.cross_attention_dim == comps["unet"].config.cross_attention_dim == 2048
    original = {}
    original.update(tiny_checkpoint.unet_to_original(comps["unet"].state_dict(), comps["unet"].config))
    original.update(tiny_checkpoint.vae_to_original(comps["vae"].state_dict(), comps["vae"].config))
    original.update(tiny_checkpoint.clip_l_to_original(comps["text_encoder"].state_dict()))
    original.update(tiny_checkpoint.open_clip_to_original(comps["text_encoder_2"].state_dict()))
    assert infer_diffusers_model_type(original) == "xl_base"
    assert sdxl.unet_width_from_keys("x.safetensors", {k: tuple(v.shape) for k, v in original.items()}) == 4


def test_controlnet_pipeline_is_built_with_from_pipe_on_shared_components(tiny, monkeypatch):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetInpaintPipeline

    from_pipe, bases = StableDiffusionXLControlNetInpaintPipeline.from_pipe.__func__, []

    def recording_from_pipe(cls, base, **kwargs):
        bases.append(base)
        return from_pipe(cls, base, **kwargs)

    monkeypatch.setattr(StableDiffusionXLControlNetInpaintPipeline, "from_pipe", classmethod(recording_from_pipe))
    engine = single(tiny, controlnet=tiny["controlnet"])
    assert type(engine.pipe) is StableDiffusionXLControlNetInpaintPipeline and engine.capabilities.controlnet
    assert len(bases) == 1 and all(getattr(engine.pipe, name) is getattr(bases[0], name) for name in WEIGHTED)
    saved = ControlNetModel.from_pretrained(tiny["controlnet"], local_files_only=True).state_dict()
    assert all(torch.equal(engine.pipe.controlnet.state_dict()[k], v) for k, v in saved.items())
    assert_same_weights(engine.pipe, tiny["comps9"], names=("unet", "text_encoder_2"))
    control = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    out = engine.inpaint(request(control_image=control))
    assert out[0].shape == (SIZE, SIZE, 3) and out[0].dtype == np.uint8
    single_file = single(tiny, controlnet=tiny["controlnet"] / "diffusion_pytorch_model.safetensors")
    assert single_file.pipe.controlnet.config.conditioning_embedding_out_channels == [8, 16, 16, 16]


def test_cache_returns_the_same_engine_and_reloads_a_replaced_file(tiny):
    first = single(tiny)
    assert single(tiny) is first
    assert single(tiny, dtype="fp32") is first and single(tiny, dtype=torch.float32) is first
    bf16 = single(tiny, dtype="bf16")
    assert bf16 is not first and bf16.pipe.unet.dtype == torch.bfloat16
    st = os.stat(tiny["ckpt9"])
    os.utime(tiny["ckpt9"], ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    assert single(tiny, dtype="bf16") is not bf16  # the file changed: loaded again


def test_device_dtype_and_offload_choices_are_checked_with_the_fix_named():
    if not torch.cuda.is_available():
        with pytest.raises(InputValidationError, match="device='cpu'"):
            common.resolve_device("cuda")
    assert common.resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert common.resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert common.resolve_dtype(None, torch.device("cpu")) == torch.float32
    with pytest.raises(InputValidationError, match="fp16"):
        common.resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(InputValidationError, match="offload='none'"):
        sdxl.load(sdxl.Files(model=Path("/nonexistent.safetensors")), device="cpu", offload="model")


# ------------------------------------------------------------------ wrong files


def test_missing_files_name_folder_file_and_source(tmp_path, tiny):
    with pytest.raises(MissingModelError) as err:
        sdxl.load(sdxl.Files(model=tmp_path / "sd_xl_base_1.0.safetensors"), device="cpu")
    assert err.value.folder == "models/checkpoints" and err.value.filename == "sd_xl_base_1.0.safetensors"
    assert "huggingface.co/stabilityai/stable-diffusion-xl-base-1.0" in str(err.value)
    with pytest.raises(MissingModelError) as err:
        sdxl.load(sdxl.Files(model=tmp_path / "stable-diffusion-xl-1.0-inpainting-0.1"), device="cpu")
    assert err.value.folder == "models/diffusers"
    with pytest.raises(MissingModelError) as err:
        single(tiny, controlnet=tmp_path / "controlnet-openpose-sdxl-1.0")
    assert err.value.folder == "models/controlnet" and "xinsir/controlnet-openpose-sdxl-1.0" in str(err.value)


def test_folder_without_model_index_and_non_sdxl_folders_are_refused(tmp_path, tiny):
    folder = tmp_path / "not-a-pipeline"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(tiny["ckpt9"].read_bytes())
    with pytest.raises(MissingModelError, match="model_index.json.*model.safetensors"):
        sdxl.load(sdxl.Files(model=folder), device="cpu")
    sd15 = tmp_path / "stable-diffusion-v1-5"
    for sub in ("unet", "vae"):
        (sd15 / sub).mkdir(parents=True)
        (sd15 / sub / "config.json").write_text("{}")
    (sd15 / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(InputValidationError, match="StableDiffusionPipeline.*not SDXL"):
        sdxl.load(sdxl.Files(model=sd15), device="cpu")


@pytest.mark.parametrize("name, words", [
    ("v1-5-pruned-emaonly.safetensors", "Stable Diffusion 1.x"),
    ("broken.safetensors", "corrupt"),
    ("broken.ckpt", "could not be read"),
    ("model.gguf", "not a checkpoint file"),
    ("flux-style.sft", "rename it to 'flux-style.safetensors'"),
])
def test_wrong_single_files_are_refused_saying_what_they_are(tmp_path, name, words):
    path = tmp_path / name
    if name.startswith("v1-5"):
        tiny_checkpoint.build_sd15_like_checkpoint(path)
    else:
        path.write_bytes(os.urandom(4096))
    with pytest.raises(InputValidationError) as err:
        sdxl.inspect_checkpoint(path)
    assert words in str(err.value) and name in str(err.value)


# ------------------------------------------------------------------ inpainting


def test_four_images_come_from_one_batched_call_and_each_equals_its_single_run(tiny):
    """The seed promise: image i of a batch is the single run with seeds[i], up to float rounding (diffusers
    encodes the image with the first generator only; the engine encodes it without sampling). Same seed,
    same bytes."""
    engine = sdxl.load(sdxl.Files(model=tiny["folder"]), device="cpu")
    calls = []
    pipe_call = type(engine.pipe).__call__

    def counting(self, **kw):
        calls.append(kw)
        return pipe_call(self, **kw)

    type(engine.pipe).__call__ = counting
    try:
        batch = engine.inpaint(request((5, 6, 7, 8), strength=0.8, steps=4))
    finally:
        type(engine.pipe).__call__ = pipe_call
    assert len(calls) == 1 and len(batch) == 4
    assert all(differs(batch[i], batch[j]) for i in range(4) for j in range(i + 1, 4))
    for i, seed in enumerate((5, 6, 7, 8)):
        alone = engine.inpaint(request((seed,), strength=0.8, steps=4))[0]
        assert_same_picture(alone, batch[i], f"seed {seed}")
    assert np.array_equal(engine.inpaint(request((6,), strength=0.8, steps=4))[0],
                          engine.inpaint(request((6,), strength=0.8, steps=4))[0])


def test_prompts_per_seed_and_step_callback_and_cancel(tiny):
    engine = single(tiny)
    a, b = engine.inpaint(request((1, 1), prompts=("a woman", "a man")))
    assert differs(a, b)
    steps = []
    engine.inpaint(request(steps=3), on_step=lambda i, n: steps.append((i, n)))
    assert steps == [(0, 3), (1, 3), (2, 3)]

    class Cancelled(Exception):
        pass

    def cancel(i, n):
        raise Cancelled

    with pytest.raises(Cancelled):
        engine.inpaint(request(), on_step=cancel)


def test_base_unet_inpaints_and_keeps_the_unmasked_latents(tiny):
    """A 4-channel (base) UNet inpaints by blending: the latents the VAE decodes equal the source's
    latents (its VAE mode) outside the mask, and differ from them inside it. Tolerance 1e-5: the
    pipeline holds the source times the VAE's scaling factor and divides it back before decoding."""
    engine = single(tiny, tiny["ckpt4"])
    assert engine.pipe.unet.config.in_channels == 4
    vae, decoded = engine.pipe.vae, []

    def recording_decode(latents, *args, **kwargs):
        decoded.append(latents.clone())
        return type(vae).decode(vae, latents, *args, **kwargs)

    vae.decode = recording_decode
    req = request((3,))
    try:
        out = engine.inpaint(req)[0]
    finally:
        del vae.decode  # the class's own decode again
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8 and len(decoded) == 1
    pixels = torch.from_numpy(req.image).permute(2, 0, 1)[None].float() / 255.0 * 2.0 - 1.0
    with torch.no_grad():
        source = vae.encode(pixels).latent_dist.mode()
    held = torch.ones(SIZE // 8, SIZE // 8, dtype=torch.bool)
    held[1:7, 1:7] = False  # request()'s mask covers pixels 8-55: latent rows and columns 1-6
    got = decoded[0][0]
    torch.testing.assert_close(got[:, held], source[0][:, held], rtol=0, atol=1e-5)
    assert float((got[:, ~held] - source[0][:, ~held]).abs().max()) > 0.1  # the masked latents were regenerated


def test_soft_mask_gives_partial_strength_pixels_less_freedom_than_full_ones(tiny):
    """Differential diffusion: a pixel whose mask is 0.25 may change only in the last quarter of the
    schedule, so the seed decides much less of it than of a fully regenerated pixel."""
    engine = sdxl.load(sdxl.Files(model=tiny["folder"]), device="cpu")
    full = np.zeros((SIZE, SIZE), np.float32)
    full[8:56, 8:56] = 1.0
    soft = full.copy()
    soft[8:56, 32:56] = 0.25
    right, left = (slice(16, 48), slice(40, 48)), (slice(16, 48), slice(16, 24))

    def seed_spread(mask, region):
        a, b = (engine.inpaint(request((s,), mask=mask, steps=8))[0].astype(np.float32) for s in (9, 10))
        return float(np.abs(a[region] - b[region]).mean())

    # in pixels the (global) VAE decoder mixes the halves, so the effect shows diluted there ...
    assert seed_spread(soft, right) < 0.75 * seed_spread(full, right)
    assert seed_spread(soft, left) > 0.5 * seed_spread(full, left)  # the full-strength half stays free
    assert base.is_binary(full) and not base.is_binary(soft)


def test_differential_step_holds_exactly_the_latents_whose_turn_has_not_come(tiny):
    """... and exactly in latents: after step i, latent pixels whose mask is below the next step's
    threshold equal the source noised to that step (with the seed's own noise); the rest are untouched."""
    engine = sdxl.load(sdxl.Files(model=tiny["folder"]), device="cpu")
    pipe = engine.pipe
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[:, :32], mask[:, 32:] = 1.0, 0.25
    req = request((4, 5), mask=mask, steps=8)
    pixels = torch.from_numpy(req.image).permute(2, 0, 1)[None].float() / 255.0
    blend = sdxl_inpaint._differential(pipe, req, pixels)
    pipe.scheduler.set_timesteps(8)
    pipe.scheduler.set_begin_index(0)
    pipe.scheduler._step_index = 3  # as after step 2 of 8
    latents = torch.randn(2, 4, SIZE // 8, SIZE // 8)
    out = blend(pipe, 2, latents)
    assert torch.equal(out[..., :4], latents[..., :4])  # mask 1: free from the first step
    assert not torch.equal(out[..., 4:], latents[..., 4:])  # mask 0.25 < threshold 0.625 at step 3: held
    assert not torch.equal(out[0, ..., 4:], out[1, ..., 4:])  # each image with its own seed's noise
    pipe.scheduler._step_index = 7
    last = blend(pipe, 6, latents)  # step 7's threshold is 0.125: everything free
    assert torch.equal(last, latents)

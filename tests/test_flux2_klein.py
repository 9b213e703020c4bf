"""The FLUX.2 klein engine on tiny random-weight models in the published layouts (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tiny_klein
from same_picture import assert_same_picture
from comfyui_model_swap.nodes.pipeline.engines import capabilities, diffusers_compat, engine_module, flux2_klein
from comfyui_model_swap.nodes.pipeline.engines.base import IdentityCondition, InpaintRequest
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError, MissingModelError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 64, 96  # 4 x 6 tokens of 16 pixels


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return tiny_klein.build_once(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(paths):
    return flux2_klein.load(flux2_klein.Files(folder=paths["folder"]), device="cpu")


def _single_files(paths, transformer="transformer"):
    """The single files, loaded with the pack's shipped configs and Qwen tokenizer."""
    return flux2_klein.Files(transformer=paths[transformer], text_encoder=paths["text_encoder"], vae=paths["vae"])


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _mask():
    """Token columns 0-1 keep (m=0), 2-3 regenerate fully (m=1), 4-5 at half strength; row 0 keeps."""
    mask = np.zeros((H, W), np.float32)
    mask[16:, 32:64] = 1.0
    mask[16:, 64:] = 0.5
    return mask


def _request(seeds=(7,), mask=None, **kw):
    return InpaintRequest(image=_image(), mask=_mask() if mask is None else mask,
                          prompts=("a woman in a red dress",) * len(seeds), seeds=tuple(seeds), steps=4, **kw)


def test_registry_reads_klein_capabilities_without_loading_models():
    caps = capabilities("flux2_klein")
    assert engine_module("flux2_klein") is flux2_klein
    assert (caps.reference_image, caps.embedding_identity, caps.guidance, caps.controlnet) == (True, False, False, False)
    assert (caps.default_steps, caps.work_size, caps.side_multiple) == (4, 1024, 16)


def test_single_files_in_bfl_and_comfyui_layouts_load_the_same_model_as_the_folder(paths, engine, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from comfyui_model_swap.nodes.pipeline.engines import Engine

    single = flux2_klein.load(_single_files(paths), device="cpu")
    assert isinstance(single, Engine) and isinstance(engine, Engine)
    assert not single.fp8 and engine.capabilities.name == "flux2_klein"
    for name, a, b in (("transformer", engine.pipe.transformer, single.pipe.transformer),
                       ("vae", engine.pipe.vae, single.pipe.vae),
                       ("text encoder", engine.text_encoder, single.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    # Single files use the pack's Qwen3 tokenizer (the tiny folder ships a tiny one of its own) ...
    assert len(single.tokenizer) == 151669 and len(engine.tokenizer) < 1000
    # ... so with the folder's tokenizer the two engines give the same images (tensor layouts may differ).
    same_tokens = flux2_klein.Flux2KleinEngine(single.pipe, single.text_encoder, engine.tokenizer, single.device,
                                               single.dtype, single.offload, single.source)
    request = _request(seeds=(3,))
    a, b = engine.inpaint(request)[0], same_tokens.inpaint(request)[0]
    assert a.shape == (H, W, 3) and a.dtype == np.uint8
    assert int(np.abs(a.astype(int) - b).max()) <= 1
    assert single.inpaint(request)[0].shape == (H, W, 3)
    # The same files with the key prefixes of ComfyUI's saved checkpoints load the same weights.
    prefixed = {}
    for key, prefix in (("transformer", "model.diffusion_model."), ("text_encoder", "text_encoders.qwen3_4b.transformer."),
                        ("vae", "first_stage_model.")):
        prefixed[key] = tmp_path / f"comfy-{paths[key].name}"
        save_file({prefix + k: v for k, v in load_file(str(paths[key])).items()}, str(prefixed[key]))
    comfy = flux2_klein.load(flux2_klein.Files(**prefixed), device="cpu")
    for name, a, b in (("transformer", single.pipe.transformer, comfy.pipe.transformer),
                       ("vae", single.pipe.vae, comfy.pipe.vae), ("text encoder", single.text_encoder, comfy.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_four_seeds_in_one_batch_equal_four_single_runs(engine):
    seeds = (11, 12, 13, 14)
    steps = []
    batch = engine.inpaint(_request(seeds=seeds), on_step=lambda i, n: steps.append((i, n)))
    assert steps == [(0, 4), (1, 4), (2, 4), (3, 4)]
    for seed, image in zip(seeds, batch):
        single = engine.inpaint(_request(seeds=(seed,)))[0]
        assert_same_picture(single, image, f"seed {seed}")
    with pytest.raises(AssertionError):  # the seeds do differ
        assert_same_picture(batch[0], batch[1])


def test_cached_load_reuses_the_engine_until_the_files_change(paths, tmp_path):
    import shutil

    folder = tmp_path / "FLUX.2-klein-4B"
    shutil.copytree(paths["folder"], folder)
    first = flux2_klein.cached_load(flux2_klein.Files(folder=folder), device="cpu")
    assert flux2_klein.cached_load(flux2_klein.Files(folder=folder), device="cpu") is first
    (folder / "model_index.json").write_text((folder / "model_index.json").read_text() + "\n")  # replaced file
    second = flux2_klein.cached_load(flux2_klein.Files(folder=folder), device="cpu")
    assert second is not first
    flux2_klein.clear_cache()
    assert flux2_klein.cached_load(flux2_klein.Files(folder=folder), device="cpu") is not second
    flux2_klein.clear_cache()


def test_same_seed_is_bit_identical(engine):
    np.testing.assert_array_equal(engine.inpaint(_request(seeds=(5,)))[0], engine.inpaint(_request(seeds=(5,)))[0])


def _run_recording_transformer_inputs(engine, request):
    """Final latents, source latents, and the image tokens the transformer saw at each step."""
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["hidden_states"][:, : (H // 16) * (W // 16)].clone())

    hook = engine.pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        latents, source = engine.sample(request)
    finally:
        hook.remove()
    return latents, source, seen


def _noised_source(engine, request):
    """What a held token is at each step: the source noised to that step's sigma with the seed's noise."""
    pipe = engine.pipe
    src = diffusers_compat.pack_latents(pipe, engine._normalized(engine.encode_source(request.image)))
    shape = (len(request.seeds), pipe.transformer.config.in_channels, H // 16, W // 16)
    noise = diffusers_compat.pack_latents(pipe, engine._noise(shape, request.seeds, engine.device, src.dtype))
    sched = pipe.scheduler
    sigmas = sched.sigmas[sched.begin_index:]
    return [sigma * noise + (1.0 - sigma) * src for sigma in sigmas[: request.steps]]


def test_soft_mask_holds_each_token_at_the_noised_source_until_its_strength_allows_change(engine):
    import torch

    request = _request(seeds=(1,))
    latents, source, seen = _run_recording_transformer_inputs(engine, request)
    expected = _noised_source(engine, request)
    assert len(seen) == 4
    grid = np.arange((H // 16) * (W // 16)).reshape(H // 16, W // 16)
    kept, full, half = grid[0].tolist() + grid[:, :2].ravel().tolist(), grid[1:, 2:4].ravel(), grid[1:, 4:].ravel()
    for step in range(4):
        torch.testing.assert_close(seen[step][:, kept], expected[step][:, kept], rtol=0, atol=1e-6)
    # m = 0.5 with 4 steps: held through steps 0 and 1 (thresholds 1, 0.75), free at steps 2 and 3.
    for step in (0, 1, 2):
        torch.testing.assert_close(seen[step][:, half], expected[step][:, half], rtol=0, atol=1e-6)
    assert float((seen[3][:, half] - expected[3][:, half]).abs().max()) > 1e-2
    # m = 1 changes from the first step on.
    assert float((seen[1][:, full] - expected[1][:, full]).abs().max()) > 1e-2
    # At the end, kept tokens are the source (up to the pipeline's de-normalisation round trip).
    assert float((latents - source).abs()[:, :, :, :4].max()) < 1e-5


def test_soft_mask_leaves_kept_tokens_identical_across_seeds(engine):
    latents, source = engine.sample(_request(seeds=(1, 2)))
    assert bool((latents[0, :, :, :4] == latents[1, :, :, :4]).all())
    assert bool((latents[0, :, 2:, 4:] != latents[1, :, 2:, 4:]).any())
    # A binary mask bypasses the hold: the same region then changes from the first step.
    binary = np.where(_mask() > 0, 1.0, 0.0).astype(np.float32)
    latents_b, _ = engine.sample(_request(seeds=(1, 2), mask=binary))
    assert not bool((latents_b[:, :, 2:, 8:] == latents[:, :, 2:, 8:]).all())
    assert bool((latents_b[:, :, :, :4] == latents[:, :, :, :4]).all())


def test_soft_mask_at_partial_strength_runs_the_last_steps_only(engine):
    steps = []
    latents, source = engine.sample(_request(seeds=(1,), strength=0.5), on_step=lambda i, n: steps.append(n))
    assert steps == [2, 2]
    assert float((latents - source).abs()[:, :, :, :4].max()) < 1e-5


def test_reference_image_changes_the_result(engine):
    reference = np.random.default_rng(9).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    plain, source = engine.sample(_request(seeds=(4,)))
    with_ref, _ = engine.sample(_request(seeds=(4,), identity=IdentityCondition(reference=reference)))
    off, _ = engine.sample(_request(seeds=(4,), identity=IdentityCondition(reference=reference, scale=0.0)))
    assert float((with_ref - plain).abs()[:, :, 2:, 4:].max()) > 1e-3
    assert bool((off == plain).all())  # scale 0 turns the reference off


def test_step_callback_exception_cancels_the_run(engine):
    class Cancelled(Exception):
        pass

    def cancel(i, n):
        if i == 1:
            raise Cancelled()

    calls = []
    hook = engine.pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with pytest.raises(Cancelled):
            engine.inpaint(_request(), on_step=cancel)
    finally:
        hook.remove()
    assert len(calls) == 2  # steps 0 and 1 ran (one transformer pass each, no guidance); steps 2 and 3 never did


def test_fp8_transformer_stays_fp8_in_memory_and_matches_its_upcast_weights(paths):
    import torch

    fp8 = flux2_klein.load(_single_files(paths, "transformer_fp8"), device="cpu")
    upcast = flux2_klein.load(_single_files(paths, "transformer_fp8_upcast"), device="cpu")
    assert fp8.fp8 and not upcast.fp8
    linear = fp8.pipe.transformer.transformer_blocks[0].attn.to_q.weight
    assert linear.dtype == torch.float8_e4m3fn
    a, _ = fp8.sample(_request(seeds=(2,)))
    b, _ = upcast.sample(_request(seeds=(2,)))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_scaled_fp8_file_is_dequantised_with_its_scales(paths, engine, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    scaled = {}
    for key, value in load_file(str(paths["transformer"])).items():
        if value.ndim == 2:  # ComfyUI's "scaled fp8": weight / scale in FP8, the scale beside it
            scale = value.abs().max() / 448.0
            scaled[key] = (value / scale).to(torch.float8_e4m3fn)
            scaled[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(1)
        else:
            scaled[key] = value
    save_file(scaled, str(tmp_path / "klein-scaled-fp8.safetensors"))
    files = flux2_klein.Files(transformer=tmp_path / "klein-scaled-fp8.safetensors", text_encoder=paths["text_encoder"],
                              vae=paths["vae"])
    loaded = flux2_klein.load(files, device="cpu")
    assert not loaded.fp8  # dequantised to the engine dtype, not re-cast to FP8 without the scale
    got = loaded.pipe.transformer.transformer_blocks[0].attn.to_q.weight
    want = engine.pipe.transformer.transformer_blocks[0].attn.to_q.weight
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0.07, atol=want.abs().max().item() / 64)


def test_missing_and_wrong_files_name_file_folder_and_source(paths, tmp_path):
    with pytest.raises(MissingModelError) as err:
        flux2_klein.load(flux2_klein.Files(folder=tmp_path / "FLUX.2-klein-4B"), device="cpu")
    assert err.value.folder == "models/diffusers" and "huggingface.co/black-forest-labs/FLUX.2-klein-4B" in str(err.value)

    files = _single_files(paths)
    gone = flux2_klein.Files(transformer=files.transformer, text_encoder=tmp_path / "qwen_3_4b.safetensors",
                             vae=files.vae)
    with pytest.raises(MissingModelError) as err:
        flux2_klein.load(gone, device="cpu")
    assert (err.value.folder, err.value.filename) == ("models/text_encoders", "qwen_3_4b.safetensors")
    assert "qwen_3_4b.safetensors" in str(err.value) and err.value.source and err.value.source in str(err.value)

    swapped = flux2_klein.Files(transformer=files.vae, text_encoder=files.text_encoder, vae=files.vae)
    with pytest.raises(MissingModelError, match="not a FLUX.2 transformer") as err:
        flux2_klein.load(swapped, device="cpu")
    assert err.value.folder == "models/diffusion_models" and str(files.vae) in str(err.value)

    wrong_vae = flux2_klein.Files(transformer=files.transformer, text_encoder=files.text_encoder,
                                  vae=files.text_encoder)
    with pytest.raises(MissingModelError, match="not the FLUX.2 VAE") as err:
        flux2_klein.load(wrong_vae, device="cpu")
    assert err.value.folder == "models/vae"

    with pytest.raises(MissingModelError) as err:
        flux2_klein.load(flux2_klein.Files(transformer=files.transformer), device="cpu")
    assert err.value.folder == "models/text_encoders"
    other = tmp_path / "stable-diffusion-xl-1.0-inpainting-0.1"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLInpaintPipeline"}))
    with pytest.raises(InputValidationError, match="StableDiffusionXLInpaintPipeline model, not FLUX.2 klein"):
        flux2_klein.load(flux2_klein.Files(folder=other), device="cpu")
    with pytest.raises(InputValidationError, match="not both"):
        flux2_klein.load(flux2_klein.Files(folder=paths["folder"], vae=files.vae), device="cpu")


def test_shipped_configs_describe_klein_4b_and_its_qwen3_tokenizer():
    from transformers import Qwen2TokenizerFast

    root = flux2_klein.CONFIG_DIR
    transformer = json.loads((root / "transformer" / "config.json").read_text())
    text = json.loads((root / "text_encoder" / "config.json").read_text())
    vae = json.loads((root / "vae" / "config.json").read_text())
    assert json.loads((root / "model_index.json").read_text())["is_distilled"] is True
    assert (transformer["num_layers"], transformer["num_single_layers"], transformer["num_attention_heads"]) == (5, 20, 24)
    assert transformer["joint_attention_dim"] == 3 * text["hidden_size"] == 7680
    assert transformer["in_channels"] == 4 * vae["latent_channels"] == 128
    assert text["num_hidden_layers"] > max(flux2_klein.TEXT_ENCODER_LAYERS)
    tok = Qwen2TokenizerFast.from_pretrained(root / "tokenizer", local_files_only=True)
    text_in = tok.apply_chat_template([{"role": "user", "content": "a red dress"}], tokenize=False,
                                      add_generation_prompt=True, enable_thinking=False)
    assert text_in == "<|im_start|>user\na red dress<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ids = tok(text_in)["input_ids"]
    assert ids[0] == 151644 and 151667 in ids and 151668 in ids and max(ids) < text["vocab_size"]


def test_benchmark_builder_makes_a_working_engine_from_configs(paths):
    engine = tiny_klein.build_random_klein("cpu", configs=paths["configs"], fp8=True)
    images = engine.inpaint(_request(seeds=(1, 2)))
    assert len(images) == 2 and images[0].shape == (H, W, 3)


def test_tiny_klein_installs_under_the_default_names_and_loads_from_there(paths, tmp_path):
    installed = tiny_klein.install_defaults(tmp_path / "models", paths)
    assert installed["flux2_klein_transformer"] == tmp_path / "models" / "diffusion_models" / "flux-2-klein-4b.safetensors"
    files = flux2_klein.Files(transformer=installed["flux2_klein_transformer"],
                              text_encoder=installed["flux2_klein_text_encoder"], vae=installed["flux2_vae"])
    assert flux2_klein.load(files, device="cpu").inpaint(_request())[0].shape == (H, W, 3)
    assert (installed["flux2_klein"] / "model_index.json").is_file()

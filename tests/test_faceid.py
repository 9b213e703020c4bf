"""IP-Adapter FaceID / PlusV2 attached beside a tiny SDXL inpainting pipeline (engines.faceid).

Every test runs diffusers' real loading path (load_ip_adapter, load_lora_weights, peft) on tiny
random-weight files laid out like the published ones (tiny_faceid.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import tiny_faceid
import tiny_sdxl
from comfyui_model_swap.nodes.pipeline.engines import faceid
from comfyui_model_swap.nodes.pipeline.engines.base import IdentityCondition
from comfyui_model_swap.nodes.pipeline.engines.faceid import FaceIDFiles, attach, identity_kwargs
from comfyui_model_swap.nodes.pipeline.engines.weights import read_state_dict
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError, MissingModelError

SIZE = 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny SDXL inpainting pipeline every test attaches to (tests that must not share it deep-copy it)."""
    from diffusers import StableDiffusionXLInpaintPipeline

    folder = tiny_sdxl.build_sdxl_inpaint_folder(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl-inpaint")
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def files(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = tiny_faceid.build_all(root, base.unet)
    plus = tiny_faceid.faceid_state_dict(base.unet, plus=True, seed=2)
    paths["faceid_plusv2_safetensors"] = tiny_faceid.save_flat_safetensors(
        plus, root / "ipadapter" / "ip-adapter-faceid-plusv2_sdxl.safetensors")
    return paths


@pytest.fixture(scope="module")
def plain(base, files):
    """FaceID from the .bin, with the LoRA inside it."""
    return attach(base, FaceIDFiles(files["faceid_bin"]))


@pytest.fixture(scope="module")
def plus(base, files):
    return attach_plus(base, files)


def plus_files(files, **kw) -> FaceIDFiles:
    return FaceIDFiles(files["faceid_plusv2"], image_encoder=files["clip_vision"], **kw)


def attach_plus(base, files, **kw):
    return attach(base, plus_files(files, **kw), clip_config=files["clip_vision_config"])


def embedding(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return v / np.linalg.norm(v)


def face_crop(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)


def identity(seed: int = 1, scale: float = 1.0, crop: int = 3) -> IdentityCondition:
    return IdentityCondition(embedding=embedding(seed), face_crop=face_crop(crop), scale=scale)


def run(pipe, state=None, ident=None, seeds=(5,)) -> np.ndarray:
    """One step with CFG at 64x64; float32 output, compared exactly."""
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:56, 8:56] = 255
    extra = {} if state is None else identity_kwargs(pipe, state, ident, len(seeds), do_cfg=True)
    return pipe(prompt=["a person"] * len(seeds), image=image, mask_image=Image.fromarray(mask), height=SIZE,
                width=SIZE, num_inference_steps=1, strength=1.0, guidance_scale=5.0, output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in seeds], **extra).images


def lora_layers(pipe) -> int:
    return faceid._lora_layers(pipe.unet)


def attentions(pipe) -> int:
    """Attention layers of the UNet itself (a loaded PlusV2 perceiver adds its own to attn_processors)."""
    return sum(1 for n in pipe.unet.attn_processors if not n.startswith("encoder_hid_proj."))


def base_untouched(base) -> bool:
    procs = {type(p).__name__ for p in base.unet.attn_processors.values()}
    return base.unet.encoder_hid_proj is None and procs == {"AttnProcessor2_0"} and not hasattr(base.unet, "peft_config")


# --------------------------------------------------------------------------------------------
# loading


def test_plain_faceid_loads_and_an_identity_changes_the_output(base, plain):
    pipe, state = plain
    assert state.kind == "faceid" and state.image_encoder is None
    layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert type(layer).__name__ == "IPAdapterFaceIDImageProjection"
    without, zero, with_id = run(pipe, state), run(pipe, state, identity(scale=0.0)), run(pipe, state, identity())
    np.testing.assert_array_equal(without, zero)  # scale 0 is exactly "no identity"
    assert not np.array_equal(without, with_id)
    assert not np.array_equal(with_id, run(pipe, state, identity(seed=2)))
    assert base_untouched(base)


def test_plusv2_loads_with_its_clip_encoder_and_the_face_crop_matters(plus):
    pipe, state = plus
    assert state.kind == "faceid_plusv2" and state.image_encoder.config.hidden_size == tiny_faceid.CLIP_HIDDEN
    layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert type(layer).__name__ == "IPAdapterFaceIDPlusImageProjection"
    out = run(pipe, state, identity(), seeds=(5, 6))
    cfg = state.image_encoder.config
    assert tuple(layer.clip_embeds.shape) == (4, 1, (cfg.image_size // cfg.patch_size) ** 2 + 1, cfg.hidden_size)
    assert layer.shortcut is True and layer.shortcut_scale == 1.0
    assert not np.array_equal(out[0], out[1])
    assert not np.array_equal(out[:1], run(pipe, state, identity(crop=9)))  # the CLIP face features matter
    assert not np.array_equal(out[:1], run(pipe, state, None))


def adapter_weights(pipe) -> dict:
    """The loaded adapter: image projection and every to_k_ip / to_v_ip, by name."""
    unet = pipe.unet
    out = {f"proj.{k}": v for k, v in unet.encoder_hid_proj.state_dict().items()}
    for name, proc in unet.attn_processors.items():
        for i, (k, v) in enumerate(zip(getattr(proc, "to_k_ip", []), getattr(proc, "to_v_ip", []))):
            out[f"{name}.{i}.k"], out[f"{name}.{i}.v"] = k.weight, v.weight
    return out


@pytest.mark.parametrize("kind", ["faceid", "faceid_plusv2"])
def test_a_flat_safetensors_loads_the_same_adapter_as_the_nested_bin(base, files, plain, plus, kind):
    if kind == "faceid":
        (nested, _), (flat, state) = plain, attach(base, FaceIDFiles(files["faceid_safetensors"]))
    else:
        (nested, _), (flat, state) = plus, attach(base, FaceIDFiles(files["faceid_plusv2_safetensors"],
                                                                    image_encoder=files["clip_vision"]),
                                                   clip_config=files["clip_vision_config"])
    assert state.kind == kind
    ours, theirs = adapter_weights(flat), adapter_weights(nested)
    assert len(ours) > 2 * 12 and ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)


def test_identity_kwargs_put_the_zero_negative_first_and_set_the_scale(plain):
    pipe, state = plain
    emb = embedding(4)
    (embeds,) = identity_kwargs(pipe, state, IdentityCondition(embedding=emb, scale=0.7), 3, True)["ip_adapter_image_embeds"]
    assert embeds.shape == (2, 1, 512) and torch.count_nonzero(embeds[0]) == 0
    np.testing.assert_allclose(embeds[1, 0].numpy(), emb, rtol=1e-6)
    scales = [p.scale for p in pipe.unet.attn_processors.values() if isinstance(getattr(p, "scale", None), list)]
    assert scales and all(s == [0.7] for s in scales)
    assert identity_kwargs(pipe, state, IdentityCondition(embedding=emb), 3, False)["ip_adapter_image_embeds"][0].shape \
        == (1, 1, 512)


def lora_delta(pipe, path: str) -> torch.Tensor:
    """scaling * B @ A of the FaceID LoRA on one UNet linear layer."""
    m, name = pipe.unet.get_submodule(path), faceid.LORA_ADAPTER
    return m.scaling[name] * m.lora_B[name].weight @ m.lora_A[name].weight


PROBES = ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
          "up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_k",
          "mid_block.attentions.0.transformer_blocks.1.attn2.to_out.0")


def lora_forms(files, tmp_path) -> dict:
    """The FaceID LoRA in each form it is found in: kohya (the published _lora.safetensors), the first
    SDXL upload's unprefixed q_proj/k_proj form, and the .bin's own {idx}.to_q_lora keys."""
    from safetensors.torch import load_file, save_file

    kohya = load_file(str(files["faceid_lora"]))
    bare = {}
    for key, value in kohya.items():
        module, _, rest = key[len("lora_unet_"):].partition(".")
        for old, new in (("_to_q", "_q_proj"), ("_to_k", "_k_proj"), ("_to_v", "_v_proj"), ("_to_out_0", "_out_proj")):
            module = module[: -len(old)] + new if module.endswith(old) else module
        bare[f"{module}.{rest}"] = value
    ip_form = {k: v for k, v in read_state_dict(files["faceid_bin"], "x")["ip_adapter"].items() if "_lora." in k}
    paths = {}
    for name, state in (("kohya", kohya), ("bare", bare), ("ip_adapter", ip_form)):
        paths[name] = tmp_path / name / "ip-adapter-faceid_sdxl_lora.safetensors"
        paths[name].parent.mkdir()
        save_file(state, str(paths[name]))
    return paths


def test_the_lora_inside_the_adapter_and_every_separate_form_load_the_same_weights(base, files, plain, tmp_path):
    embedded, state = plain
    assert lora_layers(embedded) == 4 * attentions(embedded)  # to_q, to_k, to_v, to_out of every attention
    assert state.lora.startswith("embedded") and state.lora_scale == 1.0
    reference = [lora_delta(embedded, p) for p in PROBES]
    for form, path in lora_forms(files, tmp_path).items():
        pipe, state = attach(base, FaceIDFiles(files["faceid_nolora_bin"], lora=path))
        assert lora_layers(pipe) == 4 * attentions(pipe), form
        assert state.lora == str(path)
        for probe, ref in zip(PROBES, reference):
            torch.testing.assert_close(lora_delta(pipe, probe), ref, msg=f"{form}: {probe}")
    assert base_untouched(base)


def test_lora_scale_sets_the_adapter_weight_and_zero_leaves_the_lora_out(base, files):
    half, half_state = attach(base, FaceIDFiles(files["faceid_bin"], lora_scale=0.5))
    assert half_state.lora_scale == 0.5
    assert half.unet.get_submodule(PROBES[0]).scaling[faceid.LORA_ADAPTER] == pytest.approx(0.5)
    off, off_state = attach(base, FaceIDFiles(files["faceid_bin"], lora_scale=0.0))
    assert lora_layers(off) == 0 and off_state.lora is None and off_state.lora_scale == 0.0
    assert not np.array_equal(run(half, half_state, identity()), run(off, off_state, identity()))


# --------------------------------------------------------------------------------------------
# per-pipeline state: the base and other attached pipelines never change


def test_the_attached_unet_shares_the_base_weights(base, plain):
    pipe, _ = plain
    assert pipe.unet is not base.unet and pipe.vae is base.vae and pipe.text_encoder_2 is base.text_encoder_2
    assert pipe.scheduler is not base.scheduler
    name = "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight"
    ours, theirs = dict(pipe.unet.named_parameters())[name], dict(base.unet.named_parameters())[name]
    assert ours.data_ptr() == theirs.data_ptr()
    base_params = {p.data_ptr() for p in base.unet.parameters()}
    assert sum(p.data_ptr() in base_params for p in pipe.unet.parameters()) == len(base_params)
    assert not any(t.is_meta for t in [*pipe.unet.parameters(), *pipe.unet.buffers()])


PAIRS = {
    "faceid+lora vs plusv2": (lambda b, f: attach(b, FaceIDFiles(f["faceid_bin"])),
                              lambda b, f: attach_plus(b, f, lora=f["faceid_plusv2_lora"])),
    "lora 1 vs lora 0": (lambda b, f: attach(b, FaceIDFiles(f["faceid_bin"], lora_scale=1.0)),
                         lambda b, f: attach(b, FaceIDFiles(f["faceid_bin"], lora_scale=0.0))),
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_two_attached_pipelines_alternate_with_the_outputs_each_gives_alone(base, files, pair):
    make_a, make_b = PAIRS[pair]
    ident = identity()
    base_before = run(base)
    a = make_a(base, files)
    alone_a = run(*a, ident)  # before B exists
    b = make_b(base, files)
    alone_b = run(*b, ident)  # before any interleaving
    assert not np.array_equal(alone_a, alone_b) and not np.array_equal(alone_a, base_before)
    for _ in range(2):
        np.testing.assert_array_equal(run(*a, ident), alone_a)
        np.testing.assert_array_equal(run(*b, ident), alone_b)
    np.testing.assert_array_equal(run(base), base_before)
    assert base_untouched(base)


def test_with_model_offload_the_base_and_an_attached_pipeline_alternate(base, files, monkeypatch):
    """diffusers' model CPU offload hooks, with the CPU standing in for the accelerator: the hooks on the
    shared text encoders and VAE pass between the two pipelines, and neither one's outputs change."""
    import diffusers.pipelines.pipeline_utils

    monkeypatch.setattr(diffusers.pipelines.pipeline_utils, "get_device", lambda: "cpu:0")
    offloaded = copy.deepcopy(base)
    offloaded.enable_model_cpu_offload(device="cpu")
    base_ref = run(offloaded)
    pipe, state = attach(offloaded, plus_files(files, lora=files["faceid_plusv2_lora"]), offload="model",
                         clip_config=files["clip_vision_config"])
    assert state.offload == "model" and pipe._all_hooks and state.image_encoder.device.type == "cpu"
    assert next(pipe.unet.parameters()) is next(offloaded.unet.parameters())
    ref = run(pipe, state, identity())
    assert not np.array_equal(ref, base_ref)
    for _ in range(2):
        np.testing.assert_array_equal(run(offloaded), base_ref)
        np.testing.assert_array_equal(run(pipe, state, identity()), ref)


def test_attach_does_not_cast_a_half_precision_base(base, files):
    half = copy.deepcopy(base)
    half.unet.to(torch.bfloat16)
    half.text_encoder.to(torch.bfloat16)  # a mixed pipeline: bf16 UNet and text encoder, fp32 VAE
    pipe, _ = attach(half, FaceIDFiles(files["faceid_bin"]))
    assert pipe.unet.dtype == half.unet.dtype == torch.bfloat16 == half.text_encoder.dtype
    assert half.vae.dtype == torch.float32 and half.text_encoder_2.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# the user's files, wrong in every way we know: each a message naming the file and the fix


def _wrong_adapters(unet) -> dict:
    plain = tiny_faceid.faceid_state_dict(unet, seed=4)
    proj, ip = plain["image_proj"], plain["ip_adapter"]
    clip_ip = {"proj.weight": torch.zeros(64 * 4, 1280), "proj.bias": torch.zeros(64 * 4),
               "norm.weight": torch.ones(64), "norm.bias": torch.zeros(64)}
    sd15 = dict(proj, **{"norm.weight": torch.ones(768), "norm.bias": torch.zeros(768),
                         "proj.2.weight": torch.zeros(768 * 4, 1024), "proj.2.bias": torch.zeros(768 * 4)})
    no_ip1 = {k: v for k, v in ip.items() if not k.startswith("1.")}
    bad_shape = dict(ip, **{"3.to_v_ip.weight": torch.zeros(32, 64)})
    return {
        "plain IP-Adapter": ({"image_proj": clip_ip, "ip_adapter": ip}, "plain IP-Adapter"),
        "IP-Adapter Plus": ({"image_proj": {"latents": torch.zeros(1, 16, 64)}, "ip_adapter": ip}, "Plus"),
        "full face": ({"image_proj": {"proj.0.weight": torch.zeros(1, 1), "proj.3.weight": torch.zeros(1)},
                       "ip_adapter": ip}, "Full Face"),
        "truncated": ({"image_proj": {k: v for k, v in proj.items() if not k.startswith("norm.")},
                       "ip_adapter": ip}, "norm.weight"),
        "SD 1.5": ({"image_proj": sd15, "ip_adapter": ip}, "SD 1.5"),
        "cross-attention count": ({"image_proj": proj, "ip_adapter": no_ip1}, "cross-attention layers"),
        "layer shape": ({"image_proj": proj, "ip_adapter": bad_shape}, r"3\.to_v_ip\.weight is \(32, 64\)"),
    }


@pytest.mark.parametrize("case", ["plain IP-Adapter", "IP-Adapter Plus", "full face", "truncated", "SD 1.5",
                                  "cross-attention count", "layer shape"])
def test_wrong_adapter_files_are_clear_errors(base, tmp_path, case):
    state, match = _wrong_adapters(base.unet)[case]
    path = tiny_faceid.save_bin(state, tmp_path / "ip-adapter-faceid_sdxl.bin")
    with pytest.raises(InputValidationError, match=match) as err:
        attach(base, FaceIDFiles(path))
    assert "ip-adapter-faceid_sdxl.bin" in str(err.value) and "h94/IP-Adapter-FaceID" in str(err.value)
    assert base_untouched(base)


def test_a_lora_given_as_the_adapter_is_a_clear_error(base, files, tmp_path):
    target = tmp_path / "ip-adapter-faceid_sdxl.safetensors"
    target.write_bytes(files["faceid_lora"].read_bytes())
    with pytest.raises(InputValidationError, match="looks like a LoRA"):
        attach(base, FaceIDFiles(target))


def test_an_adapter_given_as_the_lora_is_a_clear_error(base, files, tmp_path):
    target = tmp_path / "ip-adapter-faceid_sdxl_lora.safetensors"
    target.write_bytes(files["faceid_safetensors"].read_bytes())
    with pytest.raises(InputValidationError, match="IP-Adapter file, not a LoRA"):
        attach(base, FaceIDFiles(files["faceid_nolora_bin"], lora=target))
    target.write_bytes(files["clip_vision"].read_bytes())
    with pytest.raises(InputValidationError, match="is not a LoRA"):
        attach(base, FaceIDFiles(files["faceid_nolora_bin"], lora=target))


def test_a_lora_for_another_unet_is_a_clear_error(base, files, tmp_path):
    from safetensors.torch import save_file

    layer = "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_q"  # SD 1.5's, absent from SDXL
    path = tmp_path / "ip-adapter-faceid_sdxl_lora.safetensors"
    save_file({f"{layer}.lora_down.weight": torch.zeros(4, 320), f"{layer}.lora_up.weight": torch.zeros(320, 4)},
              str(path))
    with pytest.raises(InputValidationError, match="FaceID LoRA .* another base model"):
        attach(base, FaceIDFiles(files["faceid_nolora_bin"], lora=path))
    assert base_untouched(base)


class _NotWeights:
    pass


def test_a_pickle_with_objects_is_refused_without_running_it(base, tmp_path):
    path = tmp_path / "ip-adapter-faceid_sdxl.bin"
    torch.save({"image_proj": _NotWeights(), "ip_adapter": {}}, path)
    with pytest.raises(InputValidationError, match="weights_only"):
        attach(base, FaceIDFiles(path))


def test_a_truncated_file_is_a_clear_error(base, files, tmp_path):
    path = tmp_path / "ip-adapter-faceid_sdxl.safetensors"
    path.write_bytes(files["faceid_safetensors"].read_bytes()[:5000])
    with pytest.raises(InputValidationError, match="could not be read.*re-download"):
        attach(base, FaceIDFiles(path))


def test_missing_files_name_the_folder_and_source(base, files, tmp_path):
    with pytest.raises(MissingModelError) as err:
        attach(base, FaceIDFiles(tmp_path / "ipadapter" / "ip-adapter-faceid_sdxl.bin"))
    assert err.value.folder == "models/ipadapter" and "h94/IP-Adapter-FaceID" in err.value.source
    with pytest.raises(MissingModelError) as err:
        attach(base, FaceIDFiles(tmp_path / "ip-adapter-faceid-plusv2_sdxl.bin"))
    assert err.value.filename == "ip-adapter-faceid-plusv2_sdxl.bin"
    with pytest.raises(MissingModelError) as err:
        attach(base, FaceIDFiles(files["faceid_bin"], lora=tmp_path / "ip-adapter-faceid_sdxl_lora.safetensors"))
    assert err.value.folder == "models/loras"


def test_plusv2_without_its_image_encoder_names_the_clip_model(base, files):
    with pytest.raises(MissingModelError) as err:
        attach(base, FaceIDFiles(files["faceid_plusv2"]))
    assert err.value.folder == "models/clip_vision" and "CLIP-ViT-H-14" in str(err.value)


def test_plusv2_rejects_wrong_image_encoders(base, files, tmp_path):
    from safetensors.torch import load_file, save_file

    weights, config = tiny_faceid.save_clip_vision(tmp_path, hidden=48)
    with pytest.raises(InputValidationError, match="hidden size 48 but"):
        attach(base, FaceIDFiles(files["faceid_plusv2"], image_encoder=weights), clip_config=config)
    with pytest.raises(InputValidationError, match="not the CLIP ViT-H/14.*hidden size 48"):
        faceid.load_image_encoder(weights, config=files["clip_vision_config"])  # 48-wide weights, 32-wide config
    open_clip = tmp_path / "open_clip.safetensors"
    save_file({k.replace("vision_model.", "visual."): v for k, v in load_file(str(files["clip_vision"])).items()},
              str(open_clip))
    with pytest.raises(InputValidationError, match="open_clip"):
        attach(base, FaceIDFiles(files["faceid_plusv2"], image_encoder=open_clip))
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(MissingModelError, match="config.json"):
        attach(base, FaceIDFiles(files["faceid_plusv2"], image_encoder=tmp_path / "empty_folder"))


def test_clip_image_encoder_loads_from_a_transformers_folder(files, tmp_path):
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(tiny_faceid.clip_vision_config()).eval()
    model.save_pretrained(tmp_path / "clip")
    loaded = faceid.load_image_encoder(tmp_path / "clip")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).image_embeds, model(x).image_embeds)


def test_shipped_clip_vision_h_config_is_vit_h_14():
    from transformers import CLIPVisionConfig

    cfg = CLIPVisionConfig.from_json_file(str(faceid.CLIP_VISION_H_CONFIG))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size, cfg.image_size,
            cfg.intermediate_size, cfg.projection_dim) == (1280, 32, 16, 14, 224, 5120, 1024)


@pytest.mark.parametrize("value", [np.zeros(512, np.float32), np.ones(128, np.float32),
                                   np.full(512, np.nan, np.float32), None])
def test_bad_embeddings_are_clear_errors(plain, value):
    pipe, state = plain
    with pytest.raises(InputValidationError, match="normed_embedding"):
        identity_kwargs(pipe, state, IdentityCondition(embedding=value), 1, True)


def test_plusv2_needs_the_face_crop(plus):
    pipe, state = plus
    with pytest.raises(InputValidationError, match="face crop"):
        identity_kwargs(pipe, state, IdentityCondition(embedding=embedding(1)), 1, True)


def test_weights_reader_takes_sft_and_legacy_pickles_and_refuses_a_bare_tensor(files, tmp_path):
    sft = tmp_path / "lora.sft"
    sft.write_bytes(files["faceid_lora"].read_bytes())
    assert set(read_state_dict(sft, "LoRA")) == set(read_state_dict(files["faceid_lora"], "LoRA"))
    torch.save({"a": torch.ones(2)}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)  # cannot be mmapped
    torch.testing.assert_close(read_state_dict(tmp_path / "legacy.bin", "LoRA")["a"], torch.ones(2))
    torch.save(torch.zeros(3), tmp_path / "t.bin")
    with pytest.raises(InputValidationError, match="holds a Tensor, not a dict"):
        read_state_dict(tmp_path / "t.bin", "IP-Adapter file")

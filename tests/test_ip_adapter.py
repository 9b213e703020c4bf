"""IP-Adapter FaceID / PlusV2 loading and identity conditioning on a tiny SDXL inpainting pipeline."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import tiny_faceid
import tiny_sdxl
from comfyui_model_swap.nodes.pipeline import ip_adapter, sampler
from comfyui_model_swap.nodes.pipeline.engine import Engine
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError, MissingModelError
from comfyui_model_swap.nodes.pipeline.ip_adapter import IdentityCondition

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    """A loaded tiny SDXL inpainting pipeline; tests get deep copies (new_engine) to change freely."""
    from diffusers import StableDiffusionXLInpaintPipeline

    folder = tiny_sdxl.build_sdxl_inpaint_folder(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl-inpaint")
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_faceid.build_all(tmp_path_factory.mktemp("models"))


def new_engine(base_pipe) -> Engine:
    return Engine(pipe=copy.deepcopy(base_pipe), device=torch.device("cpu"), dtype=torch.float32)


def scene():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[8:56, 8:56] = 1.0
    return image, mask


def embedding(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return v / np.linalg.norm(v)


def face_crop(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)


def run(engine, identity=None, seeds=(5,)):
    image, mask = scene()
    return sampler.inpaint(engine, image, mask, prompt="a person", seeds=list(seeds), steps=2, strength=1.0,
                           guidance_scale=5.0, identity=identity)


def differs(a, b) -> bool:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) > 0


@pytest.mark.parametrize("which", ["faceid_bin", "faceid_safetensors"])
def test_plain_faceid_loads_and_identity_changes_the_output(sdxl_folder, files, which):
    engine = new_engine(sdxl_folder)
    ip_adapter.load_faceid(engine, files[which])
    assert engine.ip_adapter == "faceid"
    assert engine.image_encoder is None
    assert type(engine.pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__ == "IPAdapterFaceIDImageProjection"
    without = run(engine)[0]
    with_id = run(engine, IdentityCondition(embedding=embedding(1), scale=1.0))[0]
    assert with_id.shape == (SIZE, SIZE, 3) and with_id.dtype == np.uint8
    assert differs(without, with_id)


def test_identity_scale_zero_equals_no_identity(sdxl_folder, files):
    engine = new_engine(sdxl_folder)
    ip_adapter.load_faceid(engine, files["faceid_safetensors"])
    none = run(engine)[0]
    zero = run(engine, IdentityCondition(embedding=embedding(1), scale=0.0))[0]
    np.testing.assert_array_equal(none, zero)


def test_different_embeddings_give_different_outputs(sdxl_folder, files):
    engine = new_engine(sdxl_folder)
    ip_adapter.load_faceid(engine, files["faceid_bin"])
    a = run(engine, IdentityCondition(embedding=embedding(1)))[0]
    b = run(engine, IdentityCondition(embedding=embedding(2)))[0]
    a_again = run(engine, IdentityCondition(embedding=embedding(1)))[0]
    assert differs(a, b)
    np.testing.assert_array_equal(a, a_again)


def test_prepare_identity_puts_the_zero_negative_first(sdxl_folder, files):
    engine = new_engine(sdxl_folder)
    ip_adapter.load_faceid(engine, files["faceid_safetensors"])
    emb = embedding(4)
    kw = ip_adapter.prepare_identity(engine, IdentityCondition(embedding=emb, scale=0.7), num_images=3, do_cfg=True)
    (embeds,) = kw["ip_adapter_image_embeds"]
    assert embeds.shape == (2, 1, 512)
    assert torch.count_nonzero(embeds[0]) == 0
    np.testing.assert_allclose(embeds[1, 0].numpy(), emb, rtol=1e-6)
    procs = [p for p in engine.pipe.unet.attn_processors.values() if hasattr(p, "scale") and isinstance(p.scale, list)]
    assert procs and all(p.scale == [0.7] for p in procs)
    kw = ip_adapter.prepare_identity(engine, IdentityCondition(embedding=emb), num_images=3, do_cfg=False)
    assert kw["ip_adapter_image_embeds"][0].shape == (1, 1, 512)


def test_plusv2_loads_with_tiny_clip_and_runs(sdxl_folder, files):
    engine = new_engine(sdxl_folder)
    ip_adapter.load_faceid(engine, files["faceid_plusv2"], image_encoder_path=files["clip_vision"],
                           config_override=files["clip_vision_config"])
    assert engine.ip_adapter == "faceid_plusv2"
    assert engine.image_encoder.config.hidden_size == tiny_faceid.CLIP_HIDDEN
    layer = engine.pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert type(layer).__name__ == "IPAdapterFaceIDPlusImageProjection"
    identity = IdentityCondition(embedding=embedding(1), face_crop=face_crop(), scale=1.0)
    out = run(engine, identity, seeds=(5, 6))
    cfg = engine.image_encoder.config
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    assert tuple(layer.clip_embeds.shape) == (4, 1, tokens, cfg.hidden_size)  # (neg x2, pos x2)
    assert layer.shortcut is True and layer.shortcut_scale == 1.0
    assert len(out) == 2 and differs(out[0], out[1])
    other_face = run(engine, IdentityCondition(embedding=embedding(1), face_crop=face_crop(9)), seeds=(5,))[0]
    no_identity = run(engine, seeds=(5,))[0]
    assert differs(out[0], other_face)  # the CLIP face features matter
    assert differs(out[0], no_identity)


def test_plusv2_needs_the_face_crop(sdxl_folder, files):
    engine = new_engine(sdxl_folder)
    ip_adapter.load_faceid(engine, files["faceid_plusv2"], image_encoder_path=files["clip_vision"],
                           config_override=files["clip_vision_config"])
    with pytest.raises(InputValidationError, match="face crop"):
        run(engine, IdentityCondition(embedding=embedding(1)))


def test_plusv2_without_image_encoder_names_the_clip_model(sdxl_folder, files):
    engine = new_engine(sdxl_folder)
    with pytest.raises(MissingModelError) as err:
        ip_adapter.load_faceid(engine, files["faceid_plusv2"])
    assert err.value.folder == "models/clip_vision"
    assert "CLIP-ViT-H-14" in str(err.value)
    assert engine.ip_adapter is None and engine.pipe.unet.encoder_hid_proj is None


def test_plusv2_rejects_an_image_encoder_of_the_wrong_size(sdxl_folder, files, tmp_path):
    weights, config = tiny_faceid.save_clip_vision(tmp_path, hidden=48)
    engine = new_engine(sdxl_folder)
    with pytest.raises(InputValidationError, match="hidden size 48"):
        ip_adapter.load_faceid(engine, files["faceid_plusv2"], image_encoder_path=weights, config_override=config)
    # the weights of a 48-wide encoder do not fit a 32-wide config either
    with pytest.raises(InputValidationError, match="not the CLIP ViT-H/14"):
        ip_adapter.load_image_encoder(weights, config_override=files["clip_vision_config"])


def test_clip_image_encoder_loads_from_a_transformers_folder(files, tmp_path):
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(tiny_faceid.clip_vision_config())
    model.save_pretrained(tmp_path / "clip")
    loaded = ip_adapter.load_image_encoder(tmp_path / "clip")
    single = ip_adapter.load_image_encoder(files["clip_vision"], config_override=files["clip_vision_config"])
    assert loaded.config.hidden_size == single.config.hidden_size == tiny_faceid.CLIP_HIDDEN
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).image_embeds, model.eval()(x).image_embeds)


def test_shipped_clip_vision_h_config_is_vit_h_14():
    cfg = ip_adapter._clip_config(None)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size, cfg.image_size,
            cfg.intermediate_size, cfg.projection_dim, cfg.hidden_act) == (1280, 32, 16, 14, 224, 5120, 1024, "gelu")


def unet_attentions(engine) -> int:
    """Attention layers of the UNet itself (a loaded PlusV2 perceiver adds its own to attn_processors)."""
    return sum(1 for n in engine.pipe.unet.attn_processors if not n.startswith("encoder_hid_proj."))


def _lora_layers(engine) -> int:
    return ip_adapter._lora_modules(engine.pipe.unet, ip_adapter.LORA_ADAPTER)


def test_lora_inside_the_bin_is_loaded_with_peft(sdxl_folder, files):
    engine = new_engine(sdxl_folder)
    ip_adapter.load_faceid(engine, files["faceid_bin"])
    assert _lora_layers(engine) == 4 * unet_attentions(engine)  # to_q, to_k, to_v, to_out of every attention
    assert engine.extras["faceid"]["lora"].startswith("embedded")
    identity = IdentityCondition(embedding=embedding(1))
    with_lora = run(engine, identity)[0]
    plain = new_engine(sdxl_folder)
    ip_adapter.load_faceid(plain, files["faceid_bin"], lora_scale=0.0)
    assert _lora_layers(plain) == 0
    assert differs(with_lora, run(plain, identity)[0])


def test_lora_file_loads_and_matches_the_lora_inside_the_bin(sdxl_folder, files):
    identity = IdentityCondition(embedding=embedding(1))
    embedded = new_engine(sdxl_folder)
    ip_adapter.load_faceid(embedded, files["faceid_bin"])
    separate = new_engine(sdxl_folder)
    ip_adapter.load_faceid(separate, files["faceid_nolora_bin"], lora_path=files["faceid_lora"])
    assert _lora_layers(separate) == 4 * unet_attentions(separate)
    assert separate.extras["faceid"]["lora"] == str(files["faceid_lora"])
    bare = new_engine(sdxl_folder)
    ip_adapter.load_faceid(bare, files["faceid_nolora_bin"])
    assert _lora_layers(bare) == 0
    a, b, c = run(embedded, identity)[0], run(separate, identity)[0], run(bare, identity)[0]
    assert int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) <= 1  # same LoRA, kohya form vs .bin form
    assert differs(b, c)


def _lora_delta(engine, path: str) -> torch.Tensor:
    """scaling * B @ A of the FaceID LoRA on one UNet linear layer."""
    module = engine.pipe.unet.get_submodule(path)
    name = ip_adapter.LORA_ADAPTER
    return module.scaling[name] * module.lora_B[name].weight @ module.lora_A[name].weight


def _lora_forms(files, tmp_path):
    """The FaceID LoRA in each form it is found in: kohya (published _lora.safetensors), the
    first SDXL upload's unprefixed q_proj/k_proj form, and the .bin's own {idx}.to_q_lora keys."""
    from safetensors.torch import load_file, save_file

    kohya = load_file(str(files["faceid_lora"]))
    bare = {}
    for key, value in kohya.items():
        module, _, rest = key[len("lora_unet_"):].partition(".")
        for new, old in (("_q_proj", "_to_q"), ("_k_proj", "_to_k"), ("_v_proj", "_to_v"), ("_out_proj", "_to_out_0")):
            if module.endswith(old):
                module = module[: -len(old)] + new
        bare[f"{module}.{rest}"] = value
    ip_form = {k: v for k, v in torch.load(files["faceid_bin"], weights_only=True)["ip_adapter"].items() if "_lora." in k}
    paths = {}
    for name, state in (("kohya", kohya), ("bare", bare), ("ip_adapter", ip_form)):
        paths[name] = tmp_path / name / "ip-adapter-faceid_sdxl_lora.safetensors"
        paths[name].parent.mkdir()
        save_file(state, str(paths[name]))
    return paths


def test_every_faceid_lora_form_loads_the_same_weights(sdxl_folder, files, tmp_path):
    embedded = new_engine(sdxl_folder)
    ip_adapter.load_faceid(embedded, files["faceid_bin"])
    probes = ["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
              "up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_k",
              "mid_block.attentions.0.transformer_blocks.1.attn2.to_out.0"]
    reference = [_lora_delta(embedded, p) for p in probes]
    for form, path in _lora_forms(files, tmp_path).items():
        engine = new_engine(sdxl_folder)
        ip_adapter.load_faceid(engine, files["faceid_nolora_bin"], lora_path=path)
        assert _lora_layers(engine) == 4 * unet_attentions(engine), form
        for probe, ref in zip(probes, reference):
            torch.testing.assert_close(_lora_delta(engine, probe), ref, msg=f"{form}: {probe}")


def test_lora_scale_sets_the_adapter_weight(sdxl_folder, files):
    engine = new_engine(sdxl_folder)
    ip_adapter.load_faceid(engine, files["faceid_bin"], lora_scale=0.5)
    assert engine.extras["lora_weights"][ip_adapter.LORA_ADAPTER] == 0.5
    layer = next(m for m in engine.pipe.unet.modules() if hasattr(m, "scaling") and ip_adapter.LORA_ADAPTER in m.scaling)
    assert layer.scaling[ip_adapter.LORA_ADAPTER] == pytest.approx(0.5)


def test_loading_again_replaces_the_adapter_and_its_lora(sdxl_folder, files):
    engine = new_engine(sdxl_folder)
    ip_adapter.load_faceid(engine, files["faceid_bin"])
    ip_adapter.load_faceid(engine, files["faceid_plusv2"], image_encoder_path=files["clip_vision"],
                           config_override=files["clip_vision_config"], lora_path=files["faceid_plusv2_lora"])
    assert engine.ip_adapter == "faceid_plusv2"
    assert engine.pipe.unet.encoder_hid_proj.num_ip_adapters == 1
    assert _lora_layers(engine) == 4 * unet_attentions(engine)
    assert engine.pipe.get_active_adapters() == [ip_adapter.LORA_ADAPTER]
    ip_adapter.unload_faceid(engine)
    assert engine.ip_adapter is None and engine.pipe.unet.encoder_hid_proj is None and _lora_layers(engine) == 0
    assert run(engine)[0].shape == (SIZE, SIZE, 3)


def test_identity_without_adapter_is_a_clear_error(sdxl_folder):
    engine = new_engine(sdxl_folder)
    with pytest.raises(InputValidationError) as err:
        run(engine, IdentityCondition(embedding=embedding(1)))
    msg = str(err.value)
    assert "ip-adapter-faceid_sdxl.bin" in msg and "models/ipadapter" in msg and "h94/IP-Adapter-FaceID" in msg


@pytest.mark.parametrize("embedding_value, match", [
    (np.zeros(512, np.float32), "zero"),
    (np.ones(128, np.float32), "shape"),
    (np.full(512, np.nan, np.float32), "not finite"),
])
def test_bad_embeddings_are_rejected(sdxl_folder, files, embedding_value, match):
    engine = new_engine(sdxl_folder)
    ip_adapter.load_faceid(engine, files["faceid_safetensors"])
    with pytest.raises(InputValidationError, match=match):
        run(engine, IdentityCondition(embedding=embedding_value))


def _wrong_files():
    plain = tiny_faceid.faceid_state_dict(seed=4)
    ip_plain = {  # the original IP-Adapter: one Linear + LayerNorm on the CLIP image embedding
        "image_proj": {"proj.weight": torch.zeros(64 * 4, 1280), "proj.bias": torch.zeros(64 * 4),
                       "norm.weight": torch.ones(64), "norm.bias": torch.zeros(64)},
        "ip_adapter": plain["ip_adapter"],
    }
    no_norm = {"image_proj": {k: v for k, v in plain["image_proj"].items() if not k.startswith("norm.")},
               "ip_adapter": plain["ip_adapter"]}
    sd15 = {"image_proj": dict(plain["image_proj"], **{"norm.weight": torch.ones(768), "norm.bias": torch.zeros(768),
                                                        "proj.2.weight": torch.zeros(768 * 4, 1024),
                                                        "proj.2.bias": torch.zeros(768 * 4)}),
            "ip_adapter": plain["ip_adapter"]}
    missing_layer = {"image_proj": plain["image_proj"],
                     "ip_adapter": {k: v for k, v in plain["ip_adapter"].items() if not k.startswith("1.")}}
    return {
        "plain_ip_adapter": (ip_plain, "plain IP-Adapter"),
        "missing_norm": (no_norm, "norm.weight"),
        "sd15_faceid": (sd15, "SD 1.5"),
        "missing_layer": (missing_layer, "cross-attention layers"),
    }


@pytest.mark.parametrize("case", ["plain_ip_adapter", "missing_norm", "sd15_faceid", "missing_layer"])
def test_wrong_adapter_files_are_clear_errors(sdxl_folder, tmp_path, case):
    state, match = _wrong_files()[case]
    path = tiny_faceid.save_bin(state, tmp_path / "ip-adapter-faceid_sdxl.bin")
    engine = new_engine(sdxl_folder)
    with pytest.raises(InputValidationError, match=match) as err:
        ip_adapter.load_faceid(engine, path)
    assert "h94/IP-Adapter-FaceID" in str(err.value) or "_sdxl" in str(err.value)
    assert engine.ip_adapter is None and engine.pipe.unet.encoder_hid_proj is None


def test_a_lora_given_as_the_adapter_is_a_clear_error(sdxl_folder, files, tmp_path):
    engine = new_engine(sdxl_folder)
    target = tmp_path / "ip-adapter-faceid_sdxl.safetensors"
    target.write_bytes(files["faceid_lora"].read_bytes())
    with pytest.raises(InputValidationError, match="looks like a LoRA"):
        ip_adapter.load_faceid(engine, target)


def test_an_adapter_given_as_the_lora_is_a_clear_error(sdxl_folder, files, tmp_path):
    engine = new_engine(sdxl_folder)
    target = tmp_path / "ip-adapter-faceid_sdxl_lora.safetensors"
    target.write_bytes(files["faceid_safetensors"].read_bytes())
    with pytest.raises(InputValidationError, match="without LoRA weights"):
        ip_adapter.load_faceid(engine, files["faceid_nolora_bin"], lora_path=target)
    assert engine.ip_adapter is None


def test_a_lora_for_another_unet_is_a_clear_error(sdxl_folder, files, tmp_path):
    from safetensors.torch import save_file

    bad = {  # an SD1.5 layer name that the SDXL UNet does not have
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 320),
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(320, 4),
    }
    path = tmp_path / "ip-adapter-faceid_sdxl_lora.safetensors"
    save_file(bad, str(path))
    engine = new_engine(sdxl_folder)
    with pytest.raises(InputValidationError, match="FaceID LoRA"):
        ip_adapter.load_faceid(engine, files["faceid_nolora_bin"], lora_path=path)
    assert engine.ip_adapter is None and engine.pipe.unet.encoder_hid_proj is None


class _NotWeights:
    pass


def test_a_pickle_with_objects_is_refused_without_running_it(sdxl_folder, tmp_path):
    path = tmp_path / "ip-adapter-faceid_sdxl.bin"
    torch.save({"image_proj": _NotWeights(), "ip_adapter": {}}, path)
    engine = new_engine(sdxl_folder)
    with pytest.raises(InputValidationError, match="weights_only"):
        ip_adapter.load_faceid(engine, path)


def test_missing_adapter_file_names_the_folder_and_source(sdxl_folder, tmp_path):
    engine = new_engine(sdxl_folder)
    with pytest.raises(MissingModelError) as err:
        ip_adapter.load_faceid(engine, tmp_path / "ipadapter" / "ip-adapter-faceid_sdxl.bin")
    assert err.value.folder == "models/ipadapter"
    assert "h94/IP-Adapter-FaceID" in err.value.source and "models/ipadapter" in str(err.value)
    with pytest.raises(MissingModelError) as err:
        ip_adapter.load_faceid(engine, tmp_path / "ip-adapter-faceid-plusv2_sdxl.bin")
    assert err.value.filename == "ip-adapter-faceid-plusv2_sdxl.bin" and err.value.folder == "models/ipadapter"


def test_missing_lora_file_names_the_loras_folder(sdxl_folder, files, tmp_path):
    engine = new_engine(sdxl_folder)
    with pytest.raises(MissingModelError) as err:
        ip_adapter.load_faceid(engine, files["faceid_bin"], lora_path=tmp_path / "ip-adapter-faceid_sdxl_lora.safetensors")
    assert err.value.folder == "models/loras" and "h94/IP-Adapter-FaceID" in str(err.value)
    assert engine.ip_adapter is None

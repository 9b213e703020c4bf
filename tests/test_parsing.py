"""The FASHN human parser stage: offline loading, FASHN's exact pre/post-processing, label maps."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny_parser import build_colour_keyed_parser, build_full_size_parser_config, build_human_parser

from comfyui_model_swap.nodes.pipeline import masks, parsing
from comfyui_model_swap.nodes.pipeline.errors import ImageLoadError, MissingModelError

HUB_URL = "https://huggingface.co/fashn-ai/fashn-human-parser"


@pytest.fixture(scope="module")
def parser_dir(tmp_path_factory):
    return build_human_parser(tmp_path_factory.mktemp("models") / "human_parsing" / "fashn-human-parser")


@pytest.fixture(scope="module")
def parser(parser_dir):
    return parsing.HumanParser.load(parser_dir)


@pytest.fixture(scope="module")
def keyed_parser(tmp_path_factory):
    folder = build_colour_keyed_parser(tmp_path_factory.mktemp("keyed") / "fashn-human-parser")
    return parsing.HumanParser.load(folder)


def _random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _capture_model_input(parser):
    """Record the pixel tensor reaching the first convolution of the real model."""
    seen = []
    conv = parser.model.segformer.stages[0].patch_embeddings.proj
    handle = conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen, handle


def test_labels_are_fashns_18_classes_in_order():
    assert len(parsing.LABELS) == 18
    assert parsing.LABELS[0] == "background" and parsing.LABELS[3] == "top" and parsing.LABELS[17] == "jewelry"
    assert parsing.LABEL_IDS["torso"] == 16 and parsing.LABEL_IDS["hands"] == 13
    assert all(parsing.LABELS[i] == n for n, i in parsing.LABEL_IDS.items())


def test_tiny_parser_folder_has_the_published_layout(parser_dir):
    assert sorted(p.name for p in parser_dir.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((parser_dir / "config.json").read_text())
    assert config["model_type"] == "segformer" and len(config["id2label"]) == 18


def test_load_reads_the_saved_weights_from_the_folder_float32_in_eval_mode(parser, parser_dir):
    from transformers import SegformerForSemanticSegmentation

    assert isinstance(parser.model, SegformerForSemanticSegmentation)
    assert not parser.model.training
    assert parser.model.config.num_labels == 18
    assert parser.dtype == torch.float32 and parser.device.type == "cpu"
    saved = load_file(str(parser_dir / "model.safetensors"))
    loaded = parser.model.state_dict()
    key = "decode_head.classifier.weight"
    assert torch.equal(loaded[key], saved[key])


def test_default_dtype_is_float16_on_cuda_and_float32_on_cpu():
    assert parsing._default_dtype("cuda") == torch.float16
    assert parsing._default_dtype("cuda:0") == torch.float16
    assert parsing._default_dtype("cpu") == torch.float32


@pytest.mark.parametrize("remove", ["folder", "model.safetensors", "config.json"])
def test_missing_parser_names_the_models_folder_the_model_and_the_hub_page(tmp_path, remove):
    folder = tmp_path / "models" / "human_parsing" / "fashn-human-parser"
    if remove != "folder":
        folder.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            if name != remove:
                (folder / name).write_text("{}")
    with pytest.raises(MissingModelError) as e:
        parsing.HumanParser.load(folder)
    message = str(e.value)
    assert "models/human_parsing" in message
    assert "fashn-human-parser" in message
    assert HUB_URL in message
    if remove != "folder":
        assert remove in message
    assert e.value.folder == "models/human_parsing"


def test_a_cached_parser_whose_folder_was_removed_is_reported_missing_not_served_stale(tmp_path):
    from comfyui_model_swap.nodes.pipeline import loading

    folder = build_human_parser(tmp_path / "models" / "human_parsing" / "fashn-human-parser")
    loading.clear_cache()
    try:
        first = loading.load_parser(folder, "cpu")
        assert loading.load_parser(folder, "cpu") is first
        folder.rename(tmp_path / "moved")
        with pytest.raises(MissingModelError, match="fashn-human-parser"):
            loading.load_parser(folder, "cpu")
        (tmp_path / "moved").rename(folder)
        assert loading.load_parser(folder, "cpu") is not first
    finally:
        loading.clear_cache()


def test_a_segformer_with_another_number_of_classes_is_rejected_as_the_wrong_model(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 16], num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16, num_labels=150,
    )
    folder = tmp_path / "fashn-human-parser"
    SegformerForSemanticSegmentation(config).save_pretrained(folder, safe_serialization=True)
    with pytest.raises(MissingModelError) as e:
        parsing.HumanParser.load(folder)
    assert "150 classes" in str(e.value) and "18" in str(e.value) and HUB_URL in str(e.value)


def test_a_folder_holding_another_kind_of_model_is_rejected(tmp_path):
    folder = tmp_path / "fashn-human-parser"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "num_labels": 18}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(MissingModelError) as e:
        parsing.HumanParser.load(folder)
    assert "'bert'" in str(e.value) and "SegFormer" in str(e.value)


def test_a_truncated_weights_file_is_reported_with_the_download_page(tmp_path, parser_dir):
    folder = tmp_path / "fashn-human-parser"
    folder.mkdir()
    (folder / "config.json").write_bytes((parser_dir / "config.json").read_bytes())
    weights = (parser_dir / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(MissingModelError) as e:
        parsing.HumanParser.load(folder)
    assert "model.safetensors does not load" in str(e.value) and HUB_URL in str(e.value)


def test_model_receives_fashns_exact_preprocessing(parser):
    image = _random_image(333, 517, seed=1)
    seen, handle = _capture_model_input(parser)
    try:
        parser.parse(image)
    finally:
        handle.remove()
    (x,) = seen
    assert x.shape == (1, 3, 576, 384) and x.dtype == torch.float32
    # By hand, in float64: INTER_AREA to 384 wide x 576 high, /255, ImageNet mean/std, CHW.
    resized = cv2.resize(image, (384, 576), interpolation=cv2.INTER_AREA).astype(np.float64) / 255.0
    expected = (resized - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[0].numpy(), expected.transpose(2, 0, 1), rtol=0, atol=1e-5)


def _capture_logits(parser, monkeypatch):
    """Record the low-resolution logits the parser computes (its folded forward pass)."""
    seen = []
    original = parser.logits

    def spy(x):
        out = original(x)
        seen.append(out.detach().clone())
        return out

    monkeypatch.setattr(parser, "logits", spy)
    return seen


def _assert_argmax_of_bilinear_upsampling(labels, logits, size_hw):
    """``labels`` equal FASHN's post-processing of ``logits`` (bilinear to ``size_hw``, then argmax),
    except at float near-ties (top-2 gap under 1e-5 of the logits' scale), where the rounding
    order may decide."""
    up = F.interpolate(logits.float(), size=size_hw, mode="bilinear", align_corners=False)
    expected = up.argmax(dim=1)[0].numpy()
    top2 = torch.topk(up, 2, dim=1).values[0]
    tie = (top2[0] - top2[1]).numpy() < 1e-5 * up.abs().max().item()
    assert labels.shape == expected.shape
    assert np.array_equal(labels[~tie], expected[~tie])
    assert tie.mean() < 1e-2


def test_logits_are_upsampled_bilinearly_to_the_input_size_then_argmaxed(parser, monkeypatch):
    image = _random_image(301, 211, seed=2)
    logits = _capture_logits(parser, monkeypatch)
    labels = parser.parse(image)
    assert logits[0].shape == (1, 18, 144, 96)
    _assert_argmax_of_bilinear_upsampling(labels, logits[0], (301, 211))


def _blocky_logits(seed, h=144, w=96, classes=18):
    """Logits whose argmax forms regions a few cells wide (like a real parse), with noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, classes, h // 12, w // 12, generator=g) * 4
    smooth = F.interpolate(coarse, size=(h, w), mode="nearest")
    return (smooth + 0.5 * torch.randn(1, classes, h, w, generator=g))[0]


@pytest.mark.parametrize("size_hw", [(577, 383), (144, 96), (100, 60), (16, 16), (1025, 17)])
def test_upsampled_argmax_equals_argmax_of_the_full_bilinear_upsampling(size_hw):
    for seed, logits in enumerate([_blocky_logits(0), torch.randn(18, 144, 96), _blocky_logits(1) * 1e-3]):
        labels = parsing.upsampled_argmax(logits, size_hw)
        assert labels.dtype == np.uint8, seed
        _assert_argmax_of_bilinear_upsampling(labels, logits[None], size_hw)


def test_upsampled_argmax_keeps_exact_ties_on_the_lower_class_like_torch():
    logits = torch.zeros(18, 6, 4)
    logits[5, :3] = 1.0
    logits[2, :3] = 1.0  # 2 and 5 tie in the top half: argmax takes the first, 2
    logits[9, 3:] = 2.0
    labels = parsing.upsampled_argmax(logits, (60, 40))
    expected = F.interpolate(logits[None], size=(60, 40), mode="bilinear", align_corners=False).argmax(1)[0]
    assert np.array_equal(labels, expected.numpy())
    assert set(np.unique(labels)) == {2, 9}


def _randomise_head_statistics(model, seed=0):
    """Trained parsers have non-trivial batch-norm statistics and biases; random init has zeros."""
    g = torch.Generator().manual_seed(seed)
    head = model.decode_head
    with torch.no_grad():
        bn = head.batch_norm
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(t.shape, generator=g) * 0.5 + (1.0 if t is bn.weight else 0.0))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
        for mlp in head.linear_projections:
            mlp.proj.bias.copy_(torch.randn(mlp.proj.bias.shape, generator=g) * 0.1)
        head.classifier.bias.copy_(torch.randn(head.classifier.bias.shape, generator=g) * 0.1)


def test_folded_head_and_copy_free_encoder_give_the_published_models_logits(parser_dir):
    from transformers import SegformerForSemanticSegmentation

    def load():
        model = SegformerForSemanticSegmentation.from_pretrained(str(parser_dir), local_files_only=True).eval()
        _randomise_head_statistics(model)
        return model

    published = load()
    parser = parsing.HumanParser(load())
    changed = [m for m in parser.model.modules() if "forward" in vars(m)]
    assert len(changed) == 2 * 4 - 1  # each block's depthwise conv, and its sequence reduction where sr > 1
    x = torch.from_numpy(parsing.preprocess(_random_image(400, 300, seed=8)))[None]
    with torch.inference_mode():
        expected = published(pixel_values=x).logits
        folded = parser.logits(x)
    assert folded.shape == expected.shape == (1, 18, 144, 96)
    scale = expected.abs().max().item()
    assert scale > 0.1  # the statistics really moved the logits
    torch.testing.assert_close(folded, expected, rtol=0, atol=1e-5 * scale)


def test_label_map_has_the_input_size_dtype_uint8_and_ids_0_to_17(parser):
    sizes = [(517, 333), (333, 517), (16, 16), (1025, 17)]
    maps = parser.parse_batch([_random_image(h, w, seed=3) for h, w in sizes])
    assert [m.shape for m in maps] == sizes
    assert all(m.dtype == np.uint8 and m.max() <= 17 for m in maps)


def test_parse_is_deterministic_across_calls_and_reloads(parser, parser_dir):
    image = _random_image(240, 160, seed=4)
    first = parser.parse(image)
    assert np.array_equal(first, parser.parse(image))
    assert np.array_equal(first, parsing.HumanParser.load(parser_dir).parse(image))


def test_parse_batch_matches_single_parses_for_mixed_sizes_and_comfy_batches(parser):
    a, b, c = _random_image(200, 120, 5), _random_image(97, 131, 6), _random_image(200, 120, 7)
    batch = parser.parse_batch([a, b, c], batch_size=2)  # two chunks: [a, b], [c]
    assert [m.shape for m in batch] == [(200, 120), (97, 131), (200, 120)]
    assert np.array_equal(batch[1], parser.parse(b))
    assert np.array_equal(batch[2], parser.parse(c))
    comfy = torch.from_numpy(a[None].astype(np.float32) / 255.0)  # ComfyUI IMAGE: B,H,W,C float
    assert np.array_equal(parser.parse_batch(comfy)[0], batch[0])


def test_bad_images_raise_image_load_error(parser):
    with pytest.raises(ImageLoadError):
        parser.parse(None)
    with pytest.raises(ImageLoadError, match="too small"):
        parser.parse(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageLoadError, match="at least one"):
        parser.parse_batch([])


def _painted_person(h=517, w=333):
    """Blocks of palette colours laid out like a standing person on a black background."""
    labels = np.zeros((h, w), np.uint8)
    ids = parsing.LABEL_IDS
    labels[20:80, 120:210] = ids["hair"]
    labels[80:150, 130:200] = ids["face"]
    labels[150:300, 90:240] = ids["top"]
    labels[150:300, 40:90] = ids["arms"]
    labels[150:300, 240:290] = ids["arms"]
    labels[300:340, 40:90] = ids["hands"]
    labels[300:440, 100:230] = ids["pants"]
    labels[440:500, 100:230] = ids["feet"]
    return labels, masks.PALETTE[labels]


def test_colour_keyed_parser_labels_each_painted_region_with_its_class(keyed_parser):
    expected, image = _painted_person()
    labels = keyed_parser.parse(image)
    # Region interiors are exact; only a few pixels at each boundary may blur.
    boundary = cv2.dilate(cv2.Canny(expected * 10, 1, 1), np.ones((17, 17), np.uint8)) > 0
    assert np.array_equal(labels[~boundary], expected[~boundary])
    assert (labels == expected).mean() > 0.97
    assert set(np.unique(labels[~boundary])) == set(np.unique(expected))  # every class is found


def test_colour_keyed_parse_drives_a_swap_mask_that_keeps_garments(keyed_parser):
    expected, image = _painted_person()
    swap = masks.build_swap_mask(keyed_parser.parse(image), feather=4)
    ids = parsing.LABEL_IDS
    inner = cv2.erode((expected == ids["top"]).astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
    assert swap.preserve[inner].all()  # the garment's interior is untouched
    face = cv2.erode((expected == ids["face"]).astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
    assert swap.hard[face].all()  # the face is regenerated
    assert swap.preserve[expected == 0][:50].all()


def test_real_photo_parses_to_a_full_size_map_and_the_keyed_parser_picks_nearest_colours(
    parser, keyed_parser, monkeypatch
):
    from skimage import data

    photo = data.astronaut()  # 512x512 RGB portrait
    labels = parser.parse(photo)
    assert labels.shape == (512, 512) and labels.dtype == np.uint8 and labels.max() <= 17
    # The keyed parser's class at each feature cell is the palette colour nearest (in
    # normalised space) to the pixel its stride-4 stem samples: check that by hand on a real,
    # textured photo, then that the full-size map is its bilinear upsampling.
    logits = _capture_logits(keyed_parser, monkeypatch)
    keyed = keyed_parser.parse(photo)
    norm = lambda rgb: (rgb.astype(np.float32) / 255.0 - parsing.IMAGENET_MEAN) / parsing.IMAGENET_STD  # noqa: E731
    sampled = cv2.resize(photo, (384, 576), interpolation=cv2.INTER_AREA)[::4, ::4]
    dist = ((norm(sampled)[:, :, None, :] - norm(masks.PALETTE)[None, None]) ** 2).sum(-1)
    agreement = (logits[0][0].argmax(0).numpy() == dist.argmin(-1)).mean()
    assert agreement > 0.999  # only float near-ties may differ
    assert len(np.unique(keyed)) >= 5  # a real photo spans several palette colours
    _assert_argmax_of_bilinear_upsampling(keyed, logits[0], (512, 512))


def test_full_size_config_is_segformer_b4_with_18_labels():
    config = build_full_size_parser_config()
    assert config.hidden_sizes == [64, 128, 320, 512] and config.depths == [3, 8, 27, 3]
    assert config.decoder_hidden_size == 768 and config.num_labels == 18
    assert config.id2label[17] == "jewelry"

"""The licence-clean segmenter on its real runtime (LiteRT), its edge refinement and the licence guard.

The model file is a tiny one in the official format (tests/tiny_selfie.py: the published
input and output tensors, colour-keyed weights), so where every class border lies is known.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

import tiny_selfie
from comfyui_model_swap.nodes.pipeline import edge_refine, licence_guard, model_files
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError, MissingModelError
from comfyui_model_swap.nodes.pipeline.loading import ModelChoice, load_pipeline
from comfyui_model_swap.nodes.pipeline.masks import build_swap_mask
from comfyui_model_swap.nodes.pipeline.parsing import LABEL_IDS
from comfyui_model_swap.nodes.pipeline.pipeline import MaskSettings, prepare
from comfyui_model_swap.nodes.pipeline.segment_selfie import (RuntimeMissingError, SelfieSegmenter, TO_LABEL,
                                                             softmax)


@pytest.fixture(scope="module")
def model_path(tiny_models_dir):
    return tiny_models_dir / "mediapipe" / tiny_selfie.NAME


@pytest.fixture(scope="module")
def segmenter(model_path):
    return SelfieSegmenter.load(model_path, num_threads=1)


def _distance_to_border(classes: np.ndarray) -> np.ndarray:
    border = cv2.morphologyEx(classes, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    return cv2.distanceTransform((~border).view(np.uint8), cv2.DIST_L2, 3)


def test_runtime_runs_the_official_format_with_its_tensors_and_softmax(segmenter):
    details_in = segmenter._interpreter.get_input_details()[0]
    details_out = segmenter._interpreter.get_output_details()[0]
    assert (details_in["name"], list(details_in["shape"]), details_in["dtype"]) == (
        "input_29", [1, 256, 256, 3], np.float32)
    assert (details_out["name"], list(details_out["shape"]), details_out["dtype"]) == (
        "Identity", [1, 256, 256, 6], np.float32)
    photo, _ = tiny_selfie.paint(256, seed=3)
    probs = segmenter.probabilities(photo)
    assert probs.shape == (256, 256, 6) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=2), 1.0, atol=1e-5)
    expected = softmax(tiny_selfie.expected_logits(photo.astype(np.float32) / 255.0))
    np.testing.assert_allclose(probs, expected, atol=1e-4)  # LiteRT's kernels against numpy


def test_classes_map_onto_the_packs_labels_at_the_photos_size(segmenter):
    photo, classes = tiny_selfie.paint(384, height=576, seed=1)  # 2:3, stretched to 256x256 and back
    labels = segmenter.parse(photo)
    assert labels.shape == (576, 384) and labels.dtype == np.uint8
    far = _distance_to_border(classes) > 3
    assert (labels[far] == TO_LABEL[classes[far]]).all()
    names = {n: LABEL_IDS[n] for n in ("background", "hair", "torso", "face", "top", "jewelry")}
    for model_class, label in zip(range(6), names.values()):
        assert TO_LABEL[model_class] == label
    # the default selection regenerates face, hair and body skin; clothes, accessories, background stay
    prepared = prepare(segmenter, photo, MaskSettings(grow=0, feather=0, max_pixels=384 * 576))
    regenerate = np.isin(classes, (1, 2, 3))
    assert (prepared.swap.hard[far] == regenerate[far]).all()


def test_edge_refinement_puts_a_border_4px_off_within_1px_of_the_photos_edge():
    h = w = 1024  # a 1 MP photo, the model's 256 grid upsampled 4x
    true_edge = 500
    rng = np.random.default_rng(0)
    photo = np.empty((h, w, 3), np.int16)
    photo[:, :true_edge] = tiny_selfie.COLOURS[2]  # skin
    photo[:, true_edge:] = tiny_selfie.COLOURS[4]  # a sleeve
    photo = np.clip(photo + rng.integers(-6, 7, (h, w, 1)), 0, 255).astype(np.uint8)
    centres = (np.arange(256) + 0.5) * 4.0
    for offset in (4, -4):
        sleeve = 1.0 / (1.0 + np.exp(-(centres - (true_edge + offset)) / 2.0))
        probs = np.zeros((256, 256, 6), np.float32)
        probs[:, :, 4], probs[:, :, 2] = sleeve, 1.0 - sleeve
        coarse = cv2.resize(probs, (w, h), interpolation=cv2.INTER_LINEAR).argmax(axis=2)
        refined = edge_refine.refine_labels(photo, probs)
        coarse_edge = (coarse == 4).argmax(axis=1)
        refined_edge = (refined == 4).argmax(axis=1)
        assert np.abs(coarse_edge - (true_edge + offset)).max() <= 1  # the coarse border is 4 px off
        assert np.abs(refined_edge - true_edge).max() <= 1, (offset, np.unique(refined_edge))
        assert set(np.unique(refined)) == {2, 4}


def test_the_refined_parse_follows_the_photo_where_the_coarse_map_is_blocky(segmenter, model_path):
    photo, classes = tiny_selfie.paint(512, seed=2)
    coarse = SelfieSegmenter.load(model_path, refine=False).segment(photo)
    refined = segmenter.segment(photo)
    assert (refined != classes).mean() < 0.25 * (coarse != classes).mean()


def test_the_selection_is_what_six_classes_can_express():
    resolve = SelfieSegmenter.resolve_classes
    assert resolve(("face", "hair", "torso", "arms", "hands", "legs", "feet")) == ("face", "hair", "torso")
    assert resolve(("face",)) == ("face",)
    with pytest.raises(InputValidationError, match="cannot regenerate top.*FASHN's human parser"):
        resolve(("face", "top"))
    with pytest.raises(InputValidationError, match="one body-skin class.*torso, hands, legs, feet"):
        resolve(("face", "arms"))


def test_a_file_that_is_not_the_model_is_refused_with_the_fix(tmp_path):
    bad = tmp_path / tiny_selfie.NAME
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(MissingModelError, match="Wrong model.*selfie multiclass.*models/mediapipe"):
        SelfieSegmenter.load(bad)
    with pytest.raises(MissingModelError, match="nothing at this path"):
        SelfieSegmenter.load(tmp_path / "absent.tflite")


def test_a_missing_runtime_names_the_pip_package(monkeypatch, model_path):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(RuntimeMissingError, match="pip install ai-edge-litert"):
        SelfieSegmenter.load(model_path)


# ------------------------------------------------------------------------------- the licence guard

def test_every_non_commercial_model_names_its_licence_clean_alternative():
    restricted = [s for s in model_files.MODELS.values() if s.non_commercial]
    assert {s.key for s in restricted} >= {"human_parser", "antelopev2", "faceid"}
    for spec in restricted:
        message = licence_guard.refusal(spec.key)
        assert spec.title in message and spec.licence in message and "licence-clean alternative" in message
        assert spec.alternative and spec.alternative in message
    assert not model_files.MODELS["selfie_segmenter"].non_commercial


def test_the_guard_refuses_only_when_on():
    needs = [("yunet", "face_detection_yunet_2023mar.onnx"), ("human_parser", "fashn-human-parser")]
    licence_guard.check(needs, env={})  # off: nothing refused
    licence_guard.check(needs[:1], env={licence_guard.ENV_VAR: "1"})  # on, commercial only: fine
    for on in ({"env": {licence_guard.ENV_VAR: "1"}}, {"env": {}, "graph_guard": True}):
        with pytest.raises(licence_guard.NonCommercialModelError) as err:
            licence_guard.check(needs, **on)
        assert str(err.value) == licence_guard.refusal("human_parser", "fashn-human-parser")
    with pytest.raises(ValueError, match="MODELSWAP_COMMERCIAL_ONLY='maybe'"):
        licence_guard.env_enabled({licence_guard.ENV_VAR: "maybe"})


def test_load_pipeline_refuses_before_loading_anything_with_the_env_switch(monkeypatch, tmp_path):
    monkeypatch.setenv(licence_guard.ENV_VAR, "1")
    with pytest.raises(licence_guard.NonCommercialModelError, match="FASHN human parser.*selfie multiclass"):
        load_pipeline([tmp_path], ModelChoice())  # the folder is empty: the guard speaks before "missing"


def test_a_segmenter_label_map_builds_the_same_swap_mask_as_a_parser_would(segmenter):
    photo, classes = tiny_selfie.paint(256, seed=4)
    labels = segmenter.parse(photo)
    swap = build_swap_mask(labels, regenerate=segmenter.resolve_classes(("face", "hair", "torso", "arms", "hands",
                                                                          "legs", "feet")), grow=0, feather=0)
    assert np.array_equal(swap.hard, np.isin(labels, [LABEL_IDS[n] for n in ("face", "hair", "torso")]))


# ------------------------------------------------------------------------------- choosing the segmenter

def test_the_api_and_the_runner_choose_the_segmenter_with_one_word(tmp_path):
    import json

    from comfyui_model_swap.nodes.fashn_api.config import ApiConfig
    from comfyui_model_swap.nodes.fashn_api.protocol import RunRequest
    from comfyui_model_swap.nodes.fashn_api.workflow_fill import fill
    from comfyui_model_swap.nodes.segmenters import LOADER_TYPES

    assert ApiConfig.from_env({}).segmenter == ""  # the workflow's own
    assert ApiConfig.from_env({"MODELSWAP_API_SEGMENTER": "fashn"}).segmenter == "fashn"
    assert ApiConfig.from_env({licence_guard.ENV_VAR: "1"}).segmenter == "selfie"  # the guard's default
    with pytest.raises(ValueError, match="MODELSWAP_API_SEGMENTER='sam'.*fashn, selfie"):
        ApiConfig.from_env({"MODELSWAP_API_SEGMENTER": "sam"})
    for word, loader in (("selfie", "ModelSwap_SelfieSegmenterLoader"), ("fashn", "ModelSwap_HumanParserLoader")):
        graph = fill(RunRequest(model_image="x"), {"model": "in/model.png"}, "out", segmenter=word)
        (parser_id,) = [k for k, n in graph.items() if n["class_type"] in LOADER_TYPES]
        assert graph[parser_id]["class_type"] == loader
        (mask,) = [n for n in graph.values() if n["class_type"] == "ModelSwap_GarmentMask"]
        assert mask["inputs"]["parser"] == [parser_id, 0]
    # the runner's --segmenter: the same rewrite, which keeps the loader's Licence Guard link
    from comfyui_model_swap.nodes.segmenters import use_segmenter

    root = model_files.Path(__file__).resolve().parents[1]
    commercial = json.loads((root / "workflows" / "api" / "model_swap_commercial_api.json").read_text())
    swapped = use_segmenter(commercial, "fashn")
    (loader,) = [n for n in swapped.values() if n["class_type"] == "ModelSwap_HumanParserLoader"]
    assert loader["inputs"]["licence_guard"][0] in swapped and use_segmenter(commercial, "") is commercial
    with pytest.raises(ValueError, match="no parser loader"):
        use_segmenter({"1": {"class_type": "LoadImage", "inputs": {}}}, "selfie")

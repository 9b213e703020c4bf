"""The licence-clean workflow in a real ComfyUI, with its Licence Guard on.

workflows/api/model_swap_commercial_api.json is FLUX.2 klein + the MediaPipe selfie segmenter + OpenCV
YuNet/SFace, every loader connected to a Licence Guard node (commercial_only). It runs on the tiny
models; swapping any one loader for a non-commercial one makes the run fail with the guard's
documented message, before that model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import comfy_harness
import tiny_selfie
from comfyui_model_swap.nodes.pipeline import licence_guard
from comfyui_model_swap.nodes.pipeline.masks import class_names
from comfyui_model_swap.nodes.pipeline.pipeline import MaskSettings, prepare
from comfyui_model_swap.nodes.pipeline.segment_selfie import SelfieSegmenter
from comfyui_model_swap.nodes.segmenters import use_segmenter

ROOT = Path(__file__).resolve().parents[1]
COMMERCIAL = ROOT / "workflows" / "api" / "model_swap_commercial_api.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir):
    comfy_harness.require_comfyui()
    with comfy_harness.ComfyServer(tmp_path_factory.mktemp("comfy"), models_dir=tiny_models_dir) as srv:
        assert srv.import_failed() == [], srv.log_tail()
        yield srv


@pytest.fixture(scope="module")
def photo(server, tmp_path_factory):
    picture, classes = tiny_selfie.paint(256, seed=5)
    path = tmp_path_factory.mktemp("inputs") / "commercial_model.png"
    Image.fromarray(picture).save(path)
    return server.upload_image(path), picture, classes


def graph_for(image_name: str) -> dict:
    graph = json.loads(COMMERCIAL.read_text())
    for node in graph.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image_name
        if node["class_type"] == "ModelSwap_FaceRefine":
            node["inputs"]["work_size"] = 256  # the tiny models at 1024 px would cost time, not coverage
    return graph


def node_of(graph: dict, class_type: str) -> tuple[str, dict]:
    (found,) = [(k, n) for k, n in graph.items() if n["class_type"] == class_type]
    return found


def test_the_licence_clean_workflow_runs_guarded_and_keeps_the_garments_exactly(server, photo, tiny_models_dir):
    name, picture, classes = photo
    graph = graph_for(name)
    _, guard = node_of(graph, "ModelSwap_LicenceGuard")
    assert guard["inputs"]["commercial_only"] is True
    loaders = [n for n in graph.values() if n["class_type"].endswith("Loader")]
    assert len(loaders) == 3 and all(n["inputs"]["licence_guard"][0] in graph for n in loaders)
    entry = server.run(graph, timeout=600)
    (out_path,) = server.output_images(entry)
    out = np.asarray(Image.open(out_path).convert("RGB"))
    assert out.shape == picture.shape

    gm = node_of(graph, "ModelSwap_GarmentMask")[1]["inputs"]
    segmenter = SelfieSegmenter.load(tiny_models_dir / "mediapipe" / tiny_selfie.NAME)
    settings = MaskSettings(regenerate=class_names(gm["regenerate"]), grow=gm["grow"], feather=gm["feather"])
    preserve = prepare(segmenter, picture, settings).swap.preserve
    assert np.array_equal(out[preserve], picture[preserve])  # byte for byte outside the band
    assert (out[~preserve] != picture[~preserve]).any()  # and the person was regenerated
    # every garment and accessory pixel farther from skin and hair than the band reaches is preserved
    person = np.isin(classes, (1, 2, 3)).astype(np.uint8)
    distance = cv2.distanceTransform(1 - person, cv2.DIST_L2, 5)
    kept = np.isin(classes, (4, 5)) & (distance > gm["grow"] + gm["feather"] + 3)
    assert kept.sum() > 5000 and preserve[kept].all()


@pytest.mark.parametrize("swap", ["parser", "face_analyzer", "faceid"])
def test_every_non_commercial_loader_is_refused_with_the_documented_message(server, photo, swap):
    graph = graph_for(photo[0])
    guard_link = node_of(graph, "ModelSwap_LicenceGuard")[0]
    if swap == "parser":
        graph = use_segmenter(graph, "fashn")
        key, name = "human_parser", "fashn-human-parser"
    elif swap == "face_analyzer":
        node_id, _ = node_of(graph, "ModelSwap_OpenCVFaceLoader")
        graph[node_id] = {"class_type": "ModelSwap_InsightFaceLoader", "inputs": {
            "pack": "antelopev2", "device": "auto", "det_size": 640, "licence_guard": [guard_link, 0]}}
        key, name = "antelopev2", "antelopev2"
    else:
        node_id, _ = node_of(graph, "ModelSwap_KleinLoader")
        graph[node_id] = {"class_type": "ModelSwap_PipelineLoader", "inputs": {
            "model": "stable-diffusion-xl-1.0-inpainting-0.1", "controlnet": "none",
            "faceid": "ip-adapter-faceid_sdxl.bin", "faceid_lora": "auto", "clip_vision": "none", "device": "auto",
            "dtype": "auto", "offload": "none", "licence_guard": [guard_link, 0]}}
        key, name = "faceid", "ip-adapter-faceid_sdxl.bin"
    with pytest.raises(comfy_harness.PromptExecutionError) as failed:
        server.run(graph, timeout=300)
    errors = [data for kind, data in failed.value.messages if kind == "execution_error"]
    assert errors and errors[0]["exception_message"].strip() == licence_guard.refusal(key, name)
    assert errors[0]["node_type"].endswith("Loader")

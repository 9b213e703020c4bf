"""A saved face reused outside the graph: the runner's --face NAME and the API's "face:NAME" (request checks and
GET /v1/faces at the handler level; the SDK run through a real ComfyUI is in test_api_comfyui.py)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

import saved_faces
import tiny_opencv_faces as tiny
from comfyui_model_swap.nodes import workflow_runner as wr
from comfyui_model_swap.nodes.fashn_api import faces
from comfyui_model_swap.nodes.fashn_api.protocol import HttpError, parse_run_request
from comfyui_model_swap.nodes.pipeline import face_library as fl
from comfyui_model_swap.nodes.pipeline import face_opencv
from comfyui_model_swap.nodes.provenance_graph import models_of, upstream

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import run_workflow  # noqa: E402

WITH_REFERENCE = ROOT / "workflows" / "api" / "model_swap_face_reference_api.json"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A models folder holding only the face library, with one saved face 'Anna'."""
    models = tmp_path_factory.mktemp("face-models")
    analyzer = face_opencv.OpenCVFaceAnalyzer.load(tiny.build(tmp_path_factory.mktemp("facedetection")))
    saved_faces.save(models / fl.FOLDER, "Anna", analyzer)
    return models


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "model.png"
    path.write_bytes(b"not read: the job is replaced")
    return path


def _main(monkeypatch, *args):
    seen = {}

    def fake_run(client, graph, overrides, out, timeout):
        seen.update(graph=graph, overrides=overrides)
        return wr.JobResult(prompt_id="p", files=[])

    monkeypatch.setattr(wr, "run", fake_run)
    return run_workflow.main([str(WITH_REFERENCE), *args, "--out", "out", "--server", "http://127.0.0.1:9"]), seen


def test_runner_face_uses_the_saved_picture_as_the_face_reference(monkeypatch, library, photo, tiny_models_dir):
    code, seen = _main(monkeypatch, "--image", str(photo), "--face", "Anna",
                       "--models-dir", str(tiny_models_dir), "--models-dir", str(library))
    assert code == 0
    assert seen["overrides"].face_reference == library / fl.FOLDER / "Anna" / fl.PICTURE


@pytest.mark.parametrize("name, message", [("Bob", "No saved face named 'Bob'.*saved faces: Anna"),
                                           ("../Anna", "is not allowed"), ("a/b", "is not allowed")])
def test_runner_refuses_a_missing_or_bad_face_name_with_the_list(monkeypatch, library, photo, capsys, name, message):
    code, seen = _main(monkeypatch, "--image", str(photo), "--face", name, "--models-dir", str(library))
    assert code == wr.EXIT_USAGE and not seen
    assert re.search(message, capsys.readouterr().err)


def test_runner_face_needs_a_library_and_excludes_face_reference(monkeypatch, library, photo, capsys):
    code, _ = _main(monkeypatch, "--image", str(photo), "--face", "Anna")
    assert code == wr.EXIT_USAGE and "give --comfyui, or --models-dir" in capsys.readouterr().err
    code, _ = _main(monkeypatch, "--image", str(photo), "--face", "Anna", "--face-reference", str(photo),
                    "--models-dir", str(library))
    assert code == wr.EXIT_USAGE and "not both" in capsys.readouterr().err


def _request(ref):
    return parse_run_request({"model_name": "model-swap", "inputs": {"model_image": "https://example.com/a.png",
                                                                     "face_reference": ref}})


def test_api_face_reference_by_name_is_checked_when_the_request_arrives(library):
    dirs = lambda: [library / fl.FOLDER]  # noqa: E731
    run = _request("face:Anna")
    assert run.face_reference == "face:Anna"
    faces.check_saved(run.face_reference, dirs)
    assert faces.picture(run.face_reference, dirs) == (library / fl.FOLDER / "Anna" / fl.PICTURE).read_bytes()
    for bad in ("face:../Anna", "face:a/b", "face:", "face:.."):
        with pytest.raises(HttpError, match="is not allowed") as info:
            _request(bad)
        assert info.value.status == 400
    with pytest.raises(HttpError, match="No saved face named 'Carla'.*saved faces: Anna") as info:
        faces.check_saved(_request("face:Carla").face_reference, dirs)
    assert info.value.status == 400
    listed = faces.listing(dirs)["faces"]
    assert [(f["name"], f["face_reference"], f["seed"]) for f in listed] == [("Anna", "face:Anna", 3)]
    assert "embedding" not in listed[0]


def test_api_get_faces_route_lists_the_library(library):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from comfyui_model_swap.nodes.fashn_api.app import FashnApi
    from comfyui_model_swap.nodes.fashn_api.config import ApiConfig

    class Backend:
        input_dir = output_dir = library / "io"

    async def scenario():
        routes = web.RouteTableDef()
        FashnApi(ApiConfig(), Backend(), face_dirs=lambda: [library / fl.FOLDER]).add_routes(routes)
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            answer = await client.get("/v1/faces")
            return answer.status, await answer.json()

    status, body = asyncio.run(scenario())
    assert status == 200 and [f["name"] for f in body["faces"]] == ["Anna"]


def test_api_face_creation_graph_uses_the_api_workflows_loaders_and_checks_the_request():
    name, seed, description, size, overwrite = faces._creation_request(
        {"name": "New Face", "seed": 8, "description": {"person": "man", "text": "beard"}, "size": 64})
    graph = faces.creation_graph(WITH_REFERENCE, name, seed, description, size, overwrite)
    assert sorted(n["class_type"] for n in graph.values()) == [
        "ModelSwap_CreateFace", "ModelSwap_KleinLoader", "ModelSwap_OpenCVFaceLoader", "ModelSwap_SaveFace"]
    create = graph["face_create"]["inputs"]
    assert (create["person"], create["description"], create["seed"], create["size"]) == ("man", "beard", 8, 64)
    assert all(str(create[k][0]) in graph for k in ("generator", "face_analyzer"))
    assert graph["face_save"]["inputs"] == {"faces": ["face_create", 1], "candidate": 1, "name": "New Face",
                                            "overwrite": False}
    # what Save Face writes into the picture's provenance: the models upstream of its faces, with licences
    models = models_of(upstream(graph, "face_save", ("faces",)))
    assert {m.name for m in models} == {"flux-2-klein-4b.safetensors", "qwen_3_4b.safetensors", "flux2-vae.safetensors",
                                        "face_detection_yunet_2023mar.onnx", "face_recognition_sface_2021dec.onnx"}
    assert not any(m.non_commercial for m in models)
    for body, words in (({"name": "../x"}, "is not allowed"), ({"name": "a", "colour": 1}, "Unknown field"),
                        ({"name": "a", "description": {"eyes": "green"}}, "description must be"),
                        ({"name": "a", "description": {"skin_tone": "green"}}, "skin_tone='green'"),
                        ({"name": "a", "seed": -1}, "seed"), ({"name": "a", "size": 100}, "multiple of 16"),
                        ([], "JSON object")):
        with pytest.raises(HttpError, match=words) as info:
            faces._creation_request(body)
        assert info.value.status == 400


class _Comfy:
    """Stands in for ComfyUI's queue: 'runs' the creation graph by saving a face, or fails it."""

    def __init__(self, root, analyzer=None):
        self.root, self.analyzer, self.graphs = root, analyzer, []

    async def submit(self, graph, prompt_id):
        self.graphs.append(graph)
        if self.analyzer is not None:
            saved_faces.save(self.root, graph["face_save"]["inputs"]["name"], self.analyzer)
        return prompt_id

    async def states(self, ids):
        failed = {"status_str": "error", "messages": [["execution_error", {
            "node_id": "face_create", "node_type": "ModelSwap_CreateFace", "exception_type": "NoFaceError",
            "exception_message": "Candidate 1 (seed 1): the face analyser found no face"}]]}
        status = {"status_str": "success", "completed": True} if self.analyzer else failed
        return {i: ("done", {"status": status}) for i in ids}


def test_api_face_creation_answers_the_saved_face_or_the_graphs_error(tmp_path, tmp_path_factory):
    analyzer = face_opencv.OpenCVFaceAnalyzer.load(tiny.build(tmp_path_factory.mktemp("facedetection")))
    root = tmp_path / fl.FOLDER
    made = asyncio.run(faces.create(_Comfy(root, analyzer), WITH_REFERENCE, {"name": "Made", "seed": 3},
                                    lambda: [root]))
    assert made["name"] == "Made" and made["face_reference"] == "face:Made"
    with pytest.raises(HttpError, match="already saved") as info:
        asyncio.run(faces.create(_Comfy(root, analyzer), WITH_REFERENCE, {"name": "Made"}, lambda: [root]))
    with pytest.raises(HttpError, match=r"Candidate 1 \(seed 1\)") as info:
        asyncio.run(faces.create(_Comfy(root), WITH_REFERENCE, {"name": "Other", "seed": 1}, lambda: [root]))
    assert (info.value.status, info.value.name) == (400, "InputValidationError")

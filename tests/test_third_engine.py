"""Engines are data: a third engine module (tests/toy_engine.py), registered by the test, runs through the
stages, a real ComfyUI graph (the generic Engine Loader) and the HTTP API with no file of the pack changed;
"the engine's own" settings (0) come from its presets; and one parameter declaration gives the same
refusal at the node, the HTTP API and the headless runner.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import comfy_harness
import tiny_models
import toy_engine
from test_engine_seam import ColourParser, OneFace
from comfyui_model_swap.nodes.headless.graph import Overrides, WorkflowError, apply_overrides
from comfyui_model_swap.nodes.pipeline import contract, engines, face_refine
from comfyui_model_swap.nodes.pipeline import pipeline as stages

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PACK_FILES = ("nodes", "workflows", "scripts", "__init__.py")


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(engines.ENGINES, "toy", "toy_engine")
    return engines.capabilities("toy")


def test_no_stage_node_or_api_module_branches_on_an_engine_name():
    """Outside engines/, nothing asks an engine for its name: they read capabilities and presets."""
    pattern = re.compile(r"(caps|capabilities)\.name\s*[=!]=|==\s*[\"'](sdxl|flux2_klein)[\"']|"
                         r"[\"'](sdxl|flux2_klein)[\"']\s*==")
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in (ROOT / "nodes").rglob("*.py")
                 if "engines" not in path.relative_to(ROOT / "nodes").parts
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_a_third_engine_module_runs_every_stage_with_its_own_presets(toy_registered, tmp_path, monkeypatch):
    log = tmp_path / "toy.jsonl"
    monkeypatch.setenv("TOY_ENGINE_LOG", str(log))
    engine = engines.engine_module("toy").load_model(toy_engine.write_model(tmp_path / "toy.safetensors"), None)
    photo = tiny_models.fashion_photo(128)
    prepared = stages.prepare(ColourParser(), photo)
    encoded = stages.encode(OneFace(), prepared, face_reference=tiny_models.astronaut(128))
    sampled = stages.generate(engine, encoded, stages.GenerateSettings(num_images=2))  # steps 0: the engine's
    refined = face_refine.refine(engine, sampled, face_refine.RefineSettings())  # work size 0: the engine's
    result = stages.finish(refined)
    quality = toy_registered.presets["quality"]
    sample_call, *refine_calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert sample_call["steps"] == quality.steps and sample_call["seeds"] == [42, 43]
    assert len(refine_calls) == 2 and all(c["size"] == [quality.refine_work_size] * 2 for c in refine_calls)
    assert refine_calls[0]["steps"] == contract.refine_scheduler_steps(quality.refine_steps, 0.45)
    keep = result.swap_mask.preserve
    for image in result.images:
        assert np.array_equal(image[keep], photo[keep]) and not np.array_equal(image, photo)


def test_settings_given_win_over_the_engine_presets(toy_registered):
    assert toy_registered.settings("fast", steps=9).steps == 9
    assert toy_registered.settings("fast").refine_work_size == toy_registered.presets["fast"].refine_work_size
    assert engines.capabilities("flux2_klein").default_steps == 4 and engines.capabilities("sdxl").default_steps == 30


def test_engines_registered_by_environment_variable(monkeypatch):
    monkeypatch.setattr(engines, "ENGINES", dict(engines.ENGINES))
    engines.register_from_env({"MODELSWAP_ENGINES": "toy=toy_engine, other=x.y"})
    assert engines.ENGINES["toy"] == "toy_engine" and engines.capabilities("toy").name == "toy"
    with pytest.raises(Exception, match="is not name=module"):
        engines.register_from_env({"MODELSWAP_ENGINES": "toy"})


def test_the_licence_guard_refuses_an_engine_whose_licence_is_not_commercial(toy_registered):
    from comfyui_model_swap.nodes.pipeline import licence_guard

    licence_guard.check_engine(toy_registered, env={})  # guard off: anything loads
    licence_guard.check_engine(engines.capabilities("flux2_klein"), env={"MODELSWAP_COMMERCIAL_ONLY": "1"})
    with pytest.raises(licence_guard.NonCommercialModelError, match="Toy engine.*test weights, no licence.*flux2_klein"):
        licence_guard.check_engine(toy_registered, graph_guard=True, env={})


# ------------------------------------------------------------------ one declaration, one refusal

def test_python_runner_and_protocol_refuse_a_value_with_the_declarations_words():
    from comfyui_model_swap.nodes.fashn_api import protocol
    from comfyui_model_swap.nodes.pipeline.errors import InputValidationError

    words = contract.REFINE_WORK_SIZE.problem(1000)
    assert words == ("face refine work_size=1000 is not a multiple of 16: give a multiple of 16 from 64 to 2048 "
                     "(or 0 for the engine's own).")
    with pytest.raises(InputValidationError, match=re.escape(words)):
        face_refine.RefineSettings(work_size=1000).check()
    graph = json.loads((ROOT / "workflows" / "api" / "model_swap_api.json").read_text())
    with pytest.raises(WorkflowError, match=re.escape(words)):
        apply_overrides(graph, Overrides(image=Path("x.png"), settings=["ModelSwap_FaceRefine.work_size=1000"]),
                        {"model": "x.png"})
    five = contract.NUM_IMAGES.problem(5)
    with pytest.raises(WorkflowError, match=re.escape(five)):
        apply_overrides(graph, Overrides(image=Path("x.png"), num_images=5), {"model": "x.png"})
    with pytest.raises(protocol.HttpError) as err:
        protocol.parse_run_request({"model_name": "model-swap", "inputs": {"model_image": "https://a.example/m.png",
                                                                             "num_images": 5}})
    assert err.value.body()["message"] == f"inputs.{five}"


# ------------------------------------------------------------------ a real ComfyUI and the HTTP API

def _toy_workflow(source: Path) -> dict:
    """The shipped klein workflow with the Engine Loader on the toy engine and every count at 0 (the engine's)."""
    graph = json.loads(source.read_text())
    for node in graph.values():
        if node["class_type"] == "ModelSwap_KleinLoader":
            node["class_type"] = "ModelSwap_EngineLoader"
            node["inputs"] = {"engine": "toy", "model": "toy_engine.safetensors", "device": "auto", "dtype": "auto",
                              "offload": "none"}
        if node["class_type"] == "ModelSwap_Sampler":
            node["inputs"]["steps"] = 0
        if node["class_type"] == "ModelSwap_FaceRefine":
            node["inputs"].update(steps=0, work_size=0)
    return graph


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory, tiny_models_dir):
    comfy_harness.require_comfyui()
    base = tmp_path_factory.mktemp("toy")
    models = base / "models"
    models.mkdir()
    for sub in tiny_models_dir.iterdir():  # the tiny models, shared by link, plus the toy engine's file
        if sub.name != "diffusion_models":
            (models / sub.name).symlink_to(sub, target_is_directory=sub.is_dir())
    toy_engine.write_model(models / "diffusion_models" / "toy_engine.safetensors")
    workflows = base / "workflows"
    workflows.mkdir()
    for name, shipped in (("toy_swap_api.json", "model_swap_api.json"),
                          ("toy_swap_face_reference_api.json", "model_swap_face_reference_api.json")):
        (workflows / name).write_text(json.dumps(_toy_workflow(ROOT / "workflows" / "api" / shipped)))
    log = base / "toy.jsonl"
    env = {"MODELSWAP_ENGINES": "toy=toy_engine", "MODELSWAP_API_ENGINE": "toy", "TOY_ENGINE_LOG": str(log),
           "TOY_ENGINE_WORKFLOWS": str(workflows),
           "PYTHONPATH": f"{TESTS}:{TESTS / 'netguard'}:{comfy_harness.TORCHVISION_STUB}"}
    with comfy_harness.ComfyServer(base / "comfy", models_dir=models, env=env) as srv:
        srv.toy_log, srv.toy_workflows = log, workflows
        yield srv


def _calls(server) -> list[dict]:
    return [json.loads(line) for line in server.toy_log.read_text().splitlines()] if server.toy_log.exists() else []


def _photo_png() -> bytes:
    """The astronaut: the tiny face detectors fire at her face, so the face pass runs too."""
    buf = io.BytesIO()
    Image.fromarray(tiny_models.astronaut(128)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_third_engine_runs_a_real_comfyui_graph_through_the_engine_loader(toy_server, tmp_path):
    inputs = toy_server.object_info("ModelSwap_EngineLoader")["input"]["required"]
    assert "toy" in inputs["engine"][1]["options"] and "toy_engine.safetensors" in inputs["model"][1]["options"]
    (tmp_path / "photo.png").write_bytes(_photo_png())
    name = toy_server.upload_image(tmp_path / "photo.png")
    graph = json.loads((toy_server.toy_workflows / "toy_swap_api.json").read_text())
    for node in graph.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = name
    before = len(_calls(toy_server))
    (out,) = [np.array(Image.open(f).convert("RGB")) for f in toy_server.output_images(toy_server.run(graph))]
    calls = _calls(toy_server)[before:]
    quality = toy_engine.CAPABILITIES.presets["quality"]
    assert calls[0]["steps"] == quality.steps  # the sampler's 0: the toy engine's own quality preset
    assert any(c["size"] == [quality.refine_work_size] * 2 for c in calls[1:])  # FaceRefine's 0 as well
    photo = tiny_models.astronaut(128)
    assert out.shape == photo.shape and not np.array_equal(out, photo)


def test_the_http_api_serves_the_third_engine_with_its_mode_presets(toy_server):
    body = {"model_name": "model-swap", "inputs": {
        "model_image": "data:image/png;base64," + base64.b64encode(_photo_png()).decode(),
        "generation_mode": "fast", "return_base64": True}}
    before = len(_calls(toy_server))
    status, run = toy_server.post_json("/v1/run", body)
    assert status == 200, run
    deadline = time.monotonic() + 300
    while True:
        final = toy_server.get_json(f"/v1/status/{run['id']}")
        if final["status"] in ("completed", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert final["status"] == "completed", final
    fast = toy_engine.CAPABILITIES.presets["fast"]
    calls = _calls(toy_server)[before:]
    assert calls[0]["steps"] == fast.steps
    assert any(c["size"] == [fast.refine_work_size] * 2 for c in calls[1:])
    status, refused = toy_server.post_json("/v1/run", {**body, "inputs": {**body["inputs"], "num_images": 5}})
    assert status == 400 and refused["message"] == "inputs." + contract.NUM_IMAGES.problem(5)


def test_a_node_refuses_an_api_format_value_when_the_graph_is_queued(toy_server, tmp_path):
    """ComfyUI checks widget min/max at queue time (its own words) but not the step: FaceRefine refuses an
    off-step work_size there too, in the declaration's words (the runner's and the Python check's)."""
    (tmp_path / "photo.png").write_bytes(_photo_png())
    name = toy_server.upload_image(tmp_path / "photo.png")
    for node_class, key, value, words in (
            ("ModelSwap_FaceRefine", "work_size", 1000, contract.REFINE_WORK_SIZE.problem(1000)),
            ("ModelSwap_Sampler", "num_images", 5, "bigger than max of 4")):
        graph = json.loads((toy_server.toy_workflows / "toy_swap_api.json").read_text())
        for node in graph.values():
            if node["class_type"] == "LoadImage":
                node["inputs"]["image"] = name
            if node["class_type"] == node_class:
                node["inputs"][key] = value
                node_id = next(k for k, n in graph.items() if n is node)
        with pytest.raises(comfy_harness.PromptRejected) as err:
            toy_server.queue_prompt(graph)
        assert err.value.status == 400 and words in json.dumps(err.value.body["node_errors"][node_id])


def test_the_runner_applies_the_engines_mode_presets_and_refuses_bad_values_before_starting(tmp_path):
    from comfyui_model_swap.nodes.headless.graph import engine_of

    graph = json.loads((ROOT / "workflows" / "api" / "model_swap_sdxl_api.json").read_text())
    assert engine_of(graph) == "sdxl"
    fast = engines.capabilities("sdxl").presets["fast"]
    job = apply_overrides(graph, Overrides(image=Path("x.png"), mode="fast",
                                           settings=["ModelSwap_FaceRefine.steps=3"]), {"model": "x.png"})
    nodes = {n["class_type"]: n["inputs"] for n in job.values()}
    assert nodes["ModelSwap_Sampler"]["steps"] == fast.steps and nodes["ModelSwap_FaceRefine"]["steps"] == 3
    assert nodes["ModelSwap_FaceRefine"]["work_size"] == fast.refine_work_size
    import subprocess
    import sys

    photo = tmp_path / "p.png"
    Image.fromarray(tiny_models.astronaut(64)).save(photo)
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_workflow.py"),
                          str(ROOT / "workflows" / "api" / "model_swap_api.json"), "--image", str(photo),
                          "--out", str(tmp_path / "out"), "--server", "http://127.0.0.1:9", "--set",
                          "ModelSwap_FaceRefine.work_size=1000"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and contract.REFINE_WORK_SIZE.problem(1000) in run.stderr

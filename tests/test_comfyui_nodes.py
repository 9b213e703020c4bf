"""The pack inside a real ComfyUI (started by the tests) running the shipped workflows.

ComfyUI 0.3.75 comes from COMFYUI_PATH or the PyPI wheel (.ci/install_comfyui.sh);
its models folder holds the tiny random-weight models under the default names,
so the API-format workflows in workflows/ run unchanged: only their inputs
(image files, seed, num_images) are swapped.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import comfy_harness
import provenance_check as pc
import saved_faces
import tiny_models
from same_picture import assert_same_picture
from comfyui_model_swap.nodes.pipeline import contract, model_files
from comfyui_model_swap.nodes.pipeline.loading import load_parser
from comfyui_model_swap.nodes.pipeline.pipeline import MaskSettings, prepare
from comfyui_model_swap.nodes.workflow_runner import required_models

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
NODE_IDS = ("ModelSwap_PipelineLoader", "ModelSwap_KleinLoader", "ModelSwap_HumanParserLoader",
            "ModelSwap_InsightFaceLoader", "ModelSwap_OpenCVFaceLoader",
            "ModelSwap_GarmentMask", "ModelSwap_IdentityEncode", "ModelSwap_Sampler", "ModelSwap_FaceRefine",
            "ModelSwap_SaveImage", "ModelSwap_CreateFace", "ModelSwap_SaveFace", "ModelSwap_LoadFace")
API_WORKFLOWS = sorted((WORKFLOWS / "api").glob("*_api.json"))
DEFAULT_WORKFLOWS = ("model_swap_api.json", "model_swap_face_reference_api.json")  # FLUX.2 klein
SDXL_FACE_REFERENCE = WORKFLOWS / "api" / "model_swap_sdxl_face_reference_api.json"


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_models_dir):
    """A private copy: one test hides a model to see the loader's error."""
    dest = tmp_path_factory.mktemp("comfy-models") / "models"
    shutil.copytree(tiny_models_dir, dest, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def server(tmp_path_factory, models):
    comfy_harness.require_comfyui()
    with comfy_harness.ComfyServer(tmp_path_factory.mktemp("comfy"), models_dir=models) as srv:
        yield srv


@pytest.fixture(scope="module")
def inputs(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    photo = tiny_models.fashion_photo(128)
    Image.fromarray(photo).save(folder / "swap_model.png")
    Image.fromarray(tiny_models.astronaut(128)).save(folder / "swap_reference.png")
    return {"model": server.upload_image(folder / "swap_model.png"),
            "reference": server.upload_image(folder / "swap_reference.png"), "photo": photo}


def load_api(path: Path) -> dict:
    return json.loads(path.read_text())


def node_of(graph: dict, class_type: str) -> dict:
    (node,) = [n for n in graph.values() if n["class_type"] == class_type]
    return node


def with_inputs(graph: dict, inputs: dict, *, seed=None, num_images=None, prefix="t", fast=False) -> dict:
    """Swap only the workflow's inputs: image files, seed, num_images, output prefix. ``fast`` also
    samples the face crop at 256 px instead of SDXL's 1024 (tests of other behaviour, not of the
    shipped settings, where tiny models at 1024 px would cost ~40 s a run on CPU)."""
    for node in graph.values():
        if node["class_type"] == "LoadImage":
            ref = "reference" in node.get("_meta", {}).get("title", "").lower()
            node["inputs"]["image"] = inputs["reference" if ref else "model"]
        if node["class_type"] == "ModelSwap_SaveImage":
            node["inputs"]["filename_prefix"] = f"{prefix}_{time.monotonic_ns()}"
    sampler = node_of(graph, "ModelSwap_Sampler")
    if seed is not None:
        sampler["inputs"]["seed"] = seed
    if num_images is not None:
        sampler["inputs"]["num_images"] = num_images
    if fast:
        node_of(graph, "ModelSwap_FaceRefine")["inputs"]["work_size"] = 256
    return graph


def preserved_region(models: Path, photo: np.ndarray, graph: dict) -> np.ndarray:
    """Where the output must equal the input, computed by the comfy-free pipeline with the
    workflow's own segmenter and GarmentMask settings."""
    gm = node_of(graph, "ModelSwap_GarmentMask")["inputs"]
    from comfyui_model_swap.nodes.pipeline import masks
    from comfyui_model_swap.nodes.pipeline.loading import load_selfie_segmenter

    selfie = [n["inputs"] for n in graph.values() if n["class_type"] == "ModelSwap_SelfieSegmenterLoader"]
    if selfie:
        parser = load_selfie_segmenter(models / "mediapipe" / selfie[0]["model"], refine=selfie[0]["refine_edges"])
    else:
        parser = load_parser(models / "human_parsing" / "fashn-human-parser", "cpu")
    settings = MaskSettings(regenerate=masks.class_names(gm["regenerate"]), grow=gm["grow"], feather=gm["feather"])
    return prepare(parser, photo, settings).swap.preserve


# ------------------------------------------------------------------------------- loading

def test_pack_imports_without_failure(server):
    assert server.import_failed() == [], server.log_tail()


def test_every_node_is_listed_with_category_description_and_a_tooltip_on_every_input(server):
    info = server.object_info()
    for node_id in NODE_IDS:
        assert node_id in info, f"{node_id} missing from /object_info"
        node = info[node_id]
        assert node["category"] == "Model Swap" and node["description"]
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    names = {info[n]["display_name"] for n in NODE_IDS}
    assert {"GarmentMask", "IdentityEncode", "ModelSwapSampler", "FaceRefine"} <= names


def test_widget_defaults_are_the_apis_defaults(server):
    info = server.object_info()
    sampler = info["ModelSwap_Sampler"]["input"]["required"]
    assert sampler["seed"][1]["default"] == 42 and sampler["seed"][1]["max"] == 2**32 - 1
    assert sampler["num_images"][1]["default"] == 1 and sampler["num_images"][1]["max"] == 4
    assert sampler["prompt"][1]["default"] == ""
    refine = info["ModelSwap_FaceRefine"]["input"]["required"]
    assert refine["face_reference_mode"][1]["default"] == "match_reference"


def test_every_generator_loader_is_known_to_the_engine_registry(server):
    """The provenance record and the runner's --mode name the engine from the loader feeding the sampler:
    its ``engine`` input (the Engine Loader), else the engine module naming it as its LOADER_NODE."""
    from comfyui_model_swap.nodes.pipeline import engines

    info = server.object_info()
    generators = {n for n, spec in info.items() if "MODELSWAP_GENERATOR" in spec.get("output", [])}
    for node in generators:
        if "engine" in info[node]["input"].get("required", {}):
            continue
        assert engines.engine_of_loader({"class_type": node, "inputs": {}}) in engines.ENGINES, node


def test_dropdowns_list_the_installed_models(server):
    info = server.object_info()
    assert "stable-diffusion-xl-1.0-inpainting-0.1" in info["ModelSwap_PipelineLoader"]["input"]["required"]["model"][1]["options"]
    assert "ip-adapter-faceid_sdxl.bin" in info["ModelSwap_PipelineLoader"]["input"]["required"]["faceid"][1]["options"]
    assert "antelopev2" in info["ModelSwap_InsightFaceLoader"]["input"]["required"]["pack"][1]["options"]


# ------------------------------------------------------------------------------- running the workflows

@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_runs_keeps_garments_exact_and_reports_every_step(server, inputs, models, workflow):
    """The default (klein) workflows run unchanged; the SDXL ones with the face crop sampled at 256 px
    (tiny SDXL at its 1024 px would cost ~40 s a run on CPU and says nothing more)."""
    graph = with_inputs(load_api(workflow), inputs, fast=workflow.name not in DEFAULT_WORKFLOWS)
    steps = node_of(graph, "ModelSwap_Sampler")["inputs"]["steps"]
    sampler_id = next(k for k, n in graph.items() if n["class_type"] == "ModelSwap_Sampler")
    with server.watch() as ws:
        prompt_id = server.queue_prompt(graph, ws.client_id)
        entry = server.wait(prompt_id, timeout=600)
        ws.wait_done(prompt_id, timeout=60)
        bar = [v for v, _, node in ws.progress(prompt_id) if node == sampler_id]
    assert bar == list(range(1, steps + 1))  # the UI's bar moves once per sampling step
    files = server.output_images(entry)
    assert len(files) == 1
    out = np.array(Image.open(files[0]).convert("RGB"))
    photo = inputs["photo"]
    keep = preserved_region(models, photo, graph)
    assert out.shape == photo.shape and keep.mean() > 0.2
    assert np.abs(out.astype(int) - photo.astype(int)).max(axis=-1)[keep].max() == 0
    assert (out[~keep] != photo[~keep]).any()
    # the file says how it was made (read by exiftool); this ComfyUI has no certificate: no C2PA manifest
    data = files[0].read_bytes()
    tags = pc.exif_xmp(data)
    assert tags["XMP-iptcExt:DigitalSourceType"] == pc.COMPOSITE
    assert tags["XMP-modelswap:Engine"] == ("sdxl" if "sdxl" in workflow.name else "flux2_klein")
    assert tags["XMP-modelswap:Seed"] == node_of(graph, "ModelSwap_Sampler")["inputs"]["seed"]
    assert [(m["Name"], m["Licence"]) for m in tags["XMP-modelswap:Models"]] == [
        (name, model_files.MODELS[key].licence) for key, name in required_models(graph)]
    assert tags["XMP-modelswap:NonCommercialWeights"] == ("commercial" not in workflow.name)
    assert not pc.has_c2pa(data)
    with Image.open(files[0]) as image:  # and ComfyUI's own metadata, as its Save Image writes it
        saved = json.loads(image.info["prompt"])
    assert {k: n["inputs"] for k, n in saved.items()} == {k: n["inputs"] for k, n in graph.items()}


def test_klein_batch_of_four_on_a_real_photo_is_four_single_runs_at_seed_plus_i(server, inputs, models,
                                                                                 tmp_path):
    """The default workflow with a face reference on the astronaut (a real photo), end to end with the
    face pass: image i of a batch of 4 is the same picture as the single run at seed + i, up to float
    rounding (the bound is in same_picture.py), and outside the band every image is the photo's own
    pixels."""
    astronaut = tiny_models.astronaut(128)
    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    real = {**inputs, "model": server.upload_image(tmp_path / "astronaut.png")}

    def run(seed, num_images):
        graph = with_inputs(load_api(WORKFLOWS / "api" / "model_swap_face_reference_api.json"), real, seed=seed,
                            num_images=num_images, fast=True)
        files = server.output_images(server.run(graph, timeout=600))
        return [np.array(Image.open(f).convert("RGB")) for f in files], graph

    batch, graph = run(30, 4)
    assert len(batch) == 4 and len({b.tobytes() for b in batch}) == 4
    keep = preserved_region(models, astronaut, graph)
    for i, image in enumerate(batch):
        (alone,), _ = run(30 + i, 1)
        assert_same_picture(alone, image, f"image {i}")
        assert np.array_equal(image[keep], astronaut[keep])


def test_four_images_come_back_from_one_run(server, inputs, models):
    graph = with_inputs(load_api(WORKFLOWS / "api" / "model_swap_api.json"), inputs, seed=7, num_images=4, fast=True)
    files = server.output_images(server.run(graph, timeout=900))
    outs = [np.array(Image.open(f).convert("RGB")) for f in files]
    assert len(outs) == 4 and len({o.tobytes() for o in outs}) == 4
    keep = preserved_region(models, inputs["photo"], graph)
    for out in outs:
        assert np.array_equal(out[keep], inputs["photo"][keep])


def test_out_of_range_value_is_rejected_with_node_errors(server, inputs):
    graph = with_inputs(load_api(WORKFLOWS / "api" / "model_swap_api.json"), inputs, num_images=5)
    with pytest.raises(comfy_harness.PromptRejected) as e:
        server.queue_prompt(graph)
    body = e.value.body
    sampler_id = next(k for k, n in graph.items() if n["class_type"] == "ModelSwap_Sampler")
    assert e.value.status == 400 and sampler_id in body["node_errors"]
    assert "num_images" in json.dumps(body["node_errors"][sampler_id])


def test_interrupt_stops_sampling_within_a_step_and_the_next_prompt_succeeds(server, inputs):
    slow = with_inputs(load_api(WORKFLOWS / "api" / "model_swap_api.json"), inputs, seed=11, fast=True)
    node_of(slow, "ModelSwap_Sampler")["inputs"]["steps"] = 150
    with server.watch() as ws:
        prompt_id = server.queue_prompt(slow, ws.client_id)
        ws.wait_for(lambda m: m["type"] == "progress" and m["data"].get("prompt_id") == prompt_id
                    and m["data"]["value"] >= 2, timeout=300)
        server.interrupt()
        end = ws.wait_done(prompt_id, timeout=120)
        assert end["type"] == "execution_interrupted"
        steps_seen = max(v for v, _, _ in ws.progress(prompt_id))
        assert steps_seen < 150
    quick = with_inputs(load_api(WORKFLOWS / "api" / "model_swap_api.json"), inputs, seed=12, fast=True)
    assert len(server.output_images(server.run(quick, timeout=600))) == 1


def test_a_missing_model_names_the_folder_and_file_and_the_queue_carries_on(server, inputs, models):
    parser_dir = models / "human_parsing" / "fashn-human-parser"
    hidden = models / "hidden-parser"
    graph = with_inputs(load_api(WORKFLOWS / "api" / "model_swap_api.json"), inputs, seed=14, fast=True)
    node_of(graph, "ModelSwap_HumanParserLoader")["inputs"]["device"] = "cpu"  # new inputs: ComfyUI re-runs the loader
    parser_dir.rename(hidden)
    try:
        entry = server.wait(server.queue_prompt(graph), timeout=300, check=False)
    finally:
        hidden.rename(parser_dir)
    messages = json.dumps(entry["status"]["messages"])
    assert entry["status"]["status_str"] == "error"
    assert "models/human_parsing" in messages and "fashn-human-parser" in messages
    assert "huggingface.co/fashn-ai/fashn-human-parser" in messages
    ok = with_inputs(load_api(WORKFLOWS / "api" / "model_swap_api.json"), inputs, seed=15, fast=True)
    assert len(server.output_images(server.run(ok, timeout=600))) == 1


def test_pack_loads_without_insightface_and_names_the_node_that_needs_it(tmp_path, models, inputs):
    shadow = tmp_path / "shadow" / "insightface"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("insightface is hidden for this test")\n')
    env = {"PYTHONPATH": f"{shadow.parent}{':'}{comfy_harness.TORCHVISION_STUB}"}
    with comfy_harness.ComfyServer(tmp_path / "comfy", models_dir=models, env=env) as srv:
        assert srv.import_failed() == [], srv.log_tail()
        assert set(NODE_IDS) <= set(srv.object_info())
        Image.fromarray(inputs["photo"]).save(tmp_path / "m.png")
        uploaded = {"model": srv.upload_image(tmp_path / "m.png")}
        graph = with_inputs(load_api(WORKFLOWS / "api" / "model_swap_sdxl_api.json"), uploaded, fast=True)
        entry = srv.wait(srv.queue_prompt(graph), timeout=300, check=False)
    messages = json.dumps(entry["status"]["messages"])
    assert "Model Swap InsightFace Loader" in messages and "pip install insightface" in messages


# ------------------------------------------------------------------------------- engines held by the graph

# ------------------------------------------------------------------------------- the face library

def _create_face_graph(name: str, seed: int = 5) -> dict:
    workflow = load_api(WORKFLOWS / "api" / "model_swap_face_reference_api.json")
    loaders = {k: n for k, n in workflow.items() if n["class_type"] in ("ModelSwap_KleinLoader",
                                                                         "ModelSwap_OpenCVFaceLoader")}
    klein, faces = (next(k for k, n in loaders.items() if n["class_type"] == c)
                    for c in ("ModelSwap_KleinLoader", "ModelSwap_OpenCVFaceLoader"))
    return {**loaders,
            "20": {"class_type": "ModelSwap_CreateFace", "inputs": {
                "generator": [klein, 0], "face_analyzer": [faces, 0], "person": "woman", "age_band": "auto",
                "skin_tone": "auto", "ethnicity": "", "hair_colour": "auto", "hair_style": "", "description": "",
                "seed": seed, "count": 2, "size": 64}},
            "21": {"class_type": "ModelSwap_SaveFace", "inputs": {"faces": ["20", 1], "candidate": 1, "name": name,
                                                                   "overwrite": False}}}


def test_create_face_on_tiny_klein_reaches_the_analyser_check_which_names_the_candidate(server, models):
    # The tiny klein's random weights draw no face the tiny YuNet sees: the check refuses (see saved_faces.py).
    entry = server.wait(server.queue_prompt(_create_face_graph("never saved")), timeout=300, check=False)
    messages = json.dumps(entry["status"]["messages"])
    assert entry["status"]["status_str"] == "error" and "Candidate 1 (seed 5)" in messages, messages
    assert not (models / "modelswap_faces" / "never saved").exists()
    with pytest.raises(comfy_harness.PromptRejected) as e:
        server.queue_prompt(_create_face_graph("../escape"))
    assert "21" in e.value.body["node_errors"] and "is not allowed" in json.dumps(e.value.body["node_errors"])


def test_a_saved_face_from_load_face_is_the_face_reference_of_a_real_swap(server, inputs, models, tmp_path):
    from comfyui_model_swap.nodes.pipeline import face_opencv

    analyzer = face_opencv.OpenCVFaceAnalyzer.load(models / "facedetection")
    saved = saved_faces.save(models / "modelswap_faces", "Graph Face", analyzer)
    Image.open(saved / "face.png").save(tmp_path / "same_face.png")
    with_file = with_inputs(load_api(WORKFLOWS / "api" / "model_swap_face_reference_api.json"),
                            {**inputs, "reference": server.upload_image(tmp_path / "same_face.png")}, seed=21, fast=True)
    by_name = json.loads(json.dumps(with_file))
    ref_id = next(k for k, n in by_name.items() if n["class_type"] == "LoadImage"
                  and "reference" in n.get("_meta", {}).get("title", "").lower())
    by_name[ref_id] = {"class_type": "ModelSwap_LoadFace", "inputs": {"name": "Graph Face"}}
    node_of(by_name, "ModelSwap_SaveImage")["inputs"]["filename_prefix"] = "by_name"
    assert np.array_equal(_run_image(server, by_name), _run_image(server, with_file))  # the saved picture was used
    missing = json.loads(json.dumps(by_name))
    missing[ref_id]["inputs"]["name"] = "Nobody"
    with pytest.raises(comfy_harness.PromptRejected) as e:
        server.queue_prompt(missing)
    assert "No saved face named 'Nobody'" in json.dumps(e.value.body) and "Graph Face" in json.dumps(e.value.body)


def _run_image(server, graph) -> np.ndarray:
    (path,) = server.output_images(server.run(graph, timeout=600))
    return np.array(Image.open(path).convert("RGB"))


def test_two_faceid_configurations_in_one_comfyui_give_their_own_results_in_alternating_order(server, inputs):
    """Each loader's FaceID state belongs to the engine it returns (a UNet of its own over shared weights),
    so using one never changes the other: A, B, A, B gives A's and B's results every time. The second
    round's prompt is a space, which the pipeline strips, so ComfyUI re-executes the samplers for the
    same result."""
    def graph(lora: str, prompt: str) -> dict:
        g = with_inputs(load_api(SDXL_FACE_REFERENCE), inputs, seed=21, prefix=lora)
        node_of(g, "ModelSwap_PipelineLoader")["inputs"]["faceid_lora"] = lora
        node_of(g, "ModelSwap_Sampler")["inputs"].update(prompt=prompt, steps=4)
        node_of(g, "ModelSwap_FaceRefine")["inputs"]["enabled"] = False
        return g

    a1, b1 = _run_image(server, graph("auto", "")), _run_image(server, graph("none", ""))
    a2, b2 = _run_image(server, graph("auto", " ")), _run_image(server, graph("none", " "))
    assert not np.array_equal(a1, b1)  # the two configurations really differ
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2)


def _numeric_widgets(info: dict, node_id: str):
    for section in ("required", "optional"):
        for name, spec in info[node_id]["input"].get(section, {}).items():
            if spec[0] in ("INT", "FLOAT") and "min" in spec[1] and "max" in spec[1]:
                yield name, spec[1]


def test_every_numeric_widget_refuses_values_past_its_limits_at_the_widget(server, inputs):
    info = server.object_info()
    checked = 0
    for node_id in ("ModelSwap_GarmentMask", "ModelSwap_IdentityEncode", "ModelSwap_Sampler", "ModelSwap_FaceRefine",
                    "ModelSwap_InsightFaceLoader"):
        for name, spec in _numeric_widgets(info, node_id):
            step = 1 if isinstance(spec["min"], int) and isinstance(spec["max"], int) else 0.5
            for bad in (spec["min"] - step, spec["max"] + step):
                g = with_inputs(load_api(SDXL_FACE_REFERENCE), inputs)
                node_of(g, node_id)["inputs"][name] = bad
                with pytest.raises(comfy_harness.PromptRejected) as e:
                    server.queue_prompt(g)
                assert name in json.dumps(e.value.body["node_errors"]), (node_id, name, bad)
                checked += 1
    assert checked >= 2 * 12


def test_the_hardest_legal_widget_combination_runs(server, inputs):
    """Limits are defined once (contract.py) and inner code trusts them: FaceRefine's smallest strength with
    its most steps (100 / 0.1 = 1000 scheduler steps, SDXL's training range) and the sampler's extremes run
    instead of failing late. Where a widget's minimum is 0 ("the engine's own", e.g. 30 SDXL steps), the
    smallest explicit value is the declared bound."""
    info = server.object_info()
    g = with_inputs(load_api(SDXL_FACE_REFERENCE), inputs, seed=info[
        "ModelSwap_Sampler"]["input"]["required"]["seed"][1]["max"], num_images=1)
    refine = dict(_numeric_widgets(info, "ModelSwap_FaceRefine"))
    sampler = dict(_numeric_widgets(info, "ModelSwap_Sampler"))
    node_of(g, "ModelSwap_FaceRefine")["inputs"].update(
        strength=refine["strength"]["min"], steps=refine["steps"]["max"],
        work_size=refine["work_size"]["min"] or contract.REFINE_WORK_SIZE.bounds[0], margin=refine["margin"]["max"])
    node_of(g, "ModelSwap_Sampler")["inputs"].update(
        steps=sampler["steps"]["min"] or contract.STEPS.bounds[0], strength=sampler["strength"]["min"],
        guidance_scale=sampler["guidance_scale"]["max"], body_strength=sampler["body_strength"]["min"])
    node_of(g, "ModelSwap_IdentityEncode")["inputs"]["identity_scale"] = info[
        "ModelSwap_IdentityEncode"]["input"]["required"]["identity_scale"][1]["max"]
    out = _run_image(server, g)
    assert out.shape == inputs["photo"].shape

"""The editor (UI-format) workflows in ComfyUI's real graph editor: drag and drop, compare, queue.

Every ``workflows/<name>.json`` that is not ``_api`` is the editor twin of
``workflows/<name>_api.json`` (written by ``scripts/export_ui_workflows.py``). One real
ComfyUI (tests/comfy_harness.py) with the tiny models under their default names and one
headless Chromium serve the module. Each workflow is opened the way a user's drag and drop
opens it (a ``drop`` event carrying the file) and must:

* open no missing-nodes dialog, leave no node type missing and no node marked with errors;
* turn into the committed API twin (``app.graphToPrompt``, ids and titles ignored);
* run when queued from the page (the tiny test photos are uploaded under the workflows'
  default file names ``model.png``/``face_reference.png``) and save as many images as the
  sampler's ``num_images`` says;
* leave a screenshot in ``test-artifacts/editor_<name>.png`` (and ``editor_<name>_run.png``
  after the run);

and ``workflows/<name>.png`` (the README picture, with the workflow embedded as ComfyUI's
images carry theirs), where present, must hold that same workflow and open it when dropped;
all with no uncaught page error and no browser request that left 127.0.0.1. Skipped only when
ComfyUI or Chromium/playwright are absent and ``CI`` is unset.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import comfy_harness as ch
import tiny_models

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
UI_WORKFLOWS = sorted(p for p in WORKFLOWS.glob("*.json") if not p.stem.endswith("_api"))
API_WORKFLOWS = sorted(WORKFLOWS.glob("*_api.json"))
PICTURES = sorted(WORKFLOWS.glob("*.png"))
IN_CI = ch.IN_CI
VIEWPORT = (1920, 1080)  # the window the workflows' saved view is fitted to
DEFAULT_IMAGES = {"model.png": "model", "face_reference.png": "reference"}


def _load_exporter():
    spec = importlib.util.spec_from_file_location("export_ui_workflows", ROOT / "scripts" / "export_ui_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


exporter = _load_exporter()


def api_twin(ui_path: Path) -> Path:
    return ui_path.with_name(f"{ui_path.stem}_api.json")


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def sampler_of(api: dict) -> dict:
    (node,) = [n for n in api.values() if n["class_type"] == "ModelSwap_Sampler"]
    return node


def open_workflow(page, path: Path) -> None:
    """Open a workflow file as a user's drag and drop does (after closing earlier dialogs)."""
    ch.close_dialogs(page)
    exporter.drop_workflow(page, path.read_text(), path.name)


# ------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir):
    ch.require_comfyui()
    with ch.ComfyServer(tmp_path_factory.mktemp("comfy-editor"), models_dir=tiny_models_dir) as srv:
        yield srv


@pytest.fixture(scope="module")
def inputs(server, tmp_path_factory):
    """The tiny test photos, uploaded under the workflows' default LoadImage file names."""
    folder = tmp_path_factory.mktemp("editor-inputs")
    pictures = {"model": tiny_models.fashion_photo(128), "reference": np.ascontiguousarray(tiny_models.astronaut(128))}
    for file_name, kind in DEFAULT_IMAGES.items():
        Image.fromarray(pictures[kind]).save(folder / file_name)
        assert server.upload_image(folder / file_name) == file_name
    return pictures


@pytest.fixture(scope="module")
def page(server, inputs):
    ok, why = ch.browser_available()
    if not ok:
        if IN_CI:
            pytest.fail(f"CI must run the browser tests: {why}")
        pytest.skip(why)
    with ch.browser_page(server, viewport=VIEWPORT) as editor:
        yield editor


# ------------------------------------------------------------------------------- the files

def test_every_api_workflow_has_an_editor_twin_and_back():
    assert UI_WORKFLOWS, "no editor workflows in workflows/"
    assert sorted(api_twin(p) for p in UI_WORKFLOWS) == API_WORKFLOWS


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_editor_workflow_is_a_ui_format_file_with_a_tidy_layout(workflow):
    ui = load_json(workflow)
    api = load_json(api_twin(workflow))
    assert {"nodes", "links", "version", "last_node_id", "last_link_id"} <= set(ui)
    # node ids are the API file's, and so are titles (the file leaves out those equal to the node's name)
    assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
    for node in ui["nodes"]:
        assert node.get("title", api[str(node["id"])]["_meta"]["title"]) == api[str(node["id"])]["_meta"]["title"]
    assert exporter.overlapping(ui) == []
    # images and loaders left of everything they feed
    x = {str(n["id"]): n["pos"][0] for n in ui["nodes"]}
    for link_id, source, _, target, _, _ in ui["links"]:
        assert x[str(source)] < x[str(target)], f"link {link_id} runs right to left"
    # the seed stays the API file's seed whatever the user's widget-control setting
    (sampler,) = [n for n in ui["nodes"] if n["type"] == "ModelSwap_Sampler"]
    assert "fixed" in sampler["widgets_values"]


@pytest.mark.parametrize("picture", PICTURES, ids=lambda p: p.stem)
def test_workflow_picture_is_small_and_carries_its_workflow(picture):
    ui = picture.with_suffix(".json")
    assert ui in UI_WORKFLOWS, f"{picture.name} has no workflow {ui.name}"
    assert picture.stat().st_size < 300_000
    assert exporter.embedded_workflow(picture) == load_json(ui), (
        f"{picture.name} is out of step with {ui.name}: run scripts/export_ui_workflows.py")


# ------------------------------------------------------------------------------- the editor

@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_dropped_workflow_opens_without_missing_nodes_or_errors_and_is_its_api_twin(page, workflow):
    open_workflow(page, workflow)
    assert ch.missing_nodes_dialog(page) is None
    assert ch.missing_node_types(page) == []
    assert ch.nodes_with_errors(page) == []
    api = ch.graph_to_prompt(page)
    twin = load_json(api_twin(workflow))
    assert ch.normalise_api_graph(api) == ch.normalise_api_graph(twin)
    # same node ids and titles as the API file; the editor keeps the file's layout
    assert {k: v["_meta"]["title"] for k, v in api.items()} == {k: v["_meta"]["title"] for k, v in twin.items()}
    shown = {str(n["id"]): n for n in ch.export_workflow(page)["nodes"]}
    for node in load_json(workflow)["nodes"]:
        assert shown[str(node["id"])]["pos"] == node["pos"]

    page.wait_for_timeout(1000)  # LoadImage previews
    shot = ch.screenshot(page, name=f"editor_{workflow.stem}")
    assert shot.is_file() and ch.ARTIFACTS_DIR in shot.parents
    assert shot.stat().st_size > 50_000
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (VIEWPORT[1], VIEWPORT[0], 3)
    # not blank: the graph area holds nodes (lighter than the canvas) and many colours
    canvas = pixels[150:900, 100:1800]
    assert canvas.std() > 10
    assert len(np.unique(canvas[..., 0] << 16 | canvas[..., 1] << 8 | canvas[..., 2])) > 500
    log = ch.page_log(page)
    assert not log.page_errors, log.page_errors
    assert not log.blocked_requests, log.blocked_requests


@pytest.mark.parametrize("picture", PICTURES, ids=lambda p: p.stem)
def test_dropped_picture_opens_its_workflow(page, picture):
    ch.close_dialogs(page)
    exporter.drop_file(page, picture.read_bytes(), picture.name, "image/png", exporter.embedded_workflow(picture))
    assert ch.missing_nodes_dialog(page) is None
    assert ch.nodes_with_errors(page) == []
    twin = load_json(api_twin(picture.with_suffix(".json")))
    assert ch.normalise_api_graph(ch.graph_to_prompt(page)) == ch.normalise_api_graph(twin)
    log = ch.page_log(page)
    assert not log.page_errors, log.page_errors
    assert not log.blocked_requests, log.blocked_requests


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_queued_from_the_editor_runs_and_saves_num_images(server, inputs, page, workflow):
    api = load_json(api_twin(workflow))
    num_images = sampler_of(api)["inputs"]["num_images"]
    open_workflow(page, workflow)
    assert ch.nodes_with_errors(page) == []
    prompt_id = ch.queue_from_page(page)
    # Freeze the page while ComfyUI samples: its redraws on every progress message cost a 2-core
    # runner about a quarter of the sampling speed. Its websocket messages wait, and are handled
    # when it is thawed.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
    try:
        entry = server.wait(prompt_id, timeout=900)
    finally:
        cdp.send("Page.setWebLifecycleState", {"state": "active"})
        cdp.detach()
    history = server.history(prompt_id)
    assert history["status"]["status_str"] == "success" and history["status"]["completed"]
    files = server.output_images(entry)
    assert len(files) == num_images
    height, width = inputs["model"].shape[:2]
    for path in files:
        with Image.open(path) as image:
            assert image.size == (width, height)  # the model photo's size: garments kept in place
    # the queued graph was the twin; "fixed" left the seed where it was
    queued = server.get_json(f"/history/{prompt_id}")[prompt_id]["prompt"][2]
    assert ch.normalise_api_graph(queued) == ch.normalise_api_graph(api)
    assert ch.normalise_api_graph(ch.graph_to_prompt(page)) == ch.normalise_api_graph(api)

    # the editor got the result: Save Image shows the saved files
    save_id = next(k for k, v in api.items() if v["class_type"] == "SaveImage")
    shown = page.wait_for_function(
        "(id) => { const out = (window.app.nodeOutputs || {})[id]; return out && out.images && out.images; }",
        arg=save_id, timeout=60_000).json_value()
    assert sorted(i["filename"] for i in shown) == sorted(p.name for p in files)
    page.wait_for_timeout(500)
    shot = ch.screenshot(page, name=f"editor_{workflow.stem}_run")
    assert shot.stat().st_size > 50_000
    log = ch.page_log(page)
    assert not log.page_errors, log.page_errors
    assert not log.blocked_requests, log.blocked_requests

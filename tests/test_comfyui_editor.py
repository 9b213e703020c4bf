"""The editor (UI-format) workflows in ComfyUI's real graph editor: drag and drop, compare, queue.

Every ``workflows/<name>.json`` that is not ``_api`` is the editor twin of
``workflows/api/<name>_api.json`` (written by ``scripts/export_ui_workflows.py``). One real
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
API_WORKFLOWS = sorted((WORKFLOWS / "api").glob("*_api.json"))
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
    return ui_path.parent / "api" / f"{ui_path.stem}_api.json"


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


@pytest.mark.parametrize("workflow", [WORKFLOWS / "model_swap.json", WORKFLOWS / "model_swap_face_reference.json"],
                         ids=lambda p: p.stem)
def test_workflow_queued_from_the_editor_runs_and_saves_num_images(server, inputs, page, workflow):
    """The default (FLUX.2 klein) workflows, queued from the editor as shipped. The SDXL ones open in the
    editor as their API twins (tests above) and run in tests/test_comfyui_nodes.py."""
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
    save_id = next(k for k, v in api.items() if v["class_type"] == "ModelSwap_SaveImage")
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


# ------------------------------------------------------------------------------- models, templates, help pages

HELP_PAGES = ROOT / "web" / "docs"
CLIP_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"  # a published single file the tiny models lack


def test_each_editor_workflow_has_its_thumbnail_and_its_api_twin_out_of_the_templates_folder():
    assert exporter.sync_examples(check=True) == [], "run scripts/export_ui_workflows.py --examples"
    assert not (ROOT / "example_workflows").exists()  # one Templates folder: no second listing
    assert [p.name for p in WORKFLOWS.glob("*_api.json")] == []  # the API twins live in workflows/api/
    assert sorted(p.stem for p in WORKFLOWS.glob("*.jpg")) == [p.stem for p in UI_WORKFLOWS]
    for ui in UI_WORKFLOWS:
        assert api_twin(ui).is_file()
        with Image.open(WORKFLOWS / f"{ui.stem}.jpg") as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= 512


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_loader_nodes_carry_models_for_the_published_files_they_name(workflow):
    api = load_json(api_twin(workflow))
    for node in load_json(workflow)["nodes"]:
        entries = node.get("properties", {}).get("models", [])
        assert entries == exporter.models_property(api[str(node["id"])])
        for entry in entries:
            assert entry["name"] in node["widgets_values"] and entry["name"].endswith(".safetensors")
            assert entry["url"].startswith("https://huggingface.co/")


def test_models_property_lists_single_hub_files_and_leaves_out_folders_zips_and_bins():
    cases = {
        ("UNETLoader", "unet_name", "flux-2-klein-4b.safetensors"): [{
            "name": "flux-2-klein-4b.safetensors", "directory": "diffusion_models",
            "url": "https://huggingface.co/Comfy-Org/Flux-2-Klein-4B/resolve/main/split_files/diffusion_models/"
                   "flux-2-klein-4b.safetensors"}],
        ("VAELoader", "vae_name", "flux2-vae.safetensors"): [{
            "name": "flux2-vae.safetensors", "directory": "vae",
            "url": "https://huggingface.co/Comfy-Org/Flux-2-Klein-4B/resolve/main/split_files/vae/flux2-vae.safetensors"}],
        ("ModelSwap_PipelineLoader", "model", "stable-diffusion-xl-1.0-inpainting-0.1"): [],  # a folder
        ("ModelSwap_PipelineLoader", "faceid", "ip-adapter-faceid_sdxl.bin"): [],  # not .safetensors
        ("ModelSwap_InsightFaceLoader", "pack", "antelopev2"): [],  # a zip
        ("ModelSwap_PipelineLoader", "faceid_lora", "my_own_lora.safetensors"): [],  # not a published name
    }
    for (cls, name, value), expected in cases.items():
        assert exporter.models_property({"class_type": cls, "inputs": {name: value}}) == expected, (cls, value)


def test_every_pack_node_has_a_help_page_served_by_comfyui(server):
    nodes = server.pack_nodes()
    assert nodes
    assert sorted(p.stem for p in HELP_PAGES.glob("*.md")) == nodes
    for node in nodes:
        text = (HELP_PAGES / f"{node}.md").read_text()
        assert text.startswith("# ") and "## Inputs" in text and "## Outputs" in text and "## Tip" in text
        status, body = server.request("GET", f"/extensions/{ch.PACK_DIR_NAME}/docs/{node}.md")
        assert status == 200 and body.decode() == text


def test_comfyui_lists_each_workflow_once_as_a_template_and_serves_it(server):
    listed = server.get_json("/api/workflow_templates")[ch.PACK_DIR_NAME]
    assert sorted(listed) == [ui.stem for ui in UI_WORKFLOWS]  # each once, no API twin
    for ui in UI_WORKFLOWS:
        status, body = server.request("GET", f"/api/workflow_templates/{ch.PACK_DIR_NAME}/{ui.name}")
        assert status == 200 and json.loads(body) == load_json(ui)
        status, body = server.request("GET", f"/api/workflow_templates/{ch.PACK_DIR_NAME}/{ui.stem}.jpg")
        assert status == 200 and body == (WORKFLOWS / f"{ui.stem}.jpg").read_bytes()


def _missing_models_cases():
    """Shipped editor workflows whose loaders name published single files (the FLUX.2 klein defaults), and
    the SDXL face-reference one with the CLIP ViT-H encoder chosen (a published file the tiny models lack)."""
    cases = [(p.stem, load_json(p)) for p in UI_WORKFLOWS
             if any(n.get("properties", {}).get("models") for n in load_json(p)["nodes"])]
    ui = load_json(WORKFLOWS / "model_swap_sdxl_face_reference.json")
    api = load_json(WORKFLOWS / "api" / "model_swap_sdxl_face_reference_api.json")
    (loader,) = [n for n in ui["nodes"] if n["type"] == "ModelSwap_PipelineLoader"]
    inputs = api[str(loader["id"])]["inputs"]
    loader["widgets_values"][list(k for k, v in inputs.items() if not isinstance(v, list)).index("clip_vision")] = CLIP_H
    inputs["clip_vision"] = CLIP_H
    exporter.with_models(ui, api)
    return cases + [("face_reference_with_clip_h", ui)]


@pytest.mark.parametrize("name,workflow", _missing_models_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_missing_models_dialog_lists_absent_files_with_their_download_links(page, server, name, workflow):
    """The workflow opened on a ComfyUI whose models folder lacks the files it names (the tiny copies are
    moved aside for the test) shows the frontend's missing-models dialog with each file's hub link."""
    expected = [m for n in workflow["nodes"] for m in n.get("properties", {}).get("models", [])]
    assert expected, f"{name}: no loader lists its models"
    present = [server.base_dir / "models" / m["directory"] / m["name"] for m in expected]
    present = [p for p in present if p.exists()]
    for path in present:
        path.rename(path.with_name(path.name + ".moved-aside"))
    try:
        ch.close_dialogs(page)
        ch.load_workflow(page, workflow)
        dialog = page.locator(".p-dialog", has_text="Missing Models")
        dialog.wait_for(timeout=30_000)
        text = dialog.inner_text()
        links = page.evaluate("() => [...document.querySelectorAll('.p-dialog [title]')].map(e => e.title)")
        for model in expected:
            assert f"{model['directory']} / {model['name']}" in text
            assert model["url"] in links
        ch.screenshot(page, name=f"editor_missing_models_{name}")
        ch.close_dialogs(page)
    finally:
        for path in present:
            path.with_name(path.name + ".moved-aside").rename(path)


def test_templates_browser_lists_each_workflow_once_and_opens_it(page):
    ch.close_dialogs(page)
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.locator(".p-dialog", has_text="Templates")
    dialog.wait_for(timeout=30_000)
    dialog.get_by_text(ch.PACK_DIR_NAME, exact=True).first.click()
    for ui in UI_WORKFLOWS:
        dialog.get_by_text(ui.stem, exact=True).first.wait_for(timeout=30_000)
    assert dialog.get_by_text("_api", exact=False).count() == 0  # no API twin offered
    thumbs = page.evaluate(
        "() => [...document.querySelectorAll('.p-dialog img')].filter(i => i.complete && i.naturalWidth > 0)"
        ".map(i => i.src)")
    # one loaded thumbnail per workflow (the frontend shows them from the .jpg files, directly or as blobs)
    assert len(thumbs) >= len(UI_WORKFLOWS), thumbs
    assert all(src.startswith("blob:") or src.endswith(".jpg") for src in thumbs), thumbs
    ch.screenshot(page, name="editor_templates")
    default = WORKFLOWS / "model_swap.json"
    dialog.get_by_text(default.stem, exact=True).first.click()  # open it from the browser
    want = sorted(n["type"] for n in load_json(default)["nodes"])
    page.wait_for_function(
        "(n) => window.app.graph && window.app.graph._nodes.length === n", arg=len(want), timeout=30_000)
    assert sorted(page.evaluate("() => window.app.graph._nodes.map(n => n.type)")) == want
    assert ch.missing_node_types(page) == []
    ch.close_dialogs(page)
    log = ch.page_log(page)
    assert not log.page_errors, log.page_errors


_OPEN_HELP_JS = """(id) => {
    const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
    const def = pinia._s.get('nodeDef').nodeDefsByName[id];
    const sidebar = pinia._s.get('sidebarTab');
    if (sidebar.activeSidebarTabId !== 'node-library') sidebar.toggleSidebarTab('node-library');
    pinia._s.get('nodeHelp').openHelp(def);  // what the selection toolbox's help button does
}"""


def test_a_nodes_help_page_opens_in_the_editor(page, server):
    ch.close_dialogs(page)
    for node in server.pack_nodes():
        tip = (HELP_PAGES / f"{node}.md").read_text().split("## Tip\n", 1)[1].strip().splitlines()[0]
        words = " ".join(tip.replace("`", "").split()[:5])
        page.evaluate(_OPEN_HELP_JS, node)
        page.wait_for_function("(w) => document.body.innerText.replace(/\\s+/g, ' ').includes(w)", arg=words,
                               timeout=30_000)
    ch.screenshot(page, name="editor_help_page")
    log = ch.page_log(page)
    assert not log.page_errors, log.page_errors
    assert not log.blocked_requests, log.blocked_requests

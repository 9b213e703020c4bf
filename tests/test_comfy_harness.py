"""The real-ComfyUI harness works: proven with a throw-away probe pack, then with this pack.

One ComfyUI (tests/comfy_harness.py) runs for the whole module with two custom-node packages:
a tiny V3 probe extension written here, and this repository as ``comfyui-model-swap``.
Skipped only when no ComfyUI is installed (``.ci/install_comfyui.sh``) and ``CI`` is unset;
the browser tests likewise skip only without Chromium/playwright outside CI.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import comfy_harness as ch

IN_CI = ch.IN_CI
PROBE_NODE = "HarnessProbe_SolidImage"
PROBE_MODEL = "probe.bin"
TINY_CHECKPOINT = "tiny-probe.safetensors"

PROBE_PACK = '''
"""A throw-away V3 extension for the harness tests: one node that outputs a solid image."""
import os
import time

import torch

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import ComfyExtension, io

# a pack-registered model folder under ComfyUI's models dir, as real packs do
folder_paths.add_model_folder_path("probe_models", os.path.join(folder_paths.models_dir, "probe_models"))


class SolidImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HarnessProbe_SolidImage",
            display_name="Harness probe: solid image",
            category="testing/harness",
            inputs=[
                io.Int.Input("size", default=32, min=8, max=256),
                io.Float.Input("value", default=0.5, min=0.0, max=1.0, step=0.01),
                io.Int.Input("steps", default=0, min=0, max=10000),
                io.Combo.Input("probe_model", options=folder_paths.get_filename_list("probe_models")),
                io.Boolean.Input("fail", default=False, optional=True),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, size, value, steps, probe_model, fail=False) -> io.NodeOutput:
        folder_paths.get_full_path_or_raise("probe_models", probe_model)
        if fail:
            raise RuntimeError("probe failure requested")
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(0.02)
            bar.update(1)
        return io.NodeOutput(torch.full((1, size, size, 3), float(value)))


class ProbeExtension(ComfyExtension):
    async def get_node_list(self):
        return [SolidImage]


async def comfy_entrypoint():
    return ProbeExtension()
'''


_comfyui_or_skip = ch.require_comfyui


@pytest.fixture(scope="module")
def probe_pack(tmp_path_factory) -> Path:
    pack = tmp_path_factory.mktemp("probe_pack") / "harness_probe"
    pack.mkdir()
    (pack / "__init__.py").write_text(textwrap.dedent(PROBE_PACK))
    return pack


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("comfy_models")
    (root / "probe_models").mkdir()
    (root / "probe_models" / PROBE_MODEL).write_bytes(b"probe")
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / TINY_CHECKPOINT).write_bytes(b"not read by these tests")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, probe_pack, models_dir):
    _comfyui_or_skip()
    base = tmp_path_factory.mktemp("comfy_base")
    comfy = ch.ComfyServer(
        base,
        models_dir=models_dir,
        custom_nodes={"harness_probe": probe_pack, ch.PACK_DIR_NAME: ch.REPO_ROOT},
    )
    with comfy:
        print(f"ComfyUI start-up: {comfy.startup_seconds:.1f} s")
        yield comfy


def probe_graph(prefix: str, *, value: float = 0.5, steps: int = 0, size: int = 32, save: str = "SaveImage") -> dict:
    inputs = {"images": ["1", 0]}
    if save == "SaveImage":
        inputs["filename_prefix"] = prefix
    return {
        "1": {
            "class_type": PROBE_NODE,
            "inputs": {"size": size, "value": value, "steps": steps, "probe_model": PROBE_MODEL},
        },
        "2": {"class_type": save, "inputs": inputs, "_meta": {"title": "out"}},
    }


# --------------------------------------------------------------------- server
def test_comfyui_starts_with_the_probe_pack_imported(server):
    assert server.alive()
    assert not [line for line in server.import_failed() if "harness_probe" in line], server.log_tail()
    assert server.pack_nodes("harness_probe") == [PROBE_NODE]
    assert "ComfyUI version: 0.3.75" in server.log_text() or os.environ.get("COMFYUI_PATH")


def test_probe_node_is_in_object_info_with_its_pack_registered_model_folder(server):
    info = server.object_info()
    assert PROBE_NODE in info
    assert "SaveImage" in info
    options = info[PROBE_NODE]["input"]["required"]["probe_model"]
    # V3 combos answer either [[options], {...}] or ["COMBO", {"options": [...]}]
    listed = options[0] if isinstance(options[0], list) else options[1]["options"]
    assert listed == [PROBE_MODEL]
    assert server.object_info(PROBE_NODE)["display_name"] == "Harness probe: solid image"


def test_standard_model_folders_resolve_inside_the_given_models_dir(server):
    ckpt = server.object_info("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0]
    assert TINY_CHECKPOINT in ckpt


def test_a_two_node_graph_runs_through_prompt_and_saves_an_image(server):
    entry = server.run(probe_graph("harness/run", value=0.25))
    files = server.output_images(entry)
    assert len(files) == 1 and files[0].is_file()
    assert files[0].parent == server.output_dir / "harness"
    pixels = np.asarray(Image.open(files[0]))
    assert pixels.shape == (32, 32, 3)
    assert np.all(pixels == 63)  # SaveImage truncates: 0.25 * 255 = 63.75


def test_preview_images_are_found_under_temp(server):
    entry = server.run(probe_graph("", value=0.75, save="PreviewImage"))
    assert server.output_images(entry) == []
    files = server.output_images(entry, kinds=("temp",))
    assert len(files) == 1 and files[0].is_file() and server.temp_dir in files[0].parents


def test_a_bad_graph_is_rejected_with_node_errors(server):
    bad = probe_graph("harness/bad", size=100000)
    with pytest.raises(ch.PromptRejected) as rejected:
        server.queue_prompt(bad)
    assert rejected.value.status == 400
    assert set(rejected.value.node_errors) == {"1"}
    errors = rejected.value.node_errors["1"]["errors"]
    assert errors and errors[0]["type"] == "value_bigger_than_max"
    assert rejected.value.body["error"]["type"] == "prompt_outputs_failed_validation"


def test_an_unknown_node_type_is_rejected(server):
    graph = probe_graph("harness/unknown")
    graph["1"]["class_type"] = "HarnessProbe_DoesNotExist"
    with pytest.raises(ch.PromptRejected) as rejected:
        server.queue_prompt(graph)
    assert "HarnessProbe_DoesNotExist" in str(rejected.value.body)


def test_an_uploaded_image_loads_back_pixel_exact(server, tmp_path):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    source = tmp_path / "harness_upload.png"
    Image.fromarray(pixels).save(source)
    name = server.upload_image(source)
    assert (server.input_dir / name).is_file()
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness/upload"}},
    }
    (saved,) = server.output_images(server.run(graph))
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), pixels)


def test_the_websocket_streams_progress_and_the_end_of_a_prompt(server):
    with server.watch() as ws:
        prompt_id = server.queue_prompt(probe_graph("harness/progress", steps=5, value=0.1), ws.client_id)
        ws.wait_done(prompt_id, timeout=60)
        entry = server.wait(prompt_id)
    assert [(value, top) for value, top, _node in ws.progress(prompt_id)] == [(i, 5) for i in range(1, 6)]
    assert {node for _, _, node in ws.progress(prompt_id)} == {"1"}
    executed = ws.of_type("executed", prompt_id)
    assert [d["node"] for d in executed] == ["2"]
    assert entry["status"]["status_str"] == "success"


def test_interrupt_stops_a_running_prompt(server):
    with server.watch() as ws:
        prompt_id = server.queue_prompt(probe_graph("harness/interrupt", steps=5000, value=0.2), ws.client_id)
        ws.wait_for(lambda m: m["type"] == "progress" and m["data"].get("prompt_id") == prompt_id, timeout=60)
        started = time.monotonic()
        server.interrupt()
        with pytest.raises(ch.PromptExecutionError) as failed:
            server.wait(prompt_id, timeout=60)
    assert failed.value.interrupted
    assert time.monotonic() - started < 30  # 5000 steps would take 100 s
    assert server.output_images(failed.value.entry) == []


def test_an_error_inside_a_node_is_raised_with_the_node_and_message(server):
    graph = probe_graph("harness/error", value=0.3)
    graph["1"]["inputs"]["fail"] = True
    prompt_id = server.queue_prompt(graph)
    with pytest.raises(ch.PromptExecutionError, match="HarnessProbe_SolidImage.*probe failure requested") as failed:
        server.wait(prompt_id, timeout=60)
    assert not failed.value.interrupted
    entry = server.wait(prompt_id, check=False)
    assert entry["status"]["status_str"] == "error"


# --------------------------------------------------------------------- this pack
def test_this_pack_loads_in_comfyui_without_import_failure(server):
    init = (ch.REPO_ROOT / "__init__.py").read_text()
    if "comfy_entrypoint" not in init and "NODE_CLASS_MAPPINGS" not in init:
        pytest.skip("the pack's root __init__.py exposes no ComfyUI nodes yet")
    failed = [line for line in server.import_failed() if ch.PACK_DIR_NAME in line]
    assert not failed, "\n".join(server.log_mentions(ch.PACK_DIR_NAME))
    assert server.pack_nodes(ch.PACK_DIR_NAME), "the pack registered no nodes"


# --------------------------------------------------------------------- graph comparison
def test_normalise_api_graph_ignores_node_ids_and_meta():
    a = {
        "4": {"class_type": "LoadImage", "inputs": {"image": "a.png"}, "_meta": {"title": "A"}},
        "7": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
        "12": {"class_type": "SaveImage", "inputs": {"filename_prefix": "y", "images": ["7", 0]}},
    }
    b = {
        "1": {"class_type": "SaveImage", "inputs": {"images": ["30", 0], "filename_prefix": "y"}},
        "20": {"class_type": "LoadImage", "inputs": {"image": "a.png"}, "_meta": {"title": "renamed"}},
        "30": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "5": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["20", 0]}},
    }
    assert ch.normalise_api_graph(a) == ch.normalise_api_graph(b)
    norm = ch.normalise_api_graph(a)
    assert set(norm) == {"1", "2", "3", "4"}
    assert all("_meta" not in node for node in norm.values())
    assert all(norm[link[0]]["class_type"] == "LoadImage" for link in (n["inputs"].get("images") for n in norm.values()) if link)


def test_normalise_api_graph_tells_different_graphs_apart():
    a = probe_graph("p", value=0.5)
    b = probe_graph("p", value=0.5)
    b["2"]["inputs"]["filename_prefix"] = "q"
    c = probe_graph("p", value=0.5)
    c["2"]["inputs"]["images"] = ["1", 1]
    assert ch.normalise_api_graph(a) != ch.normalise_api_graph(b)
    assert ch.normalise_api_graph(a) != ch.normalise_api_graph(c)
    with pytest.raises(ValueError, match="cycle"):
        ch.normalise_api_graph({"1": {"class_type": "X", "inputs": {"a": ["2", 0]}},
                                "2": {"class_type": "X", "inputs": {"a": ["1", 0]}}})


def test_comfyui_path_names_the_install_command_when_absent(monkeypatch, tmp_path):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(ch.ComfyServerError, match="install_comfyui.sh"):
        ch.comfyui_path()


# --------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def page(server):
    """One graph editor for the module's browser tests (the frontend takes seconds to load)."""
    ok, why = ch.browser_available()
    if not ok:
        if IN_CI:
            pytest.fail(f"CI must run the browser tests: {why}")
        pytest.skip(why)
    with ch.browser_page(server) as editor:
        yield editor


def ui_probe_workflow(prefix: str) -> dict:
    return {
        "last_node_id": 9,
        "last_link_id": 3,
        "nodes": [
            {
                "id": 5, "type": PROBE_NODE, "pos": [60, 80], "size": [320, 160], "flags": {}, "order": 0,
                "mode": 0, "inputs": [], "properties": {},
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [3], "slot_index": 0}],
                "widgets_values": [48, 0.75, 0, PROBE_MODEL],
            },
            {
                "id": 9, "type": "SaveImage", "pos": [440, 80], "size": [320, 300], "flags": {}, "order": 1,
                "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 3}], "outputs": [],
                "properties": {}, "widgets_values": [prefix],
            },
        ],
        "links": [[3, 5, 0, 9, 0, "IMAGE"]],
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def test_the_graph_editor_reports_missing_node_types(page):
    workflow = ui_probe_workflow("harness/missing")
    workflow["nodes"][0]["type"] = "HarnessProbe_NotInstalled"
    ch.load_workflow(page, workflow)
    assert ch.missing_node_types(page) == ["HarnessProbe_NotInstalled"]
    dialog = ch.missing_nodes_dialog(page)
    assert dialog is not None and "HarnessProbe_NotInstalled" in dialog
    assert [n["type"] for n in ch.nodes_with_errors(page)] == ["HarnessProbe_NotInstalled"]
    ch.screenshot(page, name="comfy_harness_missing_nodes")


def test_the_graph_editor_loads_a_workflow_and_runs_it(server, page):
    twin = {  # the committed-API-twin shape, with other ids; the editor also writes optional widgets
        "1": {
            "class_type": PROBE_NODE,
            "inputs": {"size": 48, "value": 0.75, "steps": 0, "probe_model": PROBE_MODEL, "fail": False},
        },
        "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "harness/browser", "images": ["1", 0]}},
    }
    ch.load_workflow(page, ui_probe_workflow("harness/browser"))  # also closes an earlier dialog
    assert ch.missing_nodes_dialog(page) is None
    assert ch.missing_node_types(page) == []
    assert ch.nodes_with_errors(page) == []
    api = ch.graph_to_prompt(page)
    assert set(api) == {"5", "9"}
    assert ch.normalise_api_graph(api) == ch.normalise_api_graph(twin)
    assert sorted(n["type"] for n in ch.export_workflow(page)["nodes"]) == sorted([PROBE_NODE, "SaveImage"])
    prompt_id = ch.queue_from_page(page)
    entry = server.wait(prompt_id, timeout=60)
    (saved,) = server.output_images(entry)
    assert np.all(np.asarray(Image.open(saved)) == 191)  # 0.75 * 255, truncated
    page.wait_for_timeout(500)  # let the Save Image node show its result
    shot = ch.screenshot(page, name="comfy_harness_graph_editor")
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert ch.ARTIFACTS_DIR in shot.parents
    log = ch.page_log(page)
    assert not log.page_errors, log.page_errors
    assert not log.blocked_requests, log.blocked_requests

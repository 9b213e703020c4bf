"""ComfyUI manages the pack's models (nodes/comfy_memory.py), in a real ComfyUI on the CPU.

A test-only pack beside ours gives ComfyUI's core a model of its own: a random TAESD that core's
VAELoader lists as "taesd" and core's VAEDecode loads with ``load_models_gpu``, as it loads any
VAE. Its nodes report ``comfy.model_management.current_loaded_models`` and play a core node that
needs the memory (``free_memory`` keeping only its own model). On the CPU, load and offload device
are the same, so what is asserted is ComfyUI's bookkeeping: which models it counts as loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import comfy_harness
import tiny_models

WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "model_swap_api.json"  # FLUX.2 klein
PACK_MODULES = {"Flux2Transformer2DModel", "AutoencoderKLFlux2", "Qwen3ForCausalLM",
                "SegformerForSemanticSegmentation"}

PROBE_PACK = '''
"""Test-only: a core model (random TAESD) and nodes that read ComfyUI's memory bookkeeping."""
import hashlib
import os

import torch
from safetensors.torch import save_file

import comfy.model_management as mm
import comfy.taesd.taesd as taesd
import folder_paths

_HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vae_approx")
os.makedirs(_HERE, exist_ok=True)
torch.manual_seed(0)
for name, part in (("encoder", taesd.Encoder), ("decoder", taesd.Decoder)):
    path = os.path.join(_HERE, f"taesd_{name}.safetensors")
    if not os.path.exists(path):
        save_file(part(latent_channels=4).state_dict(), path)
folder_paths.add_model_folder_path("vae_approx", _HERE)


def report(vae):
    models = []
    for loaded in mm.current_loaded_models:
        patcher = loaded.model
        if patcher is None:
            continue
        held = getattr(patcher.model, "module", patcher.model)
        models.append({"class": type(held).__name__, "core": patcher is vae.patcher,
                       "device": str(loaded.device), "loaded": int(patcher.loaded_size())})
    return models


class Report:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VAE",), "nonce": ("INT", {"default": 0, "min": 0, "max": 1 << 30})},
                "optional": {"images": ("IMAGE",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing/memory"

    def run(self, vae, nonce, images=None):
        digest = "" if images is None else hashlib.sha256(images.cpu().numpy().tobytes()).hexdigest()
        return {"ui": {"memory": [{"models": report(vae), "images": digest}]}}


class NeedMemory:
    """What a core node does when its model needs the room: free_memory keeping its own model."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VAE",), "nonce": ("INT", {"default": 0, "min": 0, "max": 1 << 30})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing/memory"

    def run(self, vae, nonce):
        device = mm.get_torch_device()
        unloaded = mm.free_memory(1e30, device, keep_loaded=[mm.LoadedModel(vae.patcher)])
        freed = []
        for loaded in unloaded:
            held = getattr(loaded.model.model, "module", loaded.model.model)
            freed.append({"class": type(held).__name__, "loaded": int(loaded.model.loaded_size())})
        return {"ui": {"memory": [{"models": report(vae), "freed": freed}]}}


NODE_CLASS_MAPPINGS = {"MemoryProbe_Report": Report, "MemoryProbe_NeedMemory": NeedMemory}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir):
    comfy_harness.require_comfyui()
    probe = tmp_path_factory.mktemp("memory_probe") / "memory_probe"
    probe.mkdir()
    (probe / "__init__.py").write_text(textwrap.dedent(PROBE_PACK))
    packs = {"memory_probe": probe, comfy_harness.PACK_DIR_NAME: comfy_harness.REPO_ROOT}
    with comfy_harness.ComfyServer(tmp_path_factory.mktemp("comfy-memory"), models_dir=tiny_models_dir,
                                   custom_nodes=packs) as srv:
        yield srv


HOST_UNIT = """
import sys
sys.path[:0] = [{scripts!r}, "."]
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.model_management as mm
import torch
import _pack
_pack.import_pack()
from comfyui_model_swap.nodes import comfy_memory
from comfyui_model_swap.nodes.pipeline import placement

comfy_memory.install()
comfy_memory.install()
assert isinstance(placement.current(), comfy_memory.ComfyHost)
shared, unet_a, unet_b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(4, 4)
placement.use("cpu", {{"text_encoder": shared, "unet": unet_a}})  # one engine
placement.use("cpu", {{"text_encoder": shared, "unet": unet_b}})  # another sharing its text encoder
loaded = comfy_memory.loaded_pack_modules()
assert len(loaded) == 3 and sum(m is shared for m in loaded) == 1, loaded
patcher = shared.__dict__[comfy_memory.PATCHER_ATTRIBUTE]
assert patcher.model_size() == (8 * 8 + 8) * 4 and patcher.load_device == mm.get_torch_device()
mm.unload_all_models()  # ComfyUI's "Unload models"
assert comfy_memory.loaded_pack_modules() == []
placement.use("cpu", {{"unet": unet_a}})
assert comfy_memory.loaded_pack_modules() == [unet_a]
placement.use("cpu", {{"text_encoder": shared}})
assert shared.__dict__[comfy_memory.PATCHER_ATTRIBUTE] is patcher and len(mm.current_loaded_models) == 2
print("host ok")
"""


def test_comfyui_host_keeps_one_patcher_per_module_and_counts_shared_modules_once():
    """ComfyUI's own modules in a subprocess (its start-up flags are read at import)."""
    comfy_harness.require_comfyui()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if importlib.util.find_spec("torchvision") is None:  # ComfyUI imports it; the harness's stub stands in
        env["PYTHONPATH"] = str(comfy_harness.TORCHVISION_STUB)
    scripts = str(comfy_harness.REPO_ROOT / "scripts")
    done = subprocess.run([sys.executable, "-c", HOST_UNIT.format(scripts=scripts)], cwd=comfy_harness.comfyui_path(),
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and "host ok" in done.stdout, done.stderr[-3000:]


def _core(nonce: int, report: str = "MemoryProbe_Report") -> dict:
    """Core nodes only: load the TAESD, decode an empty latent with it, then ``report``."""
    graph = {
        "m1": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},
        "m2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "m3": {"class_type": "VAEDecode", "inputs": {"samples": ["m2", 0], "vae": ["m1", 0]}},
        "m4": {"class_type": report, "inputs": {"vae": ["m1", 0], "nonce": nonce}},
    }
    if report == "MemoryProbe_Report":
        graph["m4"]["inputs"]["images"] = ["m3", 0]
    return graph


def _pack_run(photo: str, nonce: int, regenerate: str | None = None) -> dict:
    """The default workflow (face crop at 256 px) reporting after FaceRefine, with the core VAE."""
    graph = {k: v for k, v in json.loads(WORKFLOW.read_text()).items() if "SaveImage" not in v["class_type"]}
    refine = next(k for k, v in graph.items() if v["class_type"] == "ModelSwap_FaceRefine")
    for node in graph.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = photo
        if node["class_type"] == "ModelSwap_FaceRefine":
            node["inputs"]["work_size"] = 256
        if node["class_type"] == "ModelSwap_GarmentMask" and regenerate is not None:
            node["inputs"]["regenerate"] = regenerate
    graph["m1"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}}
    graph["m4"] = {"class_type": "MemoryProbe_Report",
                   "inputs": {"vae": ["m1", 0], "nonce": nonce, "images": [refine, 0]}}
    return graph


def _memory(entry: dict) -> dict:
    return entry["outputs"]["m4"]["memory"][0]


def _classes(models: list, core: bool = False) -> set:
    return {m["class"] for m in models if m["core"] == core}


def test_a_pack_run_keeps_core_models_and_comfyui_offloads_the_packs_models_when_a_core_node_needs_memory(
        server, tmp_path):
    assert server.import_failed() == [], server.log_tail()
    Image.fromarray(tiny_models.fashion_photo(128)).save(tmp_path / "memory_model.png")
    photo = server.upload_image(tmp_path / "memory_model.png")

    before = _memory(server.run(_core(1)))["models"]
    assert [m["class"] for m in before if m["core"]] == ["TAESD"]  # core's own VAE, loaded by VAEDecode

    first = _memory(server.run(_pack_run(photo, 2), timeout=600))
    assert [m["class"] for m in first["models"] if m["core"]] == ["TAESD"]  # the pack run evicted nothing
    assert _classes(first["models"]) == PACK_MODULES  # ComfyUI counts the pack's models
    assert all(m["device"] == "cpu" and m["loaded"] > 0 for m in first["models"])

    squeezed = _memory(server.run(_core(3, "MemoryProbe_NeedMemory")))
    assert {m["class"] for m in squeezed["freed"]} == PACK_MODULES  # ComfyUI offloaded exactly ours
    assert all(m["loaded"] == 0 for m in squeezed["freed"])
    assert [m["class"] for m in squeezed["models"]] == ["TAESD"]

    # The same settings written differently: GarmentMask and everything after it run again.
    again = _memory(server.run(_pack_run(photo, 4, regenerate="face,hair,torso,arms,hands,legs,feet"), timeout=600))
    # loaded again for the run; the text encoder only for a new prompt (klein caches prompt embeddings)
    assert _classes(again["models"]) == PACK_MODULES - {"Qwen3ForCausalLM"}
    assert [m["class"] for m in again["models"] if m["core"]] == ["TAESD"]
    assert again["images"] == first["images"] and len(first["images"]) == 64  # the same bytes
    assert np.all([m["loaded"] > 0 for m in again["models"]])

"""README's quick start, from a fresh clone, against the fake hub (tests/fake_hub.py).

A copy of the test ComfyUI gets a ``git clone`` of this repository in ``custom_nodes/``; in the
clone, the quick start's two commands run as README writes them: the installer fills the
empty models folder from the fake hub (HF_ENDPOINT, MODEL_SWAP_PINS), then the headless runner
starts that ComfyUI and swaps the person in the shipped sample photo. The run adds only what
README says a machine without a GPU adds (``-- --cpu``) and, for CI's two cores, a smaller face
working size and fewer steps (``--set``; the tiny test models take minutes at the defaults).
This is the one ComfyUI the installer's tests start.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import comfy_harness as ch
import fake_hub
from comfyui_model_swap.nodes import workflow_runner as wr
from comfyui_model_swap.nodes.pipeline import model_files

ROOT = Path(__file__).resolve().parents[1]
CPU_FLAGS = ["--", "--cpu"]
FAST = ["--set", "ModelSwap_Sampler.steps=2", "--set", "ModelSwap_FaceRefine.work_size=128",
        "--set", "ModelSwap_FaceRefine.steps=2"]


def quick_start_commands() -> list[str]:
    """The indented command lines of README's "Quick start" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start\n", 1)[1].split("\n## ", 1)[0]
    assert "-- --cpu" in section, "README's quick start must say how to run without a GPU"
    return [line.strip() for line in section.splitlines() if line.startswith("    python ")]


def test_quick_start_has_two_commands_an_installer_and_a_headless_run():
    first, second = quick_start_commands()
    assert first.startswith("python scripts/get_models.py")
    assert second.startswith("python scripts/run_workflow.py") and "assets/model.jpg" in second
    assert (ROOT / "assets" / "model.jpg").is_file()


def test_quick_start_from_a_fresh_clone_installs_the_models_and_runs_the_main_job(tiny_models_dir, tmp_path):
    ch.require_comfyui()
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and this repository's history to clone")
    comfy = tmp_path / "ComfyUI"
    source = ch.comfyui_path()
    user_data = {"custom_nodes", "models", "user", "input", "output", "temp", "extra_model_paths.yaml"}

    def skip(folder, names):  # the user's own folders at the top; caches anywhere
        return [n for n in names if (Path(folder) == source and n in user_data) or n == "__pycache__"]

    shutil.copytree(source, comfy, symlinks=True, ignore=skip)
    (comfy / "custom_nodes").mkdir()
    clone = comfy / "custom_nodes" / ch.PACK_DIR_NAME
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{ROOT}", str(clone)], check=True)

    repos, files, pins = fake_hub.repos_from_models(tiny_models_dir, model_files)
    with fake_hub.FakeHub(repos, files) as hub:
        (tmp_path / "pins.json").write_text(json.dumps(
            {k: {**v, **({"url": v["url"].replace("{hub}", hub.url)} if "url" in v else {})} for k, v in pins.items()}))
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0",
                   MODEL_SWAP_PINS=str(tmp_path / "pins.json"), NO_PROXY="127.0.0.1,localhost",
                   PYTHONPATH=os.pathsep.join([str(ch.TORCHVISION_STUB), str(ROOT / "tests" / "netguard")]))
        install, run = (shlex.split(c) for c in quick_start_commands())
        installed = subprocess.run([sys.executable, *install[1:]], cwd=clone, env=env, capture_output=True,
                                   text=True, timeout=600)
        assert installed.returncode == 0, installed.stderr
        default = wr.load_workflow(clone / "workflows" / "api" / "model_swap_api.json")
        assert wr.missing_models(wr.required_models(default), wr.model_folders(comfy)) == []
        assert sum(hub.gets.values()) > 0 and all(n == 1 for n in hub.gets.values())

    done = subprocess.run([sys.executable, *run[1:], *FAST, *CPU_FLAGS], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    (written,) = json.loads(done.stdout.strip().splitlines()[-1])["files"]
    output = clone / written if not Path(written).is_absolute() else Path(written)
    assert output.parent == (clone / "results").resolve() or output.parent == clone / "results"
    result = np.asarray(Image.open(output).convert("RGB"))
    photo = np.asarray(Image.open(clone / "assets" / "model.jpg").convert("RGB"))
    assert result.shape == photo.shape
    assert not np.array_equal(result, photo)  # the person was regenerated (the tiny parser's mask is no
    # garment mask on a real photo, so exact preservation is tests/test_pipeline.py's business)
    assert re.search(r"Models missing", done.stderr) is None

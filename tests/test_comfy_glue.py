"""The ComfyUI adapter helpers, against a stand-in ``folder_paths`` (no ComfyUI needed)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from comfyui_model_swap.nodes import comfy_glue as glue


@pytest.fixture
def folder_paths(tmp_path, monkeypatch):
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    user_ipadapter = str(tmp_path / "elsewhere" / "ipadapter")
    fp.folder_names_and_paths = {"checkpoints": ([str(tmp_path / "models" / "checkpoints")], {".safetensors"}),
                                 "ipadapter": ([user_ipadapter], {".bin"})}
    fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths[name][0])
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    return fp, user_ipadapter


def test_model_folders_are_registered_without_overriding_user_paths(folder_paths):
    fp, user_ipadapter = folder_paths
    glue.register_model_folders()
    glue.register_model_folders()  # idempotent
    paths, exts = fp.folder_names_and_paths["ipadapter"]
    assert paths[0] == user_ipadapter and paths.count(f"{fp.models_dir}/ipadapter") == 1
    assert ".safetensors" in exts and ".bin" in exts
    assert fp.folder_names_and_paths["human_parsing"][0] == [f"{fp.models_dir}/human_parsing"]
    assert fp.folder_names_and_paths["insightface"][0] == [f"{fp.models_dir}/insightface"]


def test_dropdowns_list_installed_folders_and_keep_the_default_name(folder_paths, tmp_path):
    fp, _ = folder_paths
    glue.register_model_folders()
    parsers = tmp_path / "models" / "human_parsing"
    (parsers / "my-parser").mkdir(parents=True)
    (parsers / "my-parser" / "config.json").write_text("{}")
    (parsers / "empty").mkdir()
    found = glue.list_subfolders("human_parsing", "config.json")
    assert found == ["my-parser"]
    assert glue.with_default(found, "fashn-human-parser") == ["fashn-human-parser", "my-parser"]
    assert glue.model_path("human_parsing", "my-parser") == str(parsers / "my-parser")
    assert glue.model_path("human_parsing", "absent") == str(parsers / "absent")


def test_a_missing_optional_dependency_names_the_node_and_the_install_command():
    with pytest.raises(RuntimeError) as e:
        glue.require_module("surely_not_installed_pkg", "Model Swap InsightFace Loader", "insightface>=0.7.3")
    assert "Model Swap InsightFace Loader" in str(e.value) and "pip install insightface>=0.7.3" in str(e.value)


def test_image_tensors_round_trip_exactly_and_keep_the_batch():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (9, 7, 3), dtype=np.uint8) for _ in range(3)]
    t = glue.tensor_from_images(imgs)
    assert tuple(t.shape) == (3, 9, 7, 3) and t.dtype == torch.float32
    back = glue.images_from_tensor(t)
    assert all(np.array_equal(a, b) for a, b in zip(imgs, back))


def test_masks_accept_hw_and_batches_and_reject_a_wrong_count():
    one = torch.ones(5, 6)
    assert [m.shape for m in glue.masks_from_tensor(one, 2)] == [(5, 6), (5, 6)]
    assert len(glue.masks_from_tensor(torch.zeros(3, 5, 6), 3)) == 3
    with pytest.raises(ValueError, match="2 masks for 3 images"):
        glue.masks_from_tensor(torch.zeros(2, 5, 6), 3)

"""The README's headless command: run an exported workflow on an image and write the outputs."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import comfy_harness
import provenance_check as pc
import tiny_models
from comfyui_model_swap.nodes import workflow_runner as wr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import run_workflow  # noqa: E402

PLAIN = ROOT / "workflows" / "api" / "model_swap_api.json"
WITH_REFERENCE = ROOT / "workflows" / "api" / "model_swap_face_reference_api.json"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(tiny_models.fashion_photo(128)).save(folder / "model.jpg.png")
    Image.fromarray(tiny_models.astronaut(128)).save(folder / "face.png")
    return folder


def test_missing_models_stop_at_once_with_the_download_list(tmp_path, photos, capsys):
    code = run_workflow.main([str(WITH_REFERENCE), "--image", str(photos / "model.jpg.png"), "--face-reference",
                              str(photos / "face.png"), "--out", str(tmp_path / "out"), "--server",
                              "http://127.0.0.1:9", "--models-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == wr.EXIT_MISSING_MODELS
    for text in (f"{tmp_path}/diffusion_models/", "flux-2-klein-4b.safetensors", f"{tmp_path}/text_encoders/",
                 "qwen_3_4b.safetensors", f"{tmp_path}/vae/", "flux2-vae.safetensors", f"{tmp_path}/human_parsing/",
                 f"{tmp_path}/facedetection/", "face_detection_yunet_2023mar.onnx", "huggingface.co/Comfy-Org",
                 "scripts/get_models.py"):
        assert text in err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def fake_comfyui(tmp_path):
    """A folder that passes for ComfyUI but whose main.py exits at once (so a started job fails)."""
    folder = tmp_path / "ComfyUI"
    folder.mkdir()
    (folder / "main.py").write_text("import sys\nsys.exit(0)\n")
    return folder


def test_readme_form_with_comfyui_flags_after_double_dash_parses_and_checks_models(fake_comfyui, photos, tmp_path,
                                                                                  capsys):
    """`... --comfyui PATH -- --cpu` (README's form) reaches the models check: exit 3, not argparse's 2."""
    code = run_workflow.main([str(PLAIN), "--image", str(photos / "model.jpg.png"), "--out", str(tmp_path / "out"),
                              "--comfyui", str(fake_comfyui), "--", "--cpu"])
    err = capsys.readouterr().err
    assert code == wr.EXIT_MISSING_MODELS == 3, err
    assert f"{fake_comfyui / 'models' / 'diffusion_models'}/" in err


def test_base_directory_given_to_comfyui_is_where_the_models_are_looked_up(fake_comfyui, photos, tmp_path,
                                                                           tiny_models_dir, capsys):
    base = tmp_path / "base"
    base.mkdir()
    (base / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    code = run_workflow.main([str(PLAIN), "--image", str(photos / "model.jpg.png"), "--out", str(tmp_path / "out"),
                              "--comfyui", str(fake_comfyui), "--", "--cpu", "--base-directory", str(base)])
    err = capsys.readouterr().err
    # the models were found under --base-directory, so the job started; this ComfyUI exits at once
    assert code == wr.EXIT_FAILED == 1, err
    assert "Models missing" not in err and "ComfyUI exited while starting" in err


NO_CUDA_LOG = """Checkpoint files will always be loaded safely.
Traceback (most recent call last):
  File "/opt/ComfyUI/comfy/model_management.py", line 188, in get_torch_device
    return torch.device(torch.cuda.current_device())
  File "/opt/venv/lib/python3.11/site-packages/torch/cuda/__init__.py", line 522, in _lazy_init
    raise AssertionError("Torch not compiled with CUDA enabled")
AssertionError: Torch not compiled with CUDA enabled
"""


def test_comfyui_without_cuda_exits_1_with_the_cpu_hint(fake_comfyui, photos, tmp_path, tiny_models_dir, capsys):
    """A ComfyUI whose start stops where a CPU-only torch stops it (the real log's last lines, as
    ComfyUI 0.3.75 prints them without --cpu): the runner says why and how to run on the CPU."""
    (fake_comfyui / "main.py").write_text(f"import sys\nsys.stdout.write({NO_CUDA_LOG!r})\nsys.exit(1)\n")
    code = run_workflow.main([str(PLAIN), "--image", str(photos / "model.jpg.png"), "--out", str(tmp_path / "out"),
                              "--comfyui", str(fake_comfyui), "--models-dir", str(tiny_models_dir)])
    err = capsys.readouterr().err
    assert code == wr.EXIT_FAILED == 1
    (line,) = err.strip().splitlines()
    assert "no usable CUDA GPU" in line and "-- --cpu" in line and "comfyui-run-" in line


def test_a_real_comfyui_on_a_torch_without_cuda_gets_the_cpu_hint(tmp_path, monkeypatch):
    """The real ComfyUI started as a user would without `-- --cpu`, on this CPU-only torch."""
    import torch

    comfy_harness.require_comfyui()
    if torch.cuda.is_available():
        pytest.skip("torch has CUDA here: ComfyUI starts without --cpu (the fake ComfyUI above covers the message)")
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    monkeypatch.setenv("PYTHONPATH", str(comfy_harness.TORCHVISION_STUB))
    runner = wr.LocalComfy(comfy_harness.comfyui_path(), ["--base-directory", str(base), "--front-end-root",
                                                          str(base), "--database-url", "sqlite:///:memory:"])
    with pytest.raises(wr.WorkflowError, match="Torch not compiled with CUDA enabled") as failure:
        with runner:
            pass
    assert "-- --cpu" in str(failure.value)


@pytest.mark.parametrize("last_line, fix", [
    ("OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8188): address already in use",
     "port 8188 is already in use"),
    ("ModuleNotFoundError: No module named 'yaml'", "-m pip install pyyaml"),
    ("ModuleNotFoundError: No module named 'torchsde._brownian'", "-m pip install torchsde"),
    ("RuntimeError: something else", "RuntimeError: something else"),
])
def test_other_startup_failures_say_their_fix(last_line, fix, tmp_path):
    log = f"Traceback (most recent call last):\n  File \"main.py\", line 1\n{last_line}\n"
    said = wr.diagnose_startup(log, "/venv/bin/python", tmp_path)
    assert fix in said
    if "pip install" in fix:
        assert f"-m pip install -r {tmp_path / 'requirements.txt'}" in said
    if "port" in fix:
        assert "-- --port" in said


def test_a_port_given_after_the_double_dash_that_is_taken_is_refused_before_starting(fake_comfyui):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(wr.WorkflowError, match=f"port {port} is already in use.*-- --port"):
            with wr.LocalComfy(fake_comfyui, ["--cpu", "--port", str(port)]):
                pass


def test_usage_errors_exit_2(photos, tmp_path, capsys):
    common = ["--out", str(tmp_path / "out"), "--server", "http://127.0.0.1:9"]
    assert run_workflow.main([str(PLAIN), "--image", str(tmp_path / "absent.png"), *common]) == wr.EXIT_USAGE == 2
    assert "--image" in capsys.readouterr().err
    assert run_workflow.main([str(PLAIN), "--image", str(photos / "model.jpg.png"), *common, "--", "--cpu"]) == 2
    assert "need --comfyui" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_workflow.main([str(PLAIN), "--image", str(photos / "model.jpg.png"), "--out", "x"])  # no --server
    assert exc.value.code == 2


def test_installed_models_pass_the_check(tiny_models_dir):
    graph = wr.load_workflow(WITH_REFERENCE)
    assert wr.missing_models(wr.required_models(graph), [tiny_models_dir]) == []
    # FLUX.2 klein's three single files, the human parser, YuNet and SFace
    assert len(wr.required_models(graph)) == 6


def test_the_one_models_check_takes_a_single_file_controlnet_and_extra_model_paths(tmp_path):
    """The runner, the installer and load_pipeline share one check: a ControlNet given as one file counts
    (the loader takes it), and a folder that extra_model_paths.yaml adds is searched."""
    comfy, store = tmp_path / "ComfyUI", tmp_path / "store"
    (comfy / "models" / "controlnet").mkdir(parents=True)
    (comfy / "models" / "controlnet" / "cn-pose.safetensors").write_bytes(b"weights")
    (store / "ipadapter").mkdir(parents=True)
    (store / "ipadapter" / "ip-adapter-faceid_sdxl.bin").write_bytes(b"weights")
    (comfy / "extra_model_paths.yaml").write_text(f"mine:\n  base_path: {store}\n  ipadapter: ipadapter\n")
    graph = {"1": {"class_type": "ModelSwap_PipelineLoader", "inputs": {
        "model": "sd_xl_base_1.0.safetensors", "controlnet": "cn-pose.safetensors",
        "faceid": "ip-adapter-faceid_sdxl.bin", "faceid_lora": "none"}}}
    (line,) = wr.missing_models(wr.required_models(graph), wr.model_folders(comfy))
    assert "sd_xl_base_1.0.safetensors" in line and f"{comfy.resolve() / 'models' / 'checkpoints'}/" in line


def test_overrides_fill_images_seed_count_prompt_and_mode():
    graph = wr.load_workflow(WITH_REFERENCE)
    out = wr.apply_overrides(graph, wr.Overrides(image=Path("x"), seed=9, num_images=3, prompt="a man",
                                                 face_reference_mode="match_base"),
                             {"model": "m.png", "face_reference": "r.png"})
    roles = wr.image_roles(out)
    assert sorted(roles.values()) == ["face_reference", "model"]
    assert {out[n]["inputs"]["image"] for n in roles} == {"m.png", "r.png"}
    sampler = next(n for n in out.values() if n["class_type"] == "ModelSwap_Sampler")["inputs"]
    assert (sampler["seed"], sampler["num_images"], sampler["prompt"]) == (9, 3, "a man")
    assert graph != out  # the loaded workflow itself is untouched


def test_aspect_ratio_reaches_garment_mask_and_a_wrong_one_exits_2_with_the_list(photos, tmp_path, capsys):
    out = wr.apply_overrides(wr.load_workflow(PLAIN), wr.Overrides(image=Path("x"), aspect_ratio="4:5"),
                             {"model": "m.png"})
    assert [n["inputs"]["aspect_ratio"] for n in out.values() if n["class_type"] == "ModelSwap_GarmentMask"] == ["4:5"]
    common = ["--image", str(photos / "model.jpg.png"), "--out", str(tmp_path / "out"), "--server", "http://127.0.0.1:9"]
    assert run_workflow.main([str(PLAIN), *common, "--aspect-ratio", "7:3"]) == wr.EXIT_USAGE
    assert capsys.readouterr().err == ("error: aspect_ratio='7:3' is not a supported aspect ratio: use one of 21:9, 1:1, "
                                       "4:3, 3:2, 2:3, 5:4, 4:5, 3:4, 16:9, 9:16 (width:height), or 'original' to keep "
                                       "the photo's frame.\n")


def test_set_changes_any_widget_and_rejects_what_does_not_exist():
    graph = wr.load_workflow(PLAIN)
    out = wr.apply_overrides(graph, wr.Overrides(image=Path("x"), settings=["ModelSwap_FaceRefine.strength=0.3",
                                                                            "FaceRefine.enabled=false"]),
                             {"model": "m.png"})
    refine = next(n for n in out.values() if n["class_type"] == "ModelSwap_FaceRefine")["inputs"]
    assert refine["strength"] == 0.3 and refine["enabled"] is False
    for bad in ("ModelSwap_FaceRefine.nope=1", "strength=1", "ModelSwap_FaceRefine.job=1"):
        with pytest.raises(wr.WorkflowError, match="--set"):
            wr.apply_overrides(graph, wr.Overrides(image=Path("x"), settings=[bad]), {"model": "m.png"})


def test_a_reference_workflow_without_a_reference_and_the_reverse_are_clear_errors():
    with pytest.raises(wr.WorkflowError, match="--face-reference"):
        wr.apply_overrides(wr.load_workflow(WITH_REFERENCE), wr.Overrides(image=Path("x")), {"model": "m.png"})
    with pytest.raises(wr.WorkflowError, match="model_swap_face_reference_api.json"):
        wr.apply_overrides(wr.load_workflow(PLAIN), wr.Overrides(image=Path("x")),
                           {"model": "m.png", "face_reference": "r.png"})


def test_a_ui_format_or_broken_file_is_refused(tmp_path):
    bad = tmp_path / "ui.json"
    bad.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(wr.WorkflowError, match="API-format"):
        wr.load_workflow(bad)


def test_the_command_runs_a_shipped_workflow_against_a_running_comfyui(tmp_path, photos, tiny_models_dir, capsys):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models, symlinks=True)
    chain = pc.make_chain(tmp_path / "c2pa")  # ComfyUI signs C2PA manifests with the test chain
    with comfy_harness.ComfyServer(tmp_path / "comfy", models_dir=models, env=chain.env()) as server:
        code = run_workflow.main([str(WITH_REFERENCE), "--image", str(photos / "model.jpg.png"), "--face-reference",
                                  str(photos / "face.png"), "--seed", "5", "--num-images", "2",
                                  "--set", "ModelSwap_FaceRefine.work_size=256",
                                  "--out", str(tmp_path / "out"), "--server", server.url,
                                  "--models-dir", str(models)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    files = [Path(f) for f in json.loads(captured.out.strip().splitlines()[-1])["files"]]
    assert len(files) == 2 and all(f.parent == tmp_path / "out" and f.is_file() for f in files)
    images = [np.array(Image.open(f).convert("RGB")) for f in files]
    assert images[0].shape == (128, 128, 3) and not np.array_equal(images[0], images[1])
    for seed, f in zip((5, 6), files):  # the files say how they were made: XMP and a valid C2PA manifest
        data = f.read_bytes()
        tags = pc.exif_xmp(data)
        assert tags["XMP-iptcExt:DigitalSourceType"] == pc.COMPOSITE and tags["XMP-modelswap:Seed"] == seed
        assert tags["XMP-modelswap:Engine"] == "flux2_klein" and tags["XMP-modelswap:FaceReference"] is True
        manifest, state = pc.c2pa_manifest(data, chain)
        assert state == "Trusted" and [a["action"] for a in pc.actions(manifest)] == ["c2pa.opened", "c2pa.edited"]

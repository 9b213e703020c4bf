"""scripts/get_models.py against a fake Hugging Face hub on 127.0.0.1 (tests/fake_hub.py).

The hub serves the tiny test models in the published repo layouts (HF_ENDPOINT points at it)
and insightface's zip (MODEL_SWAP_PINS points the installer at it, with its SHA-256). Each test
runs the installer as a user does, in its own process, and checks the models folder and what the
hub was asked for. README's quick start runs, command for command, in tests/test_quickstart.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fake_hub
from comfyui_model_swap.nodes import workflow_runner as wr
from comfyui_model_swap.nodes.pipeline import model_files

ROOT = Path(__file__).resolve().parents[1]
INSTALLER = ROOT / "scripts" / "get_models.py"
DEFAULT = ROOT / "workflows" / "api" / "model_swap_api.json"
WITH_REFERENCE = ROOT / "workflows" / "api" / "model_swap_face_reference_api.json"
SDXL = ROOT / "workflows" / "api" / "model_swap_sdxl_api.json"  # a diffusers folder (fp16 variant) and a zip
SDXL_WITH_REFERENCE = ROOT / "workflows" / "api" / "model_swap_sdxl_face_reference_api.json"
API_WORKFLOWS = sorted((ROOT / "workflows" / "api").glob("*_api.json"))
NOT_MODELS = {"device", "dtype", "offload"}


@pytest.fixture(scope="module")
def hub(tiny_models_dir, tmp_path_factory):
    repos, files, pins = fake_hub.repos_from_models(tiny_models_dir, model_files)
    with fake_hub.FakeHub(repos, files) as server:
        pins_file = tmp_path_factory.mktemp("pins") / "pins.json"
        pins_file.write_text(json.dumps({k: {**v, **({"url": v["url"].replace("{hub}", server.url)} if "url" in v else {})}
                                         for k, v in pins.items()}))
        server.pins_file = pins_file
        server.home = tmp_path_factory.mktemp("hf-home")
        yield server


def hub_env(hub, **extra) -> dict[str, str]:
    """The environment of a user whose HF_ENDPOINT is the fake hub (no proxies, online)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(hub.home), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
               MODEL_SWAP_PINS=str(hub.pins_file), NO_PROXY="127.0.0.1,localhost")
    env.update(extra)
    return env


def install(hub, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(INSTALLER), *map(str, args)], env=env or hub_env(hub),
                          capture_output=True, text=True, timeout=300)


def loader_values(workflow: Path) -> set[str]:
    """The file or folder names the workflow's loader nodes choose (read straight from the graph)."""
    graph = json.loads(workflow.read_text())
    return {v for node in graph.values() if node["class_type"].endswith("Loader")
            for k, v in node["inputs"].items()
            if isinstance(v, str) and k not in NOT_MODELS and v not in ("none", "auto")}


# ------------------------------------------------------------------------------- no downloads

@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda p: p.stem)
def test_list_names_exactly_the_workflows_loader_choices_with_size_licence_and_target(hub, tmp_path, workflow):
    done = install(hub, "--workflow", workflow, "--list", "--models-dir", tmp_path / "models")
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.strip().splitlines()]
    listed = {r[0] for r in rows}
    graph = json.loads(workflow.read_text())
    assert listed == {name for _, name in wr.required_models(graph)}
    # read straight from the graph: every model file a loader chose is listed (except inputs that a
    # chosen folder makes unused), and nothing else but the fixed files of loaders without a choice
    chosen = loader_values(workflow) & {s.name for s in model_files.MODELS.values()}
    covered = {node["inputs"][c.split(".", 1)[1]] for node in graph.values() for v in node["inputs"].values()
               for s in model_files.MODELS.values() if s.name == v
               for c in s.covers if c.split(".", 1)[0] in node["class_type"]}
    fixed = {model_files.MODELS[k].name for node in graph.values() for k in model_files.keys_for_node(node["class_type"])}
    assert chosen - covered <= listed <= loader_values(workflow) | fixed
    for name, size, licence, target, state in rows:
        spec = next(s for s in model_files.MODELS.values() if s.name == name)
        assert (size, licence, state) == (spec.size, spec.licence, "missing")
        assert Path(target) == tmp_path / "models" / spec.folder / name
    assert sum(hub.gets.values()) == 0


def test_one_function_says_which_models_a_graph_needs_from_the_registry():
    graph = {"1": {"class_type": "ModelSwap_KleinLoader", "inputs": {
                 "model": "flux-2-klein-4b.safetensors", "text_encoder": "qwen_3_4b.safetensors",
                 "vae": "flux2-vae.safetensors", "device": "auto"}},
             "2": {"class_type": "ModelSwap_OpenCVFaceLoader", "inputs": {"det_size": 640}},
             "3": {"class_type": "ModelSwap_KleinLoader", "inputs": {
                 "model": "FLUX.2-klein-4B", "text_encoder": "qwen_3_4b.safetensors", "vae": "flux2-vae.safetensors"}},
             "4": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux-2-klein-4b.safetensors"}},
             "5": {"class_type": "ModelSwap_PipelineLoader", "inputs": {
                 "model": "my_sdxl.safetensors", "faceid": "ip-adapter-faceid-plusv2_sdxl.bin", "faceid_lora": "auto"}}}
    assert wr.required_models(graph) == [
        ("flux2_klein_transformer", "flux-2-klein-4b.safetensors"), ("flux2_klein_text_encoder", "qwen_3_4b.safetensors"),
        ("flux2_vae", "flux2-vae.safetensors"), ("yunet", "face_detection_yunet_2023mar.onnx"),
        ("sface", "face_recognition_sface_2021dec.onnx"), ("flux2_klein", "FLUX.2-klein-4B"),  # its own TE and VAE
        ("sdxl_checkpoint", "my_sdxl.safetensors"), ("faceid_plusv2", "ip-adapter-faceid-plusv2_sdxl.bin")]


def test_engine_lists_its_default_set(hub, tmp_path):
    for engine in model_files.ENGINES:
        done = install(hub, "--engine", engine, "--list", "--models-dir", tmp_path)
        assert done.returncode == 0, done.stderr
        names = {line.split("\t")[0] for line in done.stdout.strip().splitlines()}
        assert names == {s.name for s in model_files.MODELS.values() if engine in s.engines} and names


def test_usage_errors_exit_2_and_say_what_to_fix(hub, tmp_path):
    done = install(hub, "--workflow", tmp_path / "nope.json", "--models-dir", tmp_path)
    assert done.returncode == 2 and "no such file" in done.stderr
    done = install(hub, "--model", "no_such_model", "--models-dir", tmp_path)
    assert done.returncode == 2 and "known keys" in done.stderr
    done = install(hub, "--engine", "sd15")
    assert done.returncode == 2


def test_model_folders_follow_base_directory_and_extra_model_paths(tmp_path):
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "extra_model_paths.yaml").write_text(
        "mine:\n  base_path: ../store\n  is_default: true\n  diffusers: big/diffusers\n"
        "  clip: |\n    te_a\n    te_b\nother:\n  insightface: /abs/insightface\n")
    folders = wr.model_folders(comfy)
    assert folders.roots == [comfy.resolve() / "models"]
    assert folders.target("diffusers") == tmp_path / "store" / "big" / "diffusers"
    assert folders.dirs("text_encoders")[:2] == [tmp_path / "store" / "te_b", tmp_path / "store" / "te_a"]
    assert folders.dirs("insightface/models") == [comfy.resolve() / "models/insightface/models",
                                                  Path("/abs/insightface/models")]
    based = wr.model_folders(comfy, ["--cpu", "--base-directory", str(tmp_path / "base")])
    assert based.target("ipadapter") == tmp_path / "base" / "models" / "ipadapter"
    extra = tmp_path / "more.yaml"
    extra.write_text("x:\n  loras: /l\n")
    assert Path("/l") in wr.model_folders(comfy, ["--extra-model-paths-config", str(extra)]).dirs("loras")


# ------------------------------------------------------------------------------- downloads

def test_fresh_folder_ends_complete_and_a_second_run_downloads_nothing(hub, tmp_path):
    models = tmp_path / "models"
    hub.gets.clear()
    done = install(hub, "--workflow", SDXL_WITH_REFERENCE, "--models-dir", models, "--accept-non-commercial")
    assert done.returncode == 0, done.stderr
    graph = wr.load_workflow(SDXL_WITH_REFERENCE)
    assert wr.missing_models(wr.required_models(graph), [models]) == []
    assert not (models / ".model-swap-downloads").exists()
    fetched = {path for _, path in hub.gets}
    # only the fp16 weights of the diffusers folder, not the full-precision twins the repo also holds
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in fetched
    assert "unet/diffusion_pytorch_model.safetensors" not in fetched
    assert set(hub.gets.values()) == {1}
    zipped = models / "insightface" / "models" / "antelopev2"
    assert sorted(p.name for p in zipped.iterdir()) == ["genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"]

    stamp = {p: p.stat().st_mtime_ns for p in models.rglob("*") if p.is_file()}
    hub.gets.clear()
    again = install(hub, "--workflow", SDXL_WITH_REFERENCE, "--models-dir", models)  # no licence question either
    assert again.returncode == 0, again.stderr
    assert sum(hub.gets.values()) == 0
    assert {p: p.stat().st_mtime_ns for p in models.rglob("*") if p.is_file()} == stamp
    assert "Every model is in place" in again.stderr


def errors(stderr: str) -> list[str]:
    """The installer's error lines; a traceback would fail the test that reads them."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_a_transfer_cut_again_and_again_exits_1_with_one_line_and_the_next_run_fetches_only_the_rest(hub, tmp_path):
    """The hub file and the zip are each cut after a few bytes, then every retry gets nothing: each ends
    in one error line and exit 1, the bytes stay; the next run asks for the rest with a Range request
    and the hub sends exactly the missing bytes (counted by the fake hub)."""
    models = tmp_path / "models"
    weights = ("Comfy-Org/Flux-2-Klein-4B", "split_files/diffusion_models/flux-2-klein-4b.safetensors")
    zipped = ("files", "antelopev2.zip")
    sizes = {weights: len(hub.repos[weights[0]][weights[1]]), zipped: len(hub.files[zipped[1]])}
    hub.cut = {weights: [5000] + [0] * 9, zipped: [7000] + [0] * 9}
    hub.sent.clear()
    hub.ranges.clear()
    args = ("--model", "flux2_klein_transformer", "--model", "antelopev2", "--models-dir", models,
            "--accept-non-commercial")
    try:
        first = install(hub, *args, env=hub_env(hub, MODEL_SWAP_RETRIES="1"))
    finally:
        hub.cut = {}
    assert first.returncode == 1, first.stderr
    lines = errors(first.stderr)
    assert len(lines) == 2 and all("failed" in line and "run the same command again" in line for line in lines)
    assert any("flux-2-klein-4b.safetensors" in line for line in lines) and any("antelopev2" in line for line in lines)
    assert hub.sent == {weights: 5000, zipped: 7000}
    assert not (models / "diffusion_models" / "flux-2-klein-4b.safetensors").exists()

    hub.sent.clear()
    second = install(hub, *args)
    assert second.returncode == 0, second.stderr
    assert hub.sent == {weights: sizes[weights] - 5000, zipped: sizes[zipped] - 7000}
    assert sorted(hub.ranges[-2:]) == sorted([(*weights, 5000), (*zipped, 7000)])
    assert (models / "diffusion_models" / "flux-2-klein-4b.safetensors").read_bytes() == hub.repos[weights[0]][weights[1]]
    assert "resuming" in second.stderr and not (models / ".model-swap-downloads").exists()


def test_a_truncated_file_in_place_is_completed_and_a_longer_one_is_reported(hub, tmp_path):
    models = tmp_path / "models"
    assert install(hub, "--model", "yunet", "--model", "sface", "--models-dir", models).returncode == 0
    yunet = models / "facedetection" / "face_detection_yunet_2023mar.onnx"
    good = yunet.read_bytes()
    yunet.write_bytes(good[:1000])
    hub.sent.clear()
    again = install(hub, "--model", "yunet", "--model", "sface", "--models-dir", models)
    assert again.returncode == 0, again.stderr
    assert "incomplete" in again.stderr and yunet.read_bytes() == good
    assert sum(hub.sent.values()) == len(good) - 1000  # only the missing bytes; sface was not fetched again

    yunet.write_bytes(good + b"more")
    longer = install(hub, "--model", "yunet", "--models-dir", models)
    assert longer.returncode == 3
    (line,) = errors(longer.stderr)
    assert str(yunet) in line and "another file" in line and "Move it aside" in line
    assert yunet.read_bytes() == good + b"more"  # the user's file is left alone


def test_verify_hashes_the_files_in_place_and_fetches_a_damaged_one_again(hub, tmp_path):
    models = tmp_path / "models"
    args = ("--model", "human_parser", "--models-dir", models, "--accept-non-commercial")
    assert install(hub, *args).returncode == 0
    folder = models / "human_parsing" / "fashn-human-parser"
    weights, config = folder / "model.safetensors", folder / "config.json"  # an LFS file and a small git one
    good = {p: p.read_bytes() for p in (weights, config)}
    for path in good:  # same size, other bytes: only a hash can tell
        path.write_bytes(bytes([good[path][0] ^ 1]) + good[path][1:])
    hub.gets.clear()
    plain = install(hub, *args)
    assert plain.returncode == 0 and "complete in" in plain.stderr and sum(hub.gets.values()) == 0
    verified = install(hub, *args, "--verify")
    assert verified.returncode == 0, verified.stderr
    assert "SHA-256" in verified.stderr and "git object id" in verified.stderr
    assert {p: p.read_bytes() for p in good} == good


def test_a_download_of_the_wrong_size_is_removed_with_the_installers_message(hub, tmp_path):
    repo, path = "opencv/face_detection_yunet", "face_detection_yunet_2023mar.onnx"
    hub.corrupt[(repo, path)] = hub.repos[repo][path] + b"trailing bytes"
    try:
        done = install(hub, "--model", "yunet", "--models-dir", tmp_path)
    finally:
        hub.corrupt.clear()
    assert done.returncode == 1
    (line,) = errors(done.stderr)
    assert "is corrupt" in line and "bytes instead of" in line and "it was removed" in line
    assert "force_download" not in done.stderr
    assert not list((tmp_path / ".model-swap-downloads").rglob("*.part"))


def test_closed_stdin_without_the_flag_exits_4_with_the_licence_notice(hub, tmp_path):
    command = [sys.executable, str(INSTALLER), "--model", "faceid", "--models-dir", str(tmp_path)]
    done = subprocess.run(["sh", "-c", '"$@" <&-', "sh", *command], env=hub_env(hub), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 4, done.stderr
    assert "NON-COMMERCIAL" in done.stderr and "--accept-non-commercial" in done.stderr and "Traceback" not in done.stderr


def test_outside_comfyui_the_installer_says_where_to_point_it_once(hub):
    done = install(hub)  # this checkout is not inside a ComfyUI's custom_nodes/
    assert done.returncode == 2
    (line,) = errors(done.stderr)
    assert line.count("--comfyui PATH/TO/ComfyUI") == 1 and "--models-dir DIR" in line


def test_help_names_the_mirror_settings_and_the_verify_option(hub):
    text = install(hub, "--help").stdout
    for word in ("HF_ENDPOINT", "MODEL_SWAP_PINS", "HF_TOKEN", "HF_HUB_OFFLINE", "MODEL_SWAP_RETRIES", "--verify",
                 "antelopev2"):
        assert word in text


def test_a_corrupted_download_is_detected_and_removed(hub, tmp_path):
    models = tmp_path / "models"
    repo, path = "fashn-ai/fashn-human-parser", "model.safetensors"
    good = hub.repos[repo][path]
    hub.corrupt[(repo, path)] = bytes(b ^ 0xFF for b in good[:64]) + good[64:]
    zipped = hub.files["antelopev2.zip"]
    hub.files["antelopev2.zip"] = zipped[:-10] + b"0123456789"
    try:
        done = install(hub, "--model", "human_parser", "--model", "antelopev2", "--models-dir", models,
                       "--accept-non-commercial")
    finally:
        hub.corrupt.clear()
        hub.files["antelopev2.zip"] = zipped
    assert done.returncode == 1
    assert done.stderr.count(" is corrupt (") == 2 and done.stderr.count("it was removed") == 2
    assert "SHA-256" in done.stderr
    assert not (models / "human_parsing" / "fashn-human-parser" / path).exists()
    assert not (models / "insightface" / "models" / "antelopev2").exists()
    leftovers = [p for p in (models / ".model-swap-downloads").rglob("*") if p.is_file() and "metadata" not in p.name]
    assert [p for p in leftovers if p.suffix in (".part", ".safetensors")] == []
    fixed = install(hub, "--model", "human_parser", "--model", "antelopev2", "--models-dir", models,
                    "--accept-non-commercial")
    assert fixed.returncode == 0, fixed.stderr


def test_a_gated_repo_answers_401_and_the_message_names_hf_token(hub, tmp_path):
    hub.gated.add("h94/IP-Adapter-FaceID")
    try:
        done = install(hub, "--model", "faceid", "--models-dir", tmp_path, "--accept-non-commercial")
    finally:
        hub.gated.clear()
    assert done.returncode == 3
    assert "HF_TOKEN" in done.stderr and "https://huggingface.co/h94/IP-Adapter-FaceID" in done.stderr
    assert not (tmp_path / "ipadapter" / "ip-adapter-faceid_sdxl.bin").exists()


def test_non_commercial_weights_wait_for_the_licence_flag_and_offline_mode_is_respected(hub, tmp_path):
    hub.gets.clear()
    done = install(hub, "--model", "faceid", "--models-dir", tmp_path)
    assert done.returncode == 4
    assert "NON-COMMERCIAL" in done.stderr and "--accept-non-commercial" in done.stderr
    offline = install(hub, "--model", "yunet", "--models-dir", tmp_path, env=hub_env(hub, HF_HUB_OFFLINE="1"))
    assert offline.returncode == 3 and "HF_HUB_OFFLINE" in offline.stderr
    assert sum(hub.gets.values()) == 0

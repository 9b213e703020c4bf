"""scripts/get_models.py with the licence guard: a commercial-only install fetches no non-commercial file.

The fake hub of tests/test_get_models.py serves every tiny model (its fixture is reused), the
selfie segmenter as a plain HTTPS file like insightface's zips (MODEL_SWAP_PINS points there).
"""

from __future__ import annotations

from pathlib import Path

from comfyui_model_swap.nodes import workflow_runner as wr
from comfyui_model_swap.nodes.pipeline import licence_guard, model_files
import test_get_models
from test_get_models import hub_env, install

hub = test_get_models.hub  # the module-scoped fake hub fixture, shared rather than redefined

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"


def _files(models: Path) -> set[str]:
    return {p.relative_to(models).as_posix() for p in models.rglob("*") if p.is_file()
            and ".model-swap-downloads" not in p.parts}


def test_commercial_only_installs_the_licence_clean_workflow_and_leaves_every_non_commercial_file_out(hub, tmp_path):
    models = tmp_path / "models"
    hub.gets.clear()
    # the SDXL face-reference workflow needs the parser, insightface and FaceID (non-commercial) and SDXL (not)
    done = install(hub, "--workflow", WORKFLOWS / "api" / "model_swap_sdxl_face_reference_api.json",
                   "--workflow", WORKFLOWS / "api" / "model_swap_commercial_face_reference_api.json",
                   "--commercial-only", "--models-dir", models)
    assert done.returncode == 4, done.stderr
    needs = wr.required_models(wr.load_workflow(WORKFLOWS / "api" / "model_swap_sdxl_face_reference_api.json"))
    refused = [(k, n) for k, n in needs if model_files.MODELS[k].non_commercial]
    assert {k for k, _ in refused} >= {"human_parser", "antelopev2", "faceid"}
    for key, name in refused:
        assert licence_guard.refusal(key, name, "this is a commercial-only install") in done.stderr
        assert not (models / model_files.MODELS[key].folder / name).exists()
    assert "NON-COMMERCIAL" not in done.stderr  # nothing left to ask about
    fetched = {path for _, path in hub.gets}
    assert "selfie_multiclass_256x256.tflite" in fetched and "antelopev2.zip" not in fetched
    assert not any(path.startswith(("model.safetensors", "ip-adapter")) for path in fetched)
    commercial = wr.load_workflow(WORKFLOWS / "api" / "model_swap_commercial_face_reference_api.json")
    assert wr.missing_models(wr.required_models(commercial), [models]) == []  # the licence-clean pair is complete
    for rel in _files(models):
        spec = next(s for s in model_files.MODELS.values() if rel.startswith(f"{s.folder}/{s.name}"))
        assert not spec.non_commercial, rel


def test_the_environment_switch_makes_any_install_commercial_only(hub, tmp_path):
    hub.gets.clear()
    done = install(hub, "--model", "human_parser", "--model", "yunet", "--models-dir", tmp_path,
                   env=hub_env(hub, MODELSWAP_COMMERCIAL_ONLY="1"))
    assert done.returncode == 4, done.stderr
    assert (tmp_path / "facedetection" / "face_detection_yunet_2023mar.onnx").is_file()
    assert not (tmp_path / "human_parsing").exists()
    assert {path for _, path in hub.gets} == {"face_detection_yunet_2023mar.onnx"}
    bad = install(hub, "--model", "yunet", "--models-dir", tmp_path, env=hub_env(hub, MODELSWAP_COMMERCIAL_ONLY="maybe"))
    assert bad.returncode == 2 and "MODELSWAP_COMMERCIAL_ONLY='maybe'" in bad.stderr

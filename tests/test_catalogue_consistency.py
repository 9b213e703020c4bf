"""Consistency, measured (issue 14, part 5): each output's identity cosine to the set's face in the manifest
(JSON + CSV), the contact sheet and the summary; drifted outputs flagged by the documented rule and listed in
rerun.csv. The real tiny YuNet + SFace (tests/tiny_opencv_faces.py) on the astronaut, where its detector
fires; an analyser double for the outlier rule. Comfy-free and cheap."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import tiny_models
import tiny_opencv_faces as tiny
from comfyui_model_swap.nodes.headless import catalogue as cat
from comfyui_model_swap.nodes.headless import consistency as con
from comfyui_model_swap.nodes.headless import contact_sheet
from comfyui_model_swap.nodes.model_folders import ModelFolders
from comfyui_model_swap.nodes.pipeline import face_opencv
from comfyui_model_swap.nodes.pipeline import face_library as fl


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("consistency_models")
    tiny.build(root / "facedetection")
    return root


def _set(out: Path, rows: list[dict]) -> list[cat.Item]:
    """A made set: items and their manifest records, outputs written as given pictures."""
    out.mkdir(parents=True, exist_ok=True)
    items, manifest = [], cat.Manifest(out)
    for row in rows:
        item = cat.Item(image=out / f"{row['name']}_in.png", name=row["name"])
        items.append(item)
        outputs = []
        for k, picture in enumerate(row.get("pictures", []), start=1):
            Image.fromarray(picture).save(out / f"{row['name']}_{k}.png")
            outputs.append(f"{row['name']}_{k}.png")
        manifest.put(cat.Record(input=str(item.image), name=item.name, status=row.get("status", "ok"),
                                outputs=outputs, seed=row.get("seed", 7), face=row.get("face", ""),
                                face_reference=str(row.get("face_reference", ""))),
                     [i.name for i in items])
    return items


def _records(out: Path) -> dict:
    return {r["name"]: r for r in json.loads((out / "manifest.json").read_text())["photos"]}


def test_the_real_tiny_analyser_measures_the_astronaut_and_reuses_a_saved_faces_stored_embedding(models, tmp_path):
    astronaut = np.ascontiguousarray(tiny_models.astronaut(128))  # the tiny YuNet finds one face in it
    dark = np.random.default_rng(1).integers(0, 20, (128, 128, 3)).astype(np.uint8)  # and none in this
    Image.fromarray(astronaut).save(tmp_path / "ref.png")
    analyser = face_opencv.OpenCVFaceAnalyzer.load(models / "facedetection")
    own = analyser.analyze(astronaut)[0].embedding
    same, other = tmp_path / "lib" / "Same", tmp_path / "lib" / "Other"
    for folder, record in ((same, {"analyzer": "yunet+sface", "embedding": (-own).tolist()}),  # its stored one is used
                           (other, {"analyzer": "buffalo_l", "embedding": [1.0] * 512})):  # another analyser's: not
        folder.mkdir(parents=True)
        Image.fromarray(astronaut).save(folder / fl.PICTURE)
        (folder / fl.RECORD).write_text(json.dumps(record))
    out = tmp_path / "out"
    items = _set(out, [
        {"name": "a", "pictures": [astronaut, dark], "face_reference": tmp_path / "ref.png"},
        {"name": "b", "pictures": [astronaut], "face": "Same", "face_reference": same / fl.PICTURE},
        {"name": "c", "pictures": [astronaut], "face": "Other", "face_reference": other / fl.PICTURE},
        {"name": "d", "status": "error"},
        {"name": "e", "pictures": [dark]},  # made without a face: nothing to measure
    ])
    lines = con.measure_set(out, items, ModelFolders([models]), rerun_hint="python run {csv} --out {out}")
    records = _records(out)
    assert records["a"]["identity"][0] == pytest.approx(1.0, abs=1e-3) and records["a"]["identity"][1] == "no face"
    assert records["b"]["identity"][0] == pytest.approx(-1.0, abs=1e-3)
    assert records["c"]["identity"][0] == pytest.approx(1.0, abs=1e-3)
    assert (records["d"]["identity"], records["e"]["identity"]) == ([], [])
    assert [r["drifted"] for r in records.values()] == [[], ["b_1.png"], [], [], []]  # below the floor 0.363
    assert "Identity to face reference ref.png: 1 outputs, median 1.000, min 1.000, below 0.363 drifted; " \
           "1 with no face" in lines
    assert "1 drifted: b_1.png -1.000" in lines
    rerun = out / con.RERUN_CSV
    assert f"run them: python run {rerun} --out {out / 'rerun'}" in lines[-1]
    assert list(csv.DictReader(rerun.open())) == [
        {"image": str((out / "b_in.png").resolve()), "face": "Same", "face_reference": "", "seed": "8",
         "output": "b_seed8"}]
    with (out / "manifest.csv").open() as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["a"]["identity"].split("; ")[1] == "no face" and rows["b"]["drifted"] == "b_1.png"
    page = contact_sheet.write(out, items).read_text()
    assert "identity: no face" in page and page.count("class='out drifted'") == 1 and "identity 1.000" in page


class _Double:
    """An analyser double: the picture's top-left red value / 100 is its cosine to [1, 0]; 0 is no face."""
    name = "double"

    def analyze(self, image):
        value = int(np.asarray(image)[0, 0, 0])
        if value == 0:
            return []
        cos = min(value / 100.0, 1.0)
        return [SimpleNamespace(embedding=np.array([cos, np.sqrt(1.0 - cos * cos)], np.float32))]


def _picture(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value, np.uint8)


def test_the_outlier_rule_flags_outputs_below_the_median_less_three_mads_or_the_floor(tmp_path, monkeypatch):
    Image.fromarray(_picture(100)).save(tmp_path / "face.png")
    values = [80, 82, 81, 79, 83, 80, 70, 30, 0]  # measured: median 0.80, MAD 0.015, level 0.733; 0.30 < floor
    out = tmp_path / "out"
    items = _set(out, [{"name": f"p{k}", "pictures": [_picture(v)], "face_reference": tmp_path / "face.png",
                        "seed": k} for k, v in enumerate(values)])
    monkeypatch.setattr(con, "load_analyser", lambda folders: (_Double(), None))
    lines = con.measure_set(out, items, ModelFolders([tmp_path]))
    records = _records(out)
    assert [r["identity"] for r in records.values()][:8] == [[pytest.approx(v / 100, abs=1e-4)] for v in values[:8]]
    assert records["p8"]["identity"] == ["no face"] and records["p8"]["drifted"] == []
    assert [n for n, r in records.items() if r["drifted"]] == ["p6", "p7"]
    assert con.threshold([v / 100 for v in values[:8]]) == pytest.approx(0.80 - 3 * 1.4826 * 0.015, abs=1e-4)
    assert "2 drifted: p6_1.png 0.700, p7_1.png 0.300" in lines
    assert [r["seed"] for r in csv.DictReader((out / con.RERUN_CSV).open())] == ["7", "8"]
    # a consistent set: nothing flagged, the stale rerun.csv removed; a small set: only the floor applies
    for k, v in enumerate([80, 82, 81, 79, 83, 80, 79, 81, 0]):
        Image.fromarray(_picture(v)).save(out / f"p{k}_1.png")
    assert not any("drifted:" in line for line in con.measure_set(out, items, ModelFolders([tmp_path])))
    assert not (out / con.RERUN_CSV).exists()
    assert con.drifted([0.9, 0.5, 0.3]) == [False, False, True] and con.threshold([0.9] * 8) == pytest.approx(
        0.9 - 3 * 1.4826 * con.MIN_MAD)


def test_without_the_analysers_models_consistency_is_said_not_measured_once(models, tmp_path):
    out = tmp_path / "out"
    items = _set(out, [{"name": n, "pictures": [_picture(50)], "face": "Anna"} for n in ("a", "b")])
    before = (out / "manifest.json").read_text()
    assert con.measure_set(out, items, None) == [
        "Consistency not measured: the runner has no models folder (give --models-dir with the face analyser's "
        "models, e.g. the ComfyUI's models folder)."]
    lines = con.measure_set(out, items, ModelFolders([tmp_path]))
    assert len(lines) == 1 and "face_detection_yunet_2023mar.onnx" in lines[0] and "not measured" in lines[0]
    assert (out / "manifest.json").read_text() == before
    # the analyser there, but the saved face's picture is not (an --api set without the library)
    assert con.measure_set(out, items, ModelFolders([models])) == [
        "Identity to face 'Anna': not measured, its picture is not in the models folders given (--models-dir)"]
    # with the library's picture (the --api mode finds it in --models-dir): measured, no face in these outputs
    Image.fromarray(np.ascontiguousarray(tiny_models.astronaut(128))).save(tmp_path / "anna.png")
    Image.fromarray(_picture(50)).save(tmp_path / "blank.png")
    assert con.measure_set(out, items, ModelFolders([models]), {"Anna": tmp_path / "anna.png"}) == [
        "Identity to face 'Anna': no face found in its 2 outputs"]
    assert _records(out)["a"]["identity"] == ["no face"]
    assert con.measure_set(out, items, ModelFolders([models]), {"Anna": tmp_path / "blank.png"}) == [
        "Identity to face 'Anna': not measured, the face analyser finds no face in its picture"]
    plain = tmp_path / "plain"  # a set made without any face says nothing
    assert con.measure_set(plain, _set(plain, [{"name": "x", "pictures": [_picture(50)]}]), None) == []

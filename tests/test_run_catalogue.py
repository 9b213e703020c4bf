"""Catalogue runs from one command (issue 14, part 3): scripts/run_catalogue.py over a folder or a CSV,
against a real ComfyUI with the tiny models: results, a clear error for a broken file, a note for a
photo without any person, progress, resume after a kill, manifest and contact sheet."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import comfy_harness
import tiny_models
from comfyui_model_swap.nodes import workflow_runner as wr
from comfyui_model_swap.nodes.headless import catalogue as cat

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run_catalogue.py"
sys.path.insert(0, str(ROOT / "scripts"))
import run_catalogue  # noqa: E402

PLAIN = ROOT / "workflows" / "api" / "model_swap_api.json"
WITH_REFERENCE = ROOT / "workflows" / "api" / "model_swap_face_reference_api.json"
FAST = ["--set", "ModelSwap_FaceRefine.work_size=256", "--set", "ModelSwap_Sampler.steps=1",
        "--set", "ModelSwap_FaceRefine.steps=1"]
SIZES = [(64, 64), (96, 96), (128, 128), (80, 112), (112, 80), (64, 96), (96, 64), (128, 96), (96, 128), (72, 72)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """12 photos: 10 painted models of mixed sizes, one broken file, one with no person in it."""
    folder = tmp_path_factory.mktemp("shoot")
    for i, (w, h) in enumerate(SIZES):
        img = Image.fromarray(tiny_models.fashion_photo(128, seed=i)).resize((w, h), Image.LANCZOS)
        img.save(folder / f"look_{i:02d}.{'png' if i % 2 else 'jpg'}")
    (folder / "look_10_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    empty = np.random.default_rng(3).integers(0, 24, (96, 96, 1)).repeat(3, axis=2).astype(np.uint8)
    Image.fromarray(empty).save(folder / "look_11_empty_studio.png")  # a dark background, nobody in it
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir):
    comfy_harness.require_comfyui()
    base = tmp_path_factory.mktemp("catalogue_comfy")
    with comfy_harness.ComfyServer(base, models_dir=tiny_models_dir) as running:
        yield running


def _history(server) -> dict:
    return server.get_json("/history?max_items=1000")


def _records(out: Path) -> dict:
    return {r["name"]: r for r in json.loads((out / "manifest.json").read_text())["photos"]}


def test_a_set_is_made_killed_halfway_resumed_and_rerun_without_generation(photos, server, tmp_path):
    out = tmp_path / "out"
    command = [str(PLAIN), str(photos), "--out", str(out), "--server", server.url, *FAST]
    before = len(_history(server))
    # 1. killed (SIGKILL: no clean-up at all) once the manifest shows 4 photos done
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    done_at_kill: dict = {}
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "manifest.json").is_file():
            done_at_kill = {n: r for n, r in _records(out).items() if r["status"] in ("ok", "note")}
            if len(done_at_kill) >= 4:
                break
        time.sleep(0.1)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    _, first_err = proc.communicate(timeout=30)
    done_at_kill = {n: r for n, r in _records(out).items() if r["status"] in ("ok", "note")}
    assert 4 <= len(done_at_kill) < 11
    assert "[" in first_err and "/12]" in first_err  # progress lines as it went
    # 2. the same command again finishes the rest
    from io import StringIO

    stream = StringIO()
    code = run_catalogue.main(command, stream=stream)
    said = stream.getvalue()
    assert code == wr.EXIT_FAILED == 1, said  # one photo failed
    records = _records(out)
    assert len(records) == 12
    statuses = {n: r["status"] for n, r in records.items()}
    assert sorted(statuses.values()).count("ok") == 10, statuses
    assert statuses["look_10_broken"] == "error" and statuses["look_11_empty_studio"] == "note"
    broken = records["look_10_broken"]
    assert "look_10_broken.png is not a readable image" in broken["error"] and "replace or remove it" in broken["error"]
    assert broken["outputs"] == [] and broken["prompt_id"] == ""  # refused before anything was queued
    assert records["look_11_empty_studio"]["notes"] == [
        "The regenerate mask is empty (no person pixels found): the output equals the input."]
    for name, r in done_at_kill.items():  # the first run's photos were not made again
        assert records[name]["prompt_id"] == r["prompt_id"] and records[name]["finished_at"] == r["finished_at"]
    assert f"12 photos: 10 ok, 1 with a note, 1 failed ({len(done_at_kill)} done before, skipped)" in said, said
    assert "[12/12] 100%" in said and "ETA" in said
    assert re.search(r"look_\d\d: ok \([0-9.]+ s, step \d+/\d+\)", said), said  # ComfyUI's steps, from its websocket
    for (w, h), i in zip(SIZES, range(10)):
        r = records[f"look_{i:02d}"]
        assert r["outputs"] == [f"look_{i:02d}_1.png"] and r["seed"] == 42 and r["seconds"] > 0
        with Image.open(out / r["outputs"][0]) as made:
            assert made.size == (w, h)  # the output keeps each photo's own size
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == sorted(records) and {r["status"] for r in rows} == {"ok", "note", "error"}
    # every photo the second run made was queued by it once; the kill wasted at most the 2 in flight
    made_now = {r["prompt_id"] for n, r in records.items() if n not in done_at_kill and r["prompt_id"]}
    history = _history(server)
    assert made_now <= set(history) and len(made_now) == 11 - len(done_at_kill)
    assert len(history) - before <= 11 + 2
    # 3. and once more: nothing is generated, the broken file is refused again
    count = len(history)
    stream = StringIO()
    assert run_catalogue.main(command, stream=stream) == 1
    assert len(_history(server)) == count and "(11 done before, skipped)" in stream.getvalue()
    _check_contact_sheet(out, records)


def _check_contact_sheet(out: Path, records: dict) -> None:
    page = (out / "contact_sheet.html").read_text()
    assert page.count("<tr class='photo") == 12 and "http" not in page.replace("charset", "")
    ok, why = comfy_harness.browser_available()
    if not ok:
        if comfy_harness.IN_CI:
            pytest.fail(f"CI must run the browser tests: {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(comfy_harness.CHROMIUM), headless=True,
                                     args=list(comfy_harness.CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            left = []
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
                       else (left.append(route.request.url), route.abort()))
            page.goto((out / "contact_sheet.html").as_uri(), wait_until="load")
            rows = page.eval_on_selector_all("tr.photo", "rows => rows.map(r => r.className)")
            images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth])")
            shot = comfy_harness.screenshot(page, name="catalogue_contact_sheet")
            page.set_viewport_size({"width": 1100, "height": 900})
            page.screenshot(path=str(comfy_harness.ARTIFACTS_DIR / "catalogue_contact_sheet_full.png"), full_page=True)
        finally:
            browser.close()
    assert len(rows) == 12 and sum("error" in r for r in rows) == 1 and sum("note" in r for r in rows) == 1
    assert not left
    # 11 inputs (not the broken one) and 11 outputs, each loaded by the browser
    assert len(images) == 22 and all(width > 0 for _, width in images), images
    assert shot.is_file() and Image.open(shot).size == (1100, 900)


def test_a_csv_manifest_sets_each_rows_seed_prompt_and_name_and_refuses_unknown_columns(photos, tmp_path):
    sheet = tmp_path / "set.csv"
    shutil.copy(photos / "look_00.jpg", tmp_path / "a.jpg")
    sheet.write_text("image,seed,prompt,output\na.jpg,7,a woman,front/view\n" + f"{photos / 'look_01.png'},,,\n")
    items = cat.read_source(str(sheet))
    assert [(i.image, i.seed, i.prompt, i.name) for i in items] == [
        (tmp_path / "a.jpg", 7, "a woman", "front_view"), (photos / "look_01.png", None, None, "look_01")]
    sheet.write_text("image,colour,size\na.jpg,red,2\n")
    with pytest.raises(wr.WorkflowError, match="unknown column.*colour, size.*image, face, face_reference, seed, prompt, "
                                               "aspect_ratio, output"):
        cat.read_source(str(sheet))
    sheet.write_text("image,aspect_ratio\na.jpg,5:9\n")
    with pytest.raises(wr.WorkflowError, match="line 2: aspect_ratio='5:9' is not a supported aspect ratio"):
        cat.read_source(str(sheet))
    sheet.write_text("image,seed\na.jpg,-3\n")
    with pytest.raises(wr.WorkflowError, match="line 2: seed '-3'"):
        cat.read_source(str(sheet))
    assert [i.name for i in cat.read_source(str(photos / "look_0[01].*"))] == ["look_00", "look_01"]  # a glob
    with pytest.raises(wr.WorkflowError, match="not a folder, a .csv manifest or a glob"):
        cat.read_source(str(tmp_path / "nothing*.png"))


def test_usage_errors_exit_2_before_anything_starts(photos, tmp_path, capsys):
    common = ["--out", str(tmp_path / "out"), "--server", "http://127.0.0.1:9"]
    assert run_catalogue.main([str(PLAIN), str(tmp_path / "none"), *common]) == wr.EXIT_USAGE
    assert "not a folder, a .csv manifest or a glob" in capsys.readouterr().err
    assert run_catalogue.main([str(PLAIN), str(photos), *common, "--set", "ModelSwap_Sampler.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert run_catalogue.main([str(PLAIN), str(photos), *common, "--in-flight", "0"]) == 2
    assert not (tmp_path / "out").exists()


def test_the_manifest_is_replaced_whole_and_a_finished_photo_needs_its_outputs(tmp_path):
    item = cat.Item(image=tmp_path / "p.png", name="p")
    manifest = cat.Manifest(tmp_path)
    manifest.put(cat.Record(input=str(item.image), name="p", status="ok", outputs=["p_1.png"]), ["p"])
    assert cat.Manifest(tmp_path).finished(item) is None  # its output is not there
    (tmp_path / "p_1.png").write_bytes(b"x")
    assert cat.Manifest(tmp_path).finished(item).outputs == ["p_1.png"]
    assert cat.Manifest(tmp_path).finished(cat.Item(image=tmp_path / "other.png", name="p")) is None
    assert sorted(os.listdir(tmp_path)) == ["manifest.csv", "manifest.json", "p_1.png"]  # no temporary left


def test_a_set_through_the_fashn_compatible_api(photos, server, tmp_path):
    """--api: the same command sends each photo to POST /v1/run (2 open at once) and saves the outputs."""
    from io import StringIO

    sheet = tmp_path / "set.csv"
    sheet.write_text(f"image,seed,output,aspect_ratio\n{photos / 'look_02.jpg'},11,front,\n"
                     f"{photos / 'look_03.png'},12,side,1:1\n{photos / 'look_10_broken.png'},13,broken,\n")
    out, stream = tmp_path / "api_out", StringIO()
    code = run_catalogue.main([str(sheet), "--api", server.url, "--mode", "fast", "--out", str(out)], stream=stream)
    said = stream.getvalue()
    assert code == 1 and "3 photos: 2 ok, 0 with a note, 1 failed" in said, said
    records = _records(out)
    assert [(records[n]["status"], records[n]["seed"]) for n in ("front", "side", "broken")] == [
        ("ok", 11), ("ok", 12), ("error", 13)]
    assert "look_10_broken.png is not a readable image" in records["broken"]["error"]
    with Image.open(out / "front_1.png") as made, Image.open(photos / "look_02.jpg") as given:
        assert made.size == given.size
    with Image.open(out / "side_1.png") as made:  # the row's marketplace format: 80x112 extended to 1:1
        assert made.width == made.height >= 112
    for name in ("front", "side"):
        status = server.get_json(f"/v1/status/{records[name]['prompt_id']}")
        assert status["status"] == "completed"
    stream = StringIO()  # resumed: nothing sent again
    assert run_catalogue.main([str(sheet), "--api", server.url, "--out", str(out)], stream=stream) == 1
    assert "(2 done before, skipped)" in stream.getvalue()
    assert run_catalogue.main([str(PLAIN), str(sheet), "--api", server.url, "--out", str(out)]) == 2  # no workflow


def test_saved_faces_by_name_and_face_references_by_file_in_one_csv(photos, server, tiny_models_dir, tmp_path,
                                                                    capsys):
    """The CSV's face column takes a saved face of the library (looked up in --models-dir), face_reference a
    picture; a name that is not saved stops the command before anything runs, listing what is saved."""
    from io import StringIO

    library = tmp_path / "more_models"
    saved = library / "modelswap_faces" / "Anna"
    saved.mkdir(parents=True)
    Image.fromarray(tiny_models.astronaut(128)).save(saved / "face.png")
    (saved / "face.json").write_text(json.dumps({"name": "Anna"}))
    Image.fromarray(tiny_models.astronaut(128)).save(tmp_path / "ref.png")
    sheet = tmp_path / "faces.csv"
    sheet.write_text(f"image,face,face_reference,seed\n{photos / 'look_04.jpg'},Anna,,21\n"
                     f"{photos / 'look_05.png'},,ref.png,22\n")
    out, stream = tmp_path / "faces_out", StringIO()
    command = [str(WITH_REFERENCE), str(sheet), "--out", str(out), "--server", server.url, *FAST,
               "--models-dir", str(tiny_models_dir), "--models-dir", str(library)]
    assert run_catalogue.main(command, stream=stream) == 0, stream.getvalue()
    records = _records(out)
    assert (records["look_04"]["face"], Path(records["look_04"]["face_reference"])) == ("Anna", saved / "face.png")
    assert (records["look_05"]["face"], records["look_05"]["face_reference"]) == ("", str(tmp_path / "ref.png"))
    assert all(r["status"] == "ok" and len(r["outputs"]) == 1 for r in records.values())
    # consistency, measured with the tiny YuNet + SFace of --models-dir: its detector sees no face in these
    # tiny-model outputs here (it fires on the astronaut, whose figures test_catalogue_consistency.py checks)
    said = stream.getvalue()
    assert "Identity to face 'Anna'" in said and "Identity to face reference ref.png" in said, said
    assert all(len(r["identity"]) == 1 and (r["identity"][0] == "no face" or -1.0 <= r["identity"][0] <= 1.0)
               for r in records.values()), records  # "no face" on the machines measured; a number is as valid
    sheet.write_text(f"image,face\n{photos / 'look_04.jpg'},Bob\n")
    code = run_catalogue.main([*command[:2], "--out", str(tmp_path / "none"), *command[4:]])
    assert code == wr.EXIT_USAGE and not (tmp_path / "none").exists()
    assert "face 'Bob'" in capsys.readouterr().err

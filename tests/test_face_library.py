"""The face library, comfy-free: names, Create Face's request and analyser check (on tiny klein and the tiny
OpenCV analyser), save -> list -> load, and the provenance of a saved face's picture."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import provenance_check as pc
import saved_faces
import tiny_klein
import tiny_opencv_faces as tiny
from comfyui_model_swap.nodes.pipeline import face_library as fl
from comfyui_model_swap.nodes.pipeline import face_opencv, provenance
from comfyui_model_swap.nodes.pipeline.engines import flux2_klein
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError, NoFaceError
from comfyui_model_swap.nodes.pipeline.identity import FaceInfo
from engine_double import EngineDouble

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BAD_NAMES = ["", "../escape", "..", "a/b", "a\\b", "/etc", ".hidden", "-dash", "name.", "trailing ", "con", "NUL.txt",
             "x" * 65, "tab\tname", "nul\x00", "é", None, 7]


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    return face_opencv.OpenCVFaceAnalyzer.load(tiny.build(tmp_path_factory.mktemp("facedetection")))


@pytest.fixture(scope="module")
def klein(tmp_path_factory):
    return flux2_klein.load(flux2_klein.Files(folder=tiny_klein.build_once(tmp_path_factory)["folder"]), device="cpu")


class OneFace:
    """An analyser double that finds one large face in any picture, its embedding drawn from the pixels."""

    name = "one-face double"

    def analyze(self, image):
        h, w = image.shape[:2]
        emb = np.asarray(image, np.float32)[::8, ::8].reshape(-1)[:16] + 1.0
        return [FaceInfo(bbox=np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.8], np.float32),
                         kps=np.zeros((5, 2), np.float32), det_score=0.9,
                         embedding=(emb / np.linalg.norm(emb)).astype(np.float32),
                         aligned=np.zeros((112, 112, 3), np.uint8))]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_and_traversal_names_are_refused_before_any_file_is_touched(name, tmp_path):
    with pytest.raises(InputValidationError, match="is not allowed"):
        fl.check_name(name)
    with pytest.raises(InputValidationError, match="is not allowed"):
        fl.face_folder([tmp_path], name)
    face = fl.CreatedFace(np.zeros((16, 16, 3), np.uint8), fl.Description(), "p", 1, "e", 4, "a", (1.0,))
    with pytest.raises(InputValidationError, match="is not allowed"):
        fl.save_face([tmp_path / "lib"], name, face)
    assert not (tmp_path / "lib").exists() and not (tmp_path / "escape").exists()


def test_good_names_pass():
    for name in ("Anna", "model 7", "brand_x-summer.2026", "a" * 64, "Console"):
        assert fl.check_name(name) == name


def test_missing_face_names_the_saved_ones_and_a_link_out_of_the_library_is_not_a_face(tmp_path, analyzer):
    lib = tmp_path / "lib"
    saved_faces.save(lib, "Anna", analyzer)
    saved_faces.save(lib, "bob", analyzer)
    with pytest.raises(InputValidationError, match=r"No saved face named 'Carla'.*saved faces: Anna, bob"):
        fl.face_folder([lib], "Carla")
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    for f in (fl.PICTURE, fl.RECORD):
        (outside / "secret" / f).write_bytes((lib / "Anna" / f).read_bytes())
    os.symlink(outside / "secret", lib / "linked")
    assert fl.list_faces([lib]) == ["Anna", "bob"]
    with pytest.raises(InputValidationError, match="No saved face named 'linked'"):
        fl.face_folder([lib], "linked")
    with pytest.raises(InputValidationError, match="no face is saved yet"):
        fl.face_folder([tmp_path / "empty"], "Anna")


def test_create_on_tiny_klein_is_refused_by_the_real_analyser_naming_the_candidate(klein, analyzer):
    # Random weights draw no face the tiny YuNet sees: the check must refuse, naming the candidate and seed.
    with pytest.raises(NoFaceError, match=r"Candidate 1 \(seed 5\): the face analyser found no face"):
        fl.create_faces(klein, analyzer, fl.Description(), seed=5, count=2, size=64)


def test_face_created_on_tiny_klein_saved_listed_and_loaded(klein, tmp_path):
    description = fl.Description(person="man", age_band="thirties", skin_tone="deep brown", ethnicity="Ghanaian",
                                 hair_colour="black", hair_style="short afro", text="freckles")
    faces = fl.create_faces(klein, OneFace(), description, seed=11, count=2, size=64)
    assert [f.seed for f in faces] == [11, 12] and all(f.image.shape == (64, 64, 3) for f in faces)
    assert not np.array_equal(faces[0].image, faces[1].image)  # two seeds, two pictures
    assert faces[0].engine == "flux2_klein" and faces[0].steps == flux2_klein.CAPABILITIES.default_steps
    assert "Ghanaian man in his thirties with deep brown skin and black short afro hair, freckles" in faces[0].prompt
    again = fl.create_faces(klein, OneFace(), description, seed=11, count=1, size=64)
    np.testing.assert_allclose(again[0].image.astype(float), faces[0].image.astype(float), atol=2)  # repeatable

    lib = tmp_path / "faces"
    fl.save_face([lib], "Kofi", faces[1])
    assert fl.list_faces([lib]) == ["Kofi"]
    with pytest.raises(InputValidationError, match="already saved"):
        fl.save_face([lib], "Kofi", faces[0])
    loaded = fl.load_face([tmp_path / "elsewhere", lib], "Kofi")
    np.testing.assert_array_equal(loaded.image, faces[1].image)  # PNG: lossless
    assert loaded.record["seed"] == 12 and loaded.record["engine"] == "flux2_klein"
    assert loaded.record["description"]["hair_style"] == "short afro" and loaded.record["analyzer"] == OneFace.name
    np.testing.assert_allclose(loaded.record["embedding"], faces[1].embedding, rtol=1e-6)
    assert json.loads((lib / "Kofi" / fl.RECORD).read_text())["created"].endswith("+00:00")
    assert sorted(p.name for p in lib.iterdir()) == ["Kofi"]  # no staging folder left
    fl.save_face([lib], "Kofi", faces[0], overwrite=True)
    assert fl.load_face([lib], "Kofi").record["seed"] == 11


def test_saved_picture_is_marked_trained_algorithmic_media_read_by_exiftool(klein, tmp_path):
    face = fl.create_faces(klein, OneFace(), fl.Description(), seed=2, count=1, size=64)[0]
    models = (provenance.ModelUse("flux-2-klein-4b.safetensors", "FLUX.2 klein", "Apache-2.0", False),)
    data = fl.picture_bytes([fl.save_face([tmp_path], "gen", face, models=models).parent], "gen")
    tags = pc.exif_xmp(data)
    assert tags["XMP-iptcExt:DigitalSourceType"] == pc.TRAINED == provenance.TRAINED
    assert (tags["XMP-modelswap:Engine"], tags["XMP-modelswap:Seed"]) == ("flux2_klein", 2)
    assert tags["XMP-modelswap:NonCommercialWeights"] is False
    assert [m["Name"] for m in tags["XMP-modelswap:Models"]] == ["flux-2-klein-4b.safetensors"]


def test_real_analyser_accepts_one_clear_face_and_refuses_two_or_a_small_one(analyzer):
    drawer = saved_faces.FaceDrawer()
    faces = fl.create_faces(drawer, analyzer, fl.Description(person="person", text="grey eyes"), seed=9, count=3,
                            size=saved_faces.SIDE)
    assert len(faces) == 3 and len({f.embedding for f in faces}) == 3  # SFace's own embeddings, one per face
    request = drawer.requests[0]
    assert request.seeds == (9, 10, 11) and request.strength == 1.0
    assert np.all(request.mask == 1.0) and np.all(request.image == request.image[0, 0])  # plain canvas, all redrawn
    assert all(p.startswith(fl.FRAMING) and "grey eyes" in p for p in request.prompts)  # framing first (CLIP: 77)
    assert "facing the camera" in fl.FRAMING and "plain light grey background" in fl.FRAMING
    with pytest.raises(NoFaceError, match=r"Candidate 1 \(seed 9\): the face analyser found 2 faces"):
        fl.create_faces(saved_faces.FaceDrawer(squares=2), analyzer, fl.Description(), 9, 1, size=saved_faces.SIDE)
    with pytest.raises(NoFaceError, match="too small for a face reference"):
        fl.create_faces(saved_faces.FaceDrawer(), analyzer, fl.Description(), 9, 1, size=512)


def test_bad_settings_and_engines_without_text_to_image_are_refused(analyzer):
    with pytest.raises(InputValidationError, match="cannot draw a picture"):
        fl.create_faces(EngineDouble(), analyzer, fl.Description(), 1, 1)
    drawer = saved_faces.FaceDrawer()
    with pytest.raises(InputValidationError, match="count=5"):
        fl.create_faces(drawer, analyzer, fl.Description(), 1, 5)
    with pytest.raises(InputValidationError, match="skin_tone='green'"):
        fl.create_faces(drawer, analyzer, fl.Description(skin_tone="green"), 1, 1)
    with pytest.raises(InputValidationError, match="needs a face analyser"):
        fl.create_faces(drawer, None, fl.Description(), 1, 1)
    assert not drawer.requests  # refused before drawing

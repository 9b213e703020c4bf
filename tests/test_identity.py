"""IdentityEncode: insightface loading from ComfyUI's folder layout, detection, embedding, alignment.

The model packs are tiny synthetic ONNX files (tests/tiny_insightface.py) that the
real insightface ``FaceAnalysis`` routes and runs; their detector reports faces at
known places wherever the image has detail.
"""

from __future__ import annotations

import socket

import cv2
import insightface.data
import numpy as np
import onnxruntime
import pytest
import skimage.data
import tiny_insightface as tiny

from comfyui_model_swap.nodes.pipeline import identity
from comfyui_model_swap.nodes.pipeline.errors import (
    ImageLoadError,
    InputValidationError,
    MissingModelError,
    NoFaceError,
)


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()  # RGB 512x512


@pytest.fixture(scope="module")
def t1_rgb():
    return np.ascontiguousarray(insightface.data.get_image("t1")[:, :, ::-1])  # the file loads as BGR


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    folder = tiny.build_insightface_pack(tmp_path_factory.mktemp("models"), "antelopev2")
    return identity.FaceAnalyzer.load(folder.parents[1], "antelopev2")


@pytest.fixture(scope="module")
def t1_analyzer(tmp_path_factory):
    folder = tiny.build_insightface_pack(tmp_path_factory.mktemp("models"), "antelopev2", faces=tiny.T1_FACES)
    return identity.FaceAnalyzer.load(folder.parents[1])


@pytest.fixture()
def network_attempts(monkeypatch):
    """Record (and refuse) every attempt to resolve or connect to a host."""
    attempts = []

    def refuse(kind):
        def call(*args, **kwargs):
            attempts.append((kind, args[1:] if kind == "connect" else args[:1]))
            raise OSError(f"network use in a test: {kind}")

        return call

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    return attempts


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    ("name", "files"),
    [
        ("antelopev2", {"scrfd_10g_bnkps.onnx", "glintr100.onnx", "genderage.onnx"}),
        ("buffalo_l", {"det_10g.onnx", "w600k_r50.onnx", "genderage.onnx"}),
    ],
)
def test_load_routes_each_file_of_the_pack_through_real_faceanalysis(tmp_path, astronaut, name, files, network_attempts):
    folder = tiny.build_insightface_pack(tmp_path, name)
    assert {p.name for p in folder.iterdir()} == files
    assert folder == tmp_path / "insightface" / "models" / name

    analyzer = identity.FaceAnalyzer.load(tmp_path / "insightface", name)

    routed = {task: type(model).__name__ for task, model in analyzer.app.models.items()}
    assert routed == {"detection": "SCRFD", "recognition": "ArcFaceONNX", "genderage": "Attribute"}
    assert analyzer.providers == ["CPUExecutionProvider"]
    assert len(analyzer.analyze(astronaut)) == 1
    assert network_attempts == []


def test_missing_pack_folder_raises_missing_model_error_naming_folder_pack_and_source(tmp_path, network_attempts):
    root = tmp_path / "insightface"
    root.mkdir()
    with pytest.raises(MissingModelError) as info:
        identity.FaceAnalyzer.load(root, "antelopev2")
    err = info.value
    message = str(err)
    assert err.folder == "models/insightface/models"
    assert err.filename == "antelopev2"
    assert "models/insightface/models" in message and "antelopev2" in message
    assert "scrfd_10g_bnkps.onnx" in message and "glintr100.onnx" in message
    assert err.source and err.source in message
    # insightface was never asked: no download attempt, nothing created.
    assert network_attempts == []
    assert list(root.iterdir()) == []


def test_incomplete_pack_names_the_missing_file(tmp_path):
    folder = tiny.build_insightface_pack(tmp_path, "buffalo_l")
    (folder / "w600k_r50.onnx").unlink()
    with pytest.raises(MissingModelError, match=r"lacks w600k_r50\.onnx") as info:
        identity.FaceAnalyzer.load(folder.parents[1], "buffalo_l")
    assert "buffalo_l.zip" in str(info.value)


def test_corrupt_model_file_raises_missing_model_error_saying_download_again(tmp_path):
    folder = tiny.build_insightface_pack(tmp_path, "antelopev2")
    (folder / "glintr100.onnx").write_bytes(b"an interrupted download")
    with pytest.raises(MissingModelError, match="incomplete or corrupt: download the pack again") as info:
        identity.FaceAnalyzer.load(folder.parents[1])
    assert "glintr100.onnx" in str(info.value)


def test_pack_unzipped_into_a_nested_folder_of_the_same_name_still_loads(tmp_path, astronaut):
    folder = tiny.build_insightface_pack(tmp_path / "build", "antelopev2")
    nested = tmp_path / "insightface" / "models" / "antelopev2" / "antelopev2"
    nested.mkdir(parents=True)
    for f in folder.iterdir():
        f.rename(nested / f.name)
    analyzer = identity.FaceAnalyzer.load(tmp_path / "insightface")
    assert analyzer.folder == nested
    assert len(analyzer.analyze(astronaut)) == 1


def test_load_rejects_a_bad_det_size_and_an_unknown_device(tmp_path):
    folder = tiny.build_insightface_pack(tmp_path, "antelopev2")
    with pytest.raises(InputValidationError, match="multiple of 32"):
        identity.FaceAnalyzer.load(folder.parents[1], det_size=500)
    with pytest.raises(InputValidationError, match="'cpu' or 'cuda'"):
        identity.FaceAnalyzer.load(folder.parents[1], device="tpu")


def test_analyze_creates_no_new_onnx_session_after_load(analyzer, astronaut, monkeypatch):
    created = []
    real = onnxruntime.InferenceSession

    class Counting(real):
        def __init__(self, *args, **kwargs):
            created.append(args[:1])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Counting)
    analyzer.analyze(astronaut)
    analyzer.analyze(astronaut[::-1].copy())
    assert created == []


# --------------------------------------------------------------------------- detection and embedding


def test_astronaut_face_fields_have_documented_shapes_and_unit_norm_embedding(analyzer, astronaut):
    faces = analyzer.analyze(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.bbox.shape == (4,) and face.bbox.dtype == np.float32
    assert face.kps.shape == (5, 2) and face.kps.dtype == np.float32
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5
    assert face.aligned.shape == (112, 112, 3) and face.aligned.dtype == np.uint8
    assert face.det_score == pytest.approx(0.9)
    # RGB pixels of the input: the box and keypoints land on the astronaut's face.
    np.testing.assert_allclose(face.bbox, tiny.expected_box(tiny.ASTRONAUT_FACE, astronaut.shape), atol=1.0)
    np.testing.assert_allclose(face.kps, tiny.expected_kps(tiny.ASTRONAUT_FACE, astronaut.shape), atol=1.0)
    assert face.area == pytest.approx((268 - 178) * (165 - 70), rel=0.02)


def test_t1_group_photo_faces_come_back_largest_first_at_their_positions(t1_analyzer, t1_rgb):
    faces = t1_analyzer.analyze(t1_rgb)
    assert len(faces) == 6
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True) and len(set(areas)) == 6
    expected = [tiny.expected_box(tiny.T1_FACES[i], t1_rgb.shape) for i in tiny.T1_ORDER_BY_AREA]
    for face, box in zip(faces, expected):
        np.testing.assert_allclose(face.bbox, box, atol=1.0)
    assert identity.main_face(faces) is faces[0]
    assert identity.main_face(list(reversed(faces))) is faces[0]
    assert identity.main_face([]) is None


def test_same_image_gives_identical_embedding_and_different_faces_differ(analyzer, t1_analyzer, astronaut, t1_rgb):
    first = analyzer.analyze(astronaut)[0].embedding
    again = analyzer.analyze(astronaut.copy())[0].embedding
    np.testing.assert_array_equal(first, again)

    group = np.stack([f.embedding for f in t1_analyzer.analyze(t1_rgb)])
    cosine = group @ group.T
    off_diagonal = cosine[~np.eye(len(group), dtype=bool)]
    assert off_diagonal.max() < 0.95, cosine.round(3)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # skimage 0.26 deprecates a call inside norm_crop
def test_aligned_crop_equals_the_crop_insightface_feeds_its_recogniser(analyzer, astronaut):
    from insightface.utils import face_align

    face = analyzer.analyze(astronaut)[0]
    theirs = face_align.norm_crop(astronaut, face.kps, image_size=112)
    diff = np.abs(face.aligned.astype(np.int16) - theirs.astype(np.int16))
    assert diff.mean() < 1.0 and diff.max() <= 3


def test_detector_reports_a_face_only_where_the_image_has_detail(analyzer, astronaut):
    grey = np.full((512, 512, 3), 120, np.uint8)
    assert analyzer.analyze(grey) == []
    x1, y1, x2, y2 = tiny.expected_box(tiny.ASTRONAUT_FACE, grey.shape).astype(int)
    patched = grey.copy()
    patched[y1:y2, x1:x2] = astronaut[y1:y2, x1:x2]
    assert len(analyzer.analyze(patched)) == 1
    elsewhere = grey.copy()
    elsewhere[300:500, 300:500] = astronaut[300:500, 300:500]  # detail, but not where the face box is
    assert analyzer.analyze(elsewhere) == []


@pytest.mark.parametrize("shape", [(512, 512, 3), (886, 1280, 3), (700, 300, 3)])
def test_flat_image_has_no_face_and_encode_reference_explains_what_to_give(analyzer, shape):
    flat = np.full(shape, 200, np.uint8)
    assert analyzer.analyze(flat) == []
    with pytest.raises(NoFaceError) as info:
        identity.encode_reference(analyzer, flat)
    message = str(info.value)
    assert message.startswith("No face found in the face reference image")
    assert "one clearly visible face" in message
    assert isinstance(info.value, InputValidationError)


def test_encode_reference_returns_the_largest_face(t1_analyzer, t1_rgb):
    face = identity.encode_reference(t1_analyzer, t1_rgb)
    joey = tiny.expected_box(tiny.T1_FACES[tiny.T1_ORDER_BY_AREA[0]], t1_rgb.shape)
    np.testing.assert_allclose(face.bbox, joey, atol=1.0)
    assert face.embedding.shape == (512,)


def test_encode_reference_accepts_a_float_batch_of_one_and_rejects_a_tiny_image(analyzer, astronaut):
    as_float = (astronaut.astype(np.float32) / 255.0)[None]
    face = identity.encode_reference(analyzer, as_float)
    np.testing.assert_allclose(face.embedding, analyzer.analyze(astronaut)[0].embedding, atol=1e-4)
    with pytest.raises(ImageLoadError, match="too small"):
        identity.encode_reference(analyzer, np.zeros((8, 8, 3), np.uint8))


def test_age_and_sex_filled_with_genderage_model_and_none_without(tmp_path, analyzer, astronaut):
    face = analyzer.analyze(astronaut)[0]
    assert isinstance(face.age, int) and 20 <= face.age <= 40
    assert face.sex == "female"  # the tiny model says female when the crop is redder than blue
    swapped = analyzer.analyze(np.ascontiguousarray(astronaut[:, :, ::-1]))[0]
    assert swapped.sex == "male"

    folder = tiny.build_insightface_pack(tmp_path, "antelopev2", genderage=False)
    bare = identity.FaceAnalyzer.load(folder.parents[1])
    face = bare.analyze(astronaut)[0]
    assert face.age is None and face.sex is None
    assert face.embedding.shape == (512,)


# --------------------------------------------------------------------------- geometry


def _blob_image(shape_hw, centre, sigma=2.5) -> np.ndarray:
    yy, xx = np.mgrid[: shape_hw[0], : shape_hw[1]].astype(np.float32)
    blob = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat(blob[:, :, None], 3, axis=2).astype(np.float32)


def _centroid(image) -> np.ndarray:
    weights = np.asarray(image, dtype=np.float64)[:, :, 0]
    yy, xx = np.mgrid[: weights.shape[0], : weights.shape[1]]
    return np.array([(weights * xx).sum(), (weights * yy).sum()]) / weights.sum()


def _similar(points, angle_deg, scale, shift) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.asarray(points, dtype=np.float64) @ (scale * rot).T + np.asarray(shift, dtype=np.float64)


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift():
    src = tiny.expected_kps(tiny.ASTRONAUT_FACE, (512, 512))
    dst = _similar(src, 23.0, 1.7, (-40.0, 65.0))
    matrix = identity.similarity_transform(src, dst)
    np.testing.assert_allclose(identity.transform_points(matrix, src), dst, atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(matrix[:, :2]), 1.7**2, rtol=1e-6)  # no reflection
    with pytest.raises(InputValidationError, match="one point"):
        identity.similarity_transform(np.ones((5, 2)), dst)


def test_align_face_puts_each_keypoint_on_the_arcface_template_within_a_pixel():
    kps = _similar(identity.ARCFACE_TEMPLATE, -18.0, 2.4, (130.0, 95.0))
    for i, point in enumerate(kps):
        aligned = identity.align_face(_blob_image((480, 520), point), kps)
        assert aligned.shape == (112, 112, 3)
        assert np.linalg.norm(_centroid(aligned) - identity.ARCFACE_TEMPLATE[i]) < 1.0


def test_warp_face_onto_puts_reference_keypoints_on_base_keypoints_within_a_pixel(analyzer, astronaut):
    ref_kps = analyzer.analyze(astronaut)[0].kps
    base_kps = _similar(ref_kps, 12.0, 1.3, (90.0, -30.0))
    out_shape = (600, 700, 3)
    for ref_point, base_point in zip(ref_kps, base_kps):
        warped, valid = identity.warp_face_onto(_blob_image((512, 512), ref_point), ref_kps, base_kps, out_shape)
        assert warped.shape == (600, 700, 3)
        assert np.linalg.norm(_centroid(warped) - base_point) < 1.0
    assert valid.shape == (600, 700) and valid.dtype == np.float32
    # valid is 1 exactly where the output pixel comes from inside the 512x512 reference
    # (away from a one-pixel seam at the reference's edge).
    inverse = cv2.invertAffineTransform(identity.similarity_transform(ref_kps, base_kps))
    yy, xx = np.mgrid[:600, :700]
    source = identity.transform_points(inverse, np.stack([xx.ravel(), yy.ravel()], axis=1)).reshape(600, 700, 2)
    inside = (source >= 1).all(axis=2) & (source <= 510).all(axis=2)
    outside = (source < -1).any(axis=2) | (source > 512).any(axis=2)
    assert inside.any() and outside.any()
    assert valid[inside].min() == 1.0 and valid[outside].max() == 0.0


def test_warp_face_onto_a_shifted_copy_reproduces_the_shifted_photo(astronaut):
    ref_kps = tiny.expected_kps(tiny.ASTRONAUT_FACE, astronaut.shape)
    warped, valid = identity.warp_face_onto(astronaut, ref_kps, ref_kps + (30.0, 20.0), astronaut.shape)
    assert warped.dtype == np.uint8
    np.testing.assert_array_equal(warped[20:, 30:], astronaut[:-20, :-30])
    assert valid[:20].max() == 0.0 and valid[:, :30].max() == 0.0 and valid[20:, 30:].min() == 1.0


def test_onnx_runtime_threads_sleep_after_each_run_so_the_next_stage_gets_the_cores(analyzer):
    """ONNX Runtime's workers spin-wait after a run by default; the engine's sampling right after face
    analysis then shares the CPU with them (FLUX.2 klein's generate stage took 3.5x as long). Every
    session of the analyser is configured not to spin."""
    sessions = [model.session for model in analyzer.app.models.values()]
    assert sessions
    for session in sessions:
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"

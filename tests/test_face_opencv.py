"""OpenCV's YuNet + SFace behind the face-analyser interface, on tiny ONNX models of their shape."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_opencv_faces as tiny
from comfyui_model_swap.nodes.pipeline import face_opencv, identity
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError, MissingModelError, NoFaceError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny.build(tmp_path_factory.mktemp("facedetection"))


@pytest.fixture(scope="module")
def analyzer(folder):
    return face_opencv.OpenCVFaceAnalyzer.load(folder)


def test_face_has_box_keypoints_in_insightface_order_unit_embedding_and_aligned_crop(analyzer):
    # A 32-pixel square at row 3, column 4 of the 32-pixel grid: the tiny YuNet's face is centred on it.
    faces = analyzer.analyze(tiny.face_image(top=96, left=128, size=32))
    assert len(faces) == 1
    face = faces[0]
    np.testing.assert_allclose(face.bbox, [96, 64, 192, 160], atol=0.01)
    np.testing.assert_allclose(face.kps, (tiny.KEYPOINTS + [4, 3]) * 32, atol=0.01)
    left_eye, right_eye, nose, mouth_left, mouth_right = face.kps
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0] and nose[1] < mouth_left[1]
    assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5
    assert face.aligned.shape == (112, 112, 3) and face.aligned.dtype == np.uint8
    assert face.aligned[45:75, 40:72].mean() > 150 > face.aligned[:8].mean()  # the face fills the middle
    assert (face.age, face.sex) == (None, None)
    assert face.det_score == pytest.approx(1.0)
    assert analyzer.name == "yunet+sface"


def test_dark_image_has_no_face_and_encode_reference_says_so(analyzer):
    dark = np.zeros((200, 240, 3), np.uint8)
    assert analyzer.analyze(dark) == []
    with pytest.raises(NoFaceError):
        identity.encode_reference(analyzer, dark)


def test_large_images_are_detected_at_det_size_and_mapped_back_to_their_pixels(folder):
    small = face_opencv.OpenCVFaceAnalyzer.load(folder, det_size=320)
    faces = small.analyze(tiny.face_image(height=1024, width=1280, top=384, left=512, size=128))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].bbox, [384, 256, 768, 640], atol=0.1)
    np.testing.assert_allclose(faces[0].kps, (tiny.KEYPOINTS + [4, 3]) * 128, atol=0.1)


def test_embedding_identifies_the_face(analyzer):
    a1 = identity.encode_reference(analyzer, tiny.face_image(size=32, top=96, left=128, seed=1))
    a2 = identity.encode_reference(analyzer, tiny.face_image(size=32, top=96, left=128, seed=1))
    b = identity.encode_reference(analyzer, tiny.face_image(size=32, top=96, left=128, seed=2))
    np.testing.assert_array_equal(a1.embedding, a2.embedding)
    assert float(a1.embedding @ b.embedding) < 0.9999


def test_missing_and_corrupt_files_name_file_folder_and_source(folder, tmp_path):
    with pytest.raises(MissingModelError) as err:
        face_opencv.OpenCVFaceAnalyzer.load(tmp_path)
    assert (err.value.folder, err.value.filename) == ("models/facedetection", "face_detection_yunet_2023mar.onnx")
    assert err.value.source and err.value.source in str(err.value)

    (tmp_path / tiny.YUNET_NAME).write_bytes((folder / tiny.YUNET_NAME).read_bytes())
    with pytest.raises(MissingModelError) as err:
        face_opencv.OpenCVFaceAnalyzer.load(tmp_path)
    assert err.value.filename == "face_recognition_sface_2021dec.onnx" and "face_recognition_sface" in str(err.value)

    (tmp_path / tiny.SFACE_NAME).write_bytes(b"not an onnx model")
    with pytest.raises(MissingModelError, match="could not load the SFace") as err:
        face_opencv.OpenCVFaceAnalyzer.load(tmp_path)
    assert str(tmp_path / tiny.SFACE_NAME) in str(err.value)


@pytest.mark.parametrize("kwargs", [{"det_size": 10}, {"det_size": "big"}, {"score_threshold": 1.5}, {"device": "tpu"}])
def test_bad_settings_are_refused_with_the_fix(folder, kwargs):
    with pytest.raises(InputValidationError):
        face_opencv.OpenCVFaceAnalyzer.load(folder, **kwargs)

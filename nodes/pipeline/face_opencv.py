"""Licence-clean face analysis: OpenCV's YuNet detector (MIT) and SFace recogniser (Apache-2.0).

:class:`OpenCVFaceAnalyzer` has the interface of insightface's :class:`identity.FaceAnalyzer`
(``analyze(image) -> list[FaceInfo]``, ``folder``, ``name``), so every stage
that finds, aligns or matches faces works with either. Both models are small ONNX files that
``opencv-python`` runs itself (``cv2.FaceDetectorYN``, ``cv2.FaceRecognizerSF``): no onnxruntime,
no insightface. They live in ComfyUI's ``models/facedetection/`` under their published names.

Differences from insightface, which callers handle through the interface:
- the embedding is SFace's 128-d feature (L2-normalised), not a 512-d ArcFace one; compare
  embeddings from one analyser only;
- there is no age/sex model (``age`` and ``sex`` are None), so the
  automatic prompt takes the person from a setting instead of guessing.

YuNet's five landmarks come in the order of the ArcFace template (the first eye is the one on
the image's left), which SFace's own alignment uses too; they are kept in that order.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from . import model_files
from .errors import InputValidationError, MissingModelError
from .identity import ALIGNED_SIZE, FaceInfo, align_face
from .images import as_rgb_uint8

DETECTOR_KEY, RECOGNIZER_KEY = "yunet", "sface"
NAME = "yunet+sface"
SCORE_THRESHOLD = 0.7  # opencv_zoo's demo default for YuNet
NMS_THRESHOLD = 0.3
TOP_K = 5000


def _det_size(det_size) -> int:
    try:
        size = int(det_size)
    except (TypeError, ValueError):
        raise InputValidationError(f"det_size {det_size!r} is invalid; pass an int such as 640.") from None
    if size < 64 or size > 4096:
        raise InputValidationError(f"det_size {size} is invalid; use a long side between 64 and 4096 pixels (640 is standard).")
    return size


def _model(key: str, folder: Path, what: str, factory):
    spec = model_files.MODELS[key]
    path = model_files.require(key, folder / spec.name)
    try:
        return factory(str(path))
    except cv2.error as exc:
        raise MissingModelError(
            f"OpenCV could not load the {what} {path} ({str(exc).strip().splitlines()[-1]}). The file is incomplete "
            f"or not {spec.name}: download it again from {spec.source} into ComfyUI/models/{spec.folder}/.",
            folder=f"models/{spec.folder}", filename=spec.name, source=spec.source) from exc


class OpenCVFaceAnalyzer:
    """YuNet detection, SFace embeddings and ArcFace-template crops, loaded once."""

    name = NAME

    def __init__(self, detector, recognizer, folder: Path, det_size: int, score_threshold: float):
        self.detector = detector
        self.recognizer = recognizer
        self.folder = folder
        self.det_size = det_size
        self.score_threshold = score_threshold

    @classmethod
    def load(cls, folder, device: str = "cpu", det_size=640, score_threshold: float = SCORE_THRESHOLD) -> "OpenCVFaceAnalyzer":
        """Load both models from ``folder`` (ComfyUI's models/facedetection). OpenCV runs them on the
        CPU; ``device`` is accepted for the analyser interface (a 640-pixel detection takes
        milliseconds there)."""
        if str(device or "cpu").lower().split(":")[0] not in ("cpu", "cuda", "auto"):
            raise InputValidationError(f"Device {device!r} is not supported for face analysis; use 'cpu' or 'cuda'.")
        if not 0.0 < float(score_threshold) < 1.0:
            raise InputValidationError(f"score_threshold {score_threshold} is invalid; use a value between 0 and 1 (0.7 is standard).")
        folder = Path(folder)
        size = _det_size(det_size)
        detector = _model(DETECTOR_KEY, folder, "YuNet face detector", lambda p: cv2.FaceDetectorYN.create(
            p, "", (size, size), float(score_threshold), NMS_THRESHOLD, TOP_K))
        recognizer = _model(RECOGNIZER_KEY, folder, "SFace face recogniser", lambda p: cv2.FaceRecognizerSF.create(p, ""))
        return cls(detector, recognizer, folder, size, float(score_threshold))

    def analyze(self, image) -> list[FaceInfo]:
        """Every face in the RGB ``image``, largest bounding box first."""
        rgb = as_rgb_uint8(image, "face image")
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        height, width = bgr.shape[:2]
        scale = min(1.0, self.det_size / float(max(height, width)))
        small = bgr if scale == 1.0 else cv2.resize(
            bgr, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        self.detector.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self.detector.detect(small)
        if rows is None:
            return []
        rows = np.asarray(rows, dtype=np.float32).reshape(-1, 15).copy()
        rows[:, :14] /= scale  # back to the image's pixels
        infos = [self._info(rgb, bgr, row) for row in rows]
        infos.sort(key=lambda f: f.area, reverse=True)
        return infos

    def _info(self, rgb: np.ndarray, bgr: np.ndarray, row: np.ndarray) -> FaceInfo:
        x, y, w, h = (float(v) for v in row[:4])
        kps = row[4:14].reshape(5, 2).astype(np.float32)
        crop = self.recognizer.alignCrop(bgr, row.reshape(1, 15))
        feature = np.asarray(self.recognizer.feature(crop), dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(feature))
        return FaceInfo(
            bbox=np.array([x, y, x + w, y + h], dtype=np.float32),
            kps=kps,
            det_score=float(row[14]),
            embedding=(feature / norm).astype(np.float32) if norm > 0 else feature,
            aligned=align_face(rgb, kps, ALIGNED_SIZE),
            age=None,
            sex=None,
        )

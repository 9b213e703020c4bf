"""IdentityEncode: find faces with insightface, embed them, align them.

:class:`FaceAnalyzer` wraps insightface's ``FaceAnalysis`` on a model pack that
lives in ComfyUI's ``models/insightface/models/<name>/`` folder (antelopev2 or
buffalo_l). It checks the folder first, so a missing pack raises
:class:`MissingModelError` saying what to download and where, and insightface
never tries to download anything. Loading happens once; :meth:`FaceAnalyzer.analyze`
reuses the ONNX Runtime sessions.

Faces come back as :class:`FaceInfo` (RGB image pixels, largest face first)
with an L2-normalised 512-d identity embedding and a 112x112 crop aligned to the
ArcFace template. :func:`warp_face_onto` aligns a reference face onto another
face's keypoints; the FaceRefine stage uses it to match a reference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import model_files
from .errors import InputValidationError, MissingModelError, NoFaceError
from .images import as_rgb_uint8

# The standard ArcFace 5-point template for a 112x112 crop: left eye, right eye,
# nose tip, left mouth corner, right mouth corner (x, y).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ALIGNED_SIZE = 112
KNOWN_PACKS = ("antelopev2", "buffalo_l")
TASKS = ("detection", "recognition", "genderage")  # the 3D/2D landmark models are not needed


@dataclass
class FaceInfo:
    """One detected face, in pixels of the analysed RGB image."""

    bbox: np.ndarray  # float32 (4,): x1, y1, x2, y2
    kps: np.ndarray  # float32 (5, 2): left eye, right eye, nose, left mouth corner, right mouth corner
    det_score: float
    embedding: np.ndarray | None  # float32 (512,), unit L2 norm
    aligned: np.ndarray  # uint8 (112, 112, 3) RGB, aligned to the ArcFace template
    age: int | None = None
    sex: str | None = None  # "female" | "male"

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = (float(v) for v in self.bbox)
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


# --------------------------------------------------------------------------- geometry


def similarity_transform(src_kps, dst_kps) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation) mapping src onto dst.

    Umeyama's closed form; returns a float64 2x3 matrix for ``cv2.warpAffine``.
    """
    src = np.asarray(src_kps, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst_kps, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise InputValidationError(
            f"Keypoint sets of shapes {src.shape} and {dst.shape} cannot be aligned; pass two (N, 2) arrays "
            "of the same N >= 2 (insightface gives 5 points per face)."
        )
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise InputValidationError("Keypoints contain NaN or infinite values; pass finite pixel coordinates.")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var < 1e-12:
        raise InputValidationError(
            "The source keypoints all lie on one point, so no alignment exists; pass the keypoints of a detected face."
        )
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # no reflections
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / src_var)
    matrix = np.zeros((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def transform_points(matrix, points) -> np.ndarray:
    """Apply a 2x3 affine ``matrix`` to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def align_face(image, kps, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Crop ``image`` so the five ``kps`` land on the ArcFace template scaled to ``size`` x ``size``."""
    if size <= 0 or size % 16:
        raise InputValidationError(f"Aligned face size {size} is invalid; use a positive multiple of 16 such as 112.")
    image = np.asarray(image)
    matrix = similarity_transform(kps, ARCFACE_TEMPLATE * (size / float(ALIGNED_SIZE)))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_face_onto(reference_image, ref_kps, base_kps, out_shape) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``reference_image`` so its face keypoints ``ref_kps`` land on ``base_kps``.

    ``out_shape`` is the base image's shape, (H, W[, C]). Returns the warped
    image (H, W, C) in the reference's dtype and a float32 (H, W) validity
    mask in [0, 1]: 1 where the pixel came from inside the reference image,
    0 where the warp left the reference (soft over one pixel at the edge).
    """
    ref = np.asarray(reference_image)
    if ref.ndim not in (2, 3) or ref.shape[0] < 1 or ref.shape[1] < 1:
        raise InputValidationError(f"The reference image has shape {ref.shape}; pass an (H, W, 3) image.")
    height, width = int(out_shape[0]), int(out_shape[1])
    if height < 1 or width < 1:
        raise InputValidationError(f"Output shape {tuple(out_shape)} is empty; pass the base image's (H, W).")
    matrix = similarity_transform(ref_kps, base_kps)
    warped = cv2.warpAffine(ref, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ones = np.ones(ref.shape[:2], dtype=np.float32)
    valid = cv2.warpAffine(ones, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped, np.clip(valid, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- loading


def _session_options():
    """ONNX Runtime sessions whose worker threads sleep when a run ends. By default they spin-wait for
    the next run, and a swap's next stage (the engine's sampling, on the same CPU cores) then shares
    the cores with spinning threads: FLUX.2 klein's generate stage took 3.5x as long right after
    insightface as alone (0.22 s against 0.063 s on the tiny models, 2 cores). Face analysis runs once
    per photo, so waking the threads costs nothing measurable."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _providers(device: str) -> list:
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    device = str(device or "cpu").lower()
    providers: list = []
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in available:
            _, _, index = device.partition(":")
            providers.append(("CUDAExecutionProvider", {"device_id": int(index)}) if index.isdigit() else "CUDAExecutionProvider")
    elif device != "cpu":
        raise InputValidationError(f"Device {device!r} is not supported for face analysis; use 'cpu' or 'cuda'.")
    providers.append("CPUExecutionProvider")
    return providers


def _pack_folder(insightface_root: Path, name: str) -> Path:
    folder = insightface_root / "models" / name
    if name in KNOWN_PACKS:
        spec = model_files.MODELS[name]
        nested = folder / name  # the zip unpacked into a folder of its own name
        if not all((folder / f).is_file() for f in spec.files) and all((nested / f).is_file() for f in spec.files):
            return nested
        return model_files.require(name, folder, name)
    if not folder.is_dir() or not any(folder.glob("*.onnx")):
        spec = model_files.MODELS["antelopev2"]
        raise MissingModelError(
            f"Model not found: no insightface model pack '{name}' with .onnx files at {folder}. Place the pack's "
            f".onnx files in ComfyUI/models/{spec.folder}/{name}/, or choose 'antelopev2' "
            f"(download from {spec.source}).",
            folder=f"models/{spec.folder}",
            filename=name,
            source=spec.source,
        )
    return folder


def _det_size(det_size) -> tuple[int, int]:
    if isinstance(det_size, (int, np.integer)):
        det_size = (int(det_size), int(det_size))
    try:
        width, height = (int(v) for v in det_size)
    except (TypeError, ValueError):
        raise InputValidationError(f"det_size {det_size!r} is invalid; pass an int such as 640 or a (width, height) pair.") from None
    for v in (width, height):
        if v < 64 or v > 4096 or v % 32:
            raise InputValidationError(
                f"det_size {det_size!r} is invalid; each side must be a multiple of 32 between 64 and 4096 (640 is standard)."
            )
    return width, height


class FaceAnalyzer:
    """insightface face detection, recognition and gender/age, loaded once."""

    def __init__(self, app, folder: Path, name: str, providers: list, det_size: tuple[int, int]):
        self.app = app
        self.folder = folder
        self.name = name
        self.providers = providers
        self.det_size = det_size

    @classmethod
    def load(cls, insightface_root, name: str = "antelopev2", device: str = "cpu", det_size=640) -> "FaceAnalyzer":
        """Load the pack at ``<insightface_root>/models/<name>/`` (``insightface_root`` is ComfyUI's models/insightface)."""
        root = Path(insightface_root)
        size = _det_size(det_size)
        folder = _pack_folder(root, name)
        providers = _providers(device)
        try:
            from insightface.app import FaceAnalysis
        except ImportError as exc:
            raise MissingModelError(
                f"The insightface package is not installed ({exc}); run 'pip install insightface onnxruntime' "
                "in ComfyUI's Python environment.",
                filename="insightface",
                source="https://pypi.org/project/insightface/",
            ) from exc
        spec = model_files.MODELS.get(name, model_files.MODELS["antelopev2"])
        try:
            # An existing folder given as ``name`` is used directly: insightface downloads nothing.
            app = FaceAnalysis(name=str(folder.resolve()), root=str(root), providers=providers, allowed_modules=list(TASKS),
                               sess_options=_session_options())
        except Exception as exc:  # onnxruntime's load errors derive from Exception only
            raise MissingModelError(
                f"insightface could not load the model pack in {folder} ({type(exc).__name__}: {exc}). The files are "
                f"incomplete or corrupt: download the pack again and unzip it so the .onnx files sit directly in "
                f"ComfyUI/models/{spec.folder}/{name}/ ({spec.source}).",
                folder=f"models/{spec.folder}",
                filename=name,
                source=spec.source,
            ) from exc
        if "recognition" not in app.models:
            raise MissingModelError(
                f"The insightface pack in {folder} has no recognition model (a .onnx file with a 112x112 input). "
                f"Download the complete pack ({spec.source}) into ComfyUI/models/{spec.folder}/{name}/.",
                folder=f"models/{spec.folder}",
                filename=name,
                source=spec.source,
            )
        app.prepare(ctx_id=0, det_thresh=0.5, det_size=size)
        # insightface builds the detector's fixed-size session on first use; build it now, so that
        # analyze() only runs sessions and never creates one.
        app.det_model.detect(np.zeros((size[1], size[0], 3), dtype=np.uint8))
        return cls(app, folder, name, providers, size)

    def analyze(self, image) -> list[FaceInfo]:
        """Every face in the RGB ``image``, largest bounding box first."""
        rgb = as_rgb_uint8(image, "face image")
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with warnings.catch_warnings():
            # skimage >= 0.26 deprecates the SimilarityTransform.estimate call inside insightface's norm_crop.
            warnings.filterwarnings("ignore", message=".*estimate.* is deprecated", category=FutureWarning)
            faces = self.app.get(bgr)
        infos = [self._info(rgb, f) for f in faces]
        infos.sort(key=lambda f: f.area, reverse=True)
        return infos

    @staticmethod
    def _info(rgb: np.ndarray, face) -> FaceInfo:
        kps = np.asarray(face.kps, dtype=np.float32).reshape(5, 2)
        embedding = None
        if face.embedding is not None:
            emb = np.asarray(face.embedding, dtype=np.float32).reshape(-1)
            norm = float(np.linalg.norm(emb))
            embedding = (emb / norm).astype(np.float32) if norm > 0 else emb
        gender = face.get("gender")
        age = face.get("age")
        return FaceInfo(
            bbox=np.asarray(face.bbox, dtype=np.float32).reshape(4),
            kps=kps,
            det_score=float(face.det_score),
            embedding=embedding,
            aligned=align_face(rgb, kps, ALIGNED_SIZE),
            age=None if age is None else int(age),
            sex=None if gender is None else ("male" if int(gender) == 1 else "female"),
        )


def main_face(faces) -> FaceInfo | None:
    """The face with the largest bounding box, or None when there is none."""
    faces = list(faces or ())
    return max(faces, key=lambda f: f.area) if faces else None


def encode_reference(analyzer: FaceAnalyzer, image) -> FaceInfo:
    """The main (largest) face of the face reference image; NoFaceError when there is none."""
    rgb = as_rgb_uint8(image, "face reference image")
    face = main_face(analyzer.analyze(rgb))
    if face is None:
        h, w = rgb.shape[:2]
        raise NoFaceError(
            f"No face found in the face reference image ({w}x{h}): give a photo with one clearly visible face, "
            "facing the camera, at least about 64 pixels across, not cut off at the edge."
        )
    if face.embedding is None:
        raise MissingModelError(
            f"The insightface pack in {analyzer.folder} produced no identity embedding; it lacks a recognition "
            "model. Download the complete pack again.",
            folder="models/insightface/models",
            filename=analyzer.name,
        )
    return face

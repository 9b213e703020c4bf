"""A ComfyUI-style models folder with every tiny model under its default name, and test photos.

``build_all(root)`` lays out ``root`` exactly like ``ComfyUI/models``:

    diffusers/stable-diffusion-xl-1.0-inpainting-0.1/   tiny SDXL inpaint (diffusers folder)
    human_parsing/fashn-human-parser/                   colour-keyed SegFormer (18 classes)
    insightface/models/antelopev2/                      synthetic SCRFD/ArcFace/genderage ONNX
    ipadapter/ip-adapter-faceid_sdxl.bin (+ plusv2)     tiny IP-Adapter FaceID files
    loras/ip-adapter-faceid_sdxl_lora.safetensors       tiny FaceID LoRA
    clip_vision/...                                     tiny CLIP vision encoder
    mediapipe/selfie_multiclass_256x256.tflite          colour-keyed selfie segmenter (TFLite)

so the pack's real loaders run unchanged. ``fashion_photo`` paints a person in
the parser's palette colours (with texture, so the face detector fires on the
face) and ``back_view_photo`` the same person from behind (hair where the face was;
with ``build_blind_insightface`` the detector finds no face in it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tiny_faceid
import tiny_insightface
import tiny_klein
import tiny_opencv_faces
import tiny_parser
import tiny_sdxl
import tiny_selfie
from comfyui_model_swap.nodes.pipeline.masks import PALETTE
from comfyui_model_swap.nodes.pipeline.parsing import LABEL_IDS

# The synthetic detector's face box (fractions of the longer image side) is the
# astronaut's: the painted photos put their face there.
FACE_BOX = tuple(v / 512 for v in (178, 70, 268, 165))

# (label, y0, y1, x0, x1) in fractions of the side; later rows paint over earlier ones.
_PERSON = (
    ("hair", 0.10, 0.20, 0.32, 0.56),
    ("face", 0.13, 0.33, 0.35, 0.52),
    ("torso", 0.33, 0.38, 0.39, 0.48),
    ("arms", 0.37, 0.66, 0.20, 0.28),
    ("arms", 0.37, 0.66, 0.59, 0.67),
    ("hands", 0.66, 0.72, 0.20, 0.28),
    ("hands", 0.66, 0.72, 0.59, 0.67),
    ("top", 0.37, 0.67, 0.28, 0.59),
    ("pants", 0.67, 0.93, 0.30, 0.57),
    ("feet", 0.93, 0.98, 0.30, 0.57),
    ("bag", 0.55, 0.75, 0.68, 0.80),
)


def _paint(size: int, rows, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.int16)
    img[:] = rng.integers(0, 24, (size, size, 1))  # dark textured background
    for label, y0, y1, x0, x1 in rows:
        ys, xs = slice(int(y0 * size), int(y1 * size)), slice(int(x0 * size), int(x1 * size))
        colour = PALETTE[LABEL_IDS[label]].astype(np.int16)
        region = img[ys, xs]
        noise = rng.integers(-10, 11, region.shape[:2] + (1,))
        img[ys, xs] = np.clip(colour + noise, 0, 255)
    return img.astype(np.uint8)


def fashion_photo(size: int = 128, seed: int = 0) -> np.ndarray:
    """A painted fashion model: face, hair, neck, arms, hands in skin/hair colours; top, pants,
    bag, background to be preserved."""
    return _paint(size, _PERSON, seed)


def back_view_photo(size: int = 128, seed: int = 0) -> np.ndarray:
    """The same person seen from behind: hair where the face was, no face to find."""
    rows = [r for r in _PERSON if r[0] not in ("face", "hair")] + [("hair", 0.10, 0.36, 0.30, 0.58)]
    img = _paint(size, rows, seed)
    img[: size // 8, : size // 8] = 0  # where build_blind_insightface's detector looks
    return img


def astronaut(size: int | None = None) -> np.ndarray:
    import cv2
    from skimage import data

    img = data.astronaut()
    return img if size is None else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def t1_photo() -> np.ndarray:
    import insightface.data

    return np.ascontiguousarray(insightface.data.get_image("t1")[:, :, ::-1])  # BGR -> RGB


def build_all(root: Path) -> Path:
    root = Path(root)
    tiny_sdxl.build_sdxl_inpaint_folder(root / "diffusers" / "stable-diffusion-xl-1.0-inpainting-0.1")
    tiny_parser.build_colour_keyed_parser(root / "human_parsing" / "fashn-human-parser")
    tiny_insightface.build_insightface_pack(root, "antelopev2", faces=(tiny_insightface.ASTRONAUT_FACE,))
    tiny_faceid.build_all(root)
    tiny_klein.install_defaults(root)  # FLUX.2 klein single files and diffusers folder, default names
    tiny_opencv_faces.build(root / "facedetection")  # YuNet + SFace, published names
    tiny_selfie.install(root)  # MediaPipe selfie multiclass segmenter (.tflite), published name
    return root


def build_blind_insightface(root: Path) -> Path:
    """A models folder holding only an antelopev2 pack whose one face box lies in the top-left
    corner, which ``back_view_photo`` leaves pure black: the detector finds no face there."""
    corner = tiny_insightface.place_face((0, 0, 10, 10), (128, 128))
    tiny_insightface.build_insightface_pack(root, "antelopev2", faces=(corner,))
    return root


def build_t1_insightface(root: Path) -> Path:
    """A models folder holding only an antelopev2 pack whose faces sit on t1's six people."""
    tiny_insightface.build_insightface_pack(root, "antelopev2", faces=tiny_insightface.T1_FACES)
    return root

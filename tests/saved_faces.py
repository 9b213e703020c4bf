"""Saved faces for the face-library tests (comfy-free, the graph, the runner, the API).

The tiny FLUX.2 klein has random weights, so what it draws holds no face the tiny YuNet can see (its
"faces" are bright 32-pixel squares on a dark picture; tests/tiny_opencv_faces.py): Create Face on tiny
klein is refused by the real analyser check, which test_face_library.py shows. To have a saved face that
the swap's IdentityEncode accepts, :class:`FaceDrawer` (an engine double with ``text_to_image``) draws
such a square, and the real tiny analyser checks it and gives the embedding stored with it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

import tiny_opencv_faces as tiny
from comfyui_model_swap.nodes.pipeline import face_library as fl
from engine_double import REFERENCE_ENGINE, EngineDouble

SIDE = 128  # 4x4 cells of the tiny detector; its face box is 96 px wide, 75 % of the picture


class FaceDrawer(EngineDouble):
    """Draws candidate i as one bright square (seeded texture) on a dark picture; ``squares`` per picture."""

    def __init__(self, squares: int = 1, size: int = 32):
        super().__init__(capabilities=replace(REFERENCE_ENGINE, name="face_drawer", text_to_image=True))
        self.squares, self.size = squares, size

    def inpaint(self, request, on_step=None):
        self.requests.append(request)
        h, w = request.image.shape[:2]
        out = []
        for seed in request.seeds:
            image = tiny.face_image(h, w, top=32, left=32 if self.squares == 1 else 0, size=self.size, seed=seed)
            if self.squares > 1:  # a second face, far from the first
                image[96 - self.size:96, 96:96 + self.size] = image[32:32 + self.size, 0:self.size]
            out.append(image)
        return out


def save(root: Path, name: str, analyzer, seed: int = 3) -> Path:
    """A face drawn by :class:`FaceDrawer`, checked by ``analyzer``, saved as ``root/name``."""
    face = fl.create_faces(FaceDrawer(), analyzer, fl.Description(), seed, 1, size=SIDE)[0]
    return fl.save_face([Path(root)], name, face)


def picture(seed: int = 3) -> np.ndarray:
    return tiny.face_image(SIDE, SIDE, top=32, left=32, size=32, seed=seed)

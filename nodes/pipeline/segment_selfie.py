"""The licence-clean segmenter: Google's MediaPipe selfie multiclass model (Apache-2.0), on LiteRT.

The model (``selfie_multiclass_256x256.tflite``, published by Google) takes the photo stretched
to 256x256 RGB in [0, 1] and returns 256x256 logits for six classes: background, hair, body
skin, face skin, clothes, others (accessories). Here it runs through its official runtime,
LiteRT (``ai-edge-litert``, Google's TFLite interpreter), imported only when a model is loaded.
The softmax probabilities are resized to the photo and refined along the photo's own edges
(:mod:`.edge_refine`), so the preserve/regenerate border follows a sleeve at 1 MP, not the
256x256 grid.

It is a drop-in for FASHN's parser (:class:`.parsing.HumanParser`): :meth:`SelfieSegmenter.parse`
returns a label map in the pack's 18-class vocabulary (:data:`.parsing.LABELS`), one
representative class per model class (:data:`TO_LABEL`), and :meth:`SelfieSegmenter.resolve_classes`
turns a regenerate selection into what the six classes can express, refusing what they cannot.

What the six classes cannot tell apart, that FASHN's 18 can: torso, arms, hands, legs and feet
are one "body skin" class (all or none of them are regenerated); every garment (top, dress,
skirt, pants, belt) is one "clothes" class and every accessory (bag, hat, scarf, glasses,
jewelry) one "others" class, so no single garment or accessory can be chosen for regeneration;
and the framing the automatic prompt reads from legs and feet is not known (it says "upper-body
shot" or "close-up portrait"). The model was trained on selfies and video-call frames: how well
it parses full-body fashion photos is not measured here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from . import model_files
from .edge_refine import refine_labels
from .errors import InputValidationError, MissingModelError, ModelSwapError
from .images import as_rgb_uint8
from .parsing import LABEL_IDS

CLASSES = ("background", "hair", "body skin", "face skin", "clothes", "others")
INPUT_SIZE = 256
# The pack's label for each model class (index = model class id).
TO_LABEL = np.array([LABEL_IDS[n] for n in ("background", "hair", "torso", "face", "top", "jewelry")], np.uint8)
BODY_SKIN = ("torso", "arms", "hands", "legs", "feet")  # FASHN's classes the model's "body skin" covers
REGENERABLE = ("face", "hair") + BODY_SKIN
RUNTIME_PACKAGE = "ai-edge-litert"


class RuntimeMissingError(ModelSwapError, ImportError):
    """The TFLite runtime is not installed."""


def _interpreter_class():
    """LiteRT's interpreter (``ai-edge-litert``), or the older ``tflite-runtime`` one."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as first:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise RuntimeMissingError(
                f"The selfie segmenter runs on LiteRT, Google's TFLite runtime, which is not installed ({first}). "
                f"Install it into ComfyUI's Python: pip install {RUNTIME_PACKAGE}") from first
    return Interpreter


def _wrong_model(path: Path, problem: str) -> MissingModelError:
    spec = model_files.MODELS["selfie_segmenter"]
    return MissingModelError(
        f"Wrong model in {path}: {problem}. Replace it with Google's selfie multiclass segmenter. "
        f"{model_files.describe(spec, path.name)}.",
        folder=f"models/{spec.folder}", filename=path.name, source=spec.source)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32."""
    z = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


class SelfieSegmenter:
    """A loaded segmenter; keep one and call :meth:`parse` many times (it never reloads)."""

    def __init__(self, interpreter, path: Path, refine: bool = True):
        self.path = Path(path)
        self.refine = refine
        self._interpreter = interpreter
        self._lock = threading.Lock()  # one interpreter: one invocation at a time
        self._input = interpreter.get_input_details()[0]["index"]
        self._output = interpreter.get_output_details()[0]["index"]

    @classmethod
    def load(cls, path, num_threads: int | None = None, refine: bool = True) -> "SelfieSegmenter":
        """Load ``path`` (the .tflite file) on the CPU, from disk only, and check its interface."""
        path = model_files.require("selfie_segmenter", path)
        interpreter_class = _interpreter_class()
        try:
            interpreter = interpreter_class(model_path=str(path), num_threads=num_threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise _wrong_model(path, f"it does not load as a TFLite model ({exc}); it may be truncated, so "
                                     "download it again") from exc
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        want_in, want_out = [1, INPUT_SIZE, INPUT_SIZE, 3], [1, INPUT_SIZE, INPUT_SIZE, len(CLASSES)]
        if len(inputs) != 1 or list(inputs[0]["shape"]) != want_in or inputs[0]["dtype"] != np.float32:
            got = [(list(d["shape"]), np.dtype(d["dtype"]).name) for d in inputs]
            raise _wrong_model(path, f"its input is {got}, not one float32 {want_in} image")
        if len(outputs) < 1 or list(outputs[0]["shape"]) != want_out or outputs[0]["dtype"] != np.float32:
            got = [(list(d["shape"]), np.dtype(d["dtype"]).name) for d in outputs]
            raise _wrong_model(path, f"its output is {got}, not float32 {want_out} scores of the six classes")
        return cls(interpreter, path, refine=refine)

    # ---------------------------------------------------------------- running
    @staticmethod
    def preprocess(rgb: np.ndarray) -> np.ndarray:
        """The model's input for one RGB uint8 photo: stretched to 256x256, float32 [0, 1], (1, 256, 256, 3)."""
        h, w = rgb.shape[:2]
        shrink = h >= INPUT_SIZE and w >= INPUT_SIZE
        x = cv2.resize(rgb, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return (x.astype(np.float32) / np.float32(255.0))[None]

    def probabilities(self, image) -> np.ndarray:
        """Class probabilities (256, 256, 6) float32 of one photo, before refinement."""
        x = self.preprocess(as_rgb_uint8(image, "image to segment"))
        with self._lock:
            self._interpreter.set_tensor(self._input, x)
            self._interpreter.invoke()
            scores = self._interpreter.get_tensor(self._output)[0].copy()
        sums = scores.sum(axis=-1)
        if scores.min() >= 0.0 and scores.max() <= 1.0 and np.allclose(sums, 1.0, atol=1e-3):
            return scores.astype(np.float32)  # a build that ends in its own softmax
        return softmax(scores)

    def segment(self, image) -> np.ndarray:
        """The model's own classes (H, W) uint8 (see :data:`CLASSES`) at the photo's size."""
        rgb = as_rgb_uint8(image, "image to segment")
        probs = self.probabilities(rgb)
        if self.refine:
            return refine_labels(rgb, probs)
        up = cv2.resize(probs, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        return up.argmax(axis=2).astype(np.uint8)

    def parse(self, image) -> np.ndarray:
        """Label map (H, W) uint8 in the pack's classes (:data:`.parsing.LABELS`), like FASHN's parser."""
        return TO_LABEL[self.segment(image)]

    def parse_batch(self, images: Iterable, batch_size: int = 1) -> list[np.ndarray]:
        if hasattr(images, "shape"):
            images = [images[i] for i in range(images.shape[0])] if len(images.shape) == 4 else [images]
        return [self.parse(im) for im in images]

    # ---------------------------------------------------------------- class selection
    @staticmethod
    def resolve_classes(names: Iterable[str]) -> tuple[str, ...]:
        """The regenerate selection (FASHN's class names) as this model can express it.

        Face and hair map one to one; torso, arms, hands, legs and feet are one body-skin class,
        so they are chosen all together or not at all. Garments and accessories cannot be chosen.
        """
        names = tuple(names)
        unknown = [n for n in names if n not in REGENERABLE]
        if unknown:
            raise InputValidationError(
                f"The selfie segmenter cannot regenerate {', '.join(unknown)}: it has one 'clothes' class for every "
                "garment and one 'others' class for every accessory, and keeps both. Choose from face, hair and body "
                f"skin ({', '.join(BODY_SKIN)}), or load FASHN's human parser (18 classes).")
        body = [n for n in BODY_SKIN if n in names]
        if body and len(body) != len(BODY_SKIN):
            left_out = [n for n in BODY_SKIN if n not in names]
            raise InputValidationError(
                f"The selfie segmenter has one body-skin class, so {', '.join(body)} cannot be regenerated without "
                f"{', '.join(left_out)}: list all of {', '.join(BODY_SKIN)} or none of them, or load FASHN's human "
                "parser (18 classes).")
        return tuple(n for n in ("face", "hair") if n in names) + (("torso",) if body else ())

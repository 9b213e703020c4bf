"""Human parsing with FASHN's SegFormer-B4 (18 classes): which pixel is face, hair, top, ...

The GarmentMask stage decides what the model swap may repaint from this label
map, so the parse must match FASHN's own parser pixel for pixel: the same
preprocessing (INTER_AREA to 384x576, ImageNet normalisation) and the same
post-processing (bilinear upsampling of the logits to the input size, then
argmax). The weights are loaded only from a local folder; nothing here ever
contacts a model hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from . import model_files
from .errors import ImageLoadError, MissingModelError
from .images import as_rgb_uint8

LABELS: tuple[str, ...] = (
    "background",
    "face",
    "hair",
    "top",
    "dress",
    "skirt",
    "pants",
    "belt",
    "bag",
    "hat",
    "scarf",
    "glasses",
    "arms",
    "hands",
    "legs",
    "feet",
    "torso",
    "jewelry",
)
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
NUM_LABELS = len(LABELS)

# FASHN's parser input: width x height, as cv2.resize takes it.
INPUT_SIZE_WH = (384, 576)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(image) -> np.ndarray:
    """FASHN's preprocessing of one RGB image: a float32 (3, 576, 384) array.

    Kept separate (and in numpy float32, in this exact order) so tests can
    recompute it by hand and compare the tensor the model receives.
    """
    rgb = as_rgb_uint8(image, "image to parse")
    resized = cv2.resize(rgb, INPUT_SIZE_WH, interpolation=cv2.INTER_AREA)
    x = resized.astype(np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _wrong_model(folder: Path, problem: str) -> MissingModelError:
    """The folder exists and has the files, but they are not FASHN's parser."""
    spec = model_files.MODELS["human_parser"]
    return MissingModelError(
        f"Wrong model in {folder}: {problem}. Replace it with FASHN's human parser. "
        f"{model_files.describe(spec, folder.name)}.",
        folder=f"models/{spec.folder}",
        filename=folder.name,
        source=spec.source,
    )


def _check_config(folder: Path) -> None:
    """Reject a folder holding some other model before spending time on its weights."""
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _wrong_model(folder, f"config.json cannot be read ({exc})") from exc
    if not isinstance(raw, dict):
        raise _wrong_model(folder, "config.json is not a JSON object")
    model_type = raw.get("model_type")
    if model_type != "segformer":
        raise _wrong_model(folder, f"config.json describes a '{model_type}' model, not a SegFormer")
    if "id2label" in raw and isinstance(raw["id2label"], dict):
        n = len(raw["id2label"])
    else:
        n = raw.get("num_labels", 2)  # transformers' default when neither is given
    if n != NUM_LABELS:
        raise _wrong_model(
            folder, f"it is a SegFormer with {n} classes, but FASHN's human parser has {NUM_LABELS}"
        )


def _default_dtype(device):
    import torch

    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


class HumanParser:
    """A loaded parser; keep one and call :meth:`parse` many times (it never reloads)."""

    def __init__(self, model, device="cpu", dtype=None):
        import torch

        self.device = torch.device(device)
        self.dtype = dtype or _default_dtype(self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

    @classmethod
    def load(cls, folder, device="cpu", dtype=None) -> "HumanParser":
        """Load ``folder`` (config.json + model.safetensors), from disk only.

        Float32 on CPU and float16 on CUDA unless ``dtype`` says otherwise.
        """
        folder = model_files.require("human_parser", folder)
        _check_config(folder)
        from safetensors import SafetensorError
        from transformers import SegformerForSemanticSegmentation

        dtype = dtype or _default_dtype(device)
        try:
            model = SegformerForSemanticSegmentation.from_pretrained(
                str(folder), local_files_only=True, dtype=dtype
            )
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            raise _wrong_model(
                folder, f"model.safetensors does not load ({exc}); it may be truncated, so download it again"
            ) from exc
        return cls(model, device=device, dtype=dtype)

    def _labels_from_logits(self, logits, size_hw: tuple[int, int]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        # Upsample in float32: bilinear fp16 logits can flip near-ties in the argmax.
        up = F.interpolate(logits.float(), size=size_hw, mode="bilinear", align_corners=False)
        return up.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()  # 18 classes fit; 8x less to copy

    def parse(self, image) -> np.ndarray:
        """Label map (H, W) uint8 of class ids (see :data:`LABELS`) at the input's size."""
        rgb = as_rgb_uint8(image, "image to parse")
        return self.parse_batch([rgb])[0]

    def parse_batch(self, images: Iterable | np.ndarray, batch_size: int = 4) -> list[np.ndarray]:
        """Parse several images (each any size), ``batch_size`` at a time.

        Accepts a list of images or one (B, H, W, C) array/tensor such as a
        ComfyUI IMAGE batch; returns one label map per image, each at its size.
        """
        import torch

        if hasattr(images, "shape"):  # one array/tensor: a batch (B, H, W, C) or a single image
            images = [images[i] for i in range(images.shape[0])] if len(images.shape) == 4 else [images]
        rgbs: Sequence[np.ndarray] = [as_rgb_uint8(im, "image to parse") for im in images]
        if not rgbs:
            raise ImageLoadError("No image was given to the human parser: pass at least one RGB image.")
        batch_size = max(1, int(batch_size))
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(rgbs), batch_size):
                chunk = rgbs[start : start + batch_size]
                x = torch.from_numpy(np.stack([preprocess(im) for im in chunk]))
                x = x.to(device=self.device, dtype=self.dtype)
                logits = self.model(pixel_values=x).logits
                for i, im in enumerate(chunk):
                    out.append(self._labels_from_logits(logits[i : i + 1], im.shape[:2]))
        return out

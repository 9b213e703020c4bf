"""Human parsing with FASHN's SegFormer-B4 (18 classes): which pixel is face, hair, top, ...

The GarmentMask stage decides what the model swap may repaint from this label
map, so the parse must match FASHN's own parser pixel for pixel: the same
preprocessing (INTER_AREA to 384x576, ImageNet normalisation) and the same
post-processing (bilinear upsampling of the logits to the input size, then
argmax). The weights are loaded only from a local folder; nothing here ever
contacts a model hub.

Three rewrites with the same arithmetic make it faster than FASHN's own
``fashn-human-parser`` on the same weights (``scripts/benchmark.py`` measures
both): the decode head's linear layers are folded into one small matrix per
encoder stage (see :class:`_FoldedDecodeHead`), the encoder's per-block
convolutions run channels-last without layout copies (see
:func:`_use_channels_last_token_convs`), and the full-size argmax blends all 18
classes only at class boundaries (see :func:`upsampled_argmax`). Labels differ
from FASHN's only where two classes tie to float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from . import model_files, placement
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


def _source_coords(in_size: int, out_size: int):
    """Where PyTorch's bilinear resampling (align_corners=False, size given) reads each output
    index: the lower source index, the upper one (clamped at the edge) and the upper's weight."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return i0, i1, w1


def upsampled_argmax(logits, size_hw: tuple[int, int]) -> np.ndarray:
    """``argmax(F.interpolate(logits, size_hw, bilinear, align_corners=False))`` as (H, W) uint8,
    blending all classes only where they change.

    ``logits``: (C, h, w) tensor. Bilinear resampling blends along rows, then between two
    source rows. The row blend is done for every source row at the output width (h x W x C,
    small); an output pixel is then a convex blend of two such blended rows, and when both
    have the same argmax class, that class wins the blend too (a convex combination keeps
    every "c beats k" inequality, ties included), so its label is read off directly. Only
    pixels where the two rows disagree, at class boundaries, are blended in full.
    """
    import torch

    c, h, w = logits.shape
    out_h, out_w = size_hw
    y0, y1, wy = _source_coords(h, out_h)
    x0, x1, wx = _source_coords(w, out_w)
    src = logits.float().permute(1, 2, 0).contiguous()  # (h, w, C)
    fx = torch.from_numpy(wx)[None, :, None]
    rows = src.index_select(1, torch.from_numpy(x0)).mul_(1 - fx)
    rows += src.index_select(1, torch.from_numpy(x1)).mul_(fx)  # (h, W, C)
    row_labels = rows.argmax(dim=2).to(torch.uint8).numpy()  # (h, W)
    labels = row_labels[y0]
    ys, xs = np.nonzero(labels != row_labels[y1])
    if ys.size:
        rows = rows.view(h * out_w, c)
        xs_t = torch.from_numpy(xs)
        fy = torch.from_numpy(wy[ys])[:, None]
        upper = rows.index_select(0, torch.from_numpy(y0[ys] * out_w) + xs_t).mul_(1 - fy)
        upper += rows.index_select(0, torch.from_numpy(y1[ys] * out_w) + xs_t).mul_(fy)
        labels[ys, xs] = upper.argmax(dim=1).to(torch.uint8).numpy()
    return labels


class _FoldedDecodeHead:
    """SegFormer's all-MLP decode head with its linear part folded: the same logits, about 20x
    less arithmetic.

    The published head projects each encoder stage to ``d`` channels, upsamples them to
    1/4 resolution, concatenates the four and fuses them with a 1x1 convolution (4d -> d)
    and batch norm, then ReLU and the classifier. Projection, bilinear upsampling (its weights
    sum to 1, so a bias passes through), the fuse and the frozen batch norm are all linear,
    so they commute: project each stage straight to the fused space at its own resolution
    (one small matrix per stage), upsample those and add. The fuse, half of the B4 parser's
    arithmetic at 1/4 resolution, disappears. Only float rounding differs from the model's
    own head (about 1e-6 relative).
    """

    def __init__(self, head):
        import torch

        d = head.linear_fuse.out_channels
        n = len(head.linear_projections)
        fuse = head.linear_fuse.weight.detach().double()[:, :, 0, 0]  # (d, n*d); the last stage comes first
        bn = head.batch_norm
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        shift = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
        bias = torch.zeros(d, dtype=torch.float64, device=fuse.device)
        self.weights_t = []
        dtype = head.classifier.weight.dtype
        for i, mlp in enumerate(head.linear_projections):
            block = fuse[:, (n - 1 - i) * d : (n - i) * d]
            proj_w = mlp.proj.weight.detach().double()
            self.weights_t.append((scale[:, None] * (block @ proj_w)).t().contiguous().to(dtype))  # (C_i, d)
            bias += block @ mlp.proj.bias.detach().double()
        self.bias = (scale * bias + shift).to(dtype)  # (d,)
        self.classifier_t = head.classifier.weight.detach()[:, :, 0, 0].t().contiguous()  # (d, classes)
        self.classifier_b = head.classifier.bias.detach()

    def to(self, device) -> None:
        """Move the folded tensors (a few MB, derived from the weights) to ``device``."""
        self.weights_t = [w.to(device) for w in self.weights_t]
        self.bias, self.classifier_t, self.classifier_b = (
            t.to(device) for t in (self.bias, self.classifier_t, self.classifier_b))

    def __call__(self, features):
        """(B, classes, H/4, W/4) logits, laid out channels-last, from the four stage outputs (NCHW)."""
        import torch
        import torch.nn.functional as F

        first = features[0]
        b, _, h, w = first.shape
        # Tokens x channels throughout: upsampling then runs vectorised over the d channels.
        fused = torch.matmul(first.reshape(b, first.shape[1], h * w).transpose(1, 2), self.weights_t[0])
        fused += self.bias
        for weight_t, feat in zip(self.weights_t[1:], features[1:]):
            fh, fw = feat.shape[2:]
            z = torch.matmul(feat.reshape(b, feat.shape[1], fh * fw).transpose(1, 2), weight_t)
            z = z.view(b, fh, fw, -1).permute(0, 3, 1, 2)  # channels-last (B, d, fh, fw)
            up = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
            fused += up.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        logits = torch.matmul(torch.relu_(fused), self.classifier_t) + self.classifier_b
        return logits.view(b, h, w, -1).permute(0, 3, 1, 2)


def _depthwise_conv_forward(self, hidden_states, height, width):
    """SegformerDepthWiseConv.forward without layout copies: tokens (B, N, C) are viewed as a
    channels-last image, convolved channels-last and viewed back, so the next linear layer gets
    a contiguous input (the published forward hands it a transposed one, which costs a copy
    and an unfused bias add in every block)."""
    batch, tokens, channels = hidden_states.shape
    image = hidden_states.view(batch, height, width, channels).permute(0, 3, 1, 2)
    return self.dwconv(image).permute(0, 2, 3, 1).reshape(batch, tokens, channels)


def _sequence_reduction_forward(self, hidden_states, height, width):
    """SegformerSequenceReduction.forward without layout copies (see :func:`_depthwise_conv_forward`)."""
    batch, _, channels = hidden_states.shape
    image = hidden_states.view(batch, height, width, channels).permute(0, 3, 1, 2)
    reduced = self.sequence_reduction(image).permute(0, 2, 3, 1).reshape(batch, -1, channels)
    return self.layer_norm(reduced)


def _use_channels_last_token_convs(model) -> int:
    """Give the encoder's per-block convolutions (Mix-FFN depthwise, attention sequence reduction)
    channels-last weights and copy-free forwards, on this model instance only. The arithmetic is
    the published one. Returns how many modules were changed (0 if transformers renamed them)."""
    import types

    import torch

    changed = 0
    for module in model.segformer.modules():
        kind = type(module).__name__
        if kind == "SegformerDepthWiseConv" and isinstance(getattr(module, "dwconv", None), torch.nn.Conv2d):
            module.dwconv.to(memory_format=torch.channels_last)
            module.forward = types.MethodType(_depthwise_conv_forward, module)
            changed += 1
        elif kind == "SegformerSequenceReduction" and isinstance(
            getattr(module, "sequence_reduction", None), torch.nn.Conv2d
        ):
            module.sequence_reduction.to(memory_format=torch.channels_last)
            module.forward = types.MethodType(_sequence_reduction_forward, module)
            changed += 1
    return changed


class HumanParser:
    """A loaded parser; keep one and call :meth:`parse` many times (it never reloads)."""

    def __init__(self, model, device="cpu", dtype=None):
        import torch

        self.device = torch.device(device)
        self.dtype = dtype or _default_dtype(self.device)
        # under a memory host (placement.py) the host moves the weights to the device for each use
        self.model = model.to(device=placement.load_device(self.device), dtype=self.dtype).eval()
        self._head = _FoldedDecodeHead(self.model.decode_head)
        _use_channels_last_token_convs(self.model)

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

    def logits(self, pixel_values):
        """Low-resolution logits (B, 18, 144, 96) for preprocessed ``pixel_values`` (B, 3, 576, 384).

        The encoder's stages run as published; the decode head runs folded (see
        :class:`_FoldedDecodeHead`). Call under ``torch.inference_mode()``.
        """
        if self._head.bias.device != pixel_values.device:  # the host moved the model: the head follows
            self._head.to(pixel_values.device)
        features, hidden = [], pixel_values
        for stage in self.model.segformer.stages:
            hidden = stage(hidden)
            features.append(hidden)
        return self._head(features)

    def _labels_from_logits(self, logits, size_hw: tuple[int, int]) -> np.ndarray:
        # Blend in float32: bilinear fp16 logits can flip near-ties in the argmax.
        return upsampled_argmax(logits[0].float().cpu(), size_hw)

    @staticmethod
    def resolve_classes(names: Iterable[str]) -> tuple[str, ...]:
        """The regenerate selection as this parser expresses it: every one of its 18 classes, as given.
        (A coarser segmenter, e.g. segment_selfie.SelfieSegmenter, merges or refuses some.)"""
        return tuple(names)

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
        placement.use(self.device, {"parser": self.model})
        with torch.inference_mode():
            for start in range(0, len(rgbs), batch_size):
                chunk = rgbs[start : start + batch_size]
                x = torch.from_numpy(np.stack([preprocess(im) for im in chunk]))
                x = x.to(device=self.device, dtype=self.dtype)
                logits = self.logits(x)
                for i, im in enumerate(chunk):
                    out.append(self._labels_from_logits(logits[i : i + 1], im.shape[:2]))
        return out

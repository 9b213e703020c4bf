"""Tiny synthetic insightface model packs that the real ``FaceAnalysis`` loads.

``build_insightface_pack(models_root)`` writes
``<models_root>/insightface/models/<name>/`` with three small ONNX files named
like the published pack (antelopev2 or buffalo_l). insightface routes each file
by its shapes, exactly as it does the real ones:

* detector (``scrfd_10g_bnkps.onnx`` / ``det_10g.onnx``): SCRFD layout, input
  ``[1, 3, height, width]`` (dynamic), nine outputs (scores, box distances and
  keypoint distances for strides 8, 16 and 32, two anchors per cell, distances
  in stride units).
* recogniser (``glintr100.onnx`` / ``w600k_r50.onnx``): ``[N, 3, 112, 112] ->
  [N, 512]``: 14x14 average pooling of the aligned crop, centring, then a fixed
  random projection. The same crop always gives the same embedding and
  different faces give clearly different ones.
* gender/age (``genderage.onnx``, optional): ``[N, 3, 96, 96] -> [N, 3]`` from
  the crop's mean colour: female when red outweighs blue, age 25-35.

How the detector decides where faces are
-----------------------------------------
The faces are fixed at build time (``faces=``, a list of :class:`SyntheticFace`)
as fractions of the *detector input*, and each one fires only where the image
has detail: a face is reported when the standard deviation of the detector's
input pixels inside its box exceeds about 5 grey levels. Pure black pixels are
left out of that statistic, because insightface pads the letterbox with black.
So

* a flat (single-colour) image has no face, and neither has a flat region
  (a box that falls on the letterbox padding or a blank area stays silent);
* on a real photo every built-in box fires, at a position the test knows.

insightface letterboxes the image into the square detector input from the
top-left corner, scaled by ``det_size / max(H, W)``. A face fraction ``f`` is
therefore found at ``f * max(H, W)`` image pixels (within about a pixel),
whatever ``det_size`` is. :func:`place_face` converts a box (and optionally
five keypoints) given in pixels of an image of a given size into fractions, and
:func:`expected_box` converts back for any image size, so a face stays on
target when the image is resized with its aspect ratio kept (not when it is
cropped or padded differently).

``ASTRONAUT_FACE`` sits on the face in ``skimage.data.astronaut()`` (512x512),
``T1_FACES`` on the six faces in ``insightface.data.get_image("t1")``
(1280x886), all measured by eye with keypoints on the eyes, nose tip and mouth
corners.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
MAX_FACES = 32  # one anchor each on the first row of stride 8 (16 cells x 2 at det size 128)
GATE_STD = 0.04  # in SCRFD input units ((x - 127.5) / 128): about 5 grey levels
PAD_VALUE = -127.5 / 128.0  # a black pixel, which is also insightface's letterbox padding

PACK_FILES = {
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "genderage.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx", "genderage.onnx"),
}

# The ArcFace 5-point template (112x112): eyes, nose tip, mouth corners.
_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


@dataclass(frozen=True)
class SyntheticFace:
    """One face the tiny detector reports, in fractions of the detector input.

    ``bbox`` (x1, y1, x2, y2) and ``kps`` (5, 2) are fractions of the detector
    input's width/height; for the square input insightface uses, that is a
    fraction of the image's longer side.
    """

    bbox: tuple[float, float, float, float]
    kps: tuple[tuple[float, float], ...]
    score: float = 0.9


def place_face(bbox_px, image_size, kps_px=None, score: float = 0.9) -> SyntheticFace:
    """A face at ``bbox_px`` (x1, y1, x2, y2 pixels) in an image of ``image_size`` (width, height).

    ``kps_px`` (5, 2) defaults to the ArcFace template laid into the box.
    """
    long_side = float(max(image_size))
    box = np.asarray(bbox_px, dtype=np.float64)
    if kps_px is None:
        w, h = box[2] - box[0], box[3] - box[1]
        kps = np.stack([box[0] + _TEMPLATE[:, 0] / 112.0 * w, box[1] + _TEMPLATE[:, 1] / 112.0 * h], axis=1)
    else:
        kps = np.asarray(kps_px, dtype=np.float64).reshape(5, 2)
    return SyntheticFace(
        bbox=tuple(float(v) for v in box / long_side),
        kps=tuple((float(x), float(y)) for x, y in kps / long_side),
        score=float(score),
    )


def expected_box(face: SyntheticFace, image_shape) -> np.ndarray:
    """Where ``face`` is detected in an image of shape (H, W[, C]): x1, y1, x2, y2 pixels."""
    return np.asarray(face.bbox, dtype=np.float64) * max(image_shape[0], image_shape[1])


def expected_kps(face: SyntheticFace, image_shape) -> np.ndarray:
    """The five keypoints (5, 2) of ``face`` in pixels of an image of shape (H, W[, C])."""
    return np.asarray(face.kps, dtype=np.float64) * max(image_shape[0], image_shape[1])


ASTRONAUT_SIZE = (512, 512)
ASTRONAUT_FACE = place_face(
    (178, 70, 268, 165),
    ASTRONAUT_SIZE,
    kps_px=[(204, 101), (245, 104), (221, 125), (205, 143), (245, 143)],
)

T1_SIZE = (1280, 886)
T1_FACES = (
    # left to right; areas differ so the sort order is known:
    # joey > chandler > ross > rachel > phoebe > monica
    place_face((62, 268, 165, 392), T1_SIZE, [(87, 327), (130, 308), (122, 343), (113, 363), (147, 355)]),  # rachel
    place_face((272, 158, 372, 265), T1_SIZE, [(290, 210), (320, 195), (313, 228), (317, 240), (337, 235)]),  # monica
    place_face((468, 272, 582, 405), T1_SIZE, [(490, 320), (538, 333), (515, 357), (495, 373), (533, 383)]),  # ross
    place_face((745, 340, 860, 475), T1_SIZE, [(762, 397), (805, 402), (783, 423), (770, 440), (807, 440)]),  # chandler
    place_face((905, 55, 1025, 200), T1_SIZE, [(918, 112), (946, 115), (925, 152), (935, 167), (958, 168)]),  # joey
    place_face((1132, 288, 1230, 400), T1_SIZE, [(1153, 325), (1195, 323), (1172, 350), (1157, 365), (1197, 365)]),  # phoebe
)
T1_ORDER_BY_AREA = (4, 3, 2, 0, 5, 1)  # indices into T1_FACES, largest first


# --------------------------------------------------------------------------- graph helpers


class _Graph:
    """A small builder: named constants and nodes, unique names."""

    def __init__(self):
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def const(self, value, dtype=np.float32) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
        self._n += 1
        outs = [f"{op_type.lower()}_{self._n}_{i}" for i in range(n_out)]
        # Names must not start with "Sub"/"Mul": insightface reads such names as an
        # mxnet model with built-in normalisation and would then skip its own.
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"n{self._n}_{op_type.lower()}", **attrs))
        return outs[0] if n_out == 1 else outs

    def rename(self, tensor: str, name: str) -> str:
        self.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"out_{name}"))
        return name

    def model(self, inputs, outputs, graph_name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
        model.producer_name = "comfyui-model-swap tests"
        onnx.checker.check_model(model)
        return model


def _detector(faces: Sequence[SyntheticFace]) -> onnx.ModelProto:
    if not faces:
        raise ValueError("give at least one SyntheticFace")
    if len(faces) > MAX_FACES:
        raise ValueError(f"at most {MAX_FACES} faces")
    k = len(faces)
    g = _Graph()
    x = "input.1"
    shape = g.op("Shape", [x])
    h_i = g.op("Gather", [shape, g.const(2, np.int64)], axis=0)
    w_i = g.op("Gather", [shape, g.const(3, np.int64)], axis=0)
    dims4 = g.op("Cast", [g.op("Gather", [shape, g.const([3, 2, 3, 2], np.int64)], axis=0)], to=TensorProto.FLOAT)
    dims10 = g.op("Cast", [g.op("Gather", [shape, g.const([3, 2] * 5, np.int64)], axis=0)], to=TensorProto.FLOAT)
    box_px = g.op("Mul", [g.const([f.bbox for f in faces]), dims4])  # [K, 4]
    kps_px = g.op("Mul", [g.const([np.ravel(f.kps) for f in faces]), dims10])  # [K, 10]

    # Gate: a face fires only where its box has detail (pixel std above GATE_STD).
    box_int = g.op("Cast", [g.op("Floor", [box_px])], to=TensorProto.INT64)
    one = g.const([1, 1], np.int64)
    gates = []
    for i in range(k):
        row = g.op("Gather", [box_int, g.const(i, np.int64)], axis=0)  # x1, y1, x2, y2
        starts = g.op("Gather", [row, g.const([1, 0], np.int64)], axis=0)
        ends = g.op("Max", [g.op("Gather", [row, g.const([3, 2], np.int64)], axis=0), g.op("Add", [starts, one])])
        crop = g.op("Slice", [x, starts, ends, g.const([2, 3], np.int64)])
        # Statistics over the image's own pixels only: black (0, 0, 0) is what insightface pads
        # the letterbox with, so a box reaching past the image edge still sees a flat image as flat.
        brightest = g.op("ReduceMax", [crop], axes=[1], keepdims=1)
        own = g.op("Cast", [g.op("Greater", [brightest, g.const(PAD_VALUE + 1e-3)])], to=TensorProto.FLOAT)
        count = g.op("Max", [g.op("Mul", [g.op("ReduceSum", [own], keepdims=0), g.const(3.0)]), g.const(1.0)])
        mean = g.op("Div", [g.op("ReduceSum", [g.op("Mul", [crop, own])], keepdims=0), count])
        mean_sq = g.op("Div", [g.op("ReduceSum", [g.op("Mul", [g.op("Mul", [crop, crop]), own])], keepdims=0), count])
        var = g.op("Sub", [mean_sq, g.op("Mul", [mean, mean])])
        gate = g.op("Cast", [g.op("Greater", [var, g.const(GATE_STD**2)])], to=TensorProto.FLOAT)
        gates.append(g.op("Reshape", [gate, g.const([1], np.int64)]))
    gate_vec = g.op("Concat", gates, axis=0) if k > 1 else gates[0]
    scores_k = g.op("Mul", [gate_vec, g.const([f.score for f in faces])])  # [K]

    # Face i is reported by anchor i of stride 8: cell i // 2 of the first row.
    stride = float(STRIDES[0])
    acx = np.array([(i // NUM_ANCHORS) * stride for i in range(k)], dtype=np.float32)
    anchor4 = np.stack([acx, np.zeros(k), acx, np.zeros(k)], axis=1)  # x, y, x, y
    anchor10 = np.stack([acx, np.zeros(k)] * 5, axis=1)
    sign4 = np.array([1.0, 1.0, -1.0, -1.0])  # left, top = anchor - edge; right, bottom = edge - anchor
    dist = g.op("Div", [g.op("Mul", [g.op("Sub", [g.const(anchor4), box_px]), g.const(sign4)]), g.const(stride)])
    kdist = g.op("Div", [g.op("Sub", [kps_px, g.const(anchor10)]), g.const(stride)])

    outputs = {}
    for s in STRIDES:
        n_anchors = g.op(
            "Mul",
            [g.op("Mul", [g.op("Div", [h_i, g.const(s, np.int64)]), g.op("Div", [w_i, g.const(s, np.int64)])]),
             g.const(NUM_ANCHORS, np.int64)],
        )
        n_anchors = g.op("Reshape", [n_anchors, g.const([1], np.int64)])
        for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
            if s == STRIDES[0]:
                value = {"score": g.op("Reshape", [scores_k, g.const([k, 1], np.int64)]), "bbox": dist, "kps": kdist}[kind]
                pad_rows = g.op("Sub", [n_anchors, g.const([k], np.int64)])
                pads = g.op("Concat", [g.const([0, 0], np.int64), pad_rows, g.const([0], np.int64)], axis=0)
                t = g.op("Pad", [value, pads])  # [A, width], zeros after the first K rows
            else:
                out_shape = g.op("Concat", [n_anchors, g.const([width], np.int64)], axis=0)
                t = g.op("ConstantOfShape", [out_shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))
            outputs[(kind, s)] = g.rename(t, f"{kind}_{s}")

    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "height", "width"])]
    outs = [
        helper.make_tensor_value_info(outputs[(kind, s)], TensorProto.FLOAT, [f"anchors_{s}", width])
        for kind, width in (("score", 1), ("bbox", 4), ("kps", 10))
        for s in STRIDES
    ]
    return g.model(inputs, outs, "tiny_scrfd")


def _recognizer(seed: int) -> onnx.ModelProto:
    g = _Graph()
    x = "input.1"
    pooled = g.op("AveragePool", [x], kernel_shape=[14, 14], strides=[14, 14])  # [N, 3, 8, 8]
    flat = g.op("Flatten", [pooled], axis=1)  # [N, 192]
    centred = g.op("Sub", [flat, g.op("ReduceMean", [flat], axes=[1], keepdims=1)])
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((192, 512)).astype(np.float32) / np.sqrt(192.0)
    out = g.rename(g.op("MatMul", [centred, g.const(proj)]), "embedding")
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 3, 112, 112])]
    outs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 512])]
    return g.model(inputs, outs, "tiny_arcface")


def _genderage() -> onnx.ModelProto:
    g = _Graph()
    x = "data"
    mean_rgb = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)  # [N, 3], input is RGB, about [-1, 1]
    weights = np.array([[1.0, -1.0, 0.05], [0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]], dtype=np.float32)
    bias = np.array([0.0, 0.0, 0.30], dtype=np.float32)  # age = 100 * (0.30 + 0.05 * mean red)
    out = g.op("Add", [g.op("MatMul", [mean_rgb, g.const(weights)]), g.const(bias)])
    out = g.rename(out, "fc1")
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 3, 96, 96])]
    outs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 3])]
    return g.model(inputs, outs, "tiny_genderage")


def build_insightface_pack(
    models_root: Path,
    name: str = "antelopev2",
    *,
    faces: Sequence[SyntheticFace] = (ASTRONAUT_FACE,),
    genderage: bool = True,
    seed: int = 0,
) -> Path:
    """Write ``<models_root>/insightface/models/<name>/`` and return that folder.

    ``name`` is ``antelopev2`` or ``buffalo_l`` (sets the file names). The
    insightface root that ``FaceAnalyzer.load`` takes is ``folder.parents[1]``.
    ``faces`` are the faces the detector reports (see the module docstring);
    ``genderage=False`` leaves the gender/age model out; ``seed`` picks the
    recogniser's projection.
    """
    if name not in PACK_FILES:
        raise ValueError(f"name must be one of {sorted(PACK_FILES)}")
    det_file, rec_file, ga_file = PACK_FILES[name]
    folder = Path(models_root) / "insightface" / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(_detector(list(faces)), str(folder / det_file))
    onnx.save(_recognizer(seed), str(folder / rec_file))
    if genderage:
        onnx.save(_genderage(), str(folder / ga_file))
    elif (folder / ga_file).exists():
        (folder / ga_file).unlink()
    return folder

"""Tiny ONNX models with the interfaces of OpenCV's YuNet detector and SFace recogniser.

OpenCV's ``cv2.FaceDetectorYN`` runs any ONNX graph with YuNet's outputs: for each stride s in
(8, 16, 32), ``cls_s`` and ``obj_s`` (1, cells, 1), ``bbox_s`` (1, cells, 4: centre offset and log
size in stride units) and ``kps_s`` (1, cells, 10: five points in stride units from the cell's
corner); the input is the BGR image padded to a multiple of 32, values 0-255. The tiny detector
scores each 32-pixel cell by its brightness (a bright square on a dark image is a "face"; a dark
image has none) and places a 96-pixel box with five keypoints in the ArcFace layout (left eye,
right eye, nose, left and right mouth corners, as the image shows them) around the cell's centre.

``cv2.FaceRecognizerSF`` feeds a 112x112 aligned crop and reads a (1, 128) feature. The tiny
recogniser pools the crop to 7x7x3 and multiplies by a fixed random matrix, so different crops
give different features and the same crop the same one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

YUNET_NAME = "face_detection_yunet_2023mar.onnx"
SFACE_NAME = "face_recognition_sface_2021dec.onnx"
STRIDES = (8, 16, 32)
# Keypoints in stride-32 cell units from the cell's top-left corner (centre at 0.5, 0.5).
KEYPOINTS = np.array([[0.2, 0.25], [0.8, 0.25], [0.5, 0.55], [0.27, 0.85], [0.73, 0.85]], dtype=np.float32)
BOX_SCALE = 3.0  # boxes three cells wide, so neighbouring cells' boxes overlap and NMS keeps one


def _save(graph, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_yunet(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    inits.append(numpy_helper.from_array(np.array([1, -1, 1], dtype=np.int64), "shape_cells"))
    const("inv255x4", 4.0 / 255.0)
    const("minus2", -2.0)
    const("zero", 0.0)
    const("one", 1.0)
    const("bbox_const", [[[0.5, 0.5, float(np.log(BOX_SCALE)), float(np.log(BOX_SCALE))]]])
    const("kps_const", KEYPOINTS.reshape(1, 1, 10))
    outputs = {}
    for s in STRIDES:
        nodes += [
            helper.make_node("AveragePool", ["input"], [f"pool_{s}"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("ReduceMean", [f"pool_{s}"], [f"gray_{s}"], axes=[1], keepdims=1),
            helper.make_node("Reshape", [f"gray_{s}", "shape_cells"], [f"cells_{s}"]),
            helper.make_node("Mul", [f"cells_{s}", "zero"], [f"zeros_{s}"]),
        ]
        if s == 32:  # brightness 0 -> score 0, above ~190 -> 1
            nodes += [
                helper.make_node("Mul", [f"cells_{s}", "inv255x4"], [f"scaled_{s}"]),
                helper.make_node("Add", [f"scaled_{s}", "minus2"], [f"shifted_{s}"]),
                helper.make_node("Clip", [f"shifted_{s}", "zero", "one"], [f"score_{s}"]),
            ]
            score = f"score_{s}"
        else:
            score = f"zeros_{s}"
        nodes += [
            helper.make_node("Identity", [score], [f"cls_{s}"]),
            helper.make_node("Identity", [score], [f"obj_{s}"]),
            helper.make_node("Add", [f"zeros_{s}", "bbox_const"], [f"bbox_{s}"]),
            helper.make_node("Add", [f"zeros_{s}", "kps_const"], [f"kps_{s}"]),
        ]
        for kind, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)):
            outputs[f"{kind}_{s}"] = helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [1, None, width])
    order = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES]
    graph = helper.make_graph(
        nodes, "tiny_yunet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, None, None])],
        [outputs[name] for name in order], initializer=inits)
    return _save(graph, path)


def build_sface(path: Path, seed: int = 0) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    matrix = np.random.default_rng(seed).standard_normal((147, 128)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["data"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "matrix"], ["fc1"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_sface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 128])],
        initializer=[numpy_helper.from_array(matrix, "matrix")])
    return _save(graph, path)


def build(folder: Path) -> Path:
    """``folder`` (ComfyUI's models/facedetection) with both files under their published names."""
    folder = Path(folder)
    build_yunet(folder / YUNET_NAME)
    build_sface(folder / SFACE_NAME)
    return folder


def face_image(height: int = 256, width: int = 320, top: int = 96, left: int = 128, size: int = 64, seed: int = 0):
    """A dark RGB image with one bright textured square (the tiny detector's face) at (top, left)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 30, (height, width, 3), dtype=np.uint8)
    image[top:top + size, left:left + size] = rng.integers(200, 256, (size, size, 3), dtype=np.uint8)
    return image

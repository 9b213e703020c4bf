"""A tiny model in the official format of MediaPipe's selfie multiclass segmenter (.tflite).

The published ``selfie_multiclass_256x256.tflite`` takes one RGB image, float32 NHWC
``[1, 256, 256, 3]`` in [0, 1] (tensor ``input_29``), and returns float32 ``[1, 256, 256, 6]``
logits (tensor ``Identity``) for background, hair, body skin, face skin, clothes and others.
This builder writes a TFLite flatbuffer with the same input and output tensors, made with the
schema's generated object API that ships inside ``ai-edge-litert`` (no TensorFlow): a 2x2
average pool (the coarse half-resolution map), a 1x1 convolution and a bilinear resize back to
256x256 (half-pixel centres, as TensorFlow's Keras resize), so the output is coarser than the
photo, as the real model's is.

The convolution is colour-keyed: class k's logit is ``T * (2 c_k . x - |c_k|^2)``, which ranks
the classes as the distance from the pixel's colour ``x`` to class k's colour ``c_k`` does (the
``-|x|^2`` term, the same for every class, is left out). So a photo painted in
:data:`COLOURS` parses to known classes, and the tests know where every border lies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NAME = "selfie_multiclass_256x256.tflite"
FOLDER = "mediapipe"
INPUT_NAME, OUTPUT_NAME = "input_29", "Identity"
SIZE = 256
# RGB colour of each class of the model (index = class id), what the painted photos use.
COLOURS = np.array([
    (10, 10, 10),  # 0 background
    (110, 60, 20),  # 1 hair
    (225, 150, 110),  # 2 body skin
    (250, 205, 175),  # 3 face skin
    (40, 60, 200),  # 4 clothes
    (220, 220, 40),  # 5 others (accessories)
], dtype=np.uint8)
TEMPERATURE = 20.0

# (selfie class, y0, y1, x0, x1) as fractions of the side; later rows paint over earlier ones.
PERSON = (
    (1, 0.10, 0.22, 0.32, 0.60),  # hair
    (3, 0.14, 0.34, 0.36, 0.56),  # face
    (2, 0.34, 0.40, 0.41, 0.51),  # neck (body skin)
    (2, 0.38, 0.70, 0.18, 0.28),  # arms
    (2, 0.38, 0.70, 0.62, 0.72),
    (4, 0.38, 0.70, 0.28, 0.62),  # top
    (4, 0.70, 0.95, 0.30, 0.60),  # trousers
    (5, 0.55, 0.75, 0.74, 0.86),  # bag
)


def weights() -> tuple[np.ndarray, np.ndarray]:
    """The 1x1 convolution: filter (6, 1, 1, 3) and bias (6,), float32."""
    c = COLOURS.astype(np.float64) / 255.0
    w = (TEMPERATURE * 2.0 * c).reshape(6, 1, 1, 3)
    b = -TEMPERATURE * (c * c).sum(axis=1)
    return w.astype(np.float32), b.astype(np.float32)


def expected_logits(rgb_256: np.ndarray) -> np.ndarray:
    """What the tiny model computes for a 256x256 float [0, 1] input, in numpy: (256, 256, 6)."""
    import cv2

    w, b = weights()
    pooled = rgb_256.reshape(SIZE // 2, 2, SIZE // 2, 2, 3).mean(axis=(1, 3))
    logits = pooled @ w.reshape(6, 3).T + b
    return cv2.resize(logits.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)


def build(path: Path) -> Path:
    """Write the tiny segmenter to ``path`` (a .tflite flatbuffer) and return it."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    w, b = weights()
    buffers = [s.BufferT()]  # buffer 0: the schema's empty sentinel

    def buffer(data: np.ndarray | None) -> int:
        buf = s.BufferT()
        if data is not None:
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        buffers.append(buf)
        return len(buffers) - 1

    tensors = []

    def tensor(name: str, shape, dtype=s.TensorType.FLOAT32, data: np.ndarray | None = None) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), list(shape), dtype, buffer(data)
        tensors.append(t)
        return len(tensors) - 1

    x = tensor(INPUT_NAME, (1, SIZE, SIZE, 3))
    pooled = tensor("pooled", (1, SIZE // 2, SIZE // 2, 3))
    kernel = tensor("classifier/kernel", w.shape, data=w)
    bias = tensor("classifier/bias", b.shape, data=b)
    coarse = tensor("coarse_logits", (1, SIZE // 2, SIZE // 2, 6))
    size = tensor("resize/size", (2,), s.TensorType.INT32, data=np.array([SIZE, SIZE], np.int32))
    out = tensor(OUTPUT_NAME, (1, SIZE, SIZE, 6))

    codes = []
    for op in (s.BuiltinOperator.AVERAGE_POOL_2D, s.BuiltinOperator.CONV_2D, s.BuiltinOperator.RESIZE_BILINEAR):
        code = s.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = op, min(op, 127), 1
        codes.append(code)

    def operator(code: int, inputs, outputs, options_type, options):
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = code, list(inputs), list(outputs)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        return o

    pool = s.Pool2DOptionsT()
    pool.padding, pool.strideW, pool.strideH, pool.filterWidth, pool.filterHeight = s.Padding.VALID, 2, 2, 2, 2
    conv = s.Conv2DOptionsT()
    conv.padding, conv.strideW, conv.strideH = s.Padding.VALID, 1, 1
    conv.dilationWFactor = conv.dilationHFactor = 1
    resize = s.ResizeBilinearOptionsT()
    resize.alignCorners, resize.halfPixelCenters = False, True

    graph = s.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.name = tensors, [x], [out], b"main"
    graph.operators = [
        operator(0, [x], [pooled], s.BuiltinOptions.Pool2DOptions, pool),
        operator(1, [pooled, kernel, bias], [coarse], s.BuiltinOptions.Conv2DOptions, conv),
        operator(2, [coarse, size], [out], s.BuiltinOptions.ResizeBilinearOptions, resize),
    ]
    model = s.ModelT()
    model.version, model.description = 3, b"tiny stand-in for selfie_multiclass_256x256 (tests)"
    model.operatorCodes, model.subgraphs, model.buffers = codes, [graph], buffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(builder.Output()))
    return path


def install(models_dir: Path) -> Path:
    """The tiny segmenter under its published name in ``<models_dir>/mediapipe/``."""
    return build(Path(models_dir) / FOLDER / NAME)


def paint(size: int = 256, seed: int = 0, rows=PERSON, height: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(photo, classes): a person painted in :data:`COLOURS` with a little noise, and the selfie
    class of every pixel (uint8), ``height`` x ``size`` (square by default)."""
    h = height or size
    rng = np.random.default_rng(seed)
    classes = np.zeros((h, size), np.uint8)
    for cls, y0, y1, x0, x1 in rows:
        classes[int(y0 * h):int(y1 * h), int(x0 * size):int(x1 * size)] = cls
    noise = rng.integers(-6, 7, (h, size, 1))
    photo = np.clip(COLOURS[classes].astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return photo, classes

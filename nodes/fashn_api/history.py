"""Reading a finished ComfyUI job: its failure as a FASHN error, its saved images as output bytes."""

from __future__ import annotations

import io
from pathlib import Path

from ..pipeline import errors as pipeline_errors
from ..workflow_runner import failure_event

MIME = {"png": "image/png", "jpeg": "image/jpeg"}
_API_NAMES: dict[str, str] = {}


def encode(image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, format="JPEG", quality=95)
    else:
        image.save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def inside(root: Path, relative: Path) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise RuntimeError(f"output path {relative} is outside ComfyUI's output folder")
    return path


def api_name(exception_type: str) -> str:
    """FASHN error name for an exception class name from ComfyUI's history (module path ignored)."""
    if not _API_NAMES:
        stack = [pipeline_errors.ModelSwapError]
        while stack:
            cls = stack.pop()
            _API_NAMES[cls.__name__] = cls.api_name
            stack.extend(cls.__subclasses__())
    return _API_NAMES.get(exception_type.rsplit(".", 1)[-1], "PipelineError")


def history_error(status: dict) -> tuple[str, str]:
    event = failure_event(status)
    if event is None:
        return "PipelineError", "ComfyUI reported the run as failed without an error message; see ComfyUI's log."
    kind, data = event
    if kind == "execution_interrupted":
        return "PipelineError", "The run was cancelled in ComfyUI (interrupted) before it finished."
    node = f"{data.get('node_type')} (node {data.get('node_id')})"
    return api_name(str(data.get("exception_type", ""))), f"{data.get('exception_message', '').strip()} [{node}]"

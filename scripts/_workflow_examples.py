"""The editor workflows' ``properties.models`` and their Templates thumbnails (what ComfyUI's
missing-models dialog and Templates browser read), kept in step with the shipped API workflows by
scripts/export_ui_workflows.py (``--examples``).

ComfyUI's Templates browser lists every ``*.json`` directly in a pack's ``workflows/`` (and
``example_workflows/``) folder, with ``<name>.jpg`` as its thumbnail: so ``workflows/`` holds the editor
workflows and their thumbnails, and the API-format twins live in ``workflows/api/``, where the browser
does not look. Each workflow is listed once and opens in the editor."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
API_DIR = WORKFLOWS / "api"
THUMBNAIL = (512, 512)  # at most, aspect kept
FRONTEND_SUFFIXES = (".safetensors", ".sft")  # what ComfyUI's missing-models dialog downloads


def _import_pack() -> None:
    """The pack as ``comfyui_model_swap`` (its folder name varies)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import _pack

    _pack.import_pack()


def embedded_workflow(png: Path) -> dict | None:
    """The UI workflow a PNG carries in its ``workflow`` text chunk (as ComfyUI's own images do)."""
    from PIL import Image

    with Image.open(png) as image:
        text = image.text.get("workflow") if hasattr(image, "text") else None
    return json.loads(text) if text else None


def workflow_text(workflow: Mapping[str, Any]) -> str:
    return json.dumps(workflow, indent=2) + "\n"


def ui_name(api_path: Path) -> str:
    """``model_swap_api.json`` -> ``model_swap``."""
    stem = api_path.stem
    return stem[: -len("_api")] if stem.endswith("_api") else stem


def models_property(api_node: Mapping[str, Any]) -> list[dict]:
    """``properties.models`` of one node: the published single files it names, for the frontend."""
    from comfyui_model_swap.nodes import workflow_runner as wr

    entries = []
    for key, name in wr.required_models({"1": dict(api_node)}):
        spec = wr.model_files.MODELS[key]
        url = spec.download_url
        if name == spec.name and not spec.is_folder and name.endswith(FRONTEND_SUFFIXES) \
                and url.startswith("https://huggingface.co/"):
            entries.append({"name": name, "url": url, "directory": spec.folder})
    return entries


def with_models(workflow: dict, api: Mapping[str, Any]) -> dict:
    """``workflow`` with ``properties.models`` set on every node that names published files
    (and removed from the others)."""
    for node in workflow["nodes"]:
        entries = models_property(api[str(node["id"])]) if str(node["id"]) in api else []
        properties = node.setdefault("properties", {})
        if entries:
            properties["models"] = entries
        else:
            properties.pop("models", None)
    return workflow


def thumbnail_bytes(png: Path) -> bytes:
    """A JPEG thumbnail of a workflow picture (the Templates browser shows ``<name>.jpg``)."""
    import io

    from PIL import Image

    with Image.open(png) as image:
        image = image.convert("RGB")
        image.thumbnail(THUMBNAIL, Image.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


def repicture(png: Path, workflow: Mapping[str, Any]) -> None:
    """Put ``workflow`` into an existing picture's ``workflow`` text chunk (pixels unchanged)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(png) as image:
        pixels = image.convert("RGB")
    info = PngInfo()
    info.add_text("workflow", json.dumps(workflow, separators=(",", ":")))
    pixels.save(png, pnginfo=info, optimize=True)


def sync_examples(check: bool = False) -> list[Path]:
    """Bring ``properties.models`` of ``workflows/<name>.json`` (and its picture) and the thumbnails
    ``workflows/<name>.jpg`` in step with the API files; returns the files out of step (with ``check``,
    written otherwise)."""
    _import_pack()
    stale = []
    wanted: dict[Path, bytes] = {}
    for api_path in sorted(API_DIR.glob("*_api.json")):
        name = ui_name(api_path)
        ui_path, png = WORKFLOWS / f"{name}.json", WORKFLOWS / f"{name}.png"
        if not ui_path.is_file():
            continue
        current = ui_path.read_text()
        workflow = with_models(json.loads(current), json.loads(api_path.read_text()))
        text = workflow_text(workflow)
        if text != current:
            stale.append(ui_path)
            if not check:
                ui_path.write_text(text)
        if png.is_file() and embedded_workflow(png) != workflow:
            stale.append(png)
            if not check:
                repicture(png, workflow)
        if png.is_file():
            wanted[WORKFLOWS / f"{name}.jpg"] = thumbnail_bytes(png)
    present = set(WORKFLOWS.glob("*.jpg"))
    for path in sorted(present - set(wanted)):
        stale.append(path)
        if not check:
            path.unlink()
    for path, content in wanted.items():
        if not path.is_file() or path.read_bytes() != content:
            stale.append(path)
            if not check:
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(content)
    return stale

"""Run an exported API-format workflow headlessly: fill its inputs, queue it, collect the images.

Comfy-free (standard library only), so it works from any Python:

    python scripts/run_workflow.py workflows/model_swap_api.json --image photo.jpg --out results/
        [--face-reference face.jpg] [--seed 7] [--num-images 2] [--prompt "..."]
        [--server http://127.0.0.1:8188 | --comfyui /path/to/ComfyUI] [--models-dir DIR] [-- COMFYUI FLAGS]

With ``--server`` it talks to a running ComfyUI over HTTP. With ``--comfyui`` it starts
that ComfyUI headless on a free loopback port for this one job and stops it after.
Before anything starts, every model the workflow's loaders name is looked up in the
models folders ComfyUI will use (``--base-directory`` and ``--extra-model-paths-config``
among the ComfyUI flags, and ComfyUI's extra_model_paths.yaml, are honoured); if one is
missing the run stops at once with the list of what to download and where
(:data:`EXIT_MISSING_MODELS`).
"""

from __future__ import annotations

import copy
import json
import mimetypes
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .model_folders import (LEGACY_FOLDERS, ModelFolders, WorkflowError, comfy_args_value, model_folders,
                            read_extra_model_paths)
from .pipeline import model_files

__all__ = ["LEGACY_FOLDERS", "ModelFolders", "WorkflowError", "comfy_args_value", "model_folders",
           "read_extra_model_paths"]

# Exit codes of the headless runner (and of scripts/get_models.py, which shares the first three).
EXIT_FAILED = 1  # the job failed (or, for the installer, a download failed)
EXIT_USAGE = 2  # a bad command line or input file (argparse uses 2 as well)
EXIT_MISSING_MODELS = 3  # models are missing; what to download and where is printed
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy



@dataclass
class Overrides:
    image: Path
    face_reference: Path | None = None
    seed: int | None = None
    num_images: int | None = None
    prompt: str | None = None
    face_reference_mode: str | None = None
    filename_prefix: str | None = None
    settings: list[str] = field(default_factory=list)  # "ClassType.input=value" (value parsed as JSON if it can be)


@dataclass
class JobResult:
    prompt_id: str
    files: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- the graph

def load_workflow(path: Path) -> dict:
    try:
        graph = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WorkflowError(f"Cannot read the workflow {path}: {exc}") from exc
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise WorkflowError(
            f"{path} is not an API-format workflow (a map of node id -> {{class_type, inputs}}). In ComfyUI use "
            "'Export (API)' or the *_api.json files in workflows/.")
    return graph


def _consumers(graph: dict, node_id: str):
    for nid, node in graph.items():
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id):
                yield nid, node["class_type"], name


def image_roles(graph: dict) -> dict[str, str]:
    """LoadImage node id -> 'model' or 'face_reference', read from what each one feeds."""
    roles = {}
    for nid, node in graph.items():
        if node["class_type"] != "LoadImage":
            continue
        uses = {(cls, name) for _, cls, name in _consumers(graph, nid)}
        if any(name == "face_reference" for _, name in uses):
            roles[nid] = "face_reference"
        elif any(cls.endswith("GarmentMask") and name == "image" for cls, name in uses):
            roles[nid] = "model"
    return roles


def apply_overrides(graph: dict, overrides: Overrides, uploaded: dict[str, str]) -> dict:
    """A copy of ``graph`` with the image files, seed, num_images, prompt and mode replaced."""
    graph = copy.deepcopy(graph)
    roles = image_roles(graph)
    if "model" not in roles.values():
        raise WorkflowError("The workflow has no LoadImage feeding GarmentMask's image: nothing to put --image in.")
    for nid, role in roles.items():
        if role == "face_reference" and role not in uploaded:
            raise WorkflowError("This workflow takes a face reference: pass --face-reference FILE "
                                "(or use the workflow without one).")
        graph[nid]["inputs"]["image"] = uploaded[role]
    if "face_reference" in uploaded and "face_reference" not in roles.values():
        raise WorkflowError("--face-reference was given but this workflow has no face reference input: use "
                            "workflows/model_swap_face_reference_api.json.")
    for node in graph.values():
        cls, inputs = node["class_type"], node["inputs"]
        if cls.endswith("_Sampler"):
            for key in ("seed", "num_images", "prompt"):
                value = getattr(overrides, key)
                if value is not None:
                    inputs[key] = value
        if cls.endswith("_FaceRefine") and overrides.face_reference_mode:
            inputs["face_reference_mode"] = overrides.face_reference_mode
        if cls == "SaveImage" and overrides.filename_prefix:
            inputs["filename_prefix"] = overrides.filename_prefix
    for item in overrides.settings:
        _apply_setting(graph, item)
    return graph


def _apply_setting(graph: dict, item: str) -> None:
    """``ClassType.input=value`` (or ``Node title.input=value``) sets a widget on every matching node."""
    target, sep, raw = item.partition("=")
    node_name, dot, key = target.rpartition(".")
    if not sep or not dot or not node_name or not key:
        raise WorkflowError(f"--set {item!r}: write it as NodeClass.input=value, e.g. ModelSwap_FaceRefine.strength=0.5")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    hits = [n for n in graph.values()
            if node_name in (n["class_type"], n.get("_meta", {}).get("title")) and key in n.get("inputs", {})]
    if not hits:
        raise WorkflowError(f"--set {item!r}: no node of class or title {node_name!r} has an input {key!r}.")
    for node in hits:
        if isinstance(node["inputs"][key], list):
            raise WorkflowError(f"--set {item!r}: {key} is a link from another node, not a value.")
        node["inputs"][key] = value


def required_models(graph: dict) -> list[tuple[str, str]]:
    """(registry key, name) of every model the workflow's loader nodes name, in graph order, once each.

    The one answer to "which models does this graph need": the headless runner's check, the
    installer (scripts/get_models.py) and the editor workflows' ``properties.models`` all use it.
    Which input names which model is the registry's business (``ModelSpec.inputs``,
    :func:`model_files.key_for_input`), so a new loader or model needs no change here.
    """
    needs: list[tuple[str, str]] = []
    for node in graph.values():
        cls, inputs = node.get("class_type", ""), node.get("inputs", {})
        chosen = {name: model_files.key_for_input(cls, name, value) for name, value in inputs.items()}
        unused = {c for key in chosen.values() if key for c in model_files.MODELS[key].covers}
        found = [(key, inputs[name]) for name, key in chosen.items()
                 if key is not None and f"{model_files.short_name(cls)}.{name}" not in unused]
        found += [(key, model_files.MODELS[key].name) for key in model_files.keys_for_node(cls)]
        needs += [need for need in found if need not in needs]
    return needs


def missing_models(graph: dict, models_dirs: list[Path] | ModelFolders) -> list[str]:
    """What to download and where, one line per model the workflow needs and no folder holds
    complete (a folder model lacking one of its files counts as missing)."""
    folders = models_dirs if isinstance(models_dirs, ModelFolders) else ModelFolders([Path(d) for d in models_dirs])
    lines = []
    for key, name in required_models(graph):
        if folders.find(key, name) is None:
            spec = model_files.MODELS[key]
            lines.append(model_files.describe(spec, name).replace(
                f"ComfyUI/models/{spec.folder}/", f"{folders.target(spec.folder)}/"))
    return lines


# ----------------------------------------------------------------------------- talking to ComfyUI

def encode_multipart(fields: dict[str, str], file_field: str, file_path: Path) -> tuple[bytes, str]:
    """A multipart/form-data body with ``fields`` and one file, and its Content-Type header value."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    ctype = mimetypes.guess_type(file_path.name)[0] or "application/octet-stream"
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                 f'filename="{file_path.name}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
                 + Path(file_path).read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ComfyClient:
    """The pack's one HTTP client for ComfyUI: /upload/image, /prompt, /history, /view.

    The headless runner drives jobs with it, and tests/comfy_harness.py sends every request through
    :meth:`request`. Connections are direct (no proxy from the environment)."""

    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float | None = None) -> tuple[int, bytes]:
        """One request; (status, body) for any HTTP status. Raises URLError when ComfyUI cannot be reached."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=dict(headers or {}))
        try:
            with _DIRECT.open(req, timeout=timeout or self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> bytes:
        try:
            status, answer = self.request(method, path, body, headers)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise WorkflowError(f"Cannot reach ComfyUI at {self.url}: {reason}. Is it running?") from exc
        if status >= 400:
            detail = answer.decode("utf-8", "replace")
            if status == 400 and path == "/prompt":
                raise WorkflowError(f"ComfyUI rejected the workflow: {detail[:4000]}")
            raise WorkflowError(f"{method} {path} answered HTTP {status}: {detail[:2000]}")
        return answer

    def get_json(self, path: str):
        return json.loads(self._call("GET", path))

    def upload_image(self, path: Path, subfolder: str = "", overwrite: bool = True) -> str:
        """Upload a file into ComfyUI's input folder; returns the name a LoadImage node takes."""
        fields = {"type": "input", "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        body, content_type = encode_multipart(fields, "image", path)
        answer = json.loads(self._call("POST", "/upload/image", body, {"Content-Type": content_type}))
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def queue(self, graph: dict) -> str:
        body = json.dumps({"prompt": graph, "client_id": uuid.uuid4().hex}).encode()
        return json.loads(self._call("POST", "/prompt", body, {"Content-Type": "application/json"}))["prompt_id"]

    def wait(self, prompt_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status", {})
            if status.get("completed") or status.get("status_str") == "error":
                if status.get("status_str") != "success":
                    raise WorkflowError(f"The workflow failed: {_failure(status)}")
                return entry
            time.sleep(0.25)
        raise WorkflowError(f"The workflow did not finish within {timeout:.0f} s.")

    def download(self, image: dict, dest: Path) -> Path:
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        dest.write_bytes(self._call("GET", f"/view?{query}"))
        return dest


def failure_event(status: dict) -> tuple[str, dict] | None:
    """The message of a history entry's status that ended the run: ('execution_error' or
    'execution_interrupted', its data), or None when there is none."""
    for kind, data in status.get("messages") or []:
        if kind in ("execution_error", "execution_interrupted"):
            return kind, data
    return None


def _failure(status: dict) -> str:
    event = failure_event(status)
    if event is None:
        return json.dumps(status)[:2000]
    kind, data = event
    if kind == "execution_error":
        return f"{data.get('node_type')}: {data.get('exception_message', '').strip()}"
    return "interrupted"


def run(client: ComfyClient, graph: dict, overrides: Overrides, out_dir: Path, timeout: float = 3600.0) -> JobResult:
    uploaded = {"model": client.upload_image(overrides.image)}
    if overrides.face_reference is not None:
        uploaded["face_reference"] = client.upload_image(overrides.face_reference)
    job = apply_overrides(graph, overrides, uploaded)
    prompt_id = client.queue(job)
    entry = client.wait(prompt_id, timeout)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = JobResult(prompt_id)
    for node_id, output in sorted(entry.get("outputs", {}).items()):
        for i, image in enumerate(output.get("images", [])):
            if image.get("type") != "output":
                continue
            result.files.append(client.download(image, out_dir / f"{Path(image['filename']).stem}.png"))
    if not result.files:
        raise WorkflowError("The workflow finished but saved no image: does it end in a SaveImage node?")
    return result


# ----------------------------------------------------------------------------- a private ComfyUI

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalComfy:
    """ComfyUI started headless on a free loopback port for one job (context manager)."""

    def __init__(self, comfyui: Path, extra_args: list[str] | None = None, startup_timeout: float = 300.0):
        self.comfyui = Path(comfyui)
        if not (self.comfyui / "main.py").is_file():
            raise WorkflowError(f"{comfyui} is not a ComfyUI folder (no main.py).")
        self.extra_args = extra_args or []
        self.startup_timeout = startup_timeout
        self.process = None
        self.url = ""

    def __enter__(self) -> ComfyClient:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
               *self.extra_args]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"comfyui-run-{port}.log", "w")
        self.process = subprocess.Popen(cmd, cwd=self.comfyui, stdout=self.log, stderr=subprocess.STDOUT)
        client = ComfyClient(self.url)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WorkflowError(f"ComfyUI exited while starting; see {self.log.name}")
            try:
                client.get_json("/object_info/SaveImage")
                return client
            except WorkflowError:
                time.sleep(0.5)
        raise WorkflowError(f"ComfyUI did not start within {self.startup_timeout:.0f} s; see {self.log.name}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

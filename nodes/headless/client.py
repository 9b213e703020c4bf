"""The pack's one HTTP client for ComfyUI (/upload/image, /prompt, /history, /view) and the job it drives:
upload the photos, fill the graph, queue it, wait, download the saved images. Standard library only.
"""

from __future__ import annotations

import json
import mimetypes
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..model_folders import WorkflowError
from .graph import Overrides, apply_overrides

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


@dataclass
class JobResult:
    prompt_id: str
    files: list[Path] = field(default_factory=list)


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

    def queue(self, graph: dict, client_id: str | None = None) -> str:
        body = json.dumps({"prompt": graph, "client_id": client_id or uuid.uuid4().hex}).encode()
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

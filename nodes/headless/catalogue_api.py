"""A catalogue run through the pack's FASHN-compatible HTTP API (``POST /v1/run``, ``GET /v1/status``)
instead of a workflow: at most ``concurrency`` predictions open at once, so one server, or a Redis
cluster of them, takes the set at the pace its GPUs allow (a 429 ConcurrencyLimitExceeded waits and
sends again). Same manifest, resume, progress and summary as the workflow run. Standard library only.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import time
from pathlib import Path

from ..model_folders import WorkflowError
from .catalogue import Item, Manifest, Record, image_problem
from .catalogue_run import POLL_S, Progress, Summary, _now, resume
from .client import ComfyClient


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(Path(path).name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


class _Api:
    def __init__(self, url: str, api_key: str | None):
        self.client = ComfyClient(url)
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"}
                                                                 if api_key else {})}

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        try:
            status, answer = self.client.request(method, path, None if body is None else json.dumps(body).encode(),
                                                 self.headers)
        except OSError as exc:
            raise WorkflowError(f"Cannot reach the API at {self.client.url}: {exc}. Is it running?") from exc
        try:
            return status, json.loads(answer)
        except ValueError as exc:
            raise WorkflowError(f"{method} {path} answered HTTP {status} with no JSON: is {self.client.url} "
                                "the Model Swap API (ComfyUI with this pack)?") from exc


def run_catalogue_api(url: str, items: list[Item], out_dir: Path, *, inputs: dict, api_key: str | None = None,
                      concurrency: int = 2, timeout: float = 3600.0, stream=None) -> Summary:
    """Send every photo of ``items`` to the API at ``url`` with ``inputs`` (FASHN's names: seed, prompt,
    generation_mode, face_reference as a path, ...); each item's own seed, prompt and face win."""
    api, out_dir = _Api(url, api_key), Path(out_dir)
    manifest, order = Manifest(out_dir), [item.name for item in items]
    summary, progress = Summary(total=len(items)), Progress(len(items), stream)
    started = last_done = time.monotonic()
    todo = resume(items, manifest, summary, progress)

    def record(item: Item, status: str, seconds: float, **fields) -> None:
        r = Record(input=str(item.image), name=item.name, status=status, seconds=round(seconds, 3),
                   face_reference=str(item.face_reference or inputs.get("face_reference") or ""),
                   face=item.face or inputs.get("face") or "", finished_at=_now(), **fields)
        manifest.put(r, order)
        summary.counts[status] += 1
        progress.finished(r, seconds)

    pending: dict[str, tuple[Item, int | None, float]] = {}  # prediction id -> item, seed, sent at
    while todo or pending:
        while todo and len(pending) < concurrency:
            item = todo.popleft()
            seed = item.seed if item.seed is not None else inputs.get("seed")
            try:
                body = _request(item, inputs, seed)
            except WorkflowError as exc:
                record(item, "error", 0.0, error=str(exc), seed=seed)
                continue
            status, answer = api.call("POST", "/v1/run", body)
            if status == 429:  # the server's own limit: send it again when one of ours is done
                todo.appendleft(item)
                break
            if status != 200 or not answer.get("id"):
                record(item, "error", 0.0, seed=seed,
                       error=f"The API refused it (HTTP {status} {answer.get('error')}: {answer.get('message')})")
                continue
            pending[answer["id"]] = (item, seed, time.monotonic())
            summary.queued += 1
        if not pending:
            if todo:
                time.sleep(POLL_S)
            continue
        time.sleep(POLL_S)
        for pid, (item, seed, sent) in list(pending.items()):
            status, answer = api.call("GET", f"/v1/status/{pid}")
            state = answer.get("status")
            if state not in ("completed", "failed") and time.monotonic() - sent < timeout:
                progress.working(item.name, time.monotonic() - max(sent, last_done))
                continue
            del pending[pid]
            now = time.monotonic()
            seconds, last_done = now - max(sent, last_done), now
            if state == "completed":
                try:
                    outputs = _save(answer.get("output") or [], api, item.name, out_dir)
                    if not outputs:
                        raise WorkflowError("The prediction completed with no output.")
                except WorkflowError as exc:
                    record(item, "error", seconds, error=str(exc), seed=seed, prompt_id=pid)
                    continue
                record(item, "ok", seconds, outputs=outputs, seed=seed, prompt_id=pid)
            else:
                error = answer.get("error") or {}
                why = f"{error.get('name')}: {error.get('message')}" if isinstance(error, dict) else str(error)
                if state != "failed":
                    why = f"no answer within {timeout:.0f} s (--timeout)"
                record(item, "error", seconds, error=f"The prediction failed: {why}", seed=seed, prompt_id=pid)
    summary.seconds = time.monotonic() - started
    return summary


def _request(item: Item, inputs: dict, seed) -> dict:
    problem = image_problem(Path(item.image))
    if problem:
        raise WorkflowError(f"{problem}: replace or remove it, then run the same command again.")
    body = {k: v for k, v in inputs.items() if v is not None and k not in ("face_reference", "face")}
    body.update(model_image=data_uri(item.image), return_base64=True, output_format="png")
    name = item.face or (None if item.face_reference else inputs.get("face"))
    face = item.face_reference or (None if item.face else inputs.get("face_reference"))
    if name:  # the API's local extension: a saved face of the server's library
        body["face_reference"] = f"face:{name}"
    elif face is not None:
        body["face_reference"] = data_uri(Path(face))
    if seed is not None:
        body["seed"] = seed
    if item.prompt is not None:
        body["prompt"] = item.prompt
    if item.aspect_ratio is not None:
        body["aspect_ratio"] = item.aspect_ratio
    return {"model_name": "model-swap", "inputs": body}


def _save(output: list, api: _Api, name: str, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for k, value in enumerate(output, start=1):
        target = out_dir / f"{name}_{k}.png"
        if value.startswith("data:"):
            target.write_bytes(base64.b64decode(value.split(",", 1)[1]))
        else:  # a URL on the server
            path = "/" + value.split("://", 1)[-1].split("/", 1)[-1]
            status, data = api.client.request("GET", path, headers=api.headers)
            if status != 200:
                raise WorkflowError(f"Downloading {value} answered HTTP {status}.")
            target.write_bytes(data)
        files.append(target.name)
    return files

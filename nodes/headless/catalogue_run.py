"""A catalogue run: many photos through one ComfyUI, the next job always queued while one runs.

Each photo is checked (readable image), uploaded, filled into the workflow and queued, at most
``in_flight`` at a time, so ComfyUI never waits for the next photo's upload and graph. A photo that
fails is recorded with its error and the set goes on; a photo whose outputs a previous run made is
skipped. The manifest is rewritten after every photo, so a crash or Ctrl-C costs only the photos in
flight. Standard library only.
"""

from __future__ import annotations

import collections
import datetime
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..model_folders import WorkflowError
from .catalogue import Item, Manifest, Record, image_problem
from .client import ComfyClient, _failure
from .graph import Overrides, apply_overrides
from .progress_ws import StepWatcher

POLL_S = 0.2


@dataclass
class Summary:
    total: int = 0
    counts: dict = field(default_factory=lambda: {"ok": 0, "note": 0, "error": 0})  # the whole set's
    skipped: int = 0  # photos a previous run made (counted in ``counts`` too)
    seconds: float = 0.0
    queued: int = 0  # jobs this run sent to ComfyUI

    @property
    def failed(self) -> int:
        return self.counts["error"]

    def line(self) -> str:
        c = self.counts
        return (f"Catalogue: {self.total} photos: {c['ok']} ok, {c['note']} with a note, {c['error']} failed "
                f"({self.skipped} done before, skipped) in {self.seconds:.0f} s")


class Progress:
    """One live line on ``stream``: photos done of the set, the counts, ETA, the photo being made.
    On a terminal it is redrawn in place; elsewhere (a log, a pipe) a line is printed per photo."""

    def __init__(self, total: int, stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.made, self.made_s = 0, 0, 0.0
        self.counts = collections.Counter()

    def finished(self, record: Record | None, seconds: float = 0.0, skipped: bool = False,
                 steps: tuple[int, int] | None = None) -> None:
        self.done += 1
        self.counts["skipped" if skipped else record.status] += 1
        if not skipped and record.status != "error":
            self.made, self.made_s = self.made + 1, self.made_s + seconds
        what = "skipped (done before)" if skipped else (
            f"{record.status}" + (f": {record.error}" if record.error else "") + f" ({seconds:.1f} s"
            + (f", step {steps[0]}/{steps[1]}" if steps else "") + ")")
        self._show(f"{record.name}: {what}", final=True)

    def working(self, name: str, seconds: float, steps: tuple[int, int] | None = None) -> None:
        if self.tty:
            self._show(f"now {name}" + (f" step {steps[0]}/{steps[1]}" if steps else "") + f" ({seconds:.0f} s)",
                       final=False)

    def _show(self, tail: str, final: bool) -> None:
        left = self.total - self.done
        eta = f"ETA {_clock(left * self.made_s / self.made)}" if self.made and left else (
            "ETA -" if left else "done")
        counts = " ".join(f"{k} {self.counts[k]}" for k in ("ok", "note", "error", "skipped") if self.counts[k])
        line = f"[{self.done}/{self.total}] {100 * self.done // max(self.total, 1)}% {counts} | {eta} | {tail}"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160) + ("\n" if final and not left else ""))
        elif final:
            self.stream.write(line + "\n")
        self.stream.flush()


def resume(items: list[Item], manifest: Manifest, summary: Summary, progress: Progress) -> collections.deque:
    """The photos still to make: those the manifest records as finished (their outputs in place) are
    counted as done before and shown as skipped."""
    todo: collections.deque[Item] = collections.deque()
    for item in items:
        record = manifest.finished(item)
        if record is not None:
            summary.counts[record.status] += 1
            summary.skipped += 1
            progress.finished(record, skipped=True)
        else:
            todo.append(item)
    return todo


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class _Job:
    def __init__(self, item: Item, prompt_id: str, seed, queued_at: float):
        self.item, self.prompt_id, self.seed, self.queued_at = item, prompt_id, seed, queued_at


def run_catalogue(client: ComfyClient, graph: dict, base: Overrides, items: list[Item], out_dir: Path, *,
                  in_flight: int = 2, timeout: float = 3600.0, stream=None) -> Summary:
    """Make every photo of ``items`` with ``graph`` (filled as ``base`` says, each item's own face
    reference, seed, prompt and output name winning) into ``out_dir``; returns the counts."""
    if in_flight < 1:
        raise WorkflowError("--in-flight must be at least 1.")
    out_dir = Path(out_dir)
    manifest = Manifest(out_dir)
    order = [item.name for item in items]
    summary, progress = Summary(total=len(items)), Progress(len(items), stream)
    started = time.monotonic()
    todo = resume(items, manifest, summary, progress)
    pending: collections.deque[_Job] = collections.deque()
    faces: dict[Path, str] = {}
    last_done = time.monotonic()

    def record(item: Item, status: str, seconds: float, steps=None, **fields) -> None:
        r = Record(input=str(item.image), name=item.name, status=status, seconds=round(seconds, 3),
                   face_reference=str(item.face_reference or base.face_reference or ""), face=item.face or "",
                   finished_at=_now(), **fields)
        manifest.put(r, order)
        summary.counts[status] += 1
        progress.finished(r, seconds, steps=steps)

    client_id = uuid.uuid4().hex
    with StepWatcher(client.url, client_id) as watcher:
        try:
            while todo or pending:
                while todo and len(pending) < in_flight:
                    item = todo.popleft()
                    try:
                        pending.append(_queue(client, graph, base, item, faces, client_id))
                        summary.queued += 1
                    except WorkflowError as exc:
                        record(item, "error", 0.0, error=str(exc), seed=item.seed if item.seed is not None else base.seed)
                if not pending:
                    continue
                job = pending[0]
                entry = _wait(client, job, timeout, progress, max(last_done, job.queued_at), watcher)
                pending.popleft()
                now = time.monotonic()
                seconds, last_done = now - max(last_done, job.queued_at), now
                status = (entry.get("status") or {})
                if status.get("status_str") != "success":
                    record(job.item, "error", seconds, error=f"The workflow failed: {_failure(status)}", seed=job.seed,
                           prompt_id=job.prompt_id)
                    continue
                try:
                    outputs, notes = _collect(client, entry, job.item.name, out_dir)
                except WorkflowError as exc:
                    record(job.item, "error", seconds, error=str(exc), seed=job.seed, prompt_id=job.prompt_id)
                    continue
                record(job.item, "note" if notes else "ok", seconds, outputs=outputs, notes=notes, seed=job.seed,
                       prompt_id=job.prompt_id, steps=watcher.steps(job.prompt_id))
        except KeyboardInterrupt:
            _forget(client, [job.prompt_id for job in pending])
            raise
    summary.seconds = time.monotonic() - started
    return summary


def _queue(client: ComfyClient, graph: dict, base: Overrides, item: Item, faces: dict[Path, str],
           client_id: str) -> _Job:
    problem = image_problem(Path(item.image))
    if problem:
        raise WorkflowError(f"{problem}: replace or remove it, then run the same command again.")
    uploaded = {"model": client.upload_image(Path(item.image), subfolder=f"catalogue/{item.name}")}
    face = item.face_reference or base.face_reference
    if face is not None:
        if face not in faces:
            problem = image_problem(Path(face))
            if problem:
                raise WorkflowError(f"face reference: {problem}")
            faces[face] = client.upload_image(Path(face), subfolder="catalogue/faces")
        uploaded["face_reference"] = faces[face]
    overrides = Overrides(**{**base.__dict__, "image": Path(item.image), "face_reference": face,
                             "seed": item.seed if item.seed is not None else base.seed,
                             "prompt": item.prompt if item.prompt is not None else base.prompt,
                             "aspect_ratio": item.aspect_ratio or base.aspect_ratio,
                             "filename_prefix": f"catalogue/{item.name}"})
    job = apply_overrides(graph, overrides, uploaded)
    seeds = [n["inputs"].get("seed") for n in job.values() if n["class_type"].endswith("_Sampler")]
    return _Job(item, client.queue(job, client_id), seeds[0] if seeds else overrides.seed, time.monotonic())


def _wait(client: ComfyClient, job: _Job, timeout: float, progress: Progress, since: float,
          watcher: StepWatcher) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = client.get_json(f"/history/{job.prompt_id}").get(job.prompt_id)
        status = (entry or {}).get("status", {})
        if status.get("completed") or status.get("status_str") == "error":
            return entry
        progress.working(job.item.name, time.monotonic() - since, watcher.steps(job.prompt_id))
        time.sleep(POLL_S)
    raise WorkflowError(f"{job.item.name} did not finish within {timeout:.0f} s (--timeout).")


def _collect(client: ComfyClient, entry: dict, name: str, out_dir: Path) -> tuple[list[str], list[str]]:
    """Download a finished job's saved images as ``<name>_<k>.png``; also the notes its nodes left."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs, notes = [], []
    for _, output in sorted(entry.get("outputs", {}).items()):
        notes.extend(str(n) for n in output.get("notes", []))
        for image in output.get("images", []):
            if image.get("type") == "output":
                target = out_dir / f"{name}_{len(outputs) + 1}.png"
                client.download(image, target)
                outputs.append(target.name)
    if not outputs:
        raise WorkflowError("The workflow finished but saved no image: does it end in a SaveImage node?")
    return outputs, notes


def _forget(client: ComfyClient, prompt_ids: list[str]) -> None:
    """Take this run's queued jobs out of ComfyUI's queue (the one running finishes on its own)."""
    if prompt_ids:
        try:
            client.request("POST", "/queue", json.dumps({"delete": prompt_ids}).encode(),
                           {"Content-Type": "application/json"}, timeout=5)
        except OSError:
            pass

"""The HTTP handlers and the life of a prediction, over a queue backend (ComfyUI's, or a fake in tests).

``POST /v1/run`` validates, creates a prediction (``starting``) and answers its id at once. A task
then loads the images, fills the shipped workflow and queues it (``in_queue``); one watcher follows
every queued prediction through ComfyUI's queue (``processing``) to its history entry, where the
outputs are encoded (``completed``) or the error is named (``failed``). Results are kept for the
configured time, then ``GET /v1/status/{id}`` answers 404 ``NotFound``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from aiohttp import web

from ..pipeline import errors as pipeline_errors
from . import image_input, net
from .config import ApiConfig
from .predictions import Prediction, PredictionStore
from .protocol import HttpError, bad_request, parse_run_request, run_response, runtime_error, unauthorized
from ..workflow_runner import failure_event
from .workflow_fill import fill, output_node

log = logging.getLogger("comfyui_model_swap.api")
WORK_FOLDER = "modelswap_api"  # under ComfyUI's input/ and output/
POLL_S = 0.2
SWEEP_S = 30.0
MIME = {"png": "image/png", "jpeg": "image/jpeg"}


class BackendError(Exception):
    """The queue refused the job (``name`` is the FASHN error name to report)."""

    def __init__(self, message: str, name: str = "PipelineError"):
        super().__init__(message)
        self.name = name


class QueueBackend(Protocol):
    input_dir: Path
    output_dir: Path

    async def submit(self, graph: dict, prompt_id: str) -> str:
        """Queue ``graph``; returns the queue's id for it (``prompt_id`` where the queue honours it)."""

    async def states(self, prompt_ids: list[str]) -> dict[str, tuple[str, dict | None]]:
        """prompt id -> ('in_queue' | 'processing' | 'done' | 'gone', history entry when done)."""

    async def forget(self, prompt_id: str) -> None: ...


class FashnApi:
    def __init__(self, config: ApiConfig, backend: QueueBackend, *,
                 fetch: Callable[..., Awaitable[tuple[bytes, str]]] = net.fetch,
                 post_json: Callable[..., Awaitable[bool]] = net.post_json):
        self.config = config
        self.backend = backend
        self.fetch = fetch
        self.post_json = post_json
        self.store = PredictionStore(max_in_flight=config.max_in_flight, on_expire=self._remove_files)
        self._queued: dict[str, Prediction] = {}
        self._watcher: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._last_turn = asyncio.Event()  # set when the latest accepted prediction is queued or failed
        self._last_turn.set()

    # ------------------------------------------------------------------------------ routes
    def add_routes(self, routes: web.RouteTableDef) -> None:
        routes.post("/v1/run")(_fashn_errors(self.handle_run))
        routes.get("/v1/status/{id}")(_fashn_errors(self.handle_status))
        routes.get("/v1/outputs/{id}/{name}")(_fashn_errors(self.handle_output))

    async def handle_run(self, request: web.Request) -> web.Response:
        self._authorize(request)
        try:
            body = await request.json(loads=_strict_loads)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"The body is not valid JSON ({exc}): send a JSON object with model_name and "
                              "inputs.") from None
        run = parse_run_request(body, request.query.get("webhook_url"))
        prediction = self.store.create(run, self._base_url(request))
        log.info("model-swap API: prediction %s accepted: %s", prediction.id, json.dumps(run.summary()))
        previous, mine = self._last_turn, asyncio.Event()
        self._last_turn = mine
        self._spawn(self._start(prediction, previous, mine))
        return web.json_response(run_response(prediction.id))

    async def handle_status(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response(self.store.get(request.match_info["id"]).payload())

    async def handle_output(self, request: web.Request) -> web.StreamResponse:
        """An output image of a URL-mode prediction. The id (random, 122 bits) is the capability,
        like FASHN's CDN links; only files recorded for that prediction are served."""
        path = self.store.get(request.match_info["id"]).files.get(request.match_info["name"])
        if path is None:
            raise HttpError(404, "NotFound", "No such output for this prediction.")
        ext = path.suffix.lstrip(".")
        return web.Response(body=path.read_bytes(), content_type=MIME.get(ext, "application/octet-stream"),
                            headers={"Cache-Control": "private, max-age=3600"})

    def _authorize(self, request: web.Request) -> None:
        key = self.config.api_key
        if not key:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise unauthorized("Missing API key: send the header 'Authorization: Bearer <key>' with the key set "
                               "in MODELSWAP_API_KEY on this server.")
        if not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise unauthorized("The API key is not valid for this server (MODELSWAP_API_KEY).")

    def _base_url(self, request: web.Request) -> str:
        return self.config.public_url or f"{request.scheme}://{request.host}"

    # ------------------------------------------------------------------------------ jobs
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, prediction: Prediction, previous: asyncio.Event, mine: asyncio.Event) -> None:
        """Load the images and queue the workflow; any failure ends the prediction, nothing else.

        Images load concurrently, but each prediction enters ComfyUI's queue only after the one
        accepted before it (``previous``) did or failed, so the queue keeps the order of arrival."""
        run = prediction.request
        folder = f"{WORK_FOLDER}/{prediction.id}"
        in_dir = self.backend.input_dir / WORK_FOLDER / prediction.id
        prediction.work_dirs = [in_dir, self.backend.output_dir / WORK_FOLDER / prediction.id]
        try:
            sources = {"model": (run.model_image, "model_image")}
            if run.face_reference is not None:
                sources["face_reference"] = (run.face_reference, "face_reference")
            names = {}
            for role, (ref, what) in sources.items():
                await self._load_image(ref, what, in_dir / f"{role}.png")
                names[role] = f"{folder}/{role}.png"  # LoadImage's name, relative to ComfyUI's input folder
            graph = fill(run, names, f"{folder}/raw")
            prediction.output_node = output_node(graph)
            await previous.wait()
            prediction.prompt_id = await self.backend.submit(graph, prediction.id)
        except pipeline_errors.ModelSwapError as exc:
            await self._fail(prediction, exc.api_name, str(exc))
            return
        except BackendError as exc:
            await self._fail(prediction, exc.name, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - report it on the prediction, keep serving others
            log.exception("model-swap API: prediction %s failed to start", prediction.id)
            await self._fail(prediction, "InternalServerError", f"{type(exc).__name__}: {exc}")
            return
        finally:  # the next one may enter the queue once this one and every earlier one are settled
            if previous.is_set():
                mine.set()
            else:
                self._spawn(_pass_turn(previous, mine))
        prediction.status = "in_queue"
        self._queued[prediction.prompt_id] = prediction
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _load_image(self, ref: str, what: str, dest: Path) -> None:
        """Fetch or decode one input image and write it to ``dest`` as a clean RGB PNG."""
        if image_input.is_data_uri(ref):
            data, _ = image_input.split_data_uri(ref, what=what, max_bytes=self.config.fetch_max_bytes)
        else:
            try:
                data, _ = await self.fetch(ref, policy=self.config.fetch_policy, max_bytes=self.config.fetch_max_bytes,
                                           timeout_s=self.config.fetch_timeout_s)
            except (net.UrlRefused, net.FetchError) as exc:
                raise pipeline_errors.ImageLoadError(f"{what}: cannot fetch the image: {exc}") from None
        png = await asyncio.to_thread(self._normalise, data, what)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(png)

    def _normalise(self, data: bytes, what: str) -> bytes:
        image = image_input.decode_image(data, what=what, max_pixels=self.config.max_input_pixels)
        return image_input.encode_png(image)

    async def _watch(self) -> None:
        """Follow every queued prediction until none is left (one watcher for all of them)."""
        gone_once: set[str] = set()
        while self._queued:
            await asyncio.sleep(POLL_S)
            try:
                states = await self.backend.states(list(self._queued))
            except Exception:  # noqa: BLE001 - the queue may be briefly unreachable; try again
                log.exception("model-swap API: cannot read ComfyUI's queue")
                continue
            for pid, (state, entry) in states.items():
                prediction = self._queued.get(pid)
                if prediction is None:
                    continue
                if state == "processing":
                    prediction.status = "processing"
                elif state == "done":
                    del self._queued[pid]
                    self._spawn(self._collect(prediction, entry or {}))
                elif state == "gone":  # seen twice: not a race between the queue and history reads
                    if pid in gone_once:
                        del self._queued[pid]
                        await self._fail(prediction, "PipelineError",
                                         "The job was removed from ComfyUI's queue before it ran.")
                    gone_once.add(pid)

    async def _collect(self, prediction: Prediction, entry: dict) -> None:
        try:
            status = entry.get("status") or {}
            if status.get("status_str") != "success":
                name, message = _history_error(status)
                await self._fail(prediction, name, message)
                return
            outputs = await asyncio.to_thread(self._encode_outputs, prediction, entry)
        except Exception as exc:  # noqa: BLE001
            log.exception("model-swap API: prediction %s: reading the outputs failed", prediction.id)
            await self._fail(prediction, "InternalServerError", f"Reading the outputs failed: {exc}")
            return
        finally:
            await self._forget_history(prediction)
        await self._end(prediction, "completed", output=outputs)

    def _encode_outputs(self, prediction: Prediction, entry: dict) -> list[str]:
        from PIL import Image

        run = prediction.request
        images = (entry.get("outputs") or {}).get(prediction.output_node, {}).get("images", [])
        if len(images) != run.num_images:
            raise RuntimeError(f"the workflow saved {len(images)} images, {run.num_images} were asked for")
        out_dir = self.backend.output_dir / WORK_FOLDER / prediction.id
        result = []
        for i, info in enumerate(images):
            source = _inside(self.backend.output_dir, Path(info.get("subfolder", "")) / info["filename"])
            with Image.open(source) as img:
                img.load()
                data = _encode(img.convert("RGB"), run.output_format)
            source.unlink()
            if run.return_base64:
                result.append(f"data:{MIME[run.output_format]};base64,{base64.b64encode(data).decode()}")
            else:
                name = f"output_{i}.{run.output_format}"
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / name).write_bytes(data)
                prediction.files[name] = out_dir / name
                result.append(f"{prediction.base_url}/v1/outputs/{prediction.id}/{name}")
        return result

    async def _forget_history(self, prediction: Prediction) -> None:
        try:
            await self.backend.forget(prediction.prompt_id)
        except Exception:  # noqa: BLE001
            log.warning("model-swap API: could not remove prediction %s from ComfyUI's history", prediction.id)

    async def _fail(self, prediction: Prediction, name: str, message: str) -> None:
        log.warning("model-swap API: prediction %s failed: %s: %s", prediction.id, name, message)
        await self._end(prediction, "failed", error=runtime_error(name, message))

    async def _end(self, prediction: Prediction, status: str, *, output: list[str] | None = None,
                   error: dict | None = None) -> None:
        """Remove the inputs (and, for base64 or a failure, every file) first, then publish the final
        status, kept for the retention time, and send the webhook."""
        run = prediction.request
        _remove(self.backend.input_dir / WORK_FOLDER / prediction.id)
        if run.return_base64 or status == "failed":
            _remove(self.backend.output_dir / WORK_FOLDER / prediction.id)
        prediction.output, prediction.error, prediction.status = output, error, status
        self.store.finish(prediction, keep_s=self.config.keep_base64_s if run.return_base64
                          else self.config.keep_url_outputs_s)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        if prediction.request.webhook_url:
            self._spawn(self.post_json(prediction.request.webhook_url, prediction.payload(),
                                       policy=self.config.fetch_policy, attempts=self.config.webhook_attempts))

    async def _sweep(self) -> None:
        """Expire results on time even when no request comes in (their files go with them)."""
        while self.store.all():
            await asyncio.sleep(SWEEP_S)
            self.store.sweep()

    @staticmethod
    def _remove_files(prediction: Prediction) -> None:
        for folder in prediction.work_dirs:
            _remove(folder)

    def cleanup_leftovers(self) -> None:
        """At start-up: inputs and outputs of predictions from an earlier run are unreachable; remove them."""
        for root in (self.backend.input_dir, self.backend.output_dir):
            _remove(root / WORK_FOLDER)

    async def close(self) -> None:
        for task in [*self._tasks, self._watcher, self._sweeper]:
            if task is not None:
                task.cancel()


# -------------------------------------------------------------------------------- helpers

def _fashn_errors(handler):
    """A handler's ``HttpError`` answers FASHN's error body with its status; an unexpected error
    answers FASHN's 500 body, not aiohttp's HTML page."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as exc:
            return _error_response(exc)
        except web.HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("model-swap API: %s %s failed", request.method, request.path)
            return _error_response(HttpError(500, "InternalServerError", f"{type(exc).__name__}: {exc}"))

    wrapped.__name__ = handler.__name__
    return wrapped


async def _pass_turn(previous: asyncio.Event, mine: asyncio.Event) -> None:
    await previous.wait()
    mine.set()


def _strict_loads(text: str):
    def refuse_constant(name):
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(text, parse_constant=refuse_constant)


def _error_response(exc: HttpError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status)


def _encode(image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, format="JPEG", quality=95)
    else:
        image.save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def _inside(root: Path, relative: Path) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise RuntimeError(f"output path {relative} is outside ComfyUI's output folder")
    return path


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


_API_NAMES = {}


def _api_name(exception_type: str) -> str:
    """FASHN error name for an exception class name from ComfyUI's history (module path ignored)."""
    if not _API_NAMES:
        stack = [pipeline_errors.ModelSwapError]
        while stack:
            cls = stack.pop()
            _API_NAMES[cls.__name__] = cls.api_name
            stack.extend(cls.__subclasses__())
    return _API_NAMES.get(exception_type.rsplit(".", 1)[-1], "PipelineError")


def _history_error(status: dict) -> tuple[str, str]:
    event = failure_event(status)
    if event is None:
        return "PipelineError", "ComfyUI reported the run as failed without an error message; see ComfyUI's log."
    kind, data = event
    if kind == "execution_interrupted":
        return "PipelineError", "The run was cancelled in ComfyUI (interrupted) before it finished."
    node = f"{data.get('node_type')} (node {data.get('node_id')})"
    return _api_name(str(data.get("exception_type", ""))), f"{data.get('exception_message', '').strip()} [{node}]"

"""The HTTP handlers and the life of a prediction, over a store and a queue backend.

``POST /v1/run`` validates, writes the prediction to the store (``starting``) and answers its id.
The store hands it to a worker (``run_job``: at once with SQLite, through the shared job queue
with Redis). The worker loads the images (URL fetches run concurrently, bounded), fills the
shipped workflow and queues it in ComfyUI as soon as its inputs are ready, in order of arrival
among the ready ones (``in_queue``); one watcher follows every queued job to its history entry
(``processing``), where the outputs are encoded (``completed``) or the error named (``failed``).
Results are kept for the configured time, then ``GET /v1/status/{id}`` answers 404 ``NotFound``.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import hmac
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from aiohttp import web

from ..pipeline import errors as pipeline_errors
from ..pipeline import provenance
from ..provenance_graph import record_for
from . import faces, image_input, net
from .config import ApiConfig
from .history import MIME, encode, history_error, inside
from .http_errors import fashn_errors, read_json
from .predictions import Prediction, Store, restart_failure, scrub
from .protocol import HttpError, parse_run_request, run_response, runtime_error, unauthorized
from .workflow_fill import fill, output_node

log = logging.getLogger("comfyui_model_swap.api")
WORK_FOLDER = "modelswap_api"  # under ComfyUI's input/ and output/
POLL_S = 0.2
SWEEP_S = 30.0


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
    def __init__(self, config: ApiConfig, backend: QueueBackend, store: Store | None = None, *,
                 fetch: Callable[..., Awaitable[tuple[bytes, str]]] = net.fetch,
                 post_json: Callable[..., Awaitable[bool]] = net.post_json, face_dirs: faces.Dirs = list):
        self.config = config
        self.face_dirs = face_dirs  # the face library's folders ("face:NAME" references, GET /v1/faces)
        self.backend = backend
        self.fetch = fetch
        self.post_json = post_json
        if store is None:
            from .store_sqlite import SqliteStore

            store = SqliteStore(":memory:", backend.output_dir / WORK_FOLDER, max_in_flight=config.max_in_flight)
        self.store = store
        self.files_kept = hasattr(store, "kept_ids")  # URL outputs stay in this ComfyUI's output folder
        self._queued: dict[str, Prediction] = {}  # ComfyUI prompt id -> prediction
        self._ended: dict[str, asyncio.Future] = {}  # prediction id -> resolved when it ends
        self._ready: list[tuple[int, str, dict, asyncio.Future]] = []  # (arrival, id, graph, prompt id)
        self._ready_event = asyncio.Event()
        self._fetch_slots = asyncio.Semaphore(config.fetch_concurrency)
        self._watcher: asyncio.Task | None = None
        self._submitter: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._started: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------------------ start-up
    def start(self) -> asyncio.Task:
        """Once, on the server's loop: wait for ComfyUI to answer, clean leftovers, start the store's
        workers (resuming predictions accepted before a restart)."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        return self._started

    async def _start(self) -> None:
        ready = getattr(self.backend, "wait_ready", None)
        if ready is not None:
            await ready()
        await self.cleanup_leftovers()
        while True:
            try:
                await self.store.start(self.run_job, self.deliver)
                break
            except Exception:  # noqa: BLE001 - e.g. Redis not up yet: keep trying, say so
                log.exception("model-swap API: cannot start the prediction store; retrying in 5 s")
                await asyncio.sleep(5)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def cleanup_leftovers(self) -> None:
        """Remove work folders of predictions that ended or are unknown (an earlier run's leftovers);
        keep URL outputs still served and the folders of predictions still running (Redis workers
        may share these folders)."""
        kept = self.store.kept_ids() if self.files_kept else set()
        for root in (self.backend.input_dir / WORK_FOLDER, self.backend.output_dir / WORK_FOLDER):
            for folder in (root.iterdir() if root.is_dir() else []):
                if folder.name in kept:
                    continue
                try:
                    running = not (await self.store.get(folder.name)).done
                except HttpError as exc:  # 404: ended long ago or unknown; else the store is out: keep it
                    running = exc.status != 404
                if not running:
                    _remove(folder)

    # ------------------------------------------------------------------------------ routes
    def add_routes(self, routes: web.RouteTableDef) -> None:
        routes.post("/v1/run")(fashn_errors(self.handle_run))
        routes.get("/v1/status/{id}")(fashn_errors(self.handle_status))
        routes.get("/v1/outputs/{id}/{name}")(fashn_errors(self.handle_output))
        routes.get("/v1/cluster")(fashn_errors(self.handle_cluster))
        routes.get("/v1/faces")(fashn_errors(self.handle_faces))
        routes.post("/v1/faces")(fashn_errors(self.handle_create_face))

    async def handle_run(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await read_json(request)
        run = parse_run_request(body, request.query.get("webhook_url"))
        faces.check_saved(run.face_reference, self.face_dirs)
        self.start()
        prediction = await self.store.create(run, self._base_url(request))
        log.info("model-swap API: prediction %s accepted: %s", prediction.id, json.dumps(run.summary()))
        return web.json_response(run_response(prediction.id))

    async def handle_status(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response((await self.store.get(request.match_info["id"])).payload())

    async def handle_faces(self, request: web.Request) -> web.Response:
        """The face library's saved faces (a local extension, README "Face library")."""
        self._authorize(request)
        return web.json_response(await asyncio.to_thread(faces.listing, self.face_dirs))

    async def handle_create_face(self, request: web.Request) -> web.Response:
        """Create one face and save it in the library (a local extension, README "Face library")."""
        from .workflow_fill import workflow_files

        self._authorize(request)
        body = await read_json(request)
        self.start()
        workflow = workflow_files(self.config.engine)[1]
        return web.json_response(await faces.create(self.backend, workflow, body, self.face_dirs))

    async def handle_cluster(self, request: web.Request) -> web.Response:
        """For operators: the Redis cluster's state (README "Several GPUs"); 404 with the SQLite store."""
        self._authorize(request)
        status = getattr(self.store, "cluster_status", None)
        if status is None:
            raise HttpError(404, "NotFound", "No cluster: this server keeps its predictions in SQLite "
                                             "(set MODELSWAP_API_REDIS_URL to share a Redis queue).")
        return web.json_response(await status())

    async def handle_output(self, request: web.Request) -> web.StreamResponse:
        """An output image of a URL-mode prediction. The id (random, 122 bits) is the capability,
        like FASHN's CDN links; only outputs recorded for that prediction are served."""
        name = request.match_info["name"]
        data = await self.store.read_output(request.match_info["id"], name)
        if data is None:
            raise HttpError(404, "NotFound", "No such output for this prediction.")
        return web.Response(body=data, content_type=MIME.get(name.rsplit(".", 1)[-1], "application/octet-stream"),
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
        try:
            given_bytes = given.strip().encode()
        except UnicodeEncodeError:  # aiohttp keeps undecodable header bytes as surrogates
            raise unauthorized("The Authorization header is not valid UTF-8: send 'Authorization: Bearer <key>' "
                               "with the key exactly as set in MODELSWAP_API_KEY.") from None
        if not hmac.compare_digest(given_bytes, key.encode()):
            raise unauthorized("The API key is not valid for this server (MODELSWAP_API_KEY).")

    def _base_url(self, request: web.Request) -> str:
        return self.config.public_url or f"{request.scheme}://{request.host}"

    # ------------------------------------------------------------------------------ jobs
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_job(self, prediction: Prediction) -> None:
        """Run one prediction to its end (a worker's whole job); any failure ends the prediction."""
        if prediction.id in self._ended:  # already running here (a job delivered twice): wait for that run
            await asyncio.shield(self._ended[prediction.id])
            return
        ended = self._ended[prediction.id] = asyncio.get_running_loop().create_future()
        prediction.attempts += 1
        if prediction.attempts > self.config.max_attempts:
            await self._end(prediction, "failed", error=restart_failure(prediction, self.config.max_attempts))
            return
        prediction.status = "starting"
        await self.store.save(prediction)
        try:
            graph = await self._prepare(prediction)
            prompt_id: asyncio.Future = asyncio.get_running_loop().create_future()
            heapq.heappush(self._ready, (prediction.seq, prediction.id, graph, prompt_id))
            self._ready_event.set()
            if self._submitter is None or self._submitter.done():
                self._submitter = asyncio.get_running_loop().create_task(self._submit_ready())
            prediction.prompt_id = await prompt_id
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
        prediction.status = "in_queue"
        await self.store.save(prediction)
        self._queued[prediction.prompt_id] = prediction
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        await ended

    async def _prepare(self, prediction: Prediction) -> dict:
        """Write the input images as clean PNGs under ComfyUI's input folder; the filled graph."""
        run, folder = prediction.request, f"{WORK_FOLDER}/{prediction.id}"
        for root in (self.backend.input_dir, self.backend.output_dir):  # an earlier attempt's files
            _remove(root / WORK_FOLDER / prediction.id)
        sources = {"model": (run.model_image, "model_image")}
        if run.face_reference is not None:
            sources["face_reference"] = (run.face_reference, "face_reference")
        names = {}
        for role, (ref, what) in sources.items():
            await self._load_image(ref, what, self.backend.input_dir / folder / f"{role}.png")
            names[role] = f"{folder}/{role}.png"  # LoadImage's name, relative to ComfyUI's input folder
        graph = fill(run, names, f"{folder}/raw", self.config.engine, self.config.segmenter)
        prediction.output_node = output_node(graph)
        return graph

    async def _submit_ready(self) -> None:
        """Queue ready predictions in ComfyUI, earliest arrival first."""
        while True:
            await self._ready_event.wait()
            while self._ready:
                _, prediction_id, graph, prompt_id = heapq.heappop(self._ready)
                try:
                    prompt_id.set_result(await self.backend.submit(graph, prediction_id))
                except Exception as exc:  # noqa: BLE001 - the prediction reports it
                    prompt_id.set_exception(exc)
            self._ready_event.clear()

    async def _load_image(self, ref: str, what: str, dest: Path) -> None:
        """Fetch or decode one input image and write it to ``dest`` as a clean RGB PNG."""
        if faces.saved_name(ref) is not None:
            data = await asyncio.to_thread(faces.picture, ref, self.face_dirs)
        elif image_input.is_data_uri(ref):
            data, _ = image_input.split_data_uri(ref, what=what, max_bytes=self.config.fetch_max_bytes)
        else:
            try:
                async with self._fetch_slots:
                    data, _ = await self.fetch(ref, policy=self.config.fetch_policy,
                                               max_bytes=self.config.fetch_max_bytes,
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
                if state == "processing" and prediction.status != "processing":
                    prediction.status = "processing"
                    try:  # awaited, so it is recorded before the end can be
                        await self.store.save(prediction)
                    except Exception:  # noqa: BLE001 - a status step is not worth failing for
                        log.exception("model-swap API: cannot record prediction %s as processing", prediction.id)
                elif state == "done":
                    del self._queued[pid]
                    self._spawn(self._collect(prediction, entry or {}))
                elif state == "gone":  # seen twice: not a race between the queue and history reads
                    if pid in gone_once:
                        del self._queued[pid]
                        self._spawn(self._fail(prediction, "PipelineError",
                                               "The job was removed from ComfyUI's queue before it ran."))
                    gone_once.add(pid)

    async def _collect(self, prediction: Prediction, entry: dict) -> None:
        try:
            status = entry.get("status") or {}
            if status.get("status_str") != "success":
                await self._fail(prediction, *history_error(status))
                return
            outputs = await self._outputs(prediction, entry)
        except Exception as exc:  # noqa: BLE001
            log.exception("model-swap API: prediction %s: reading the outputs failed", prediction.id)
            await self._fail(prediction, "InternalServerError", f"Reading the outputs failed: {exc}")
            return
        finally:
            await self._forget_history(prediction)
        await self._end(prediction, "completed", output=outputs)

    async def _outputs(self, prediction: Prediction, entry: dict) -> list[str]:
        run = prediction.request
        images = (entry.get("outputs") or {}).get(prediction.output_node, {}).get("images", [])
        if len(images) != run.num_images:
            raise RuntimeError(f"the workflow saved {len(images)} images, {run.num_images} were asked for")
        result = []
        found = record_for(_ran_graph(entry), prediction.output_node)  # what each output declares (README)
        signing = provenance.signing_from_env()
        parent = None
        if signing is not None and found is not None and found.source_image:
            source = inside(self.backend.input_dir, Path(found.source_image))
            parent = source.read_bytes() if source.is_file() else None
        for i, info in enumerate(images):
            record = None if found is None else found.for_image(i)
            data = await asyncio.to_thread(self._reencode, Path(info.get("subfolder", "")) / info["filename"],
                                           run.output_format, record, signing, parent)
            if run.return_base64:
                result.append(f"data:{MIME[run.output_format]};base64,{base64.b64encode(data).decode()}")
            else:
                name = f"output_{i}.{run.output_format}"
                await self.store.put_output(prediction, name, data, self.config.keep_url_outputs_s)
                prediction.outputs.append(name)
                result.append(f"{prediction.base_url}/v1/outputs/{prediction.id}/{name}")
        return result

    def _reencode(self, relative: Path, fmt: str, record=None, signing=None, parent=None) -> bytes:
        """The saved PNG as ``fmt`` bytes without ComfyUI's workflow metadata, marked with ``record``
        (XMP; C2PA too with ``signing``); the saved file is removed."""
        from PIL import Image

        source = inside(self.backend.output_dir, relative)
        with Image.open(source) as img:
            img.load()
            data = encode(img.convert("RGB"), fmt)
        source.unlink()
        return provenance.mark(data, fmt, record, signing, parent)

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
        """Remove the inputs (and every file but kept URL outputs) first, then record the final
        status, kept for the retention time, and send the webhook."""
        run = prediction.request
        _remove(self.backend.input_dir / WORK_FOLDER / prediction.id)
        if run.return_base64 or status == "failed" or not self.files_kept:
            _remove(self.backend.output_dir / WORK_FOLDER / prediction.id)
        prediction.output, prediction.error, prediction.status = output, error, status
        keep_s = self.config.keep_base64_s if run.return_base64 else self.config.keep_url_outputs_s
        first = await self.store.finish(prediction, keep_s)
        prediction.request = scrub(run)
        if first and run.webhook_url:
            self._spawn(self.deliver(prediction, run.webhook_url))
        ended = self._ended.pop(prediction.id, None)
        if ended is not None and not ended.done():
            ended.set_result(None)

    async def deliver(self, prediction: Prediction, url: str | None = None) -> None:
        """POST the final status to the webhook (retrying); recorded as sent whatever the outcome,
        so only a crash during delivery makes it be sent again after a restart."""
        await self.post_json(url or prediction.request.webhook_url, prediction.payload(),
                             policy=self.config.fetch_policy, attempts=self.config.webhook_attempts)
        await self.store.webhook_sent(prediction)

    async def _sweep(self) -> None:
        """Expire results on time even when no request comes in (their files go with them)."""
        sweep = getattr(self.store, "sweep", None)
        while sweep is not None:
            await asyncio.sleep(SWEEP_S)
            sweep()

    async def close(self) -> None:
        for task in [*self._tasks, self._watcher, self._sweeper, self._submitter, self._started]:
            if task is not None:
                task.cancel()
        await self.store.close()


# -------------------------------------------------------------------------------- helpers

def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _ran_graph(entry: dict) -> dict:
    """The graph ComfyUI ran, from its history entry ([number, id, graph, extra, outputs])."""
    ran = entry.get("prompt")
    return ran[2] if isinstance(ran, (list, tuple)) and len(ran) > 2 and isinstance(ran[2], dict) else {}

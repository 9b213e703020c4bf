"""The API's handlers and prediction lifecycle over a fake queue (fast, in-process, no ComfyUI).

The real-ComfyUI behaviour, through FASHN's own SDK, is in test_api_comfyui.py; here the queue
is replaced so the lifecycle, limits, retention, auth and output serving are checked precisely.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from comfyui_model_swap.nodes.fashn_api import app as app_mod
from comfyui_model_swap.nodes.fashn_api import workflow_fill
from comfyui_model_swap.nodes.fashn_api.app import BackendError, FashnApi
from comfyui_model_swap.nodes.fashn_api.config import ApiConfig
from comfyui_model_swap.nodes.fashn_api.protocol import RunRequest
from comfyui_model_swap.nodes.pipeline.engines import DEFAULT_ENGINE, capabilities


def png_uri(size=(48, 64), colour=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class FakeQueue:
    """Runs a job by writing what SaveImage would: one PNG per requested image, seeded colours.
    A job is 'in_queue' for one poll, then 'processing' until a client has seen that status (so the
    lifecycle test never races the poll loop), then done; ``fail`` makes it fail the way ComfyUI
    reports a node's exception."""

    def __init__(self, root: Path):
        self.input_dir = root / "input"
        self.output_dir = root / "output"
        self.input_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.graphs: dict[str, dict] = {}
        self.polls: dict[str, int] = {}
        self.forgotten: list[str] = []
        self.seen: set[str] = set()  # statuses the test's client has read
        self.fail: tuple[str, str] | None = None
        self.refuse: str | None = None
        self.hold = asyncio.Event()
        self.hold.set()
        self.gate = asyncio.Event()  # cleared: submit waits (the test then sees who queues up behind)
        self.gate.set()
        self.submitting = asyncio.Event()  # set while a submit waits at the gate

    async def submit(self, graph, prompt_id):
        if not self.gate.is_set():
            self.submitting.set()
            await self.gate.wait()
        if self.refuse:
            raise BackendError(self.refuse)
        for node in graph.values():
            if node["class_type"] == "LoadImage":
                assert (self.input_dir / node["inputs"]["image"]).is_file()
        self.graphs[prompt_id] = graph
        self.polls[prompt_id] = 0
        return prompt_id

    async def states(self, ids):
        out = {}
        for pid in ids:
            n = self.polls[pid]
            if not self.hold.is_set():
                out[pid] = ("in_queue", None)
                continue
            if n == 0:
                out[pid] = ("in_queue", None)
            elif n == 1 or "processing" not in self.seen:
                out[pid] = ("processing", None)
            else:
                out[pid] = ("done", self._run(pid))
            self.polls[pid] = min(n + 1, 2)
        return out

    def _run(self, pid):
        graph = self.graphs[pid]
        if self.fail:
            kind, message = self.fail
            return {"status": {"status_str": "error", "messages": [
                ["execution_start", {}],
                ["execution_error", {"node_id": "6", "node_type": "ModelSwap_IdentityEncode",
                                     "exception_type": f"custom_nodes.pack.nodes.pipeline.errors.{kind}",
                                     "exception_message": message}]]}}
        sampler = next(n for n in graph.values() if n["class_type"] == "ModelSwap_Sampler")["inputs"]
        save_id = workflow_fill.output_node(graph)
        save = graph[save_id]
        prefix = Path(save["inputs"]["filename_prefix"])
        folder = self.output_dir / prefix.parent
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for i in range(sampler["num_images"]):
            rng = np.random.default_rng(sampler["seed"] + i)
            name = f"{prefix.name}_{i + 1:05}_.png"
            Image.fromarray(rng.integers(0, 256, (32, 24, 3), dtype=np.uint8)).save(folder / name)
            images.append({"filename": name, "subfolder": str(prefix.parent), "type": "output"})
        return {"status": {"status_str": "success", "messages": []}, "outputs": {save_id: {"images": images}}}

    async def forget(self, pid):
        self.forgotten.append(pid)


class Harness:
    def __init__(self, client: TestClient, api: FashnApi, queue: FakeQueue):
        self.client, self.api, self.queue = client, api, queue

    async def run(self, inputs: dict, headers=None, **body):
        response = await self.client.post("/v1/run", json={"model_name": "model-swap", "inputs": inputs, **body},
                                          headers=headers)
        return response.status, await response.json()

    async def status(self, pid, headers=None):
        response = await self.client.get(f"/v1/status/{pid}", headers=headers)
        body = await response.json()
        if response.status == 200:
            self.queue.seen.add(body["status"])
        return response.status, body

    async def until_done(self, pid, timeout=10.0, headers=None):
        seen = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            code, body = await self.status(pid, headers)
            assert code == 200, body
            if not seen or seen[-1] != body["status"]:
                seen.append(body["status"])
            if body["status"] in ("completed", "failed"):
                return body, seen
            await asyncio.sleep(0.02)
        raise AssertionError(f"prediction {pid} did not finish: {seen}")


def serve(tmp_path, scenario, *, config: ApiConfig | None = None, fetch=None, post_json=None, store=None):
    """Run ``scenario(harness)`` against a live aiohttp server on 127.0.0.1 with the fake queue;
    ``store(queue)`` makes the prediction store (default: SQLite in memory)."""

    async def main():
        queue = FakeQueue(tmp_path)
        kwargs = {k: v for k, v in (("fetch", fetch), ("post_json", post_json)) if v is not None}
        api = FashnApi(config or ApiConfig(), queue, None if store is None else store(queue), **kwargs)
        routes = web.RouteTableDef()
        api.add_routes(routes)
        application = web.Application()
        application.add_routes(routes)
        api.start()
        async with TestClient(TestServer(application, host="127.0.0.1")) as client:
            try:
                return await scenario(Harness(client, api, queue))
            finally:
                await api.close()

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(app_mod, "POLL_S", 0.01)


def test_lifecycle_goes_starting_in_queue_processing_completed_and_returns_data_uris(tmp_path):
    async def scenario(h):
        code, body = await h.run({"model_image": png_uri(), "return_base64": True, "num_images": 2, "seed": 5})
        assert code == 200 and body["error"] is None and set(body) == {"id", "error"}
        first = (await h.status(body["id"]))[1]["status"]
        final, seen = await h.until_done(body["id"])
        return first, final, seen

    first, final, seen = serve(tmp_path, scenario)
    assert first in ("starting", "in_queue")
    assert seen[-1] == "completed" and "processing" in seen
    order = ["starting", "in_queue", "processing", "completed"]
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)
    assert final["error"] is None and len(final["output"]) == 2
    decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(o.split(",", 1)[1])))) for o in final["output"]]
    expected = [np.random.default_rng(5 + i).integers(0, 256, (32, 24, 3), dtype=np.uint8) for i in range(2)]
    assert all(np.array_equal(d, e) for d, e in zip(decoded, expected))
    assert all(o.startswith("data:image/png;base64,") for o in final["output"])


def test_request_settings_reach_the_graph_and_base64_leaves_no_files(tmp_path):
    async def scenario(h):
        inputs = {"model_image": png_uri(), "face_reference": png_uri(colour=(1, 2, 3)), "prompt": "red hair",
                  "face_reference_mode": "match_base", "seed": 77, "num_images": 3, "output_format": "jpeg",
                  "return_base64": True, "generation_mode": "fast", "resolution": "2k"}
        _, body = await h.run(inputs)
        final, _ = await h.until_done(body["id"])
        return h.queue.graphs[body["id"]], final, h.queue

    graph, final, queue = serve(tmp_path, scenario)
    by_class = {n["class_type"]: n["inputs"] for n in graph.values()}
    assert by_class["ModelSwap_Sampler"]["seed"] == 77 and by_class["ModelSwap_Sampler"]["num_images"] == 3
    assert by_class["ModelSwap_Sampler"]["prompt"] == "red hair"
    fast = capabilities(DEFAULT_ENGINE).presets["fast"]  # the default engine's own preset
    assert by_class["ModelSwap_Sampler"]["steps"] == fast.steps
    assert by_class["ModelSwap_FaceRefine"]["face_reference_mode"] == "match_base"
    assert by_class["ModelSwap_FaceRefine"]["work_size"] == fast.refine_work_size
    assert by_class["ModelSwap_GarmentMask"]["output_size"] == "2k"
    assert sum(n["class_type"] == "LoadImage" for n in graph.values()) == 2
    assert all(o.startswith("data:image/jpeg;base64,") for o in final["output"]) and len(final["output"]) == 3
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # inputs and outputs gone
    assert queue.forgotten  # and ComfyUI's history entry


@pytest.mark.parametrize("engine", ["flux2_klein", "sdxl"])
@pytest.mark.parametrize("mode", ["fast", "balanced", "quality"])
def test_generation_modes_set_documented_steps_and_quality_is_the_shipped_workflow(mode, engine):
    graph = workflow_fill.fill(RunRequest(model_image="x", generation_mode=mode), {"model": "in/m.png"}, "p/raw",
                               engine)
    settings = capabilities(engine).presets[mode]
    nodes = {n["class_type"]: n["inputs"] for n in graph.values()}
    assert ("ModelSwap_KleinLoader" in nodes) == (engine == "flux2_klein")
    assert ("ModelSwap_PipelineLoader" in nodes) == (engine == "sdxl")
    assert nodes["ModelSwap_Sampler"]["steps"] == settings.steps
    assert nodes["ModelSwap_FaceRefine"]["steps"] == settings.refine_steps
    assert nodes["ModelSwap_FaceRefine"]["work_size"] == settings.refine_work_size
    plain = workflow_fill.workflow_files(engine)[0]
    shipped = {n["class_type"]: n["inputs"] for n in workflow_fill.load_workflow(plain).values()}
    if mode == "quality":
        assert nodes["ModelSwap_Sampler"]["steps"] == shipped["ModelSwap_Sampler"]["steps"]
        assert nodes["ModelSwap_FaceRefine"]["work_size"] == shipped["ModelSwap_FaceRefine"]["work_size"]


def test_aspect_ratio_takes_fashns_ten_values_into_garment_mask_and_refuses_others_by_name():
    from comfyui_model_swap.nodes.fashn_api.protocol import HttpError, parse_run_request
    from comfyui_model_swap.nodes.pipeline.contract import ASPECT_RATIOS

    body = lambda **inputs: {"model_name": "model-swap", "inputs": {"model_image": png_uri(), **inputs}}  # noqa: E731
    assert parse_run_request(body()).aspect_ratio is None and parse_run_request(body(aspect_ratio=None)).aspect_ratio \
        is None
    for ratio in ("21:9", "1:1", "4:3", "3:2", "2:3", "5:4", "4:5", "3:4", "16:9", "9:16"):  # FASHN SDK's list
        request = parse_run_request(body(aspect_ratio=ratio))
        graph = workflow_fill.fill(request, {"model": "in/m.png"}, "p/raw")
        assert [n["inputs"]["aspect_ratio"] for n in graph.values()
                if n["class_type"] == "ModelSwap_GarmentMask"] == [ratio]
    plain = workflow_fill.fill(parse_run_request(body()), {"model": "in/m.png"}, "p/raw")
    assert [n["inputs"]["aspect_ratio"] for n in plain.values()  # the shipped workflow's: the photo's frame
            if n["class_type"] == "ModelSwap_GarmentMask"] == ["original"]
    for bad in ("7:3", "original", "16/9", 1.5):
        with pytest.raises(HttpError) as err:
            parse_run_request(body(aspect_ratio=bad))
        assert err.value.status == 400 and err.value.name == "BadRequest"
        assert err.value.message == (f"inputs.aspect_ratio={bad!r} is not allowed: use one of {', '.join(ASPECT_RATIOS)} "
                                     "(width:height; the photo is extended to it, never cropped), or leave it out to "
                                     "keep the photo's frame.")


def test_url_outputs_are_served_then_expire_to_404_and_their_files_go(tmp_path):
    clock = [1000.0]

    async def scenario(h):
        h.api.store.clock = lambda: clock[0]
        _, body = await h.run({"model_image": png_uri(), "output_format": "jpeg", "num_images": 2})
        final, _ = await h.until_done(body["id"])
        served = []
        for url in final["output"]:
            path = url.split(str(h.client.server.port), 1)[1]
            response = await h.client.get(path)
            served.append((response.status, response.content_type, await response.read()))
        other = await h.client.get(f"/v1/outputs/{body['id']}/..%2F..%2Finput")
        files = sorted(p.name for p in h.queue.output_dir.rglob("*") if p.is_file())
        clock[0] += h.api.config.keep_url_outputs_s + 1
        after = await h.status(body["id"])
        gone = await h.client.get(path)
        left = [p for p in tmp_path.rglob("*") if p.is_file()]
        return final, served, other.status, files, after, gone.status, left

    final, served, other, files, after, gone, left = serve(tmp_path, scenario)
    assert all(url.startswith("http://127.0.0.1:") for url in final["output"])
    assert [s[0] for s in served] == [200, 200] and {s[1] for s in served} == {"image/jpeg"}
    assert Image.open(io.BytesIO(served[0][2])).format == "JPEG"
    assert other == 404
    assert files == ["output_0.jpeg", "output_1.jpeg"]  # SaveImage's raw PNGs replaced by the outputs
    assert after == (404, {"error": "NotFound", "message": after[1]["message"]}) and "expired" in after[1]["message"]
    assert gone == 404 and left == []


def test_a_node_error_fails_the_prediction_with_fashns_name_and_the_server_carries_on(tmp_path):
    async def scenario(h):
        h.queue.fail = ("NoFaceError", "No face found in the face reference: use a photo with a visible face.")
        _, failing = await h.run({"model_image": png_uri(), "face_reference": png_uri()})
        failed, _ = await h.until_done(failing["id"])
        h.queue.fail = None
        _, ok = await h.run({"model_image": png_uri(), "return_base64": True})
        done, _ = await h.until_done(ok["id"])
        return failed, done

    failed, done = serve(tmp_path, scenario)
    assert failed["status"] == "failed" and failed["output"] is None
    assert failed["error"]["name"] == "InputValidationError"
    assert "No face found" in failed["error"]["message"] and "IdentityEncode" in failed["error"]["message"]
    assert done["status"] == "completed" and len(done["output"]) == 1


def test_a_refused_workflow_fails_with_pipeline_error(tmp_path):
    async def scenario(h):
        h.queue.refuse = "ComfyUI refused the workflow: ModelSwap_PipelineLoader (node 2): value not in list"
        _, body = await h.run({"model_image": png_uri()})
        return (await h.until_done(body["id"]))[0]

    final = serve(tmp_path, scenario)
    assert final["error"] == {"name": "PipelineError", "message": final["error"]["message"]}
    assert "value not in list" in final["error"]["message"]


def test_in_flight_limit_answers_429_and_frees_up_when_predictions_finish(tmp_path):
    async def scenario(h):
        h.queue.hold.clear()
        ids = [(await h.run({"model_image": png_uri()}))[1]["id"] for _ in range(3)]
        refused = await h.run({"model_image": png_uri()})
        h.queue.hold.set()
        finals = [(await h.until_done(pid))[0] for pid in ids]
        again = await h.run({"model_image": png_uri()})
        return refused, finals, again

    refused, finals, again = serve(tmp_path, scenario, config=ApiConfig(max_in_flight=3))
    assert refused[0] == 429 and refused[1]["error"] == "ConcurrencyLimitExceeded"
    assert "limit 3" in refused[1]["message"] and "MODELSWAP_API_MAX_IN_FLIGHT" in refused[1]["message"]
    assert [f["status"] for f in finals] == ["completed"] * 3
    assert again[0] == 200


def test_api_key_is_required_on_run_and_status_when_configured(tmp_path):
    good = {"Authorization": "Bearer s3cret-key"}

    async def scenario(h):
        results = {
            "none": await h.run({"model_image": png_uri()}),
            "wrong": await h.run({"model_image": png_uri()}, headers={"Authorization": "Bearer nope"}),
            "basic": await h.run({"model_image": png_uri()}, headers={"Authorization": "Basic s3cret-key"}),
            "prefix": await h.run({"model_image": png_uri()}, headers={"Authorization": "Bearer s3cret"}),
        }
        code, body = await h.run({"model_image": png_uri()}, headers=good)
        results["good"] = (code, body)
        results["status_without"] = await h.status(body["id"])
        results["status_with"] = (await h.until_done(body["id"], headers=good))[0]
        return results

    r = serve(tmp_path, scenario, config=ApiConfig(api_key="s3cret-key"))
    for case in ("none", "wrong", "basic", "prefix", "status_without"):
        assert r[case][0] == 401 and r[case][1]["error"] == "UnauthorizedAccess", case
    assert "Authorization: Bearer" in r["none"][1]["message"]
    assert r["good"][0] == 200 and r["status_with"]["status"] == "completed"


def test_images_are_fetched_by_url_and_fetch_failures_are_image_load_errors(tmp_path):
    from comfyui_model_swap.nodes.fashn_api import net

    photo = base64.b64decode(png_uri().split(",", 1)[1])
    asked = []

    async def fetch(url, **kwargs):
        asked.append((url, kwargs["max_bytes"], kwargs["timeout_s"]))
        if "blocked" in url:
            raise net.UrlRefused("10.0.0.7 is a private address")
        return photo, "image/png"

    async def scenario(h):
        _, ok = await h.run({"model_image": "https://images.example/model.png"})
        _, bad = await h.run({"model_image": "https://blocked.example/model.png"})
        return (await h.until_done(ok["id"]))[0], (await h.until_done(bad["id"]))[0]

    ok, bad = serve(tmp_path, scenario, fetch=fetch, config=ApiConfig(fetch_max_bytes=12345, fetch_timeout_s=3.0))
    assert ok["status"] == "completed"
    assert asked[0] == ("https://images.example/model.png", 12345, 3.0)
    assert bad["error"]["name"] == "ImageLoadError" and "model_image" in bad["error"]["message"]
    assert "private" in bad["error"]["message"]


def test_webhook_receives_the_final_status_payload(tmp_path):
    sent = []

    async def post_json(url, payload, **kwargs):
        sent.append((url, payload, kwargs["policy"]))
        return True

    async def scenario(h):
        _, body = await h.run({"model_image": png_uri(), "return_base64": True},
                              webhook_url="https://hooks.example/done")
        final, _ = await h.until_done(body["id"])
        for _ in range(50):
            if sent:
                break
            await asyncio.sleep(0.01)
        return final

    final = serve(tmp_path, scenario, post_json=post_json)
    assert len(sent) == 1 and sent[0][0] == "https://hooks.example/done" and sent[0][1] == final


def test_exposure_warning_only_when_listening_beyond_loopback_without_a_key():
    from comfyui_model_swap.nodes.fashn_api.register import exposure_warning

    assert exposure_warning("127.0.0.1", ApiConfig()) is None
    assert exposure_warning("127.0.0.1,::1", ApiConfig()) is None
    assert exposure_warning("0.0.0.0", ApiConfig(api_key="k")) is None
    for listen in ("0.0.0.0", "192.168.1.20", "127.0.0.1,0.0.0.0", "::"):
        warning = exposure_warning(listen, ApiConfig())
        assert warning and "MODELSWAP_API_KEY" in warning and "--listen 127.0.0.1" in warning


def test_config_from_env_reads_every_setting_and_names_bad_values():
    config = ApiConfig.from_env({"MODELSWAP_API_KEY": "k", "MODELSWAP_API_MAX_IN_FLIGHT": "5",
                                 "MODELSWAP_API_KEEP_BASE64_S": "30", "MODELSWAP_API_FETCH_ALLOW": "10.0.0.0/8",
                                 "MODELSWAP_API_PUBLIC_URL": "https://swap.example/"})
    assert (config.api_key, config.max_in_flight, config.keep_base64_s) == ("k", 5, 30.0)
    assert config.public_url == "https://swap.example" and config.fetch_policy.allow
    assert ApiConfig.from_env({}).keep_url_outputs_s == 72 * 3600
    with pytest.raises(ValueError, match="MODELSWAP_API_MAX_IN_FLIGHT"):
        ApiConfig.from_env({"MODELSWAP_API_MAX_IN_FLIGHT": "many"})
    with pytest.raises(ValueError, match="MODELSWAP_API_FETCH_ALLOW"):
        ApiConfig.from_env({"MODELSWAP_API_FETCH_ALLOW": "not a network/99"})
    assert ApiConfig.from_env({}).engine == "flux2_klein"  # the licence-clean default
    assert ApiConfig.from_env({"MODELSWAP_API_ENGINE": "sdxl"}).engine == "sdxl"
    with pytest.raises(ValueError, match="MODELSWAP_API_ENGINE='sd3'.*flux2_klein, sdxl"):
        ApiConfig.from_env({"MODELSWAP_API_ENGINE": "sd3"})


def test_a_hanging_url_delays_only_its_own_prediction_and_ready_ones_enter_in_order_of_arrival(tmp_path):
    """P0's URL hangs; P1 (data URI) is being queued while P2 and P3 get ready, P3 before P2
    (its URL answers first): P2 still enters ComfyUI's queue before P3, and all four complete
    while P0 is still starting."""
    photo = base64.b64decode(png_uri().split(",", 1)[1])
    answer = {"hang": asyncio.Event(), "p2": asyncio.Event(), "p3": asyncio.Event()}
    fetched = []

    async def fetch(url, **kwargs):
        name = url.rsplit("/", 1)[1]
        await answer[name].wait()
        fetched.append(name)
        return photo, "image/png"

    async def scenario(h):
        started = time.monotonic()
        h.queue.gate.clear()
        _, p0 = await h.run({"model_image": "https://slow.example/hang"})
        _, p1 = await h.run({"model_image": png_uri()})
        await asyncio.wait_for(h.queue.submitting.wait(), 10)  # P1 is being queued, not held behind P0
        _, p2 = await h.run({"model_image": "https://images.example/p2"})
        _, p3 = await h.run({"model_image": "https://images.example/p3"})
        _, p4 = await h.run({"model_image": png_uri()})
        answer["p3"].set()
        while "p3" not in fetched:
            await asyncio.sleep(0.01)
        answer["p2"].set()
        while len(h.api._ready) < 3:  # P2, P3 and P4 wait behind P1
            await asyncio.sleep(0.01)
        h.queue.gate.set()
        finals = [(await h.until_done(p["id"]))[0]["status"] for p in (p1, p2, p3, p4)]
        delay = time.monotonic() - started
        hanging = (await h.status(p0["id"]))[1]["status"]
        answer["hang"].set()
        last = (await h.until_done(p0["id"]))[0]["status"]
        return [p["id"] for p in (p1, p2, p3, p4, p0)], list(h.queue.graphs), finals, hanging, last, delay

    ids, queued, finals, hanging, last, delay = serve(tmp_path, scenario, fetch=fetch)
    print(f"four predictions behind a hanging URL completed after {delay:.2f} s")
    assert finals == ["completed"] * 4 and hanging == "starting" and last == "completed"
    assert queued == ids


def test_expired_results_are_swept_without_any_request(tmp_path, monkeypatch):
    monkeypatch.setattr(app_mod, "SWEEP_S", 0.01)
    clock = [50.0]

    async def scenario(h):
        h.api.store.clock = lambda: clock[0]
        _, body = await h.run({"model_image": png_uri()})
        await h.until_done(body["id"])
        kept = [p.name for p in h.queue.output_dir.rglob("*") if p.is_file()]
        clock[0] += h.api.config.keep_url_outputs_s + 1
        for _ in range(100):
            if not h.api.store.all():
                break
            await asyncio.sleep(0.01)
        return kept, h.api.store.all(), [p for p in tmp_path.rglob("*") if p.is_file()]

    kept, remaining, files = serve(tmp_path, scenario)
    assert kept == ["output_0.png"] and remaining == [] and files == []


def test_an_unexpected_error_answers_fashns_500_body(tmp_path, monkeypatch):
    def broken(self, prediction_id):
        raise KeyError("store corrupted")

    async def scenario(h):
        monkeypatch.setattr(type(h.api.store), "get", broken)
        return await h.status("some-id")

    code, body = serve(tmp_path, scenario)
    assert code == 500 and body["error"] == "InternalServerError" and "store corrupted" in body["message"]

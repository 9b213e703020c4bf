"""The SQLite prediction store across restarts, over the fake queue (in-process, no ComfyUI).

A "crash" here ends the server without letting any prediction finish; the next server opens the
same database file. The real ComfyUI killed with ``kill -9`` is in test_api_restart.py.
"""

from __future__ import annotations

import asyncio
import base64

import pytest

from comfyui_model_swap.nodes.fashn_api import app as app_mod
from comfyui_model_swap.nodes.fashn_api.app import WORK_FOLDER
from comfyui_model_swap.nodes.fashn_api.config import ApiConfig
from comfyui_model_swap.nodes.fashn_api.store_sqlite import SqliteStore
from test_api_app import png_uri, serve

PHOTO = base64.b64decode(png_uri().split(",", 1)[1])


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(app_mod, "POLL_S", 0.01)


def sqlite(path):
    return lambda queue: SqliteStore(path, queue.output_dir / WORK_FOLDER, max_in_flight=32)


def disk_bytes(db) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))


async def wait_status(h, pid, wanted):
    for _ in range(1000):
        if (await h.status(pid))[1]["status"] == wanted:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{pid} never reached {wanted}")


def test_predictions_in_every_state_survive_a_restart_and_resume(tmp_path):
    db = tmp_path / "user" / "modelswap_api" / "predictions.sqlite3"
    secret = png_uri(colour=(12, 34, 56))  # its base64 text must not stay on disk
    hooks = []

    async def hanging(url, **kwargs):
        await asyncio.Event().wait()

    async def answering(url, **kwargs):
        return PHOTO, "image/png"

    async def post_json(url, payload, **kwargs):
        hooks.append((url, payload))
        return True

    async def first_life(h):
        _, done = await h.run({"model_image": png_uri(), "num_images": 2})
        completed = (await h.until_done(done["id"]))[0]
        h.queue.hold.clear()  # from now on jobs stay in ComfyUI's queue
        _, queued = await h.run({"model_image": secret, "return_base64": True}, webhook_url="https://hooks.example/q")
        await wait_status(h, queued["id"], "in_queue")
        _, starting = await h.run({"model_image": "https://slow.example/never"})
        await wait_status(h, starting["id"], "starting")
        return completed, queued["id"], starting["id"], secret.split(",")[1][:60].encode() in disk_bytes(db)

    completed, queued, starting, stored_while_running = serve(tmp_path, first_life, store=sqlite(db), fetch=hanging)
    assert stored_while_running  # the inputs are stored until the prediction ends, for resumption

    async def second_life(h):
        before = [(await h.status(pid))[1]["status"] for pid in (completed["id"], queued, starting)]
        finals = [(await h.until_done(pid))[0] for pid in (queued, starting)]
        path = completed["output"][0].split("/v1/", 1)[1]
        served = await h.client.get(f"/v1/{path}")
        for _ in range(100):
            if hooks:
                break
            await asyncio.sleep(0.01)
        return before, finals, served.status, await served.read()

    before, finals, served, image = serve(tmp_path, second_life, store=sqlite(db), fetch=answering,
                                          post_json=post_json)
    assert before[0] == "completed" and before[1] in ("starting", "in_queue") and before[2] in ("starting", "in_queue")
    assert [f["status"] for f in finals] == ["completed", "completed"]
    assert finals[0]["output"][0].startswith("data:image/png;base64,")
    assert served == 200 and image.startswith(b"\x89PNG")
    assert hooks == [("https://hooks.example/q", finals[0])]
    assert not list((tmp_path / "input").rglob("*.png"))
    assert not list((tmp_path / "output" / WORK_FOLDER / queued).rglob("*"))
    assert secret.split(",")[1][:60].encode() not in disk_bytes(db)  # no image of it left on disk
    assert finals[0]["output"][0].split(",")[1][:60].encode() not in disk_bytes(db)


def test_a_prediction_that_keeps_stopping_the_server_fails_with_a_restart_error(tmp_path):
    db = tmp_path / "predictions.sqlite3"
    config = ApiConfig(max_attempts=2)

    async def accept(h):
        h.queue.hold.clear()
        _, body = await h.run({"model_image": png_uri()})
        await wait_status(h, body["id"], "in_queue")
        return body["id"]

    async def crash_again(h):
        await wait_status(h, pid, "in_queue")  # resumed once (attempt 2)

    async def last(h):
        return (await h.until_done(pid))[0]

    pid = serve(tmp_path, accept, store=sqlite(db), config=config)
    serve(tmp_path, crash_again, store=sqlite(db), config=config)
    final = serve(tmp_path, last, store=sqlite(db), config=config)
    assert final["status"] == "failed" and final["error"]["name"] == "InternalServerError"
    assert "restarted" in final["error"]["message"] and "MODELSWAP_API_MAX_ATTEMPTS=2" in final["error"]["message"]


def test_a_base64_result_after_a_restart_answers_a_clear_error_not_404(tmp_path):
    db = tmp_path / "predictions.sqlite3"

    async def complete(h):
        _, body = await h.run({"model_image": png_uri(), "return_base64": True})
        return (await h.until_done(body["id"]))[0]

    async def read(h):
        return await h.status(done["id"])

    done = serve(tmp_path, complete, store=sqlite(db))
    code, body = serve(tmp_path, read, store=sqlite(db))
    assert done["status"] == "completed" and code == 200
    assert body["status"] == "failed" and "return_base64" in body["error"]["message"]
    assert done["output"][0].split(",")[1][:60].encode() not in disk_bytes(db)


# ------------------------------------------------------------------------------ Redis, in-process

def test_redis_store_two_servers_share_jobs_and_a_dead_servers_jobs_are_taken_over(tmp_path):
    """Two API servers (fake queues) on one real redis-server: 40 predictions round-robin; the first
    server dies abruptly (no job acknowledged) while holding jobs; all 40 end exactly once."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from comfyui_model_swap.nodes.fashn_api.app import FashnApi
    from comfyui_model_swap.nodes.fashn_api.store_redis import RedisStore
    from test_api_app import FakeQueue, Harness
    from test_api_redis import RedisServer

    config = ApiConfig(max_in_flight=64, claim_s=0.6, worker_slots=2)

    async def main(redis_url):
        harnesses = []
        for name in ("a", "b"):
            queue = FakeQueue(tmp_path / name)
            queue.seen.add("processing")  # jobs run without waiting for a client to look
            store = RedisStore(redis_url, prefix="unit", max_in_flight=64, slots=2, claim_s=config.claim_s,
                               keep_running_s=600)
            api = FashnApi(config, queue, store)
            routes = web.RouteTableDef()
            api.add_routes(routes)
            application = web.Application()
            application.add_routes(routes)
            api.start()
            client = TestClient(TestServer(application, host="127.0.0.1"))
            await client.start_server()
            harnesses.append(Harness(client, api, queue))
        a, b = harnesses
        a.queue.hold.clear()  # the first server's jobs never leave its queue: it dies holding them
        ids = []
        for i in range(40):
            code, body = await harnesses[i % 2].run({"model_image": png_uri(), "seed": i, "return_base64": i % 4 != 0})
            assert code == 200, body
            ids.append(body["id"])
        while len(a.queue.graphs) < 2:
            await asyncio.sleep(0.01)
        held = list(a.queue.graphs)
        await a.api.close()  # dies: nothing acknowledged, claims no longer renewed
        await a.client.close()
        finals = [(await b.until_done(pid, timeout=60))[0] for pid in ids]
        ended = int(await b.api.store.redis.get("unit:ended"))
        pending = await b.api.store.redis.xpending("unit:jobs", "workers")
        await b.api.close()
        await b.client.close()
        return held, finals, ended, pending, ids

    with RedisServer(tmp_path / "redis") as redis_server:
        held, finals, ended, pending, ids = asyncio.run(main(redis_server.url))
    assert [f["status"] for f in finals] == ["completed"] * 40
    assert set(held) <= set(ids) and len(held) == 2
    assert ended == 40 and pending["pending"] == 0


def test_store_settings_are_read_from_the_environment_and_a_bad_redis_url_is_named():
    config = ApiConfig.from_env({"MODELSWAP_API_REDIS_URL": "redis://10.0.0.5:6379/0", "MODELSWAP_API_CLAIM_S": "30",
                                 "MODELSWAP_API_WORKER_SLOTS": "3", "MODELSWAP_API_MAX_ATTEMPTS": "2",
                                 "MODELSWAP_API_FETCH_CONCURRENCY": "4", "MODELSWAP_API_STORE": "/data/p.sqlite3"})
    assert (config.redis_url, config.claim_s, config.worker_slots) == ("redis://10.0.0.5:6379/0", 30.0, 3)
    assert (config.max_attempts, config.fetch_concurrency, config.store_path) == (2, 4, "/data/p.sqlite3")
    assert ApiConfig.from_env({}).redis_url == ""  # SQLite unless Redis is asked for
    with pytest.raises(ValueError, match="MODELSWAP_API_REDIS_URL.*redis://host"):
        ApiConfig.from_env({"MODELSWAP_API_REDIS_URL": "10.0.0.5:6379"})
    with pytest.raises(ValueError, match="MODELSWAP_API_WORKER_SLOTS"):
        ApiConfig.from_env({"MODELSWAP_API_WORKER_SLOTS": "0"})

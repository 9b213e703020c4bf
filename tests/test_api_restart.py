"""The API on a real ComfyUI killed with ``kill -9`` and restarted (SQLite store), the edge-case
requests, and FASHN's TypeScript SDK.

Predictions are caught in each state (completed, processing, in_queue, starting: its URL hangs)
when ComfyUI is killed; after the restart each id answers, the unfinished ones run again from
their stored inputs, the completed one's output URL still works, the webhook is delivered, and no
image of the base64 prediction is left on disk. The server runs with ``--max-upload-size 1`` (MB)
for the 413 case.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import comfy_harness
from test_api_comfyui import DIRECT, KEY, NETGUARD, PHOTO, data_uri, decode, faceless, png_bytes, raw

# 1 MP, in 8x8 blocks so its PNG stays well under this server's 1 MB upload limit
BIG_PHOTO = faceless(PHOTO).repeat(8, axis=0).repeat(8, axis=1)

TS_CLIENT = Path(__file__).resolve().parent / "ts_client"
NODE = shutil.which("node") or "/usr/bin/node"


class Host(BaseHTTPRequestHandler):
    """Loopback image host: /hang answers only once ``release`` is set; /hook collects webhooks."""

    release = threading.Event()
    hooks: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/hang":
            Host.release.wait(120)
        body = png_bytes(faceless(PHOTO))
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the ComfyUI that asked was killed meanwhile

    def do_POST(self):
        Host.hooks.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
        self.send_response(204)
        self.end_headers()


@pytest.fixture(scope="module")
def host():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Host.release.set()
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir, host):
    comfy_harness.require_comfyui()
    models = tmp_path_factory.mktemp("restart-models") / "models"
    shutil.copytree(tiny_models_dir, models, symlinks=True)
    env = {
        "MODELSWAP_API_KEY": KEY,
        "MODELSWAP_API_FETCH_ALLOW": f"127.0.0.1:{host.rsplit(':', 1)[1]}",
        "MODELSWAP_API_FETCH_TIMEOUT_S": "120",
        "PYTHONPATH": f"{NETGUARD}:{comfy_harness.TORCHVISION_STUB}",
    }
    with comfy_harness.ComfyServer(tmp_path_factory.mktemp("restart-comfy"), models_dir=models, env=env,
                                   extra_args=["--max-upload-size", "1"]) as srv:
        yield srv


def status(server, pid):
    code, body = raw(server, "GET", f"/v1/status/{pid}")
    assert code == 200, body  # never 404 for an accepted id
    return body


def wait_final(server, pid, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        body = status(server, pid)
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{pid} did not finish")


def run(server, inputs, **query):
    path = "/v1/run" + (f"?webhook_url={query['webhook_url']}" if query else "")
    code, body = raw(server, "POST", path, {"model_name": "model-swap", "inputs": {"generation_mode": "fast", **inputs}})
    assert code == 200, body
    return body["id"]


def on_disk(server, needle: bytes) -> list[Path]:
    return [p for p in server.base_dir.rglob("*") if p.is_file() and not p.is_symlink()
            and p.stat().st_size < 50_000_000 and needle in p.read_bytes()]


def test_kill_9_with_predictions_in_every_state_then_restart_loses_none(server, host):
    started = time.monotonic()
    done = run(server, {"model_image": data_uri(png_bytes(faceless(PHOTO)))})
    assert wait_final(server, done)["status"] == "completed"
    url = status(server, done)["output"][0]
    secret = faceless(PHOTO)
    secret[-1, -1] = (1, 2, 3)  # a photo no other test sends
    secret_uri = data_uri(png_bytes(secret))
    # 1 MP keeps the job processing for seconds even with the 4-step klein engine, so the three states
    # below hold together long enough to be seen (a 128 px job can finish between two polls)
    busy = run(server, {"model_image": data_uri(png_bytes(BIG_PHOTO))}, webhook_url=f"{host}/hook")
    end = time.monotonic() + 120  # ready predictions enter in order of readiness: let the big one go first
    while status(server, busy)["status"] != "processing" and time.monotonic() < end:
        time.sleep(0.05)
    starting = run(server, {"model_image": f"{host}/hang"})
    queued = run(server, {"model_image": secret_uri, "return_base64": True})  # behind the hanging URL
    submitted, in_queue_after = time.monotonic(), None
    seen = {}
    end = time.monotonic() + 300
    while time.monotonic() < end:
        seen = {pid: status(server, pid)["status"] for pid in (busy, queued, starting)}
        if in_queue_after is None and seen[queued] != "starting":
            in_queue_after = time.monotonic() - submitted
        if seen == {busy: "processing", queued: "in_queue", starting: "starting"}:
            break
        time.sleep(0.05)
    # the data-URI prediction entered ComfyUI's queue while the earlier one's URL still hangs
    assert seen == {busy: "processing", queued: "in_queue", starting: "starting"}, seen
    print(f"a data-URI prediction behind a hanging URL was in ComfyUI's queue {in_queue_after:.2f} s after it was sent")
    server.process.kill()  # kill -9: no clean-up runs
    server.process.wait()
    server.stop()
    killed_at = time.monotonic()
    assert on_disk(server, secret_uri.split(",")[1][:80].encode())  # stored, for resumption
    Host.release.set()
    server.start()
    assert status(server, done)["status"] == "completed"
    with DIRECT.open(server.url + "/v1/" + url.split("/v1/", 1)[1], timeout=30) as response:  # the new port
        assert response.status == 200 and response.read().startswith(b"\x89PNG")
    finals = {pid: wait_final(server, pid) for pid in (busy, queued, starting)}
    print(f"restart: {killed_at - started:.1f} s to reach the four states, all done "
          f"{time.monotonic() - killed_at:.1f} s after kill -9 (start-up {server.startup_seconds:.1f} s)")
    assert {pid: f["status"] for pid, f in finals.items()} == dict.fromkeys(finals, "completed"), finals
    assert len(finals[busy]["output"]) == 1 and finals[queued]["output"][0].startswith("data:image/png;base64,")
    end = time.monotonic() + 30
    while not Host.hooks and time.monotonic() < end:
        time.sleep(0.1)
    assert Host.hooks == [finals[busy]]
    assert on_disk(server, secret_uri.split(",")[1][:80].encode()) == []  # no image of it on disk
    assert on_disk(server, finals[queued]["output"][0].split(",")[1][:80].encode()) == []
    assert not [p for p in (server.input_dir / "modelswap_api").rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------ edge cases

def raw_http(server, request: bytes) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)


def test_json_nested_100000_deep_is_a_400_bad_request(server):
    body = b'{"model_name": "model-swap", "inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    code, answer = raw(server, "POST", "/v1/run", raw_body=body)
    assert (code, answer["error"]) == (400, "BadRequest") and "nested too deeply" in answer["message"]


def test_a_body_above_comfyuis_upload_limit_answers_fashns_json_413(server):
    body = json.dumps({"model_name": "model-swap", "inputs": {"model_image": "data:image/png;base64,"
                                                                            + "A" * (1024 * 1024 + 4096)}}).encode()
    code, answer = raw_http(server, b"POST /v1/run HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                            b"Content-Type: application/json\r\nAuthorization: Bearer " + KEY.encode()
                            + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert code == 413 and answer["error"] == "PayloadTooLarge", answer
    assert "--max-upload-size" in answer["message"] and "URL" in answer["message"]


def test_an_authorization_header_that_is_not_utf8_is_a_401(server):
    code, answer = raw_http(server, b"GET /v1/status/some-id HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                            b"Authorization: Bearer \xff\xfe\xc3(key\r\n\r\n")
    assert (code, answer["error"]) == (401, "UnauthorizedAccess") and "UTF-8" in answer["message"]


def test_the_typescript_sdks_client_fields_are_accepted_and_other_unknown_fields_refused(server):
    inputs = {"model_image": data_uri(png_bytes(faceless(PHOTO))), "generation_mode": "fast", "return_base64": True}
    code, answer = raw(server, "POST", "/v1/run", {"model_name": "model-swap", "inputs": inputs,
                                                   "pollInterval": 200, "timeout": 300000, "maxRetries": 1})
    assert code == 200 and answer["error"] is None, answer
    assert wait_final(server, answer["id"])["status"] == "completed"
    for extra in ({"poll_interval": 200}, {"onEnqueued": "x"}, {"pollinterval": 1}):
        code, answer = raw(server, "POST", "/v1/run", {"model_name": "model-swap", "inputs": inputs, **extra})
        assert (code, answer["error"]) == (400, "BadRequest") and next(iter(extra)) in answer["message"]


def test_fashns_typescript_sdk_subscribe_with_poll_interval_timeout_and_aspect_ratio_completes(server, tmp_path):
    if not (TS_CLIENT / "node_modules" / "fashn").is_dir() or not os.path.exists(NODE):
        if comfy_harness.IN_CI:
            pytest.fail("npm fashn is not installed in tests/ts_client/node_modules: .ci/run installs it")
        pytest.skip("npm fashn not installed (npm install --prefix tests/ts_client fashn@0.11.1)")
    image = tmp_path / "model.txt"
    image.write_text(data_uri(png_bytes(faceless(PHOTO))))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    done = subprocess.run([NODE, str(TS_CLIENT / "subscribe.mjs"), server.url, KEY, str(image), "9:16"], cwd=TS_CLIENT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["result"]["status"] == "completed", out
    assert out["result"]["output"][0].startswith("data:image/png;base64,")
    assert out["updates"][-1] == "completed" and len(out["updates"]) >= 2
    # it sent FASHN's aspect_ratio: a 9:16 canvas (128 * 16 / 9 = 227.6 -> 232 rows, multiples of 8)
    assert decode(out["result"]["output"][0]).size == (128, 232)

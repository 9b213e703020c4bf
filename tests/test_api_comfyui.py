"""The FASHN-compatible API served by a real ComfyUI, driven by FASHN's official Python SDK.

The server runs the shipped API workflows on the tiny models on CPU, with an API key, a short
base64 retention, and an allow-list naming only the test's own loopback image server. The
ComfyUI process has ``tests/netguard`` on its path: it cannot open a connection or resolve a name
other than loopback, so a URL-policy bug fails a test instead of sending a packet anywhere.
Requests use ``generation_mode: fast`` (face crops sampled at 512 px) to keep CI quick.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import comfy_harness
import fashn
import provenance_check as pc
import saved_faces
import tiny_models


KEY = "test-key-8d1f0c"
KEEP_BASE64_S = 10
NETGUARD = Path(__file__).resolve().parent / "netguard"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------------------------ images

def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def decode(uri_or_bytes) -> Image.Image:
    data = base64.b64decode(uri_or_bytes.split(",", 1)[1]) if isinstance(uri_or_bytes, str) else uri_or_bytes
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


PHOTO = tiny_models.fashion_photo(128)
REFERENCE = tiny_models.astronaut(128)


def faceless(photo: np.ndarray) -> np.ndarray:
    """The photo with its face area painted flat: the person is still regenerated, but the tiny
    detector finds no face, so no face crop is refined (a cheap but real run)."""
    out = photo.copy()
    side = max(out.shape[:2])
    y0, y1 = int(tiny_models.FACE_BOX[1] * side) - 4, int(tiny_models.FACE_BOX[3] * side) + 4
    x0, x1 = int(tiny_models.FACE_BOX[0] * side) - 4, int(tiny_models.FACE_BOX[2] * side) + 4
    out[y0:y1, x0:x1] = 90  # grey: no detail in any channel, so the tiny detector stays silent
    return out


def bomb_png(side=20000) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------ test servers

class ImageHost(BaseHTTPRequestHandler):
    """The allow-listed loopback server: images, a redirect to a private address, wrong content
    types, and a webhook receiver that fails once before accepting."""

    hooks: list = []
    hook_calls = [0]

    def log_message(self, *args):
        pass

    def do_GET(self):
        routes = {
            "/model.png": ("image/png", png_bytes(PHOTO)),
            "/rotated.jpg": ("image/jpeg", rotated_jpeg()),
            "/page.html": ("text/html", b"<html>not an image</html>"),
        }
        if self.path == "/to-private":
            self.send_response(302)
            self.send_header("Location", "http://192.168.7.7/model.png")
            self.end_headers()
            return
        if self.path not in routes:
            self.send_error(404)
            return
        kind, body = routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ImageHost.hook_calls[0] += 1
        if ImageHost.hook_calls[0] == 1:
            self.send_error(503)  # the first delivery fails: the server must retry
            return
        ImageHost.hooks.append(json.loads(body))
        self.send_response(204)
        self.end_headers()


def rotated_jpeg() -> bytes:
    """The photo stored sideways (128x96 landscape) with EXIF orientation 6 (rotate 90 CW to view)."""
    upright = Image.fromarray(PHOTO[:, 16:112])  # 96 wide x 128 tall
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_host():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The test certificate chain the server signs C2PA manifests with (MODELSWAP_C2PA_CERT/KEY)."""
    return pc.make_chain(tmp_path_factory.mktemp("c2pa"))


def check_provenance(data: bytes, chain, *, seed: int, face_reference: bool = False) -> None:
    """An API output says how it was made: XMP (exiftool) and a C2PA manifest valid on the test chain,
    the input photo its parent; never the prompt (the API does not record it)."""
    tags = pc.exif_xmp(data)
    assert tags["XMP-iptcExt:DigitalSourceType"] == pc.COMPOSITE
    assert (tags["XMP-modelswap:Engine"], tags["XMP-modelswap:Seed"]) == ("flux2_klein", seed)
    assert tags["XMP-modelswap:GenerationMode"] == "fast" and tags["XMP-modelswap:FaceReference"] == face_reference
    assert "fashn-human-parser" in [m["Name"] for m in tags["XMP-modelswap:Models"]]
    assert "XMP-modelswap:Prompt" not in tags
    manifest, state = pc.c2pa_manifest(data, chain)
    assert state == "Trusted" and [a["action"] for a in pc.actions(manifest)] == ["c2pa.opened", "c2pa.edited"]
    assert pc.actions(manifest)[1]["digitalSourceType"] == pc.COMPOSITE


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir, image_host, chain):
    comfy_harness.require_comfyui()
    models = tmp_path_factory.mktemp("api-models") / "models"
    shutil.copytree(tiny_models_dir, models, symlinks=True)
    port = image_host.rsplit(":", 1)[1]
    env = {
        "MODELSWAP_API_KEY": KEY,
        "MODELSWAP_API_FETCH_ALLOW": f"127.0.0.1:{port}",
        "MODELSWAP_API_KEEP_BASE64_S": str(KEEP_BASE64_S),
        "MODELSWAP_API_FETCH_TIMEOUT_S": "5",
        "PYTHONPATH": f"{NETGUARD}:{comfy_harness.TORCHVISION_STUB}",
        **chain.env(),
    }
    with comfy_harness.ComfyServer(tmp_path_factory.mktemp("api-comfy"), models_dir=models, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return fashn.Fashn(api_key=KEY, base_url=server.url, max_retries=0)


def subscribe(client, poll_ms=200, **inputs):
    inputs.setdefault("generation_mode", "fast")
    return client.predictions.subscribe(model_name="model-swap", inputs=inputs, poll_interval=poll_ms,
                                        timeout=600_000)


def raw(server, method, path, body=None, key=KEY, raw_body=None):
    """(HTTP status, decoded JSON) of a plain request, for what the SDK would refuse to send."""
    data = raw_body if raw_body is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with DIRECT.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_final(server, prediction_id, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        code, body = raw(server, "GET", f"/v1/status/{prediction_id}")
        assert code == 200, body
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"{prediction_id} did not finish")


def files_under(server) -> set[Path]:
    return {p for d in (server.input_dir, server.output_dir, server.temp_dir) if d.exists()
            for p in d.rglob("*") if p.is_file()}


def background_equal(output: Image.Image, photo: np.ndarray) -> bool:
    """The left and right 8 columns are background, beyond every regenerated area and its blend band:
    they must be the input's own pixels."""
    out = np.asarray(output.convert("RGB"))
    sides = np.r_[0:8, photo.shape[1] - 8:photo.shape[1]]
    return out.shape == photo.shape and np.array_equal(out[:, sides], photo[:, sides])


# ------------------------------------------------------------------------------ the SDK

def test_sdk_base64_png_without_reference_keeps_background_exact_and_a_fixed_seed_repeats(client, server, chain):
    before = files_under(server)
    first = subscribe(client, model_image=data_uri(png_bytes(PHOTO)), seed=7, return_base64=True)
    assert first.status == "completed" and first.error is None, first
    assert len(first.output) == 1 and first.output[0].startswith("data:image/png;base64,")
    image = decode(first.output[0])
    assert image.format == "PNG" and image.size == (128, 128) and image.mode == "RGB"
    assert background_equal(image, PHOTO)
    assert not np.array_equal(np.asarray(image), PHOTO)  # the person was regenerated
    # nothing of a base64 prediction is left in ComfyUI's input, output or temp folders
    assert files_under(server) - before == set()
    check_provenance(base64.b64decode(first.output[0].split(",", 1)[1]), chain, seed=7)
    again = subscribe(client, model_image=data_uri(png_bytes(PHOTO)), seed=7, return_base64=True)
    # the same picture and record (the C2PA manifest's ids and signature differ from run to run)
    assert np.array_equal(np.asarray(decode(again.output[0])), np.asarray(image))
    assert pc.exif_xmp(base64.b64decode(again.output[0].split(",", 1)[1])) == pc.exif_xmp(
        base64.b64decode(first.output[0].split(",", 1)[1]))
    other = subscribe(client, model_image=data_uri(png_bytes(PHOTO)), seed=8, return_base64=True)
    assert not np.array_equal(np.asarray(decode(other.output[0])), np.asarray(image))


def test_sdk_aspect_ratio_extends_the_photo_to_the_ratio_and_keeps_its_background_exact(client):
    """FASHN's aspect_ratio, sent by its SDK: a 4:5 canvas (128 x 160) with the photo on its bottom edge and
    new rows above the head (README, "Marketplace formats"); outside the person and the seam band (16 px
    inside the extended top border) the photo's own pixels."""
    photo = faceless(PHOTO)
    result = subscribe(client, model_image=data_uri(png_bytes(photo)), seed=7, return_base64=True,
                       aspect_ratio="4:5")
    assert result.status == "completed" and result.error is None, result
    out = np.asarray(decode(result.output[0]).convert("RGB"))
    assert out.shape == (160, 128, 3)  # 128 * 5 / 4 = 160: the exact ratio (sides multiples of 8)
    placed = out[32:]
    sides = np.r_[0:8, 120:128]
    assert np.array_equal(placed[16:, sides], photo[16:, sides])  # background below the seam band: exact
    assert not np.array_equal(placed, photo)  # the person was regenerated
    new_rows = out[:32].astype(int)
    assert np.abs(new_rows - photo[:1].astype(int)).mean() > 5  # outpainted, not the photo's top row repeated


def test_sdk_url_outputs_jpeg_four_images_served_by_this_server(client, server, chain):
    result = subscribe(client, model_image=data_uri(png_bytes(PHOTO)), num_images=4, output_format="jpeg",
                       seed=11)
    assert result.status == "completed" and len(result.output) == 4
    images = []
    for url in result.output:
        assert url.startswith(server.url + "/v1/outputs/" + result.id + "/")
        with DIRECT.open(url, timeout=30) as response:  # no key needed: the random id is the capability
            assert response.headers["Content-Type"] == "image/jpeg"
            data = response.read()
        image = decode(data)
        assert image.format == "JPEG" and image.size == (128, 128)
        check_provenance(data, chain, seed=11 + len(images))  # image i: seed + i
        images.append(np.asarray(image))
    assert len({a.tobytes() for a in images}) == 4  # seed, seed+1, ...: four different people
    escape = urllib.request.Request(f"{server.url}/v1/outputs/{result.id}/..%2F..%2Fcomfyui.log")
    with pytest.raises(urllib.error.HTTPError) as info:
        DIRECT.open(escape, timeout=30)
    assert info.value.code == 404


@pytest.mark.parametrize("mode, fmt, base64_out, num", [
    ("match_base", "jpeg", True, 1),
    ("match_reference", "png", False, 4),
])
def test_sdk_face_reference_in_both_modes(client, server, chain, mode, fmt, base64_out, num):
    result = subscribe(client, model_image=data_uri(png_bytes(PHOTO)), face_reference=data_uri(png_bytes(REFERENCE)),
                       face_reference_mode=mode, output_format=fmt, return_base64=base64_out, num_images=num, seed=3)
    assert result.status == "completed", result.error
    assert len(result.output) == num
    for out in result.output:
        if base64_out:
            assert out.startswith(f"data:image/{fmt};base64,")
            image = decode(out)
            check_provenance(base64.b64decode(out.split(",", 1)[1]), chain, seed=3, face_reference=True)
        else:
            with DIRECT.open(out, timeout=30) as response:
                image = decode(response.read())
        assert image.format == fmt.upper() and image.size == (128, 128)
        if fmt == "png":
            assert background_equal(image, PHOTO)


def test_sdk_saved_face_by_name_is_listed_and_used_as_the_face_reference(client, server, chain):
    """The local extension: face_reference "face:NAME" (a face of the library in models/modelswap_faces)."""
    from comfyui_model_swap.nodes.pipeline import face_opencv

    analyzer = face_opencv.OpenCVFaceAnalyzer.load(server.models_dir / "facedetection")
    saved = saved_faces.save(server.models_dir / "modelswap_faces", "Studio Face", analyzer)
    code, listed = raw(server, "GET", "/v1/faces")
    assert code == 200 and [f["face_reference"] for f in listed["faces"]] == ["face:Studio Face"]
    by_name = subscribe(client, model_image=data_uri(png_bytes(PHOTO)), face_reference="face:Studio Face",
                        return_base64=True, seed=4)
    assert by_name.status == "completed", by_name.error
    check_provenance(base64.b64decode(by_name.output[0].split(",", 1)[1]), chain, seed=4, face_reference=True)
    by_file = subscribe(client, model_image=data_uri(png_bytes(PHOTO)), seed=4, return_base64=True,
                        face_reference=data_uri((saved / "face.png").read_bytes()))
    assert np.array_equal(np.asarray(decode(by_name.output[0])), np.asarray(decode(by_file.output[0])))
    for ref, words in (("face:../Studio Face", "is not allowed"), ("face:Nobody", "saved faces: Studio Face")):
        code, answer = raw(server, "POST", "/v1/run", _body(face_reference=ref))
        assert (code, answer["error"]) == (400, "BadRequest") and words in answer["message"], answer
    # Creating over HTTP runs Create Face -> Save Face on the API's engine (tiny klein here, whose random weights
    # draw no face the tiny YuNet sees: saved_faces.py): the real analyser check refuses, naming the candidate.
    code, answer = raw(server, "POST", "/v1/faces", {"name": "Made Here", "seed": 5, "size": 64})
    assert (code, answer["error"]) == (400, "InputValidationError"), answer
    assert "Candidate 1 (seed 5)" in answer["message"] and not (server.models_dir / "modelswap_faces" / "Made Here").exists()


def test_sdk_model_image_by_url_with_exif_orientation_and_a_webhook(client, server, image_host):
    result = client.predictions.subscribe(
        model_name="model-swap", webhook_url=f"{image_host}/hook", poll_interval=200, timeout=600_000,
        inputs={"model_image": f"{image_host}/rotated.jpg", "return_base64": True, "generation_mode": "fast"})
    assert result.status == "completed", result.error
    assert decode(result.output[0]).size == (96, 128)  # upright: 96 wide, 128 tall
    end = time.monotonic() + 30
    while not ImageHost.hooks and time.monotonic() < end:
        time.sleep(0.1)
    assert ImageHost.hook_calls[0] == 2  # the first delivery failed and was retried
    assert ImageHost.hooks[0] == {"id": result.id, "status": "completed", "output": result.output, "error": None}


# ------------------------------------------------------------------------------ bad requests

def _inputs(**extra):
    return {"model_image": data_uri(png_bytes(PHOTO)), "generation_mode": "fast", **extra}


def _body(**extra):
    return {"model_name": "model-swap", "inputs": _inputs(**extra)}


TRUNCATED = png_bytes(PHOTO)[:400]
FLAT = png_bytes(np.full((96, 96, 3), 128, np.uint8))

# (case, request body or raw bytes, API key, HTTP status, error name); run-time failures answer 200
# on /v1/run and then fail with the error name on /v1/status.
HTTP_CASES = [
    ("malformed JSON", b'{"model_name": "model-swap", "inputs": {', KEY, 400, "BadRequest"),
    ("JSON array", b"[1, 2]", KEY, 400, "BadRequest"),
    ("NaN is not JSON", b'{"model_name": "model-swap", "inputs": {"model_image": "x", "seed": NaN}}', KEY, 400,
     "BadRequest"),
    ("missing model_name", {"inputs": _inputs()}, KEY, 400, "BadRequest"),
    ("other model", {"model_name": "tryon-v1.6", "inputs": _inputs()}, KEY, 400, "BadRequest"),
    ("missing inputs", {"model_name": "model-swap"}, KEY, 400, "BadRequest"),
    ("inputs not an object", {"model_name": "model-swap", "inputs": "photo"}, KEY, 400, "BadRequest"),
    ("missing model_image", {"model_name": "model-swap", "inputs": {"seed": 1}}, KEY, 400, "BadRequest"),
    ("unknown input", _body(strength=0.5), KEY, 400, "BadRequest"),
    ("unknown top-level field", {**_body(), "priority": 1}, KEY, 400, "BadRequest"),
    ("negative seed", _body(seed=-1), KEY, 400, "BadRequest"),
    ("seed above 2^32-1", _body(seed=2**32), KEY, 400, "BadRequest"),
    ("seed as string", _body(seed="42"), KEY, 400, "BadRequest"),
    ("num_images 0", _body(num_images=0), KEY, 400, "BadRequest"),
    ("num_images 5", _body(num_images=5), KEY, 400, "BadRequest"),
    ("num_images 1.5", _body(num_images=1.5), KEY, 400, "BadRequest"),
    ("output_format webp", _body(output_format="webp"), KEY, 400, "BadRequest"),
    ("unknown face_reference_mode", _body(face_reference_mode="both"), KEY, 400, "BadRequest"),
    ("return_base64 as string", _body(return_base64="yes"), KEY, 400, "BadRequest"),
    ("unknown generation_mode", _body(generation_mode="turbo"), KEY, 400, "BadRequest"),
    ("unknown resolution", _body(resolution="8k"), KEY, 400, "BadRequest"),
    ("prompt as number", _body(prompt=123), KEY, 400, "BadRequest"),
    ("model_image as number", {"model_name": "model-swap", "inputs": {"model_image": 42}}, KEY, 400, "BadRequest"),
    ("ftp URL", {"model_name": "model-swap", "inputs": {"model_image": "ftp://example.com/a.png"}}, KEY, 400,
     "BadRequest"),
    ("aspect_ratio not one of FASHN's ten", _body(aspect_ratio="7:3"), KEY, 400, "BadRequest"),
    ("bad webhook_url", {**_body(), "webhook_url": "not a url"}, KEY, 400, "BadRequest"),
    ("missing API key", _body(), None, 401, "UnauthorizedAccess"),
    ("wrong API key", _body(), "wrong-key", 401, "UnauthorizedAccess"),
]

RUNTIME_CASES = [
    ("undecodable image", _body(model_image=data_uri(b"\x00" * 64 + b"not an image at all")), "ImageLoadError"),
    ("truncated PNG", _body(model_image=data_uri(TRUNCATED)), "ImageLoadError"),
    ("non-image data URI", _body(model_image="data:text/plain;base64," + base64.b64encode(b"hello").decode()),
     "ImageLoadError"),
    ("invalid base64", _body(model_image="data:image/png;base64,@@@not-base64@@@"), "ImageLoadError"),
    ("decompression bomb", _body(model_image=data_uri(bomb_png())), "ImageLoadError"),
    ("URL to loopback (ComfyUI itself)", None, "ImageLoadError"),
    ("URL to a private address", _body(model_image="http://10.20.30.40/model.png"), "ImageLoadError"),
    ("URL to cloud metadata", _body(model_image="http://169.254.169.254/latest/meta-data/"), "ImageLoadError"),
    ("URL to a metadata host name", _body(model_image="http://metadata.google.internal/x.png"), "ImageLoadError"),
    ("URL to IPv6 link-local", _body(model_image="http://[fe80::1]/x.png"), "ImageLoadError"),
    ("redirect to a private address", "to-private", "ImageLoadError"),
    ("URL serving HTML", "page.html", "ImageLoadError"),
    ("face reference with no face", _body(face_reference=data_uri(FLAT)), "InputValidationError"),
]


@pytest.mark.parametrize("case, body, key, status, name", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_bad_request_is_refused_with_fashns_status_and_error_name(server, case, body, key, status, name):
    raw_body = body if isinstance(body, bytes) else None
    code, answer = raw(server, "POST", "/v1/run", None if raw_body else body, key=key, raw_body=raw_body)
    assert (code, answer.get("error")) == (status, name), answer
    assert set(answer) == {"error", "message"} and len(answer["message"]) > 20


@pytest.mark.parametrize("case, body, name", RUNTIME_CASES, ids=[c[0] for c in RUNTIME_CASES])
def test_bad_input_fails_the_prediction_with_fashns_error_name(server, image_host, case, body, name):
    if body is None:
        body = _body(model_image=f"{server.url}/view?filename=x.png")
    elif isinstance(body, str):
        body = _body(model_image=f"{image_host}/{body}")
    code, answer = raw(server, "POST", "/v1/run", body)
    assert code == 200 and answer["error"] is None, answer
    final = wait_final(server, answer["id"])
    assert final["status"] == "failed" and final["output"] is None
    assert final["error"]["name"] == name, final["error"]
    assert len(final["error"]["message"]) > 20


@pytest.mark.parametrize("path, key, status, name", [
    ("/v1/status/00000000-0000-4000-8000-000000000000", KEY, 404, "NotFound"),
    ("/v1/status/not-an-id", KEY, 404, "NotFound"),
    ("/v1/status/00000000-0000-4000-8000-000000000000", "wrong-key", 401, "UnauthorizedAccess"),
])
def test_unknown_ids_and_bad_keys_on_status(server, path, key, status, name):
    code, answer = raw(server, "GET", path, key=key)
    assert (code, answer["error"]) == (status, name)


def test_the_server_still_serves_correct_results_after_the_bad_requests(client, server):
    result = subscribe(client, model_image=data_uri(png_bytes(PHOTO)), seed=7, return_base64=True)
    assert result.status == "completed" and background_equal(decode(result.output[0]), PHOTO)
    blocked = (server.base_dir / "comfyui.log").read_text()
    assert "[netguard] blocked" not in blocked  # the policy refused every private address itself


# ------------------------------------------------------------------------------ load and retention

def test_twenty_concurrent_submissions_all_complete_none_lost(server):
    photo = data_uri(png_bytes(faceless(PHOTO)))

    def one(seed):
        client = fashn.Fashn(api_key=KEY, base_url=server.url, max_retries=0)
        return subscribe(client, poll_ms=500, model_image=photo, seed=seed, return_base64=True,
                         num_images=1 + seed % 2)

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(100, 120)))
    assert [r.status for r in results] == ["completed"] * 20
    assert [len(r.output) for r in results] == [1 + s % 2 for s in range(100, 120)]
    assert len({r.id for r in results}) == 20
    assert len({np.asarray(decode(r.output[0])).tobytes() for r in results}) == 20  # every seed its own result


def test_base64_results_expire_after_the_retention_time(client, server):
    result = subscribe(client, model_image=data_uri(png_bytes(faceless(PHOTO))), return_base64=True)
    assert raw(server, "GET", f"/v1/status/{result.id}")[0] == 200
    time.sleep(KEEP_BASE64_S + 1)
    code, answer = raw(server, "GET", f"/v1/status/{result.id}")
    assert (code, answer["error"]) == (404, "NotFound")



def test_listening_beyond_loopback_without_a_key_warns_loudly_at_start_up(tmp_path):
    """ComfyUI bound to every interface (only loopback is used to talk to it) with no key set."""
    comfy_harness.require_comfyui()
    env = {"PYTHONPATH": f"{NETGUARD}:{comfy_harness.TORCHVISION_STUB}"}
    with comfy_harness.ComfyServer(tmp_path / "open", env=env, extra_args=["--listen", "0.0.0.0"]) as srv:
        log = srv.log_path.read_text()
        code, answer = raw(srv, "GET", "/v1/status/unknown", key=None)
    assert "MODELSWAP_API_KEY is not set" in log and "0.0.0.0" in log and "--listen 127.0.0.1" in log
    assert (code, answer["error"]) == (404, "NotFound")  # no key configured: no key asked for

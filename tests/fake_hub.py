"""A Hugging Face hub stand-in on 127.0.0.1 for the installer's tests (HF_ENDPOINT points here).

It answers what ``huggingface_hub`` and the installer ask of the real hub:
``/api/models/<repo>[/revision/<rev>]`` (the file list; with ``?blobs=true`` each file's size, git
object id and, for weights kept in LFS, SHA-256), ``HEAD``/``GET /<repo>/resolve/<rev>/<path>`` with
the headers the client reads (``X-Repo-Commit``, ``X-Linked-Etag`` = the file's SHA-256,
``X-Linked-Size``, ``Content-Length``) and byte ranges, plus plain files under ``/files/<name>`` (the
insightface zips). Tests can mark a repo gated (401 ``GatedRepo``), serve other bytes for a file
(corruption) or cut transfers short (``cut``: for each coming GET of a file, how many bytes to send
before closing the connection), and read which files were fetched and how many bytes were sent.

:func:`repos_from_models` turns a models folder of tiny test models into repos in the published
layouts, using the model registry: single files at their repo path, folder models file by file
(weights that the registry's patterns take as ``*.fp16.safetensors`` are published under that
name too), and zip-published folders as a zip with the folder on top, as insightface ships them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import threading
import urllib.parse
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], files: dict[str, bytes] | None = None):
        self.repos = repos
        self.files = dict(files or {})
        self.gated: set[str] = set()
        self.corrupt: dict[tuple[str, str], bytes] = {}  # (repo, path) -> bytes served instead
        self.cut: dict[tuple[str, str], list[int]] = {}  # per coming GET: body bytes sent before closing
        self.gets: Counter = Counter()  # (repo or "files", path) -> GET requests
        self.sent: Counter = Counter()  # (repo or "files", path) -> body bytes sent
        self.ranges: list[tuple[str, str, int]] = []  # (repo, path, first byte) of ranged GETs
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, head=True)

            def do_GET(self):
                hub._answer(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---------------------------------------------------------------- requests
    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(h.path).path)
        if path.startswith("/api/models/"):
            repo = path[len("/api/models/"):].split("/revision/")[0]
            if repo in self.gated:
                return self._error(h, 401, "GatedRepo", f"Access to model {repo} is restricted.")
            if repo not in self.repos:
                return self._error(h, 404, "RepoNotFound", "Repository not found")
            blobs = "blobs=true" in urllib.parse.urlsplit(h.path).query.lower()
            body = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                               "siblings": [_sibling(p, data, blobs) for p, data in sorted(self.repos[repo].items())]})
            body = body.encode()
            return self._send(h, 200, body, {"Content-Type": "application/json"}, head)
        if path.startswith("/files/"):
            name = path[len("/files/"):]
            if name not in self.files:
                return self._error(h, 404, "EntryNotFound", "no such file")
            return self._send_file(h, "files", name, self.files[name], self.files[name], head)
        if "/resolve/" in path:
            repo, rest = path.lstrip("/").split("/resolve/", 1)
            file_path = rest.split("/", 1)[1]
            if repo in self.gated:
                return self._error(h, 401, "GatedRepo", f"Access to model {repo} is restricted.")
            if repo not in self.repos:
                return self._error(h, 404, "RepoNotFound", "Repository not found")
            if file_path not in self.repos[repo]:
                return self._error(h, 404, "EntryNotFound", "Entry not found")
            good = self.repos[repo][file_path]
            served = self.corrupt.get((repo, file_path), good)
            return self._send_file(h, repo, file_path, good, served, head)
        return self._error(h, 404, "NotFound", "not found")

    def _send_file(self, h, repo: str, path: str, good: bytes, served: bytes, head: bool) -> None:
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(good).hexdigest()}"',
                   "X-Linked-Etag": f'"{hashlib.sha256(good).hexdigest()}"', "X-Linked-Size": str(len(good)),
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if head:
            return self._send(h, 200, good, headers, head=True)
        self.gets[(repo, path)] += 1
        start = 0
        ranged = h.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start = int(ranged[len("bytes="):].split("-")[0] or 0)
            self.ranges.append((repo, path, start))
            if start >= len(served):
                return self._send(h, 416, b"", {"Content-Range": f"bytes */{len(served)}"}, False)
        body = served[start:]
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(served) - 1}/{len(served)}"
        if self.cut.get((repo, path)):
            keep = self.cut[(repo, path)].pop(0)
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[:keep])
            h.wfile.flush()
            self.sent[(repo, path)] += len(body[:keep])
            h.close_connection = True
            return
        self.sent[(repo, path)] += len(body)
        self._send(h, status, body, headers, False)

    @staticmethod
    def _send(h, status: int, body: bytes, headers: dict, head: bool) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _error(self, h, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(h, status, body, {"X-Error-Code": code, "X-Error-Message": message,
                                     "Content-Type": "application/json"}, h.command == "HEAD")


LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".pth", ".ckpt", ".gguf", ".zip")


def _sibling(path: str, data: bytes, blobs: bool) -> dict:
    """A file of /api/models' ``siblings``: the name, and with ``blobs`` what the hub adds (size, git
    object id; an ``lfs`` entry with the SHA-256 for the weights that the hub keeps in LFS)."""
    if not blobs:
        return {"rfilename": path}
    entry = {"rfilename": path, "size": len(data),
             "blobId": hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()}
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest(),
                        "size": len(data), "pointerSize": 134}
    return entry


def _zip_folder(folder: Path, top: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{top}/{file.relative_to(folder).as_posix()}", (2024, 1, 1, 0, 0, 0))
            archive.writestr(info, file.read_bytes())
    return buffer.getvalue()


def repos_from_models(models_dir: Path, model_files, hub_url_slot: str = "{hub}") -> tuple[dict, dict, dict]:
    """(repos, files, pins) publishing every registry model that ``models_dir`` holds under its
    default name. ``pins`` is the MODEL_SWAP_PINS content for zip-published models; their URLs
    carry ``hub_url_slot`` for the caller to fill with the server's address."""
    repos: dict[str, dict[str, bytes]] = {}
    files: dict[str, bytes] = {}
    pins: dict[str, dict[str, str]] = {}
    for spec in model_files.MODELS.values():
        local = Path(models_dir) / spec.folder / spec.name
        if not local.exists():
            continue
        if spec.url:
            blob = _zip_folder(local, spec.name) if local.is_dir() else local.read_bytes()
            name = Path(spec.url).name
            files[name] = blob
            pins[spec.key] = {"url": f"{hub_url_slot}/files/{name}", "sha256": hashlib.sha256(blob).hexdigest()}
            continue
        if not spec.repo:
            continue
        repo = repos.setdefault(spec.repo, {})
        if not spec.is_folder:
            repo[spec.repo_files[0]] = local.read_bytes()
            if spec.sha256:  # the registry pins the published file's hash: pin the tiny stand-in's instead
                pins[spec.key] = {"sha256": hashlib.sha256(repo[spec.repo_files[0]]).hexdigest()}
            continue
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = file.relative_to(local).as_posix()
            repo[rel] = file.read_bytes()
            fp16 = rel[: -len(".safetensors")] + ".fp16.safetensors" if rel.endswith(".safetensors") else ""
            matches = [fnmatch.fnmatch(rel, p) for p in spec.repo_files]
            if fp16 and not any(matches) and any(fnmatch.fnmatch(fp16, p) for p in spec.repo_files):
                repo[fp16] = file.read_bytes()
    return repos, files, pins

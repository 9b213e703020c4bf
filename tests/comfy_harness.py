"""Run a real ComfyUI with this pack in ``custom_nodes/``: for tests and CI.

ComfyUI comes from ``COMFYUI_PATH`` (a user's own install) or ``<repo>/.comfyui``, which
``.ci/install_comfyui.sh`` fills with ComfyUI 0.3.75 from PyPI. Each :class:`ComfyServer`
gets a fresh base directory (custom_nodes, models, input, output, temp, user), runs
``main.py`` as a subprocess on a free loopback port and is driven over HTTP::

    with ComfyServer(tmp_path / "comfy", models_dir=models) as server:
        assert not server.import_failed()
        prompt_id = server.queue_prompt(api_graph)
        entry = server.wait(prompt_id)
        images = server.output_images(entry)

:class:`ProgressWatcher` follows the ``/ws`` websocket; :func:`browser_page` opens ComfyUI's
graph editor in headless Chromium (Debian's ``/usr/bin/chromium`` through playwright) with
every request that leaves 127.0.0.1 blocked. :func:`normalise_api_graph` compares API-format
graphs while ignoring node ids.

Every HTTP request goes through the pack's one ComfyUI client, ``ComfyClient`` in
nodes/workflow_runner.py (which the headless runner uses). Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyui_model_swap.nodes.workflow_runner import ComfyClient, WorkflowError

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "comfyui-model-swap"
TORCHVISION_STUB = Path(__file__).resolve().parent / "torchvision_stub"
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
INSTALL_COMMAND = ".ci/install_comfyui.sh"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-proxy-server",
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "ws_proxy", "wss_proxy")
DEFAULT_SETTINGS = {"Comfy.TutorialCompleted": True}



class ComfyServerError(RuntimeError):
    """ComfyUI did not start, died, or answered with an error."""


class PromptRejected(ComfyServerError):
    """``POST /prompt`` answered HTTP 400: the graph did not validate.

    ``body`` is the decoded answer (``error`` and ``node_errors``); ``node_errors`` maps a node
    id to ``{"errors": [...], "class_type": ...}``.
    """

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        self.node_errors = body.get("node_errors", {}) if isinstance(body, dict) else {}
        super().__init__(f"ComfyUI rejected the prompt (HTTP {status}): {json.dumps(body, indent=1)[:4000]}")


class PromptExecutionError(ComfyServerError):
    """A queued prompt finished with an error or was interrupted; ``entry`` is its history entry."""

    def __init__(self, prompt_id: str, entry: dict):
        self.prompt_id = prompt_id
        self.entry = entry
        self.messages = entry.get("status", {}).get("messages", [])
        self.interrupted = any(name == "execution_interrupted" for name, _ in self.messages)
        detail = "interrupted"
        for name, data in self.messages:
            if name == "execution_error":
                detail = (
                    f"{data.get('node_type')} (node {data.get('node_id')}) raised {data.get('exception_type')}: "
                    f"{data.get('exception_message')}\n{''.join(data.get('traceback') or [])}"
                )
        super().__init__(f"prompt {prompt_id} failed: {detail}")


def comfyui_path() -> Path:
    """The ComfyUI to test against: ``$COMFYUI_PATH``, else ``<repo>/.comfyui``."""
    configured = os.environ.get("COMFYUI_PATH")
    path = Path(configured).expanduser() if configured else REPO_ROOT / ".comfyui"
    if not (path / "main.py").is_file():
        source = "COMFYUI_PATH" if configured else "the default location"
        raise ComfyServerError(
            f"no ComfyUI at {path} ({source}): run `{INSTALL_COMMAND}` from the repository root "
            f"(with the project's venv active), or set COMFYUI_PATH to a ComfyUI checkout"
        )
    return path.resolve()


IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_comfyui() -> None:
    """Skip the calling test when no ComfyUI is installed, except in CI, where that is a failure."""
    import pytest

    try:
        comfyui_path()
    except ComfyServerError as exc:
        if IN_CI:
            raise
        pytest.skip(str(exc))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def frontend_installed(python: str = sys.executable) -> bool:
    """Whether ``python`` can import ComfyUI's web frontend (comfyui-frontend-package)."""
    if python == sys.executable:
        return importlib.util.find_spec("comfyui_frontend_package") is not None
    probe = subprocess.run(
        [python, "-c", "import importlib.util as u; print(u.find_spec('comfyui_frontend_package') is not None)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() == "True"


def _is_loopback(url: str) -> bool:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme in ("data", "blob", "about"):
        return True
    return (parsed.hostname or "") in LOOPBACK_HOSTS


class ComfyServer:
    """A real ComfyUI subprocess on 127.0.0.1 with its own base directory.

    ``base_dir``      created if needed; holds custom_nodes/, models, input/, output/, temp/, user/
    ``models_dir``    becomes ``<base>/models`` (a symlink), so ``folder_paths.models_dir`` is that
                      folder: ComfyUI's standard folders and any folder a pack registers under
                      ``folder_paths.models_dir`` resolve inside it. Default: an empty ``<base>/models``.
    ``custom_nodes``  folder name -> package path, symlinked into ``<base>/custom_nodes``;
                      default: this repository as ``comfyui-model-swap``.
    ``extra_model_paths``  YAML files passed as ``--extra-model-paths-config``.
    ``extra_args``    more ``main.py`` flags.
    ``settings``      merged over ``{"Comfy.TutorialCompleted": true}`` into the default user's
                      ``comfy.settings.json`` (the frontend then opens no templates dialog).
    """

    def __init__(
        self,
        base_dir: Path | str,
        *,
        models_dir: Path | str | None = None,
        custom_nodes: Mapping[str, Path | str] | None = None,
        comfyui: Path | str | None = None,
        python: str = sys.executable,
        extra_model_paths: Sequence[Path | str] = (),
        extra_args: Sequence[str] = (),
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 180.0,
    ):
        self.base_dir = Path(base_dir).resolve()
        self.models_dir = Path(models_dir).resolve() if models_dir is not None else None
        self.custom_nodes = dict(custom_nodes) if custom_nodes is not None else {PACK_DIR_NAME: REPO_ROOT}
        self.comfyui = Path(comfyui).resolve() if comfyui is not None else comfyui_path()
        self.python = python
        self.extra_model_paths = [Path(p).resolve() for p in extra_model_paths]
        self.extra_args = list(extra_args)
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.log_path = self.base_dir / "comfyui.log"
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log_file = None

    # ----------------------------------------------------------------- life cycle
    @property
    def url(self) -> str:
        if self.port is None:
            raise ComfyServerError("ComfyUI is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    def _prepare_base(self) -> None:
        for name in ("custom_nodes", "input", "output", "user/default"):
            (self.base_dir / name).mkdir(parents=True, exist_ok=True)
        for name, package in self.custom_nodes.items():
            link = self.base_dir / "custom_nodes" / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(Path(package).resolve(), target_is_directory=True)
        models = self.base_dir / "models"
        if self.models_dir is not None:
            if models.is_symlink():
                models.unlink()
            if models.exists():
                raise ComfyServerError(f"{models} exists and is not a symlink; use a fresh base_dir")
            self.models_dir.mkdir(parents=True, exist_ok=True)
            models.symlink_to(self.models_dir, target_is_directory=True)
        else:
            models.mkdir(exist_ok=True)
        settings_file = self.base_dir / "user" / "default" / "comfy.settings.json"
        current = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        settings_file.write_text(json.dumps({**current, **self.settings}, indent=1))

    def command(self) -> list[str]:
        """The ``main.py`` command line (run in the ComfyUI folder)."""
        cmd = [
            self.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base_dir),
            "--disable-api-nodes",
            "--disable-auto-launch",
            "--database-url",
            "sqlite:///:memory:",
        ]
        if not frontend_installed(self.python):
            empty = self.base_dir / "frontend-none"
            empty.mkdir(exist_ok=True)
            cmd += ["--front-end-root", str(empty)]
        if self.extra_model_paths:
            cmd += ["--extra-model-paths-config", *map(str, self.extra_model_paths)]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            DIFFUSERS_OFFLINE="1",
            DO_NOT_TRACK="1",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            PYTHONUNBUFFERED="1",
        )
        # ComfyUI imports torchvision at start-up; the stub stands in where the real one is absent.
        paths = [str(TORCHVISION_STUB)] if not self._has_real_torchvision() else []
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        env.update(self.extra_env)
        return env

    def _has_real_torchvision(self) -> bool:
        probe = subprocess.run(
            [self.python, "-c", "import importlib.metadata as m; m.version('torchvision'); import torchvision"],
            capture_output=True,
            check=False,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        return probe.returncode == 0

    def start(self) -> ComfyServer:
        if self.process is not None:
            raise ComfyServerError("ComfyUI is already started")
        self._prepare_base()
        env = self.environment()
        for attempt in range(3):
            self.port = free_port()
            cmd = self.command()
            started = time.monotonic()
            # a fresh log per start, so import_failed() never reports an earlier run
            self._log_file = open(self.log_path, "wb" if attempt == 0 else "ab")
            self._log_file.write(f"$ {' '.join(cmd)}\n".encode())
            self._log_file.flush()
            self.process = subprocess.Popen(
                cmd,
                cwd=self.comfyui,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
            )
            atexit.register(self.stop)  # no orphaned ComfyUI if the caller never reaches stop()
            try:
                self._wait_ready(started)
                self.startup_seconds = time.monotonic() - started
                return self
            except ComfyServerError:
                port_taken = "address already in use" in self.log_text().lower()
                self.stop()
                if not port_taken or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _wait_ready(self, started: float) -> None:
        while True:
            if self.process.poll() is not None:
                raise ComfyServerError(
                    f"ComfyUI exited with code {self.process.returncode} during start-up; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                self.object_info(timeout=30)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
                pass
            if time.monotonic() - started > self.startup_timeout:
                raise ComfyServerError(
                    f"ComfyUI did not answer /object_info within {self.startup_timeout:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate ComfyUI, kill it if it lingers; idempotent."""
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ----------------------------------------------------------------- log
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failed(self, include_core: bool = False) -> list[str]:
        """Log lines of custom-node packages that failed to load: ``N.N seconds (IMPORT FAILED): <path>``.

        A pack that raises at import, whose ``comfy_entrypoint`` fails, or that exports
        neither ``NODE_CLASS_MAPPINGS`` nor ``comfy_entrypoint`` is listed; ComfyUI still starts.
        ``include_core`` adds ComfyUI's own ``IMPORT FAILED: nodes_x.py`` lines (comfy_extras
        modules whose optional dependencies are absent: torchaudio, spandrel).
        """
        found = []
        for line in self.log_text().splitlines():
            if "(IMPORT FAILED)" in line or (include_core and line.startswith("IMPORT FAILED: ")):
                found.append(line.strip())
        return found

    def log_mentions(self, text: str) -> list[str]:
        """Log lines containing ``text`` (say a pack's folder name: its failure, its traceback frames)."""
        return [line for line in self.log_text().splitlines() if text in line]

    # ----------------------------------------------------------------- HTTP
    @property
    def client(self) -> ComfyClient:
        """The pack's HTTP client (nodes/workflow_runner.py) for this server: every request goes through it."""
        return ComfyClient(self.url)

    def request(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
                timeout: float = 30.0) -> tuple[int, bytes]:
        """One HTTP request to the server; returns (status, body) for any status."""
        return self.client.request(method, path, body, dict(headers or {}), timeout)

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyServerError(f"GET {path} answered HTTP {status}: {body[:2000]!r}")
        return json.loads(body)

    def post_json(self, path: str, payload: Any, timeout: float = 30.0) -> tuple[int, Any]:
        status, body = self.request(
            "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"}, timeout
        )
        try:
            return status, json.loads(body) if body else None
        except json.JSONDecodeError:
            return status, body.decode(errors="replace")

    def object_info(self, node_type: str | None = None, timeout: float = 60.0) -> dict:
        """``/object_info`` (every node) or ``/object_info/<node_type>`` (that node's entry only)."""
        if node_type is None:
            return self.get_json("/object_info", timeout)
        return self.get_json(f"/object_info/{urllib.parse.quote(node_type)}", timeout).get(node_type, {})

    def pack_nodes(self, folder_name: str = PACK_DIR_NAME) -> list[str]:
        """Ids of the nodes that the package in ``custom_nodes/<folder_name>`` registered."""
        module = f"custom_nodes.{folder_name}"
        return sorted(k for k, v in self.object_info().items() if v.get("python_module") == module)

    def queue_prompt(self, graph: Mapping[str, Any], client_id: str | None = None,
                     extra_data: Mapping[str, Any] | None = None) -> str:
        """Queue an API-format graph; returns its prompt id. Raises :class:`PromptRejected` on HTTP 400."""
        payload: dict[str, Any] = {"prompt": graph, "client_id": client_id or uuid.uuid4().hex}
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        status, body = self.post_json("/prompt", payload)
        if status == 400:
            raise PromptRejected(status, body)
        if status != 200:
            raise ComfyServerError(f"POST /prompt answered HTTP {status}: {body!r:.2000}")
        return body["prompt_id"]

    def history(self, prompt_id: str | None = None) -> dict:
        """``/history`` (all entries) or the entry of one prompt (``{}`` while it is not done)."""
        if prompt_id is None:
            return self.get_json("/history")
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def wait(self, prompt_id: str, timeout: float = 300.0, check: bool = True) -> dict:
        """Wait until the prompt has a history entry; returns it.

        With ``check`` a prompt that raised or was interrupted raises :class:`PromptExecutionError`
        (with the node, exception and traceback). Raises :class:`ComfyServerError` on timeout
        or when ComfyUI dies, with the log tail.
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") == "error":
                if check and entry["status"].get("status_str") != "success":
                    raise PromptExecutionError(prompt_id, entry)
                return entry
            if not self.alive():
                raise ComfyServerError(f"ComfyUI died while running {prompt_id}; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                queue = self.get_json("/queue")
                raise ComfyServerError(
                    f"prompt {prompt_id} not done after {timeout:.0f} s; queue: "
                    f"{len(queue.get('queue_running', []))} running, {len(queue.get('queue_pending', []))} pending; "
                    f"log:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def run(self, graph: Mapping[str, Any], timeout: float = 300.0) -> dict:
        """Queue a graph and wait for it; returns the history entry."""
        return self.wait(self.queue_prompt(graph), timeout)

    def interrupt(self) -> None:
        """Interrupt the running prompt (``POST /interrupt``)."""
        status, body = self.post_json("/interrupt", {})
        if status != 200:
            raise ComfyServerError(f"POST /interrupt answered HTTP {status}: {body!r}")

    def output_images(self, entry: Mapping[str, Any], kinds: Sequence[str] = ("output",)) -> list[Path]:
        """Files that a history entry's nodes saved, in node-id then list order.

        ``kinds``: ``"output"`` (SaveImage, under ``<base>/output``); add ``"temp"`` for
        PreviewImage files (under ``<base>/temp``, deleted when ComfyUI stops).
        """
        roots = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}
        paths = []
        for _node_id, node_output in sorted(entry.get("outputs", {}).items(), key=lambda kv: _id_key(kv[0])):
            for image in node_output.get("images", []):
                if image.get("type") in kinds:
                    paths.append(roots[image["type"]] / image.get("subfolder", "") / image["filename"])
        return paths

    def upload_image(self, path: Path | str, subfolder: str = "", overwrite: bool = True) -> str:
        """Upload a file through ``/upload/image``; returns the name a LoadImage node takes."""
        try:
            return self.client.upload_image(Path(path), subfolder, overwrite)
        except WorkflowError as exc:
            raise ComfyServerError(str(exc)) from exc

    def watch(self, client_id: str | None = None) -> ProgressWatcher:
        """A :class:`ProgressWatcher` on this server's websocket (use as a context manager)."""
        return ProgressWatcher(self, client_id)


def _id_key(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if str(node_id).isdigit() else (1, str(node_id))


# --------------------------------------------------------------------- websocket
class ProgressWatcher:
    """Collects the JSON messages ComfyUI sends on ``/ws?clientId=<client_id>``.

    Runs aiohttp's websocket client in a background thread. Queue prompts with the same
    ``client_id`` to receive their ``executing``/``progress``/``executed`` messages::

        with server.watch() as ws:
            prompt_id = server.queue_prompt(graph, ws.client_id)
            ws.wait_for(lambda m: m["type"] == "progress")
            ...
            ws.wait_done(prompt_id)
            steps = ws.progress(prompt_id)
    """

    def __init__(self, server: ComfyServer, client_id: str | None = None, connect_timeout: float = 30.0):
        self.server = server
        self.client_id = client_id or uuid.uuid4().hex
        self.connect_timeout = connect_timeout
        self.messages: list[dict] = []
        self.binary_frames = 0
        self._changed = threading.Condition()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> ProgressWatcher:
        self._thread = threading.Thread(target=self._run, name=f"comfy-ws-{self.client_id[:8]}", daemon=True)
        self._thread.start()
        # ComfyUI greets every new socket with a "status" message.
        self.wait_for(lambda m: m.get("type") == "status", self.connect_timeout)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._listen())
        except BaseException as exc:  # reported to the waiting thread
            self._error = exc
        with self._changed:
            self._changed.notify_all()

    async def _listen(self) -> None:
        import aiohttp

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        url = f"ws://127.0.0.1:{self.server.port}/ws?clientId={self.client_id}"
        async with aiohttp.ClientSession(trust_env=False) as session:
            async with session.ws_connect(url, heartbeat=20, max_msg_size=0) as ws:
                stopper = asyncio.ensure_future(self._stop.wait())
                while not self._stop.is_set():
                    receive = asyncio.ensure_future(ws.receive())
                    done, _ = await asyncio.wait({receive, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if receive not in done:
                        receive.cancel()
                        break
                    msg = receive.result()
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        with self._changed:
                            self.messages.append(json.loads(msg.data))
                            self._changed.notify_all()
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        with self._changed:
                            self.binary_frames += 1
                            self._changed.notify_all()
                    elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
                stopper.cancel()

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 60.0) -> dict:
        """The first message (already received or still to come) for which ``predicate`` is true."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for message in self.messages[seen:]:
                    if predicate(message):
                        return message
                seen = len(self.messages)
                if self._error is not None:
                    raise ComfyServerError(f"websocket failed: {self._error!r}") from self._error
                if self._thread is not None and not self._thread.is_alive():
                    raise ComfyServerError("websocket closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    types = [m.get("type") for m in self.messages]
                    raise ComfyServerError(f"no matching websocket message within {timeout:.0f} s; got {types}")
                self._changed.wait(min(remaining, 0.5))

    def wait_done(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Wait for the message that ends a prompt: ``execution_success``, ``execution_error`` or
        ``execution_interrupted`` (or ``executing`` with node None); returns it."""
        ends = {"execution_success", "execution_error", "execution_interrupted"}

        def ended(m: dict) -> bool:
            data = m.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                return False
            return m.get("type") in ends or (m.get("type") == "executing" and data.get("node") is None)

        return self.wait_for(ended, timeout)

    def of_type(self, message_type: str, prompt_id: str | None = None) -> list[dict]:
        """The ``data`` of every message of a type so far (optionally of one prompt)."""
        with self._changed:
            return [
                m.get("data") or {}
                for m in self.messages
                if m.get("type") == message_type and (prompt_id is None or (m.get("data") or {}).get("prompt_id") == prompt_id)
            ]

    def progress(self, prompt_id: str | None = None) -> list[tuple[int, int, str | None]]:
        """``(value, max, node)`` of every ``progress`` message so far."""
        return [(d.get("value"), d.get("max"), d.get("node")) for d in self.of_type("progress", prompt_id)]


# --------------------------------------------------------------------- browser
@dataclass
class PageLog:
    """What :func:`browser_page` records about its page."""

    blocked_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


_PAGE_LOGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def browser_available() -> tuple[bool, str]:
    """Whether headless-Chromium tests can run here, and why not."""
    if not CHROMIUM.exists():
        return False, f"{CHROMIUM} is missing (apt-get install -y chromium, or {INSTALL_COMMAND})"
    if importlib.util.find_spec("playwright") is None:
        return False, f"playwright is not installed (pip install playwright, or {INSTALL_COMMAND})"
    return True, ""


def page_log(page) -> PageLog:
    """Blocked non-loopback requests, console errors and uncaught page errors of a page from :func:`browser_page`."""
    return _PAGE_LOGS[page]


@contextlib.contextmanager
def browser_page(server: ComfyServer, *, viewport: tuple[int, int] = (1400, 900), timeout: float = 90.0) -> Iterator[Any]:
    """ComfyUI's graph editor in headless Chromium; yields a playwright sync ``Page``.

    Uses Debian's ``/usr/bin/chromium`` (never a playwright-downloaded browser) with a
    throw-away profile. Every request not to 127.0.0.1/localhost is aborted and recorded in
    :func:`page_log`. Returns once ``window.app``, ``app.graph`` and the node definitions exist.
    """
    from playwright.sync_api import sync_playwright

    log = PageLog()
    with tempfile.TemporaryDirectory(prefix="comfy-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": viewport[0], "height": viewport[1]},
            service_workers="block",
        )
        try:
            def guard(route):
                url = route.request.url
                if _is_loopback(url):
                    route.continue_()
                else:
                    log.blocked_requests.append(url)
                    route.abort("blockedbyclient")

            context.route("**/*", guard)
            # the "Introducing Nodes 2.0" banner would cover the top of every screenshot
            context.add_init_script("try { localStorage.setItem('vueNodesBannerDismissed', 'true') } catch (e) {}")
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(timeout * 1000)
            page.on("console", lambda msg: log.console_errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: log.page_errors.append(str(exc)))
            _PAGE_LOGS[page] = log
            page.goto(server.url + "/", wait_until="domcontentloaded")
            page.wait_for_function(
                "() => !!(window.app && window.app.graph && window.LiteGraph"
                " && window.LiteGraph.registered_node_types"
                " && Object.keys(window.LiteGraph.registered_node_types).length > 0)",
                timeout=timeout * 1000,
            )
            yield page
        finally:
            context.close()


def close_dialogs(page, timeout: float = 10.0) -> int:
    """Close every open frontend dialog (missing nodes, errors, ...); returns how many were open."""
    closed = page.evaluate(
        """() => {
          const buttons = [...document.querySelectorAll('.p-dialog .p-dialog-close-button')];
          buttons.forEach(b => b.click());
          return buttons.length;
        }"""
    )
    if closed:
        page.wait_for_function("() => document.querySelectorAll('.p-dialog').length === 0", timeout=timeout * 1000)
    return closed


def load_workflow(page, ui_workflow: Mapping[str, Any] | str | Path) -> None:
    """Load a UI-format workflow (dict, JSON text or a .json path) with ``app.loadGraphData``.

    Dialogs left open by an earlier load are closed first, so one page can load many
    workflows. Missing node types open the frontend's missing-nodes dialog, as for a user;
    see :func:`missing_node_types` and :func:`missing_nodes_dialog`.
    """
    close_dialogs(page)
    if isinstance(ui_workflow, Path) or (isinstance(ui_workflow, str) and not ui_workflow.lstrip().startswith("{")):
        ui_workflow = json.loads(Path(ui_workflow).read_text())
    elif isinstance(ui_workflow, str):
        ui_workflow = json.loads(ui_workflow)
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", dict(ui_workflow))
    # let the frontend finish the dialogs/draws that loading schedules
    page.wait_for_timeout(300)


_ALL_NODES_JS = """
() => {
  const all = [];
  const visit = (graph) => {
    for (const node of graph._nodes || graph.nodes || []) {
      all.push(node);
      if (node.subgraph) visit(node.subgraph);
    }
  };
  visit(window.app.graph);
  return all;
}
"""


def missing_node_types(page) -> list[str]:
    """Node types in the loaded graph (and its subgraphs) that the frontend has no definition for."""
    return page.evaluate(
        f"""() => {{
          const nodes = ({_ALL_NODES_JS})();
          const known = window.LiteGraph.registered_node_types;
          return [...new Set(nodes.map(n => n.type).filter(t => t && !(t in known)))].sort();
        }}"""
    )


def missing_nodes_dialog(page) -> str | None:
    """The text of the frontend's missing-nodes dialog if it is open, else None."""
    dialog = page.locator(".p-dialog:has(.comfy-missing-nodes)")
    return dialog.first.inner_text() if dialog.count() and dialog.first.is_visible() else None


def nodes_with_errors(page) -> list[dict]:
    """``{"id", "type", "title"}`` of every node the frontend marks ``has_errors``
    (missing types, failed validation after a queue attempt)."""
    return page.evaluate(
        f"""() => ({_ALL_NODES_JS})()
            .filter(n => n.has_errors)
            .map(n => ({{id: n.id, type: n.type, title: n.title}}))"""
    )


def graph_to_prompt(page) -> dict:
    """The loaded graph in API format: ``(await app.graphToPrompt()).output``."""
    return page.evaluate("async () => (await window.app.graphToPrompt()).output")


def export_workflow(page) -> dict:
    """The loaded graph in UI format (what "Save" writes): ``app.graph.serialize()``."""
    return page.evaluate("() => window.app.graph.serialize()")


def queue_from_page(page, timeout: float = 60.0) -> str:
    """Press "Queue" the way the frontend does (``app.queuePrompt(0, 1)``); returns the prompt id
    from the ``POST /prompt`` answer. Raises :class:`PromptRejected` if the server refused it."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and urllib.parse.urlsplit(r.url).path.endswith("/prompt"),
        timeout=timeout * 1000,
    ) as response_info:
        page.evaluate("() => { window.app.queuePrompt(0, 1); }")
    response = response_info.value
    body = response.json()
    if response.status == 400:
        raise PromptRejected(response.status, body)
    if response.status != 200:
        raise ComfyServerError(f"POST /prompt from the page answered HTTP {response.status}: {body!r}")
    return body["prompt_id"]


def screenshot(page, path: Path | str | None = None, name: str = "comfyui") -> Path:
    """Save a PNG of the page; default ``<repo>/test-artifacts/<name>.png``. Returns the path."""
    target = Path(path) if path is not None else ARTIFACTS_DIR / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target))
    return target


# --------------------------------------------------------------------- graph comparison
def _is_link(value: Any, graph: Mapping[str, Any]) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and str(value[0]) in graph
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def normalise_api_graph(graph: Mapping[str, Any]) -> dict[str, dict]:
    """An API-format graph with canonical node ids and no ``_meta``, for comparing graphs.

    Node ids become "1", "2", ... in a topological order; ties between nodes that are ready
    at the same time are broken by a content hash of the node and everything upstream of it
    (class_type, literal inputs, and the hashes and slots of linked sources), so two graphs
    that differ only in node ids (and ``_meta`` titles or key order) normalise to equal dicts.
    Links ``[source_id, slot]`` are rewritten to the new ids. Nodes identical in their
    upstream are told apart by their consumers; nodes identical in both fall back to their
    original id order.
    """
    nodes = {str(k): v for k, v in graph.items()}
    sources: dict[str, set[str]] = {}
    for node_id, node in nodes.items():
        sources[node_id] = {str(v[0]) for v in node.get("inputs", {}).values() if _is_link(v, nodes)}

    hashes: dict[str, str] = {}

    def content_hash(node_id: str, path: tuple[str, ...] = ()) -> str:
        if node_id in hashes:
            return hashes[node_id]
        if node_id in path:
            raise ValueError(f"the graph has a cycle through node {node_id}")
        node = nodes[node_id]
        inputs = {}
        for name, value in node.get("inputs", {}).items():
            if _is_link(value, nodes):
                inputs[name] = {"link": content_hash(str(value[0]), path + (node_id,)), "slot": value[1]}
            else:
                inputs[name] = {"value": value}
        text = json.dumps({"class_type": node.get("class_type"), "inputs": inputs}, sort_keys=True, default=str)
        hashes[node_id] = hashlib.sha256(text.encode()).hexdigest()
        return hashes[node_id]

    for node_id in nodes:
        content_hash(node_id)

    # Nodes with equal upstream hashes (say two identical loaders) differ by what consumes them.
    consumers: dict[str, list[tuple[str, str]]] = {n: [] for n in nodes}
    for node_id, node in nodes.items():
        for name, value in node.get("inputs", {}).items():
            if _is_link(value, nodes):
                consumers[str(value[0])].append((hashes[node_id], f"{name}:{value[1]}"))
    downstream = {n: sorted(c) for n, c in consumers.items()}

    order: list[str] = []
    placed: set[str] = set()
    while len(order) < len(nodes):
        ready = [n for n in nodes if n not in placed and sources[n] <= placed]
        if not ready:
            raise ValueError("the graph has a cycle")
        ready.sort(key=lambda n: (nodes[n].get("class_type", ""), hashes[n], downstream[n], _id_key(n)))
        # one at a time: a node placed now can make others ready, keeping the order stable
        order.append(ready[0])
        placed.add(ready[0])

    new_id = {old: str(i) for i, old in enumerate(order, start=1)}
    result: dict[str, dict] = {}
    for old in order:
        node = nodes[old]
        inputs = {}
        for name in sorted(node.get("inputs", {})):
            value = node["inputs"][name]
            inputs[name] = [new_id[str(value[0])], value[1]] if _is_link(value, nodes) else value
        entry = {k: v for k, v in node.items() if k not in ("_meta", "inputs")}
        entry["inputs"] = inputs
        result[new_id[old]] = entry
    return result

"""A private ComfyUI for one headless job: started on a free loopback port, stopped after, and when it
fails to start, the cause read from its log with the fix (no CUDA, a port in use, a missing package).
Standard library only.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..model_folders import WorkflowError, comfy_args_value
from .client import ComfyClient

# Python module -> the package that provides it, where the two names differ.
PACKAGES = {"yaml": "pyyaml", "PIL": "Pillow", "cv2": "opencv-python", "skimage": "scikit-image",
            "sklearn": "scikit-learn", "google": "protobuf", "comfyui_frontend_package": "comfyui-frontend-package",
            "comfyui_workflow_templates": "comfyui-workflow-templates",
            "comfyui_embedded_docs": "comfyui-embedded-docs", "pydantic_settings": "pydantic-settings"}
NO_CUDA = ("Torch not compiled with CUDA enabled", "Found no NVIDIA driver", "No CUDA GPUs are available",
           "CUDA driver initialization failed", "no CUDA-capable device is detected")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*")
_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")
_PORT = re.compile(r"bind on address \('?([^',]*)'?, (\d+)\)")


def diagnose_startup(log_text: str, python: str = sys.executable, comfyui: Path | None = None) -> str:
    """Why ComfyUI stopped while starting, and what to do, read from its log (its last exception)."""
    lines = [line.rstrip() for line in log_text.splitlines() if line.strip()]
    errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
    last = errors[-1] if errors else (lines[-1] if lines else "")
    if any(text in last for text in NO_CUDA):
        return (f"torch found no usable CUDA GPU ({last}). On a machine without an NVIDIA GPU, run ComfyUI on "
                "the CPU: add its flag after '--', as in `... --comfyui PATH -- --cpu` (slow); with a GPU, "
                "install a CUDA build of torch into ComfyUI's Python")
    if "address already in use" in last.lower() or "errno 98" in last.lower() or "errno 48" in last.lower():
        port = _PORT.search(last)
        return port_in_use(port.group(2) if port else "")
    module = _MISSING_MODULE.search(last)
    if module:
        top = module.group(1).split(".")[0]
        package = PACKAGES.get(top, top.replace("_", "-"))
        requirements = f" (or all of ComfyUI's: {python} -m pip install -r {Path(comfyui) / 'requirements.txt'})" \
            if comfyui is not None else ""
        return (f"ComfyUI's Python lacks the package {package} (No module named '{module.group(1)}'). Install it: "
                f"{python} -m pip install {package}{requirements}")
    return last or "it printed nothing"


def port_in_use(port: str | int) -> str:
    return (f"port {port or '(its port)'} is already in use (another ComfyUI?). Stop the program that holds it, or "
            "choose a free port after '--': `-- --port 8190` (without --port the runner picks a free one itself)")


def _free_port(port: int = 0) -> int:
    """``port`` if it is free on 127.0.0.1 (any free port for 0); WorkflowError when it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise WorkflowError(f"ComfyUI cannot start: {port_in_use(port)}") from exc
        return s.getsockname()[1]


class LocalComfy:
    """ComfyUI started headless on a free loopback port for one job (context manager).

    ComfyUI's own flags (``extra_args``) come last, so a ``--port`` there wins and is the port used."""

    def __init__(self, comfyui: Path, extra_args: list[str] | None = None, startup_timeout: float = 300.0):
        self.comfyui = Path(comfyui)
        if not (self.comfyui / "main.py").is_file():
            raise WorkflowError(f"{comfyui} is not a ComfyUI folder (no main.py).")
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self.process = None
        self.log = None
        self.url = ""

    def __enter__(self) -> ComfyClient:
        chosen = comfy_args_value(self.extra_args, "--port")
        port = _free_port(int(chosen[-1]) if chosen and chosen[-1].isdigit() else 0)
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
               *self.extra_args]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"comfyui-run-{port}.log", "w")
        self.process = subprocess.Popen(cmd, cwd=self.comfyui, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            return self._wait_until_up(ComfyClient(self.url))
        except BaseException:
            self.__exit__()
            raise

    def _wait_until_up(self, client: ComfyClient) -> ComfyClient:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.flush()
                cause = diagnose_startup(Path(self.log.name).read_text(errors="replace"), sys.executable, self.comfyui)
                raise WorkflowError(f"ComfyUI exited while starting: {cause}. Its log: {self.log.name}")
            try:
                client.get_json("/object_info/SaveImage")
                return client
            except WorkflowError:
                time.sleep(0.5)
        raise WorkflowError(f"ComfyUI did not start within {self.startup_timeout:.0f} s; see {self.log.name}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.log is not None:
            self.log.close()

"""ComfyUI's own queue as the API's backend: jobs go in through this server's ``POST /prompt``,
exactly as the graph editor's do, so API jobs and editor jobs share the GPU in one order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp

from .app import BackendError

CLIENT_ID = "modelswap-api"


def _loopback(address: str) -> str:
    """Where to reach a server listening on ``address`` from the same machine."""
    first = (address or "127.0.0.1").split(",")[0].strip()
    if first in ("", "0.0.0.0"):
        return "127.0.0.1"
    if first == "::":
        return "[::1]"
    return f"[{first}]" if ":" in first else first


class ComfyBackend:
    def __init__(self, server_url: Callable[[], str], input_dir: Path, output_dir: Path):
        self._server_url = server_url
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_prompt_server(cls, server) -> "ComfyBackend":
        import folder_paths

        def url() -> str:
            from comfy.cli_args import args

            scheme = "https" if getattr(args, "tls_keyfile", None) and getattr(args, "tls_certfile", None) else "http"
            return f"{scheme}://{_loopback(getattr(server, 'address', '127.0.0.1'))}:{server.port}"

        return cls(url, Path(folder_paths.get_input_directory()), Path(folder_paths.get_output_directory()))

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=60))
        return self._session

    async def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        url = self._server_url() + path
        async with self._client().request(method, url, json=body, ssl=False) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text) if text else None
            except json.JSONDecodeError:
                return response.status, text

    async def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until this ComfyUI answers on its port (the API starts before the server listens)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while True:
            try:
                status, _ = await self._call("GET", "/queue")
                if status == 200:
                    return
            except (aiohttp.ClientError, OSError, AttributeError):  # AttributeError: no port chosen yet
                pass
            if loop.time() > end:
                raise BackendError(f"ComfyUI did not answer at {self._server_url()} within {timeout_s:.0f} s.")
            await asyncio.sleep(0.2)

    async def submit(self, graph: dict, prompt_id: str) -> str:
        status, body = await self._call("POST", "/prompt", {"prompt": graph, "prompt_id": prompt_id,
                                                            "client_id": CLIENT_ID})
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise BackendError(_rejection(status, body))
        return str(body["prompt_id"])

    async def states(self, prompt_ids: list[str]) -> dict[str, tuple[str, dict | None]]:
        _, queue = await self._call("GET", "/queue")
        queue = queue if isinstance(queue, dict) else {}
        running = {str(item[1]) for item in queue.get("queue_running", [])}
        pending = {str(item[1]) for item in queue.get("queue_pending", [])}
        out: dict[str, tuple[str, dict | None]] = {}
        for pid in prompt_ids:
            if pid in running:
                out[pid] = ("processing", None)
            elif pid in pending:
                out[pid] = ("in_queue", None)
            else:
                _, history = await self._call("GET", f"/history/{pid}")
                entry = history.get(pid) if isinstance(history, dict) else None
                out[pid] = ("done", entry) if entry else ("gone", None)
        return out

    async def forget(self, prompt_id: str) -> None:
        await self._call("POST", "/history", {"delete": [prompt_id]})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _rejection(status: int, body: object) -> str:
    """ComfyUI's reasons for refusing the graph, as one message."""
    if not isinstance(body, dict):
        return f"ComfyUI refused the job (HTTP {status}): {str(body)[:500]}"
    parts = []
    error = body.get("error")
    if isinstance(error, dict):
        parts.append(error.get("message", "") + (f": {error.get('details')}" if error.get("details") else ""))
    for node_id, info in (body.get("node_errors") or {}).items():
        for err in info.get("errors", []):
            parts.append(f"{info.get('class_type')} (node {node_id}): {err.get('message')}: {err.get('details')}")
    return "ComfyUI refused the workflow: " + "; ".join(p for p in parts if p)

"""Hook the API into ComfyUI's server (called once when the pack loads)."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from .config import ApiConfig

log = logging.getLogger("comfyui_model_swap.api")
_API = None


def exposed_addresses(listen: str | None) -> list[str]:
    """The addresses in ComfyUI's ``--listen`` value that other machines can reach."""
    exposed = []
    for raw in (listen or "127.0.0.1").split(","):
        address = raw.strip().strip("[]")
        if not address or address == "localhost":
            continue
        try:
            if ipaddress.ip_address(address).is_loopback:
                continue
        except ValueError:
            pass  # a host name: assume reachable
        exposed.append(address)
    return exposed


def exposure_warning(listen: str | None, config: ApiConfig) -> str | None:
    """The start-up warning when the API is reachable from other machines without a key."""
    exposed = exposed_addresses(listen)
    if config.api_key or not exposed:
        return None
    bar = "!" * 100
    return (f"\n{bar}\n  Model Swap API: ComfyUI listens on {', '.join(exposed)} and MODELSWAP_API_KEY is not set.\n"
            "  Anyone who can reach this machine can run model swaps on your GPU through /v1/run.\n"
            "  Set MODELSWAP_API_KEY to a long random secret (clients then send 'Authorization: Bearer <key>'),\n"
            "  or start ComfyUI with --listen 127.0.0.1, or set MODELSWAP_API_ENABLED=0.\n"
            f"{bar}")


def register() -> None:
    """Add /v1/run, /v1/status/{id} and /v1/outputs/... to ComfyUI's routes (once)."""
    global _API
    if _API is not None:
        return
    try:
        config = ApiConfig.from_env()
    except ValueError as exc:
        log.error("Model Swap API disabled: %s", exc)
        return
    if not config.enabled:
        log.info("Model Swap API disabled (MODELSWAP_API_ENABLED=0).")
        return
    from comfy.cli_args import args
    from server import PromptServer

    from .app import WORK_FOLDER, FashnApi
    from .comfy_backend import ComfyBackend

    server = PromptServer.instance
    backend = ComfyBackend.for_prompt_server(server)
    try:
        store = make_store(config, backend.output_dir / WORK_FOLDER)
    except Exception as exc:  # noqa: BLE001 - a bad store setting must not stop ComfyUI
        log.error("Model Swap API disabled: cannot open the prediction store: %s", exc)
        return
    from ..comfy_glue import folder_roots
    from ..pipeline.face_library import FOLDER

    api = FashnApi(config, backend, store, face_dirs=lambda: [Path(p) for p in folder_roots(FOLDER)])
    api.add_routes(server.routes)

    async def on_startup(app):
        api.start()  # resumes predictions accepted before a restart once ComfyUI answers

    server.app.on_startup.append(on_startup)
    _API = api
    warning = exposure_warning(getattr(args, "listen", None), config)
    if warning:
        log.warning(warning)
    log.info("Model Swap API: POST /v1/run, GET /v1/status/{id} (FASHN protocol, model-swap), predictions in "
             "%s%s.", config.redis_url.split("@")[-1] if config.redis_url else store.path,
             "" if config.api_key else "; no API key set")


def make_store(config: ApiConfig, output_root):
    """The store the settings choose: Redis when MODELSWAP_API_REDIS_URL is set, else SQLite."""
    if config.redis_url:
        from .store_redis import RedisStore

        return RedisStore(config.redis_url, prefix=config.redis_prefix, max_in_flight=config.max_in_flight,
                          slots=config.worker_slots, claim_s=config.claim_s,
                          keep_running_s=config.keep_url_outputs_s)
    import folder_paths

    from .store_sqlite import SqliteStore

    path = config.store_path or os.path.join(folder_paths.get_user_directory(), "modelswap_api",
                                             "predictions.sqlite3")
    return SqliteStore(path, output_root, max_in_flight=config.max_in_flight)

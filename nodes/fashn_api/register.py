"""Hook the API into ComfyUI's server (called once when the pack loads)."""

from __future__ import annotations

import ipaddress
import logging

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

    from .app import FashnApi
    from .comfy_backend import ComfyBackend

    server = PromptServer.instance
    api = FashnApi(config, ComfyBackend.for_prompt_server(server))
    api.cleanup_leftovers()
    api.add_routes(server.routes)
    _API = api
    warning = exposure_warning(getattr(args, "listen", None), config)
    if warning:
        log.warning(warning)
    log.info("Model Swap API: POST /v1/run, GET /v1/status/{id} (FASHN protocol, model-swap)%s.",
             "" if config.api_key else "; no API key set")

"""The ComfyExtension that lists the pack's nodes (V3 node API)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension

from . import comfy_glue, comfy_memory
from .engine_loader import ENGINE_LOADERS
from .face_nodes import FACE_NODES
from .loader_nodes import LOADERS
from .save_node import SAVE_NODES
from .swap_nodes import SWAP_NODES


class ModelSwapExtension(ComfyExtension):
    async def on_load(self) -> None:  # ComfyUI versions that call it; get_node_list covers the rest
        comfy_glue.register_model_folders()
        comfy_memory.install()
        _register_api()

    async def get_node_list(self):
        comfy_glue.register_model_folders()  # before schemas list the installed models
        comfy_memory.install()  # before any loader runs: ComfyUI places the pack's models
        _register_api()
        return [*LOADERS, *ENGINE_LOADERS, *SWAP_NODES, *SAVE_NODES, *FACE_NODES]


def _register_api() -> None:
    """The FASHN-compatible HTTP API on ComfyUI's server (once; see README, "HTTP API")."""
    from .fashn_api.register import register

    register()

"""ComfyUI Model Swap: change the person in a fashion photo, keep the garments pixel-identical.

Importing this package is cheap: torch, diffusers and insightface are imported
only by the node that needs them, so ComfyUI starts fast and the pack still
loads (and says which node needs what) when an optional dependency is missing.
"""

import sys

__version__ = "0.1.0"

# ComfyUI imports the pack by its folder name; engines and tools written outside the pack (see
# nodes/pipeline/engines/__init__.py) import it by one fixed name instead.
sys.modules.setdefault("comfyui_model_swap", sys.modules[__name__])

# Served by ComfyUI at /extensions/<this folder>/: the node help pages, docs/<node id>.md.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: returns the extension listing this pack's nodes."""
    from .nodes.extension import ModelSwapExtension

    return ModelSwapExtension()

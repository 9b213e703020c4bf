"""ComfyUI Model Swap: change the person in a fashion photo, keep the garments pixel-identical.

Importing this package is cheap: torch, diffusers and insightface are imported
only by the functions that need them, so ComfyUI starts fast and the pack still
loads when an optional dependency is missing.
"""

__version__ = "0.1.0"

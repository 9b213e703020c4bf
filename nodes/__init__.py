"""ComfyUI nodes (thin adapters) over the comfy-free pipeline in ``nodes.pipeline``."""

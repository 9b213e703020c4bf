"""A FASHN-compatible Model Swap HTTP API (``POST /v1/run``, ``GET /v1/status/{id}``) served by ComfyUI.

Everything here except ``comfy_backend`` and ``register`` is free of ComfyUI imports, so it is
tested on its own. A request fills the shipped API-format workflow and runs through ComfyUI's own
queue, so the graph and the API cannot drift.
"""

"""The loaded generation engine: one object that holds the diffusers pipeline and how to run it.

Loaders build it once (``sdxl_loader``); ``ip_adapter`` attaches identity
adapters to it; ``sampler`` runs it. Keeping it a plain dataclass lets ComfyUI's
output cache (or any caller) keep it alive between runs, so models load once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Engine:
    pipe: Any  # StableDiffusionXLInpaintPipeline or StableDiffusionXLControlNetInpaintPipeline
    device: Any  # torch.device where sampling runs
    dtype: Any  # torch dtype of the UNet/text encoders (VAE may be kept in float32)
    has_controlnet: bool = False
    offload: str = "none"  # "none" | "model" (diffusers model CPU offload)
    ip_adapter: str | None = None  # None | "faceid" | "faceid_plusv2", set by ip_adapter.load_faceid
    image_encoder: Any = None  # CLIP vision model for FaceID PlusV2
    source: str = ""  # what was loaded, for messages and caching keys
    extras: dict = field(default_factory=dict)

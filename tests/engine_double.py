"""A test double of the engine interface, for stage tests where a real tiny model would be too slow
(megapixel inputs, many refine steps) or where an engine with other capabilities is needed before
its real module runs here. It never replaces the real path: every engine is also tested through its
real diffusers pipeline (test_sdxl_engine.py, test_flux2_klein.py, test_pipeline.py).

It records each InpaintRequest and "generates" image i as the input shifted by a colour drawn from
seeds[i] wherever the mask is above 0, so results depend on the seed and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from comfyui_model_swap.nodes.pipeline.engines.base import GENERATION_MODES, Capabilities, InpaintRequest, Preset

REFERENCE_ENGINE = Capabilities(name="double_reference", reference_image=True, embedding_identity=False,
                                controlnet=False, guidance=False, work_size=1024, side_multiple=16, outpaint=True,
                                presets={m: Preset(steps=4, refine_steps=4, refine_work_size=1024)
                                         for m in GENERATION_MODES})


@dataclass
class EngineDouble:
    capabilities: Capabilities = REFERENCE_ENGINE
    device: str = "cpu"
    dtype: str = "float32"
    source: str = "test double"
    requests: list = field(default_factory=list)

    def inpaint(self, request: InpaintRequest, on_step=None) -> list[np.ndarray]:
        self.requests.append(request)
        assert request.image.shape[0] % self.capabilities.side_multiple == 0
        assert request.image.shape[1] % self.capabilities.side_multiple == 0
        assert request.mask.shape == request.image.shape[:2] and len(request.prompts) == len(request.seeds)
        out = []
        for i, seed in enumerate(request.seeds):
            if on_step is not None:
                on_step(i, len(request.seeds))
            shift = np.random.default_rng(seed).integers(-60, 60, 3)
            moved = np.clip(request.image.astype(np.int16) + shift, 0, 255).astype(np.uint8)
            out.append(np.where(request.mask[..., None] > 0, moved, request.image))
        return out


def with_capabilities(**changes) -> EngineDouble:
    return EngineDouble(capabilities=replace(REFERENCE_ENGINE, **changes))

"""A third engine module, as someone outside the pack would write one: registered by the tests (with
``engines.register`` or ``MODELSWAP_ENGINES=toy=toy_engine``), it proves that the stages, a real
ComfyUI graph (through the generic Engine Loader) and the HTTP API use a new engine with no file of the
pack changed.

It "generates" image i as the source shifted by a colour drawn from seeds[i] plus the model file's own
offset wherever the mask is above 0, and appends every request it gets (steps, seeds, size, strength) to
the JSON-lines file named by TOY_ENGINE_LOG, so a test can see which settings reached it. Its presets
differ from every shipped engine's, so "the engine's own" is visible. TOY_ENGINE_WORKFLOWS names the
folder holding its API workflows (the tests write them there).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from comfyui_model_swap.nodes.pipeline.engines.base import Capabilities, InpaintRequest, Preset

CAPABILITIES = Capabilities(
    name="toy", reference_image=True, embedding_identity=False, controlnet=False, guidance=False,
    work_size=96, side_multiple=16, display_name="Toy engine", licence="test weights, no licence",
    presets={"fast": Preset(steps=2, refine_steps=1, refine_work_size=64),
             "balanced": Preset(steps=5, refine_steps=2, refine_work_size=80),
             "quality": Preset(steps=7, refine_steps=3, refine_work_size=96)})
MODEL_FOLDERS = ("diffusion_models",)
_WORKFLOWS = Path(os.environ.get("TOY_ENGINE_WORKFLOWS", Path(__file__).parent))
API_WORKFLOWS = (str(_WORKFLOWS / "toy_swap_api.json"), str(_WORKFLOWS / "toy_swap_face_reference_api.json"))


@dataclass(frozen=True)
class Files:
    model: Path  # a safetensors file holding "offset": three colour offsets


@dataclass
class ToyEngine:
    offset: np.ndarray
    source: str
    capabilities: Capabilities = CAPABILITIES
    device: str = "cpu"
    dtype: str = "float32"
    requests: list = field(default_factory=list)

    def inpaint(self, request: InpaintRequest, on_step=None) -> list[np.ndarray]:
        self.requests.append(request)
        log = os.environ.get("TOY_ENGINE_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"steps": request.steps, "seeds": list(request.seeds), "strength": request.strength,
                                    "size": list(request.image.shape[:2]),
                                    "reference": request.identity is not None}) + "\n")
        out = []
        for i, seed in enumerate(request.seeds):
            for step in range(request.steps):
                if on_step is not None:
                    on_step(step, request.steps)
            shift = np.random.default_rng(seed).integers(-60, 60, 3) + self.offset
            moved = np.clip(request.image.astype(np.int16) + shift, 0, 255).astype(np.uint8)
            out.append(np.where(request.mask[..., None] > 0, moved, request.image))
        return out


def load(files: Files, *, device="auto", dtype=None, offload="none") -> ToyEngine:
    from safetensors.numpy import load_file

    offset = load_file(str(files.model))["offset"].astype(np.int16)
    return ToyEngine(offset=offset, source=str(files.model))


def load_model(model: Path, locate, *, device="auto", dtype=None, offload="none") -> ToyEngine:
    return load(Files(model=Path(model)), device=device, dtype=dtype, offload=offload)


def write_model(path: Path, offset=(5, -7, 9)) -> Path:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"offset": np.asarray(offset, np.int16)}, str(path))
    return path

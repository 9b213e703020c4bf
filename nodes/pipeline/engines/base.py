"""The engine seam: what every generation backend implements, and the values it exchanges.

The stages (parse, faces, generate, refine, composite) reach a generation model only
through :class:`Engine`. An engine is loaded once from model files (see ``registry``)
and then answers one call, :meth:`Engine.inpaint`, with one uint8 image per seed.
It says what it can do in :class:`Capabilities`; the nodes and the HTTP API read
those instead of testing classes.

Per-pixel strength: ``InpaintRequest.mask`` is soft. A pixel whose mask value is
``m`` (0 < m <= 1) may change only during the last ``m`` fraction of the denoising
schedule; before that it is held at the source, noised to the current step
(differential diffusion). ``m = 1`` regenerates fully, ``m = 0`` keeps the pixel.
This is how body skin changes tone while keeping its shape and shading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

StepCallback = Callable[[int, int], None]  # (step index from 0, total steps); raising in it cancels


GENERATION_MODES = ("fast", "balanced", "quality")  # FASHN's generation_mode values
DEFAULT_MODE = "quality"  # what a 0 ("the engine's") in a widget or option means; the shipped workflows' settings


@dataclass(frozen=True)
class Preset:
    """An engine's numbers for one generation mode."""

    steps: int  # sampler steps
    refine_steps: int  # face-refine steps actually run
    refine_work_size: int  # side of the square the face crop is sampled at


@dataclass(frozen=True)
class Capabilities:
    """Everything about an engine that callers need, as data: what it supports (callers branch on these,
    never on the engine's name) and its settings per generation mode (read by the nodes, the HTTP API, the
    runner and the Python API; see :meth:`settings`)."""

    name: str  # registry name, e.g. "sdxl", "flux2_klein"
    reference_image: bool  # identity taken from a reference image (IdentityCondition.reference)
    embedding_identity: bool  # identity taken from a face embedding (IdentityCondition.embedding)
    controlnet: bool  # a control image is accepted (and then required)
    guidance: bool  # classifier-free guidance_scale has an effect
    work_size: int  # the model's native square working side, in pixels
    side_multiple: int  # image sides handed to inpaint() must be multiples of this
    presets: Mapping[str, Preset]  # GENERATION_MODES -> the engine's settings
    display_name: str = ""  # for messages, e.g. "FLUX.2 klein 4B"
    licence: str = ""  # the licence of the weights load_model() reads (the licence guard's facts)
    commercial_use: bool = False  # whether that licence allows commercial use; undeclared: no
    text_to_image: bool = False  # a plain canvas under a full-strength mask gives a picture from the prompt alone
    #                               (the face library's Create Face); undeclared: no
    outpaint: bool = False  # a full-strength mask (1) on new canvas pixels fills them in (marketplace formats,
    #                         pipeline/reframe.py); undeclared: no, and an aspect_ratio is refused

    @property
    def default_steps(self) -> int:
        return self.presets[DEFAULT_MODE].steps

    @property
    def default_refine_steps(self) -> int:
        return self.presets[DEFAULT_MODE].refine_steps

    @property
    def label(self) -> str:
        return self.display_name or self.name

    def settings(self, mode: str = DEFAULT_MODE, *, steps: int = 0, refine_steps: int = 0,
                 refine_work_size: int = 0) -> Preset:
        """The one place settings are filled from the engine: ``mode``'s preset, with every value given
        (non-zero) kept. 0 (or None) means "the engine's"."""
        preset = self.presets[mode]
        return Preset(steps=int(steps or preset.steps), refine_steps=int(refine_steps or preset.refine_steps),
                      refine_work_size=int(refine_work_size or preset.refine_work_size))


@dataclass(frozen=True)
class IdentityCondition:
    """Whose face the new person gets. Each engine reads the fields its capabilities name.

    embedding: float32 (512,) L2-normalised ArcFace-style embedding (FaceID engines).
    face_crop: uint8 (H, W, 3) aligned face crop (FaceID PlusV2's CLIP features).
    reference: uint8 (H, W, 3) reference image (reference-image engines, e.g. FLUX.2 klein).
    scale: identity weight; 0 turns the identity off.
    """

    embedding: Any = None
    face_crop: Any = None
    reference: Any = None
    scale: float = 1.0


@dataclass(frozen=True)
class InpaintRequest:
    """One batched inpaint. Callers validate at the boundary; engines trust these values.

    image: uint8 (H, W, 3), H and W multiples of ``Capabilities.side_multiple``.
    mask: float32 (H, W) in [0, 1], per-pixel strength (see the module docstring).
    prompts: one prompt per seed. seeds: 1-4 seeds; image i is drawn from seeds[i] alone,
        so image i of a batch is a single run with seeds[i] up to float rounding.
    steps, strength: the scheduler gets ``steps`` steps and runs the last ``strength`` of them.
    """

    image: np.ndarray
    mask: np.ndarray
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    strength: float = 1.0
    negative_prompt: str = ""
    guidance_scale: float = 0.0
    identity: IdentityCondition | None = None
    control_image: np.ndarray | None = None
    controlnet_scale: float = 0.8


@runtime_checkable
class Engine(Protocol):
    """A loaded generation backend. Engines are immutable once loaded: two graphs holding
    two engines (say, with different identity adapters) never change each other's."""

    capabilities: Capabilities
    device: Any  # torch.device where sampling runs
    dtype: Any  # torch dtype of the denoiser
    source: str  # what was loaded, for messages

    def inpaint(self, request: InpaintRequest, on_step: StepCallback | None = None) -> list[np.ndarray]:
        """One (H, W, 3) uint8 image per seed, in seed order."""
        ...


def strength_thresholds(num_steps: int) -> np.ndarray:
    """Per step i of ``num_steps`` run, the mask value a pixel needs to be free to change:
    1 at the first step, falling linearly to 1/num_steps at the last."""
    return 1.0 - np.arange(num_steps, dtype=np.float64) / float(num_steps)


def is_binary(mask: np.ndarray) -> bool:
    """True when every value is 0 or 1, i.e. no pixel asks for partial strength."""
    return bool(np.all((mask <= 0.0) | (mask >= 1.0)))

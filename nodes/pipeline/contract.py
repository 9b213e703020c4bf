"""Every limit of the pack, defined once.

The node widgets and the HTTP protocol derive their ranges from these constants and
check their inputs where they enter; the pipeline and the engines trust their callers.
No imports at module level, so the API can check a request without loading the pipeline.
"""

SEED_MAX = 2**32 - 1
MODES = ("match_reference", "match_base")  # face_reference_mode values, the default first
MAX_IMAGES = 4



class Param:
    """One tunable, declared once: its name, default, bounds, step and meaning. Widgets, the HTTP protocol,
    the headless runner's overrides and the Python checks all derive from it and refuse a bad value with
    :meth:`problem`'s words, so a user gets the same sentence wherever the value entered.

    ``engine_default``: 0 means "the engine's" (its preset for the generation mode, see engines/base.py);
    then 0 is legal besides ``bounds``. ``multiple``: integers must be multiples of it (widget step)."""

    __slots__ = ("name", "label", "kind", "default", "bounds", "step", "multiple", "engine_default", "meaning")

    def __init__(self, name, kind, default, bounds=None, *, label=None, step=None, multiple=None,
                 engine_default=False, meaning=""):
        self.name, self.label, self.kind, self.default = name, label or name, kind, default
        self.bounds, self.step, self.multiple = bounds, step, multiple
        self.engine_default, self.meaning = engine_default, meaning

    @property
    def widget_min(self):
        return 0 if self.engine_default else self.bounds[0]

    def problem(self, value) -> str | None:
        """None when ``value`` is legal, else the one refusal sentence (what is wrong and what to give)."""
        lo, hi = self.bounds
        auto = " (or 0 for the engine's own)" if self.engine_default else ""
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int) and type(value).__name__ not in _NUMPY_INTS:
                return f"{self.label}={value!r} is not an integer: give an integer from {lo} to {hi}{auto}."
            if self.engine_default and value == 0:
                return None
            if self.multiple and value % self.multiple:
                return (f"{self.label}={value} is not a multiple of {self.multiple}: give a multiple of "
                        f"{self.multiple} from {lo} to {hi}{auto}.")
            if not lo <= value <= hi:
                return f"{self.label}={value} is out of range: give an integer from {lo} to {hi}{auto}."
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) and type(value).__name__ not in \
                _NUMPY_FLOATS + _NUMPY_INTS:
            return f"{self.label}={value!r} is not a number: give a number from {lo} to {hi}."
        if not lo <= value <= hi:  # NaN fails too
            return f"{self.label}={value} is out of range: give a number from {lo} to {hi}."
        return None


_NUMPY_INTS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_NUMPY_FLOATS = ("float16", "float32", "float64")

# The sampler (ModelSwapSampler, SwapOptions, GenerateSettings, the API's seed and num_images).
SEED = Param("seed", int, 42, (0, SEED_MAX),
             meaning="Same seed, same bytes; image i uses seed + i and is the same picture as a single run at that "
                     "seed, up to float rounding.")
NUM_IMAGES = Param("num_images", int, 1, (1, MAX_IMAGES), meaning=f"How many different people, 1 to {MAX_IMAGES}.")
STEPS = Param("steps", int, 0, (1, 150), engine_default=True,
              meaning="Sampling steps; 0 = the engine's (FLUX.2 klein 4, SDXL 30 at quality).")
GUIDANCE = Param("guidance_scale", float, 5.0, (0.0, 30.0), step=0.1,
                 meaning="Classifier-free guidance: how closely to follow the prompt (engines without guidance, "
                         "such as the distilled FLUX.2 klein, ignore it).")
STRENGTH = Param("strength", float, 1.0, (0.01, 1.0), step=0.01,
                 meaning="How much of the masked region is re-drawn (1 = fully).")
CONTROLNET_SCALE = Param("controlnet_scale", float, 0.8, (0.0, 2.0), step=0.05,
                         meaning="ControlNet weight (only with a ControlNet and a control image).")
DEFAULT_BODY_STRENGTH = 0.7  # body skin's share of the schedule (README: "Per-region strength")
BODY_STRENGTH = Param("body_strength", float, DEFAULT_BODY_STRENGTH, (0.0, 1.0), step=0.05,
                      meaning="Share of the sampling schedule in which body skin (torso, arms, hands, legs, feet) "
                              "may change; face and hair always get all of it. Lower keeps more of the body's shape "
                              "and shading, higher changes its tone more freely.")
# IdentityEncode.
IDENTITY_SCALE = Param("identity_scale", float, 0.8, (0.0, 2.0), step=0.05,
                       meaning="How strongly the reference identity steers generation (IP-Adapter scale; "
                               "reference-image engines ignore it).")
# GarmentMask.
GROW = Param("grow", int, 4, (-64, 64),
             meaning="Grow (positive) or shrink (negative) the regenerate mask, in pixels at processing size.")
FEATHER = Param("feather", int, 8, (0, 64),
                meaning="Width in pixels of the blend band outside the mask; beyond it every pixel equals the "
                        "input exactly.")
# FaceRefine (the node's widgets are strength, steps, work_size, margin).
REFINE_STRENGTH = Param("strength", float, 0.45, (0.1, 1.0), label="face refine strength", step=0.05,
                        meaning="How much of the face is re-drawn; 0.3-0.6 keeps the structure. At least 0.1: with "
                                "100 steps that is 1000 scheduler steps, SDXL's training range.")
REFINE_STEPS = Param("steps", int, 0, (1, 100), label="face refine steps", engine_default=True,
                     meaning="Denoising steps actually run; 0 = the engine's (FLUX.2 klein 4, SDXL 12 at quality).")
WORK_SIZE_MULTIPLE = 16
REFINE_WORK_SIZE = Param("work_size", int, 0, (64, 2048), label="face refine work_size", step=WORK_SIZE_MULTIPLE,
                         multiple=WORK_SIZE_MULTIPLE, engine_default=True,
                         meaning="Side of the square the face crop is sampled at; 0 = the engine's working size "
                                 "(SDXL and FLUX.2 klein: 1024).")
REFINE_MARGIN = Param("margin", float, 0.6, (0.0, 3.0), label="face refine margin", step=0.05,
                      meaning="Context around the face box, as a fraction of its size on every side.")

MAX_PIXELS = 1_050_000  # FASHN processes at most about 1 MP
MAX_PIXELS_PARAM = Param("max_pixels", int, MAX_PIXELS, (64 * 64, 16_777_216),
                         meaning="Processing size cap in pixels (Python API only; the nodes and the API use FASHN's).")

# Node -> its checked widgets (what ComfyUI's validate_inputs and the runner's overrides check).
NODE_PARAMS = {
    "ModelSwap_Sampler": (SEED, NUM_IMAGES, STEPS, GUIDANCE, STRENGTH, CONTROLNET_SCALE, BODY_STRENGTH),
    "ModelSwap_IdentityEncode": (IDENTITY_SCALE,),
    "ModelSwap_GarmentMask": (GROW, FEATHER),
    "ModelSwap_FaceRefine": (REFINE_STRENGTH, REFINE_STEPS, REFINE_WORK_SIZE, REFINE_MARGIN),
}


def check(param: Param, value) -> None:
    """Raise the pack's InputValidationError with ``param``'s refusal when ``value`` is not legal."""
    problem = param.problem(value)
    if problem is not None:
        from .errors import InputValidationError

        raise InputValidationError(problem)


def node_problems(node: str, values: dict) -> list[str]:
    """The refusals for a node's widget values (only the values given and the node's checked widgets)."""
    found = []
    for param in NODE_PARAMS.get(node, ()):
        if param.name in values:
            problem = param.problem(values[param.name])
            if problem is not None:
                found.append(problem)
    if node == "ModelSwap_GarmentMask" and "aspect_ratio" in values:  # a combo, checked by its own words
        problem = aspect_ratio_problem(values["aspect_ratio"])
        if problem is not None:
            found.append(problem)
    return found


# "processing": FASHN's <= 1.05 MP; "native": the input's size; "2k"/"4k": the input's size with the
# long side capped (FASHN's resolution setting).
OUTPUT_SIZES = ("processing", "native", "2k", "4k")
LONG_SIDE_CAPS = {"2k": 2048, "4k": 4096}
# The one user-facing spelling (GarmentMask's output_size widget; the API's resolution is its first three)
# -> the pipeline's OUTPUT_SIZES.
OUTPUT_SIZE_NAMES = {"1k": "processing", "2k": "2k", "4k": "4k", "native": "native"}
RESOLUTIONS = ("1k", "2k", "4k")  # FASHN's resolution values: the API's, GarmentMask's output_size too

# Marketplace formats: FASHN's aspect_ratio values (its SDK's ModelSwapRequestInputs), width:height. The API's
# aspect_ratio, GarmentMask's combo (ASPECT_RATIO_CHOICES: "original" first, the default) and the runner's
# --aspect-ratio all use this one spelling; pipeline/reframe.py extends the photo to the ratio.
ASPECT_RATIOS = ("21:9", "1:1", "4:3", "3:2", "2:3", "5:4", "4:5", "3:4", "16:9", "9:16")
ORIGINAL_RATIO = "original"  # keep the photo's own frame
ASPECT_RATIO_CHOICES = (ORIGINAL_RATIO,) + ASPECT_RATIOS


def aspect_ratio_problem(value, label: str = "aspect_ratio") -> str | None:
    """None when ``value`` is one of ASPECT_RATIO_CHOICES, else the one refusal sentence."""
    if isinstance(value, str) and value in ASPECT_RATIO_CHOICES:
        return None
    return (f"{label}={value!r} is not a supported aspect ratio: use one of {', '.join(ASPECT_RATIOS)} "
            f"(width:height), or {ORIGINAL_RATIO!r} to keep the photo's frame.")


# Single-file weights the loaders accept (.sft is the short safetensors suffix some hubs use).
CHECKPOINT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


def refine_scheduler_steps(steps: int, strength: float) -> int:
    """FaceRefine runs ``steps`` denoising steps at ``strength``: the scheduler gets steps / strength
    (rounded up). With the limits above this is at most 1000, within every scheduler's training range."""
    return -(-int(steps) * 1000 // max(1, round(float(strength) * 1000)))


def steps_run(steps: int, strength: float) -> tuple[int, int]:
    """(scheduler steps, steps actually run) for ``steps`` at ``strength``, as diffusers' img2img schedules
    them (the last ``int(steps * strength)``), but never fewer than one run step: a legal widget pair such
    as 1 step at strength 0.01 gets as many scheduler steps as it takes to run one."""
    steps = max(int(steps), -(-1000 // max(1, round(float(strength) * 1000))))
    return steps, max(1, min(int(steps * float(strength)), steps))

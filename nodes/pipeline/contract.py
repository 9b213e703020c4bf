"""Every limit of the pack, defined once.

The node widgets and the HTTP protocol derive their ranges from these constants and
check their inputs where they enter; the pipeline and the engines trust their callers.
No imports, so the API can check a request without loading the pipeline.
"""

SEED_MAX = 2**32 - 1
MODES = ("match_reference", "match_base")  # face_reference_mode values, the default first
MAX_IMAGES = 4

# (min, max) of each tunable, as the widgets offer them.
STEPS = (1, 150)
STRENGTH = (0.01, 1.0)
GUIDANCE = (0.0, 30.0)
IDENTITY_SCALE = (0.0, 2.0)
CONTROLNET_SCALE = (0.0, 2.0)
BODY_STRENGTH = (0.0, 1.0)
DEFAULT_BODY_STRENGTH = 0.7  # body skin's share of the schedule (README: "Per-region strength")
GROW = (-64, 64)
FEATHER = (0, 64)
REFINE_STRENGTH = (0.1, 1.0)  # with REFINE_STEPS' max: at most 1000 scheduler steps, SDXL's training range
REFINE_STEPS = (1, 100)
REFINE_WORK_SIZE = (64, 2048)  # a multiple of WORK_SIZE_MULTIPLE
WORK_SIZE_MULTIPLE = 16
REFINE_MARGIN = (0.0, 3.0)

# "processing": FASHN's <= 1.05 MP; "native": the input's size; "2k"/"4k": the input's size with the
# long side capped (FASHN's resolution setting).
OUTPUT_SIZES = ("processing", "native", "2k", "4k")
LONG_SIDE_CAPS = {"2k": 2048, "4k": 4096}

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

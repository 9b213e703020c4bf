"""The one place that touches diffusers' private internals, and the check that they are there.

The engines use a few things diffusers does not promise to keep: the FLUX.2 klein pipelines'
static helpers (``_get_qwen3_prompt_embeds``, ``_patchify_latents``, ``_unpatchify_latents``,
``_pack_latents``), ``DiffusionPipeline._execution_device``, ``_get_signature_keys``,
``_progress_bar_config`` and ``_offload_device``, and one patch: the SDXL inpaint pipelines
encode the image through ``retrieve_latents(self.vae.encode(image), generator)``, and
:func:`mode_only_encode` replaces that ``vae.encode`` for one call so the encode takes the
distribution's mode. Every engine reaches them through the functions below, nowhere else.

:func:`check` runs when an engine loads: the installed diffusers must be within
:data:`SUPPORTED` (the versions these uses were tested with) and the private names the engine
needs must exist; otherwise a :class:`~..errors.DependencyError` names the installed version, the
range and the ``pip install`` that fixes it. ``requirements.txt`` and ``pyproject.toml`` state the
same range (:data:`REQUIREMENT`). Raise the upper bound only after the engine tests pass on the
new minor version (``tests/test_flux2_klein.py``, ``tests/test_sdxl_engine.py``,
``tests/test_faceid.py``).
"""

from __future__ import annotations

import importlib

from ..errors import DependencyError

# >= 0.39: FLUX.2 klein inpainting arrived in 0.38, but 0.38's single-file SDXL loader fails with transformers 5
# (CLIPTextModel lost .text_model); < 0.43: the engine tests passed on 0.39.0 and 0.42.1, nothing newer is vouched for.
SUPPORTED = ((0, 39), (0, 43))
REQUIREMENT = "diffusers>=0.39,<0.43"

_PIPELINE = ("diffusers", "DiffusionPipeline")
_KLEIN = ("diffusers", "Flux2KleinInpaintPipeline")
_SDXL_INPAINT = ("diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint", None)
_SDXL_CONTROLNET = ("diffusers.pipelines.controlnet.pipeline_controlnet_inpaint_sd_xl", None)

# engine -> ((module, class or None for the module itself), names it must have)
NEEDS = {
    "flux2_klein": (
        (_KLEIN, ("_get_qwen3_prompt_embeds", "_patchify_latents", "_unpatchify_latents", "_pack_latents",
                  "num_timesteps")),
        (_PIPELINE, ("_execution_device",)),
    ),
    "sdxl": (
        (_PIPELINE, ("_execution_device",)),
        (_SDXL_INPAINT, ("retrieve_latents",)),  # mode_only_encode relies on it sampling latent_dist
        (_SDXL_CONTROLNET, ("retrieve_latents",)),
    ),
    "faceid": (
        (_PIPELINE, ("_execution_device", "_get_signature_keys")),
    ),
}


def installed_version() -> str:
    import diffusers

    return str(diffusers.__version__)


def _fix(version: str) -> str:
    return (f"the installed diffusers is {version}; this pack supports {REQUIREMENT.removeprefix('diffusers')}. "
            f"Run: pip install \"{REQUIREMENT}\" in ComfyUI's Python environment, then restart ComfyUI")


def _release(version: str) -> tuple[int, int]:
    from packaging.version import InvalidVersion, Version

    try:
        release = Version(version).release
    except InvalidVersion:
        return (-1, -1)
    return (release + (0, 0))[:2]


def check(engine: str) -> None:
    """Refuse, with the fix named, a diffusers outside :data:`SUPPORTED` or one that lacks a
    private name ``engine`` (a key of :data:`NEEDS`) uses."""
    try:
        version = installed_version()
    except ImportError as exc:
        raise DependencyError(f"diffusers is not installed: run pip install \"{REQUIREMENT}\" in ComfyUI's "
                              "Python environment, then restart ComfyUI.") from exc
    low, high = SUPPORTED
    if not low <= _release(version) < high:
        raise DependencyError(f"The {engine} engine cannot run here: {_fix(version)}.")
    for (module_name, attr), names in NEEDS[engine]:
        try:
            owner = importlib.import_module(module_name)
            if attr is not None:
                owner = getattr(owner, attr)
        except (ImportError, AttributeError) as exc:
            raise DependencyError(f"The {engine} engine needs {module_name}.{attr or ''} which this diffusers "
                                  f"lacks: {_fix(version)}.") from exc
        missing = [n for n in names if not hasattr(owner, n)]
        if missing:
            where = f"{module_name}.{attr}" if attr else module_name
            raise DependencyError(f"The {engine} engine uses {', '.join(missing)} of {where}, which this diffusers "
                                  f"lacks: {_fix(version)}.")


# --------------------------------------------------------------------------- every pipeline


def execution_device(pipe):
    """The device the pipeline computes on (under model CPU offload: the accelerator)."""
    return pipe._execution_device


def offload_device(pipe):
    """The device ``enable_model_cpu_offload`` was given, or None."""
    return getattr(pipe, "_offload_device", None)


def progress_bar_config(pipe) -> dict:
    """A copy of the keyword arguments ``set_progress_bar_config`` was given."""
    return dict(getattr(pipe, "_progress_bar_config", {}))


def signature_keys(cls, pipe) -> tuple[set, set]:
    """(required, optional) component and config names of pipeline class ``cls`` (what
    ``from_pipe`` reads), given an instance ``pipe`` of a pipeline class."""
    return cls._get_signature_keys(pipe)


# --------------------------------------------------------------------------- FLUX.2 klein


def klein_prompt_embeds(pipe, text_encoder, tokenizer, prompt, *, dtype, device, max_sequence_length: int,
                        hidden_states_layers):
    """The klein pipelines' prompt embeddings: Qwen3's hidden states at ``hidden_states_layers``."""
    return pipe._get_qwen3_prompt_embeds(text_encoder, tokenizer, prompt, dtype=dtype, device=device,
                                         max_sequence_length=max_sequence_length,
                                         hidden_states_layers=hidden_states_layers)


def patchify_latents(pipe, latents):
    """(B, C, H, W) VAE latents -> (B, 4C, H / 2, W / 2): 2x2 patches, as the transformer takes them."""
    return pipe._patchify_latents(latents)


def unpatchify_latents(pipe, latents):
    """The inverse of :func:`patchify_latents`."""
    return pipe._unpatchify_latents(latents)


def pack_latents(pipe, latents):
    """(B, C, H, W) -> (B, H * W, C): the token sequence the transformer and the step callback see."""
    return pipe._pack_latents(latents)


# --------------------------------------------------------------------------- SDXL


class _ModeOnly:
    """A latent distribution whose sample is its mode. diffusers' SDXL inpaint pipelines encode the
    (masked) image once for the whole batch with the FIRST generator only, so image i of a batch
    would differ from a single run at seed i; encoding without sampling keeps image i a function
    of its own seed (and keeps the preserved area free of sampling noise)."""

    def __init__(self, dist):
        self._dist = dist

    def sample(self, generator=None):
        return self._dist.mode()

    def mode(self):
        return self._dist.mode()


class mode_only_encode:  # noqa: N801 - used as a context manager, like a function
    """``with mode_only_encode(vae): pipe(...)``: inside, ``vae.encode`` returns a distribution
    whose ``sample`` is its mode (the pipeline's ``retrieve_latents`` samples it)."""

    def __init__(self, vae):
        self.vae = vae

    def __enter__(self):
        encode = type(self.vae).encode
        vae = self.vae

        def deterministic(x, return_dict: bool = True):
            out = encode(vae, x, return_dict=return_dict)
            dist = out.latent_dist if return_dict else out[0]
            return type(out)(latent_dist=_ModeOnly(dist)) if return_dict else (_ModeOnly(dist),)

        self.vae.encode = deterministic
        return self

    def __exit__(self, *exc):
        del self.vae.encode

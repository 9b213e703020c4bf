"""FLUX.2 [klein] 4B (Apache-2.0): 4-step inpainting with identity from a reference image.

Loads either the published diffusers folder (``models/diffusers/FLUX.2-klein-4B``) or the single
files ComfyUI users have (transformer in ``models/diffusion_models``, bf16 or FP8; Qwen3-4B in
``models/text_encoders``; the FLUX.2 VAE in ``models/vae``). Single files are read with the
configs and the Qwen tokenizer shipped in ``configs/flux2_klein_4b`` (never the hub):
the transformer through diffusers' ``from_single_file`` (it converts BFL's key layout), the
text encoder and the VAE (no single-file entry in diffusers 0.42) as state dicts into models
built from those configs; the sizes come from the weights (``flux2_klein_files``).

Sampling is diffusers' ``Flux2KleinInpaintPipeline``. What this module adds around it:
- All seeds in one batch, one CPU generator per image: the pipeline draws image i's noise from
  generator i alone and encodes the source with the VAE's mode (no sampling), so image i of a
  batch is the single run at seeds[i] up to float rounding (batched kernels round differently).
- The source is VAE-encoded here and handed over as latents, so the pipeline never rescales it.
- Per-pixel soft masks (base.py): the pipeline blends with a binary mask (mask > 0); when the mask
  is not binary, ``callback_on_step_end`` puts every token whose strength was below step i's
  threshold back to the source noised to the next sigma, with the same per-seed noise, so it
  changes only during the last ``m`` fraction of the steps. A token is 16x16 pixels; its strength
  is the mask sampled bilinearly at the token (as the pipeline samples its own mask), and the
  pack's paste-back keeps pixels outside the mask exact.
- Identity: ``IdentityCondition.reference`` is the pipeline's ``image_reference`` (scaled to at
  most 1 MP by the pipeline); a scale of 0 turns it off, other scales are on (klein has no weight).
- The text encoder lives on the CPU between prompts: it is moved to the device to encode, moved
  back, and prompt embeddings are cached per prompt. Model CPU offload covers the rest. Under a
  memory host (ComfyUI, see placement.py) the host loads it for encoding as a text encoder and
  offloads it when the room is needed; the engine then moves no module itself.
- FP8 transformer files (``float8_e4m3fn`` weights) stay FP8 in memory and compute in the
  engine dtype through diffusers' layerwise casting; FP8 files with per-tensor scales
  (ComfyUI's "scaled fp8") are dequantised to the engine dtype instead, because re-casting
  scaled values to FP8 without their scale would lose precision.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import placement
from ..contract import SAFETENSORS_SUFFIXES
from ..errors import InputValidationError, MissingModelError
from . import common, diffusers_compat
from . import flux2_klein_files as kfiles
from .flux2_klein_files import FOLDER_KEY, TEXT_ENCODER_KEY, TRANSFORMER_KEY, VAE_KEY
from .base import Capabilities, InpaintRequest, Preset, StepCallback, is_binary, strength_thresholds

CAPABILITIES = Capabilities(
    name="flux2_klein",
    reference_image=True,
    embedding_identity=False,
    controlnet=False,
    guidance=False,  # step-distilled: is_distilled makes the pipeline ignore guidance_scale
    work_size=1024,  # 1 MP: the pipeline's own ceiling for the image and the reference
    side_multiple=16,  # VAE 8x and 2x2 latent patches
    text_to_image=True,  # a full mask on a plain canvas: FLUX.2 klein text-to-image (Create Face)
    outpaint=True,  # its inpaint pipeline fills a mask-1 region from noise, wherever it lies
    # Distilled to 4 sampler steps in every mode: the modes differ in the face pass. FaceRefine runs at
    # partial strength; 4 steps actually run keeps the distilled model in its schedule (fewer: too few
    # for a face at work size), "fast" trades that for speed on a 512 px crop.
    presets={"fast": Preset(steps=4, refine_steps=2, refine_work_size=512),
             "balanced": Preset(steps=4, refine_steps=4, refine_work_size=768),
             "quality": Preset(steps=4, refine_steps=4, refine_work_size=1024)},
    display_name="FLUX.2 klein 4B",
    licence="Apache-2.0 (transformer, Qwen3-4B, FLUX.2 VAE)",
    commercial_use=True,
)

# The shipped API-format workflows (in the pack's workflows/ folder) that the HTTP API fills for this engine:
# (without, with a face reference).
API_WORKFLOWS = ("api/model_swap_api.json", "api/model_swap_face_reference_api.json")
# Where the Engine Loader finds the main model: the transformer file, or the diffusers folder.
MODEL_FOLDERS = ("diffusion_models", "diffusers")
LOADER_NODE = "ModelSwap_KleinLoader"  # the engine-specific loader node (the Engine Loader names it in its input)
DEFAULT_MODEL = "flux-2-klein-4b.safetensors"  # the registry's flux2_klein_transformer (test_engine_seam checks)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "flux2_klein_4b"
TEXT_ENCODER_LAYERS = (9, 18, 27)  # hidden states the klein pipelines stack (diffusers' default)
MAX_SEQUENCE_LENGTH = 512
PROMPT_CACHE_SIZE = 32
FOLDER_FILES = ("model_index.json", "transformer/config.json", "text_encoder/config.json",
                "tokenizer", "vae/config.json", "scheduler/scheduler_config.json")

@dataclass(frozen=True)
class Files:
    """What to load: a diffusers ``folder``, or the three single files.

    ``configs`` is the folder of configs and tokenizer used with single files (the pack's
    FLUX.2 klein 4B configs unless a caller, such as a test, names another in the same layout).
    """

    folder: Path | None = None
    transformer: Path | None = None
    text_encoder: Path | None = None
    vae: Path | None = None
    configs: Path = CONFIG_DIR

    def describe(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        return ", ".join(str(p) for p in (self.transformer, self.text_encoder, self.vae))


def check_files(files: Files) -> None:
    """Every file and folder ``files`` names exists; MissingModelError naming it otherwise."""
    singles = (files.transformer, files.text_encoder, files.vae)
    if files.folder is not None:
        if any(p is not None for p in singles):
            raise InputValidationError(
                "FLUX.2 klein: give either a diffusers folder or the three single files, not both.")
        folder = Path(files.folder)
        if not folder.is_dir():
            raise kfiles.missing(FOLDER_KEY, folder, "the diffusers folder does not exist")
        index = folder / "model_index.json"
        kind = json.loads(index.read_text()).get("_class_name", "") if index.is_file() else ""
        if kind and not kind.startswith("Flux2Klein"):
            raise InputValidationError(
                f"{folder} holds a {kind} model, not FLUX.2 klein: choose the FLUX.2-klein-4B folder or the klein "
                "single files (or load this model with the loader for its engine).")
        for rel in FOLDER_FILES:
            if not (folder / rel).exists():
                raise kfiles.missing(FOLDER_KEY, folder / rel, f"the diffusers folder lacks {rel}")
        return
    for key, what, path in zip((TRANSFORMER_KEY, TEXT_ENCODER_KEY, VAE_KEY), ("transformer", "text encoder", "VAE"),
                               singles):
        if path is None:
            raise kfiles.missing(key, None, f"no {what} file was given")
        if not Path(path).is_file():
            raise kfiles.missing(key, Path(path), "the file does not exist")
        if not str(path).lower().endswith(SAFETENSORS_SUFFIXES):
            raise InputValidationError(
                f"FLUX.2 klein single files must be .safetensors ({path}); other formats are not read.")
    configs = Path(files.configs)
    for rel in ("transformer/config.json", "text_encoder/config.json", "tokenizer", "vae/config.json",
                "scheduler/scheduler_config.json"):
        if not (configs / rel).exists():
            raise MissingModelError(
                f"The pack's FLUX.2 klein configs are incomplete: {configs / rel} is missing. Reinstall the pack.",
                folder=str(configs), filename=rel, source="this pack")


# --------------------------------------------------------------------------- loading


def _components(files: Files, dtype) -> dict:
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

    if files.folder is not None:
        folder = Path(files.folder)
        index = json.loads((folder / "model_index.json").read_text())
        try:
            return {
                "transformer": Flux2Transformer2DModel.from_pretrained(
                    folder, subfolder="transformer", torch_dtype=dtype, local_files_only=True),
                "vae": AutoencoderKLFlux2.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, local_files_only=True),
                "text_encoder": Qwen3ForCausalLM.from_pretrained(
                    folder / "text_encoder", dtype=dtype, local_files_only=True).eval(),
                "tokenizer": Qwen2TokenizerFast.from_pretrained(folder / "tokenizer", local_files_only=True),
                "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(
                    folder, subfolder="scheduler", local_files_only=True),
                "is_distilled": bool(index.get("is_distilled", False)),
                "fp8": False,
            }
        except (OSError, ValueError, RuntimeError) as exc:
            raise kfiles.missing(FOLDER_KEY, folder, f"the diffusers folder could not be loaded ({type(exc).__name__}: "
                                                  f"{exc}); download it again") from exc
    configs = Path(files.configs)
    transformer, fp8 = kfiles.load_transformer_file(Path(files.transformer), configs, dtype)
    index_path = configs / "model_index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"is_distilled": True}
    return {
        "transformer": transformer,
        "vae": kfiles.load_vae_file(Path(files.vae), configs, dtype),
        "text_encoder": kfiles.load_text_encoder_file(Path(files.text_encoder), configs, dtype),
        "tokenizer": kfiles.tokenizer(configs / "tokenizer"),
        "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(configs, subfolder="scheduler", local_files_only=True),
        "is_distilled": bool(index.get("is_distilled", True)),
        "fp8": fp8,
    }


_CACHE: dict = {}  # the one loaded klein: a graph re-queued with the same files reuses it
_LOCK = threading.Lock()


def clear_cache() -> None:
    with _LOCK:
        had = bool(_CACHE)
        _CACHE.clear()
    if had:
        common.free_accelerator_memory()


def cached_load(files: Files, *, device: Any = "auto", dtype: Any = None, offload: str = "none") -> "Flux2KleinEngine":
    """:func:`load`, reusing the engine already loaded from the same, unchanged files and settings.
    One klein is kept at a time (16 GB of weights); loading another drops the previous one."""
    check_files(files)
    dev = common.resolve_device(device)
    torch_dtype = common.resolve_dtype(dtype, dev, cuda_default="bf16")
    paths = (files.folder,) if files.folder is not None else (files.transformer, files.text_encoder, files.vae)
    key = (tuple(common.stamp(p) for p in paths), str(Path(files.configs).resolve()), str(dev), str(torch_dtype),
           common.check_offload(offload, dev))
    with _LOCK:
        if key not in _CACHE:
            if _CACHE:
                _CACHE.clear()
                common.free_accelerator_memory()
            _CACHE[key] = load(files, device=dev, dtype=torch_dtype, offload=offload)
        return _CACHE[key]


def load_model(model: Path, locate, *, device: Any = "auto", dtype: Any = None,
               offload: str = "none") -> "Flux2KleinEngine":
    """The Engine Loader's entry: a diffusers folder, or the transformer file with the text encoder and
    the VAE at their default names (``locate(folder, name)`` finds them in ComfyUI's models folders)."""
    from .. import model_files

    model = Path(model)
    if model.is_dir():
        files = Files(folder=model)
    else:
        files = Files(transformer=model,
                      text_encoder=Path(locate("text_encoders", model_files.MODELS[TEXT_ENCODER_KEY].name)),
                      vae=Path(locate("vae", model_files.MODELS[VAE_KEY].name)))
    return cached_load(files, device=device, dtype=dtype, offload=offload)


def load(files: Files, *, device: Any = "auto", dtype: Any = None, offload: str = "none") -> "Flux2KleinEngine":
    """Load FLUX.2 klein 4B from ``files`` onto ``device`` (bf16 on CUDA, float32 on CPU by default)."""
    diffusers_compat.check("flux2_klein")  # the diffusers version and the private names used here
    from diffusers import Flux2KleinInpaintPipeline

    check_files(files)
    dev = common.resolve_device(device)
    torch_dtype = common.resolve_dtype(dtype, dev, cuda_default="bf16")
    mode = common.check_offload(offload, dev)
    parts = _components(files, torch_dtype)
    pipe = Flux2KleinInpaintPipeline(
        scheduler=parts["scheduler"], vae=parts["vae"], text_encoder=None, tokenizer=None,
        transformer=parts["transformer"], is_distilled=parts["is_distilled"])
    common.place(pipe, dev, mode)
    return Flux2KleinEngine(pipe, parts["text_encoder"], parts["tokenizer"], dev, torch_dtype, mode,
                            source=files.describe(), fp8=parts["fp8"])


# --------------------------------------------------------------------------- the engine


class Flux2KleinEngine:
    capabilities = CAPABILITIES

    def __init__(self, pipe, text_encoder, tokenizer, device, dtype, offload: str, source: str, fp8: bool = False):
        self.pipe = pipe
        self.text_encoder = text_encoder  # on the CPU between encodings
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.offload = offload
        self.source = source
        self.fp8 = fp8
        self._prompt_cache: OrderedDict[str, Any] = OrderedDict()

    # ----------------------------------------------------------------- prompts

    def prompt_embeds(self, prompts) -> Any:
        """(len(prompts), 512, 3 * hidden) embeddings on the device; each prompt is encoded once."""
        import torch

        todo = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if todo:
            hosted = self.offload == "none" and placement.use(self.device, {"text_encoder": self.text_encoder})
            if not hosted:  # the engine moves it itself, and back to the CPU below
                placement.make_room(self.device, {"text_encoder": self.text_encoder})
                self.text_encoder.to(self.device)
            try:
                with torch.inference_mode():
                    for prompt in todo:
                        self._prompt_cache[prompt] = diffusers_compat.klein_prompt_embeds(
                            self.pipe, self.text_encoder, self.tokenizer, prompt, dtype=self.dtype, device=self.device,
                            max_sequence_length=MAX_SEQUENCE_LENGTH, hidden_states_layers=TEXT_ENCODER_LAYERS)
                        while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                            self._prompt_cache.popitem(last=False)
            finally:
                if not hosted and self.device.type != "cpu":
                    self.text_encoder.to("cpu")
                    common.free_accelerator_memory()
        for p in prompts:
            self._prompt_cache.move_to_end(p)
        return torch.cat([self._prompt_cache[p] for p in prompts], dim=0)

    # ----------------------------------------------------------------- latents

    def _load(self) -> None:
        """Under a memory host (placement.py) the host loads the transformer and the VAE; without
        one nothing moves here (they were placed at load)."""
        placement.use_pipeline(self.pipe, self.device, self.offload)

    def _exec_device(self):
        return diffusers_compat.execution_device(self.pipe)

    def encode_source(self, image: np.ndarray, device=None):
        """The source's patchified VAE latents (mode, no sampling), shape (1, 4 * C, H / 16, W / 16),
        on ``device`` (default: the pipeline's execution device)."""
        import torch
        from PIL import Image

        if device is None:
            self._load()
        height, width = image.shape[:2]
        pixels = self.pipe.image_processor.preprocess(Image.fromarray(image), height=height, width=width)
        with torch.inference_mode():
            pixels = pixels.to(device or self._exec_device(), dtype=self.dtype)
            latents = self.pipe.vae.encode(pixels).latent_dist.mode()
        return diffusers_compat.patchify_latents(self.pipe, latents)

    def _normalized(self, patchified):
        """The pipeline's own normalisation of source latents (same operations, so bit-identical)."""
        import torch

        vae = self.pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(patchified.device, patchified.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(
            patchified.device, patchified.dtype)
        return (patchified - mean) / std

    def sample(self, request: InpaintRequest, on_step: StepCallback | None = None):
        """Run the pipeline; returns the final latents as the pipeline hands them to the VAE
        (B, C, H / 8, W / 8), and the source's latents in the same form (1, C, H / 8, W / 8)."""
        import torch
        import torch.nn.functional as F
        from PIL import Image

        image = np.ascontiguousarray(request.image, dtype=np.uint8)
        mask = np.clip(np.asarray(request.mask, dtype=np.float32), 0.0, 1.0)
        height, width = image.shape[:2]
        seeds = tuple(int(s) for s in request.seeds)
        if len(request.prompts) != len(seeds):
            raise InputValidationError(f"{len(request.prompts)} prompts for {len(seeds)} seeds: give one prompt per seed.")
        embeds = self.prompt_embeds(tuple(request.prompts))
        self._load()
        pipe = self.pipe
        exec_device = self._exec_device()  # diffusers walks every module for it (~6 ms on CPU): ask once
        source = self.encode_source(image, exec_device)
        soft = not is_binary(mask)
        if soft:
            src_packed = diffusers_compat.pack_latents(pipe, self._normalized(source.to(exec_device, embeds.dtype)))
            noise_shape = (len(seeds), pipe.transformer.config.in_channels, height // 16, width // 16)
            noise = diffusers_compat.pack_latents(pipe, self._noise(noise_shape, seeds, exec_device, embeds.dtype))
            tokens = F.interpolate(torch.from_numpy(mask)[None, None], size=(height // 16, width // 16), mode="bilinear")
            token_strength = diffusers_compat.pack_latents(pipe, tokens).to(exec_device, embeds.dtype)
        state: dict[str, Any] = {}

        def step_end(p, i, t, kwargs):
            total = p.num_timesteps
            if on_step is not None:
                on_step(i, total)
            if not soft:
                return {}
            if "thresholds" not in state:
                state["thresholds"] = torch.as_tensor(strength_thresholds(total), dtype=embeds.dtype)
            # Step i's update stands only where the token was free at step i (strength >= threshold i);
            # elsewhere the token goes back to the source noised to the next sigma (after
            # scheduler.step, scale_noise uses it, as in the pipeline's own blend), or after the last
            # step to the source itself.
            latents = kwargs["latents"]
            target = p.scheduler.scale_noise(src_packed, torch.tensor([t]), noise) if i + 1 < total else src_packed
            held = token_strength < state["thresholds"][i].to(token_strength.device)
            return {"latents": torch.where(held, target.to(latents.dtype), latents)}

        binary = Image.fromarray(((mask > 0).astype(np.uint8) * 255), mode="L")
        reference = None
        if request.identity is not None and request.identity.reference is not None and request.identity.scale > 0:
            reference = Image.fromarray(np.ascontiguousarray(request.identity.reference, dtype=np.uint8))
        with torch.inference_mode():
            latents = pipe(
                image=source, mask_image=binary, image_reference=reference, prompt_embeds=embeds,
                strength=float(request.strength), num_inference_steps=int(request.steps), guidance_scale=1.0,
                generator=common.generators(seeds), output_type="latent", return_dict=False,
                callback_on_step_end=step_end, callback_on_step_end_tensor_inputs=["latents"],
                max_sequence_length=MAX_SEQUENCE_LENGTH, text_encoder_out_layers=TEXT_ENCODER_LAYERS,
            )[0]
        return latents, diffusers_compat.unpatchify_latents(pipe, source)

    @staticmethod
    def _noise(shape, seeds, device, dtype):
        """The pipeline's noise for these seeds: fresh generators, the same draw (randn_tensor)."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(shape, generator=common.generators(seeds), device=device, dtype=dtype)

    def decode(self, latents) -> list[np.ndarray]:
        import torch

        self._load()
        vae = self.pipe.vae
        with torch.inference_mode():
            images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
            images = self.pipe.image_processor.postprocess(images, output_type="np")
        self.pipe.maybe_free_model_hooks()
        return common.to_uint8(images)

    def inpaint(self, request: InpaintRequest, on_step: StepCallback | None = None) -> list[np.ndarray]:
        latents, _ = self.sample(request, on_step)
        return self.decode(latents)

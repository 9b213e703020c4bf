"""The models this pack uses: where each is published, where it goes, what it is.

This table is the one place that knows file names, folders, sources, sizes and
licences. Loaders resolve paths through :func:`require`, so a missing model
always produces the same precise message, and README's models table is written
from the same facts. The installer (scripts/get_models.py) downloads from the
same entries (``repo``/``repo_files`` on the Hugging Face hub, or ``url`` with a
pinned ``sha256``), and :func:`key_for_input` tells which entry a loader input
names, so a new entry needs no code anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .contract import CHECKPOINT_SUFFIXES
from .errors import MissingModelError


@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    folder: str  # ComfyUI models sub-folder, e.g. "insightface/models"
    name: str  # default file or folder name inside ``folder``
    source: str  # where the user downloads it
    size: str
    licence: str
    files: tuple[str, ...] = field(default_factory=tuple)  # required files when ``name`` is a folder
    optional: bool = False  # not needed by the default workflows (model_swap*.json, FLUX.2 klein)
    # --- where the installer gets it (one of the two)
    repo: str = ""  # Hugging Face hub repo id
    repo_files: tuple[str, ...] = ()  # a file: its one path in the repo; a folder: glob patterns of its files
    url: str = ""  # a file published outside the hub (a zip is unpacked into ``name``)
    sha256: str = ""  # pinned SHA-256 of what ``url`` serves (or of the hub file, where known)
    # --- which graphs need it
    inputs: tuple[str, ...] = ()  # loader inputs that name it: "PipelineLoader.model" (pack nodes without
    # the "ModelSwap_" prefix) or a core node's "UNETLoader.unet_name"; a bare node name ("OpenCVFaceLoader")
    # means every node of that type loads it under its default name
    covers: tuple[str, ...] = ()  # other inputs of the same node this model makes unused (a folder with its own VAE)
    match: str = ""  # among several entries of one input, a chosen name containing this picks this entry
    engines: tuple[str, ...] = ()  # engines whose default set (get_models.py --engine) includes it
    alternative: str = ""  # a non-commercial model's licence-clean replacement: what the licence guard names

    @property
    def is_folder(self) -> bool:
        return bool(self.files)

    @property
    def non_commercial(self) -> bool:
        return "non-commercial" in self.licence.lower()

    @property
    def download_url(self) -> str:
        """A direct link to the single file (what ComfyUI's missing-models dialog offers), or ''."""
        if self.url:
            return self.url
        if self.repo and not self.is_folder and len(self.repo_files) == 1:
            return f"https://huggingface.co/{self.repo}/resolve/main/{self.repo_files[0]}"
        return ""


MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            key="human_parser",
            title="FASHN human parser (SegFormer-B4, 18 classes)",
            folder="human_parsing",
            name="fashn-human-parser",
            files=("config.json", "model.safetensors"),
            source="https://huggingface.co/fashn-ai/fashn-human-parser",
            size="about 260 MB",
            licence="NVIDIA Source Code License for SegFormer (non-commercial)",
            repo="fashn-ai/fashn-human-parser",
            repo_files=("config.json", "model.safetensors", "preprocessor_config.json"),
            inputs=("HumanParserLoader.parser",),
            engines=("sdxl", "flux2_klein"),
            alternative="the MediaPipe selfie multiclass segmenter (Apache-2.0): Model Swap Selfie Segmenter Loader "
                        "into GarmentMask's parser (workflows/model_swap_commercial*.json; python "
                        "scripts/get_models.py --model selfie_segmenter)",
        ),
        ModelSpec(
            key="selfie_segmenter",
            title="MediaPipe selfie multiclass segmenter (6 classes: hair, face skin, body skin, clothes, others)",
            folder="mediapipe",
            name="selfie_multiclass_256x256.tflite",
            source="https://storage.googleapis.com/mediapipe-models/image_segmenter/selfie_multiclass_256x256/"
                   "float32/latest/selfie_multiclass_256x256.tflite",
            size="about 16 MB",
            licence="Apache-2.0",
            optional=True,  # the licence-clean workflows' (model_swap_commercial*)
            url="https://storage.googleapis.com/mediapipe-models/image_segmenter/selfie_multiclass_256x256/"
                "float32/latest/selfie_multiclass_256x256.tflite",
            sha256="",  # not pinned: Google's 'latest' file; the installer prints the hash it got (README, Models)
            inputs=("SelfieSegmenterLoader.model",),
        ),
        ModelSpec(
            key="antelopev2",
            title="insightface antelopev2 (SCRFD-10G detector, glintr100 recognition, gender/age)",
            folder="insightface/models",
            name="antelopev2",
            files=("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
            source="https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip"
            " (unzipped so the .onnx files sit directly in the folder)",
            size="about 360 MB",
            optional=True,  # the SDXL workflows' (model_swap_sdxl*)
            licence="insightface pretrained models: non-commercial research only",
            url="https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip",
            sha256="8e182f14fc6e80b3bfa375b33eb6cff7ee05d8ef7633e738d1c89021dcf0c5c5",
            inputs=("InsightFaceLoader.pack",),
            engines=("sdxl",),
            alternative="OpenCV YuNet + SFace (MIT / Apache-2.0): Model Swap OpenCV Face Loader, with the FLUX.2 klein engine (python scripts/get_models.py --model yunet --model sface)",
        ),
        ModelSpec(
            key="buffalo_l",
            title="insightface buffalo_l (SCRFD-10G detector, w600k_r50 recognition, gender/age)",
            folder="insightface/models",
            name="buffalo_l",
            files=("det_10g.onnx", "w600k_r50.onnx"),
            source="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
            size="about 330 MB",
            licence="insightface pretrained models: non-commercial research only",
            optional=True,
            url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
            sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
            inputs=("InsightFaceLoader.pack",),
            alternative="OpenCV YuNet + SFace (MIT / Apache-2.0): Model Swap OpenCV Face Loader, with the FLUX.2 klein engine (python scripts/get_models.py --model yunet --model sface)",
        ),
        ModelSpec(
            key="sdxl_inpaint",
            title="SDXL 1.0 inpainting 0.1 (diffusers folder)",
            folder="diffusers",
            name="stable-diffusion-xl-1.0-inpainting-0.1",
            files=("model_index.json", "unet/config.json", "vae/config.json"),
            source="https://huggingface.co/diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
            size="about 7 GB (fp16 variant)",
            optional=True,  # the SDXL workflows' (model_swap_sdxl*)
            licence="CreativeML Open RAIL++-M",
            repo="diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
            repo_files=("model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*", "*/config.json",
                        "*/*.fp16.safetensors"),
            inputs=("PipelineLoader.model",),
            engines=("sdxl",),
        ),
        ModelSpec(
            key="sdxl_checkpoint",
            title="any SDXL checkpoint, single file (base or inpainting, e.g. sd_xl_base_1.0)",
            folder="checkpoints",
            name="sd_xl_base_1.0.safetensors",
            source="https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0",
            size="about 6.9 GB",
            licence="CreativeML Open RAIL++-M",
            optional=True,
            repo="stabilityai/stable-diffusion-xl-base-1.0",
            repo_files=("sd_xl_base_1.0.safetensors",),
            inputs=("PipelineLoader.model",),
        ),
        ModelSpec(
            key="faceid",
            title="IP-Adapter FaceID SDXL",
            folder="ipadapter",
            name="ip-adapter-faceid_sdxl.bin",
            source="https://huggingface.co/h94/IP-Adapter-FaceID",
            size="about 1.1 GB",
            optional=True,  # the SDXL workflows' (model_swap_sdxl*)
            licence="non-commercial research (uses insightface embeddings)",
            repo="h94/IP-Adapter-FaceID",
            repo_files=("ip-adapter-faceid_sdxl.bin",),
            inputs=("PipelineLoader.faceid",),
            engines=("sdxl",),
            alternative="the FLUX.2 klein engine (Apache-2.0), which takes the identity from the face reference image itself: Model Swap FLUX.2 klein Loader (workflows/model_swap_commercial_face_reference.json)",
        ),
        ModelSpec(
            key="faceid_lora",
            title="IP-Adapter FaceID SDXL LoRA",
            folder="loras",
            name="ip-adapter-faceid_sdxl_lora.safetensors",
            source="https://huggingface.co/h94/IP-Adapter-FaceID",
            size="about 370 MB",
            licence="non-commercial research",
            optional=True,
            repo="h94/IP-Adapter-FaceID",
            repo_files=("ip-adapter-faceid_sdxl_lora.safetensors",),
            inputs=("PipelineLoader.faceid_lora",),
            alternative="the FLUX.2 klein engine (Apache-2.0), which takes the identity from the face reference image itself: Model Swap FLUX.2 klein Loader (workflows/model_swap_commercial_face_reference.json)",
        ),
        ModelSpec(
            key="faceid_plusv2",
            title="IP-Adapter FaceID PlusV2 SDXL",
            folder="ipadapter",
            name="ip-adapter-faceid-plusv2_sdxl.bin",
            source="https://huggingface.co/h94/IP-Adapter-FaceID",
            size="about 1.5 GB",
            licence="non-commercial research (uses insightface embeddings)",
            optional=True,
            repo="h94/IP-Adapter-FaceID",
            repo_files=("ip-adapter-faceid-plusv2_sdxl.bin",),
            inputs=("PipelineLoader.faceid",),
            match="plus",
            alternative="the FLUX.2 klein engine (Apache-2.0), which takes the identity from the face reference image itself: Model Swap FLUX.2 klein Loader (workflows/model_swap_commercial_face_reference.json)",
        ),
        ModelSpec(
            key="faceid_plusv2_lora",
            title="IP-Adapter FaceID PlusV2 SDXL LoRA",
            folder="loras",
            name="ip-adapter-faceid-plusv2_sdxl_lora.safetensors",
            source="https://huggingface.co/h94/IP-Adapter-FaceID",
            size="about 370 MB",
            licence="non-commercial research",
            optional=True,
            repo="h94/IP-Adapter-FaceID",
            repo_files=("ip-adapter-faceid-plusv2_sdxl_lora.safetensors",),
            inputs=("PipelineLoader.faceid_lora",),
            match="plus",
            alternative="the FLUX.2 klein engine (Apache-2.0), which takes the identity from the face reference image itself: Model Swap FLUX.2 klein Loader (workflows/model_swap_commercial_face_reference.json)",
        ),
        ModelSpec(
            key="clip_vision_h",
            title="CLIP ViT-H/14 image encoder (needed by FaceID PlusV2 only)",
            folder="clip_vision",
            name="CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
            source="https://huggingface.co/h94/IP-Adapter (models/image_encoder/model.safetensors, renamed)",
            size="about 2.5 GB",
            licence="MIT",
            optional=True,
            repo="h94/IP-Adapter",
            repo_files=("models/image_encoder/model.safetensors",),
            inputs=("PipelineLoader.clip_vision",),
        ),
        ModelSpec(
            key="controlnet",
            title="an SDXL ControlNet, e.g. OpenPose, to hold pose and hands (optional)",
            folder="controlnet",
            name="controlnet-openpose-sdxl-1.0",
            files=("config.json",),
            source="https://huggingface.co/xinsir/controlnet-openpose-sdxl-1.0",
            size="about 2.5 GB",
            licence="Apache-2.0",
            optional=True,
            repo="xinsir/controlnet-openpose-sdxl-1.0",
            repo_files=("config.json", "diffusion_pytorch_model.safetensors"),
            inputs=("PipelineLoader.controlnet",),
        ),
        ModelSpec(
            key="flux2_klein",
            title="FLUX.2 [klein] 4B (diffusers folder: transformer, Qwen3-4B text encoder, VAE)",
            folder="diffusers",
            name="FLUX.2-klein-4B",
            files=("model_index.json", "transformer/config.json", "text_encoder/config.json", "vae/config.json"),
            source="https://huggingface.co/black-forest-labs/FLUX.2-klein-4B",
            size="about 16 GB",
            licence="Apache-2.0",
            optional=True,
            repo="black-forest-labs/FLUX.2-klein-4B",
            repo_files=("model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/*", "transformer/*", "vae/*"),
            inputs=("KleinLoader.model", "PipelineLoader.model"),
            match="klein",
            covers=("KleinLoader.text_encoder", "KleinLoader.vae"),
        ),
        ModelSpec(
            key="flux2_klein_transformer",
            title="FLUX.2 [klein] 4B transformer, single file (instead of the diffusers folder)",
            folder="diffusion_models",
            name="flux-2-klein-4b.safetensors",
            source="https://huggingface.co/Comfy-Org/Flux-2-Klein-4B (split_files/diffusion_models)",
            size="about 7.8 GB",
            licence="Apache-2.0",
            engines=("flux2_klein",),
            repo="Comfy-Org/Flux-2-Klein-4B",
            repo_files=("split_files/diffusion_models/flux-2-klein-4b.safetensors",),
            inputs=("KleinLoader.model", "UNETLoader.unet_name", "PipelineLoader.model"),
            match="klein",
        ),
        ModelSpec(
            key="flux2_klein_text_encoder",
            title="Qwen3-4B text encoder for FLUX.2 [klein] 4B, single file",
            folder="text_encoders",
            name="qwen_3_4b.safetensors",
            source="https://huggingface.co/Comfy-Org/Flux-2-Klein-4B (split_files/text_encoders)",
            size="about 8.0 GB",
            licence="Apache-2.0",
            engines=("flux2_klein",),
            repo="Comfy-Org/Flux-2-Klein-4B",
            repo_files=("split_files/text_encoders/qwen_3_4b.safetensors",),
            sha256="6c671498573ac2f7a5501502ccce8d2b08ea6ca2f661c458e708f36b36edfc5a",
            inputs=("KleinLoader.text_encoder", "CLIPLoader.clip_name"),
            match="qwen",
        ),
        ModelSpec(
            key="flux2_vae",
            title="FLUX.2 VAE, single file",
            folder="vae",
            name="flux2-vae.safetensors",
            source="https://huggingface.co/Comfy-Org/Flux-2-Klein-4B (split_files/vae)",
            size="about 336 MB",
            licence="Apache-2.0",
            engines=("flux2_klein",),
            repo="Comfy-Org/Flux-2-Klein-4B",
            repo_files=("split_files/vae/flux2-vae.safetensors",),
            sha256="868fe7b343cc8f3a19dbcfcafbc3d5f888802be3f89bd81b65b3621a066ce8f3",
            inputs=("KleinLoader.vae", "VAELoader.vae_name"),
            match="flux2",
        ),
        ModelSpec(
            key="yunet",
            title="OpenCV YuNet face detector (opencv_zoo)",
            folder="facedetection",
            name="face_detection_yunet_2023mar.onnx",
            source="https://huggingface.co/opencv/face_detection_yunet",
            size="about 230 KB",
            licence="MIT",
            repo="opencv/face_detection_yunet",
            repo_files=("face_detection_yunet_2023mar.onnx",),
            inputs=("OpenCVFaceLoader",),
            engines=("flux2_klein",),
        ),
        ModelSpec(
            key="sface",
            title="OpenCV SFace face recogniser (opencv_zoo)",
            folder="facedetection",
            name="face_recognition_sface_2021dec.onnx",
            source="https://huggingface.co/opencv/face_recognition_sface",
            size="about 37 MB",
            licence="Apache-2.0",
            repo="opencv/face_recognition_sface",
            repo_files=("face_recognition_sface_2021dec.onnx",),
            inputs=("OpenCVFaceLoader",),
            engines=("flux2_klein",),
        ),
    )
}

# The engines whose default model set the installer knows (get_models.py --engine): read off the entries.
ENGINES = tuple(dict.fromkeys(engine for spec in MODELS.values() for engine in spec.engines))
# Names with one of these suffixes are files; anything else (e.g. "...-inpainting-0.1") is a folder.
FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".sft", ".bin", ".onnx", ".gguf", ".tflite")




def generator_key(name: str) -> str:
    """Registry key for a generator choice: a single-file checkpoint or a diffusers folder."""
    return "sdxl_checkpoint" if name.lower().endswith(CHECKPOINT_SUFFIXES) else "sdxl_inpaint"


def parser_key(name: str) -> str:
    """Registry key for a parser choice: the selfie segmenter's .tflite file or FASHN's parser folder."""
    return "selfie_segmenter" if name.lower().endswith(".tflite") else "human_parser"


def faceid_key(name: str) -> str:
    return "faceid_plusv2" if "plus" in name.lower() else "faceid"


def faceid_lora_key(name: str) -> str:
    return "faceid_plusv2_lora" if "plus" in name.lower() else "faceid_lora"


def insightface_key(name: str) -> str:
    """antelopev2 and buffalo_l by name; any other pack folder is checked like antelopev2."""
    return name if name in ("antelopev2", "buffalo_l") else "antelopev2"


def short_name(node: str) -> str:
    """A node's class type without the pack's ``ModelSwap_`` prefix (how ``ModelSpec.inputs`` names it)."""
    return node.split("_", 1)[1] if node.startswith("ModelSwap_") else node


def keys_for_node(node: str) -> list[str]:
    """Registry keys every node of type ``node`` loads whatever its inputs (a bare name in ``inputs``)."""
    return [s.key for s in MODELS.values() if short_name(node) in s.inputs]


def key_for_input(node: str, input_name: str, value: str) -> str | None:
    """The registry key of the model a loader input names, or None when it names none.

    ``node`` is the class type, with or without the pack's ``ModelSwap_`` prefix. Among the entries
    that declare ``node.input_name`` in ``inputs``: the one whose file name is ``value``, else those
    whose kind (file or folder) fits ``value``, the first whose ``match`` occurs in it, else the first.
    A pack node's input naming any entry's exact file name also counts (a new loader needs no code).
    """
    if not isinstance(value, str) or value in ("", "none", "auto"):
        return None
    short = short_name(node)
    declared = [s for s in MODELS.values() if f"{short}.{input_name}" in s.inputs]
    if not declared:
        if node.startswith("ModelSwap_"):
            exact = [s for s in MODELS.values() if s.name == value]
            return exact[0].key if exact else None
        return None
    for spec in declared:
        if spec.name == value:
            return spec.key
    is_file = value.lower().endswith(FILE_SUFFIXES)
    fitting = [s for s in declared if s.is_folder != is_file] or declared
    for spec in fitting:
        if spec.match and spec.match in value.lower():
            return spec.key
    plain = [s for s in fitting if not s.match]
    return (plain or fitting)[0].key


def describe(spec: ModelSpec, name: str | None = None) -> str:
    """One line telling the user what to download and where to put it."""
    name = name or spec.name
    what = f"folder '{name}/' holding {', '.join(spec.files)}" if spec.is_folder else f"file '{name}'"
    return (
        f"{spec.title}: place the {what} in ComfyUI/models/{spec.folder}/ "
        f"(download from {spec.source}; {spec.size}; licence: {spec.licence})"
    )


def missing_error(spec: ModelSpec, path: Path, problem: str, name: str | None = None) -> MissingModelError:
    return MissingModelError(
        f"Model not found: {problem} ({path}). {describe(spec, name)}.",
        folder=f"models/{spec.folder}",
        filename=name or spec.name,
        source=spec.source,
    )


def require(spec_key: str, path: str | Path, name: str | None = None) -> Path:
    """Return ``path`` if it holds the model ``spec_key``, else raise MissingModelError.

    For folder models every file in ``spec.files`` must exist inside it.
    """
    spec = MODELS[spec_key]
    path = Path(path)
    name = name or path.name or spec.name
    if not path.exists():
        raise missing_error(spec, path, "nothing at this path", name)
    if spec.is_folder:
        if not path.is_dir():
            raise missing_error(spec, path, "expected a folder, found a file", name)
        absent = [f for f in spec.files if not (path / f).is_file()]
        if absent:
            raise missing_error(spec, path, f"the folder lacks {', '.join(absent)}", name)
    elif not path.is_file():
        raise missing_error(spec, path, "expected a file, found a folder", name)
    return path


def locate(spec_key: str, roots: Iterable[str | Path], name: str | None = None) -> Path:
    """Find model ``spec_key`` under ``<root>/<spec.folder>/<name>`` for the first root that has it."""
    spec = MODELS[spec_key]
    name = name or spec.name
    candidates = [Path(r) / spec.folder / name for r in roots]
    for c in candidates:
        if c.exists():
            return require(spec_key, c, name)
    searched = ", ".join(str(c) for c in candidates) or "no models folder given"
    raise MissingModelError(
        f"Model not found: searched {searched}. {describe(spec, name)}.",
        folder=f"models/{spec.folder}",
        filename=name,
        source=spec.source,
    )

"""The models this pack uses: where each is published, where it goes, what it is.

This table is the one place that knows file names, folders, sources, sizes and
licences. Loaders resolve paths through :func:`require`, so a missing model
always produces the same precise message, and README's models table is written
from the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

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
    optional: bool = False

    @property
    def is_folder(self) -> bool:
        return bool(self.files)


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
        ),
        ModelSpec(
            key="antelopev2",
            title="insightface antelopev2 (SCRFD-10G detector, glintr100 recognition, gender/age)",
            folder="insightface/models",
            name="antelopev2",
            files=("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
            source="insightface model zoo: antelopev2.zip (https://github.com/deepinsight/insightface"
            "/tree/master/model_zoo), unzipped so the .onnx files sit directly in the folder",
            size="about 360 MB",
            licence="insightface pretrained models: non-commercial research only",
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
        ),
        ModelSpec(
            key="sdxl_inpaint",
            title="SDXL 1.0 inpainting 0.1 (diffusers folder)",
            folder="diffusers",
            name="stable-diffusion-xl-1.0-inpainting-0.1",
            files=("model_index.json", "unet/config.json", "vae/config.json"),
            source="https://huggingface.co/diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
            size="about 7 GB (fp16 variant)",
            licence="CreativeML Open RAIL++-M",
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
        ),
        ModelSpec(
            key="faceid",
            title="IP-Adapter FaceID SDXL",
            folder="ipadapter",
            name="ip-adapter-faceid_sdxl.bin",
            source="https://huggingface.co/h94/IP-Adapter-FaceID",
            size="about 1.1 GB",
            licence="non-commercial research (uses insightface embeddings)",
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
        ),
    )
}


CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".sft")


def generator_key(name: str) -> str:
    """Registry key for a generator choice: a single-file checkpoint or a diffusers folder."""
    return "sdxl_checkpoint" if name.lower().endswith(CHECKPOINT_SUFFIXES) else "sdxl_inpaint"


def faceid_key(name: str) -> str:
    return "faceid_plusv2" if "plus" in name.lower() else "faceid"


def faceid_lora_key(name: str) -> str:
    return "faceid_plusv2_lora" if "plus" in name.lower() else "faceid_lora"


def insightface_key(name: str) -> str:
    """antelopev2 and buffalo_l by name; any other pack folder is checked like antelopev2."""
    return name if name in ("antelopev2", "buffalo_l") else "antelopev2"


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

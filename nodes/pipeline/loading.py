"""Assemble a ModelSwapPipeline from ComfyUI-style models folders, loading each model once.

``load_pipeline`` finds every model under ``<models_dir>/<folder>/<name>`` (the
layout in README's models table), loads it on one device, and caches the
loaded objects per process, so a second call with the same choices costs nothing.
What is missing is found by the one check of installed models that the headless runner
and the installer use too (``nodes/model_folders.missing_models``, given :func:`requirements`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..model_folders import ModelFolders, missing_models
from . import model_files
from .errors import MissingModelError
from .pipeline import ModelSwapPipeline

_CACHE: dict[tuple, object] = {}


@dataclass(frozen=True)
class ModelChoice:
    """Which installed model to use for each role (file or folder names, as in the models table)."""

    generator: str = model_files.MODELS["sdxl_inpaint"].name  # diffusers folder or checkpoint file name
    controlnet: str | None = None
    parser: str | None = model_files.MODELS["human_parser"].name  # or "selfie_multiclass_256x256.tflite"
    insightface: str | None = model_files.MODELS["antelopev2"].name
    faceid: str | None = None  # e.g. "ip-adapter-faceid_sdxl.bin"; needed only for a face reference
    faceid_lora: str | None = None
    clip_vision: str | None = None  # FaceID PlusV2 only


def requirements(choice: ModelChoice) -> list[tuple[str, str]]:
    """(registry key, name) for every model ``choice`` needs."""
    needs = [(model_files.generator_key(choice.generator), choice.generator)]
    if choice.controlnet:
        needs.append(("controlnet", choice.controlnet))
    if choice.parser:
        needs.append((model_files.parser_key(choice.parser), choice.parser))
    if choice.insightface:
        needs.append((model_files.insightface_key(choice.insightface), choice.insightface))
    if choice.faceid:
        needs.append((model_files.faceid_key(choice.faceid), choice.faceid))
    if choice.faceid_lora:
        needs.append((model_files.faceid_lora_key(choice.faceid_lora), choice.faceid_lora))
    if choice.clip_vision:
        needs.append(("clip_vision_h", choice.clip_vision))
    return needs


def _cached(key: tuple, build, source: Path):
    """``build()`` once per key; a model whose files were removed since is not served from memory,
    so the user gets the loader's "what to download" error rather than a stale model."""
    if not source.exists():
        _CACHE.pop(key, None)
        return build()
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def load_parser(folder: str | Path, device):
    """The human parser in ``folder`` on ``device``, loaded once per process."""
    from .parsing import HumanParser

    folder = Path(folder)
    return _cached(("parser", str(folder.resolve()), str(device)),
                   lambda: HumanParser.load(folder, device=device), folder)


def load_face_analyzer(insightface_root: str | Path, name: str, device, det_size: int = 640):
    """insightface pack ``name`` under ``<insightface_root>/models`` on ``device``, loaded once per process."""
    from .identity import FaceAnalyzer

    root = Path(insightface_root)
    return _cached(("insightface", str(root.resolve()), name, str(device), det_size),
                   lambda: FaceAnalyzer.load(root, name=name, device=str(device), det_size=det_size),
                   root / "models" / name)


def load_selfie_segmenter(path: str | Path, refine: bool = True):
    """The selfie multiclass segmenter in ``path`` (.tflite, on LiteRT), loaded once per process."""
    from .segment_selfie import SelfieSegmenter

    path = Path(path)
    return _cached(("selfie", str(path.resolve()), refine), lambda: SelfieSegmenter.load(path, refine=refine), path)


def clear_cache() -> None:
    from .engines import flux2_klein, sdxl

    _CACHE.clear()
    sdxl.clear_cache()
    flux2_klein.clear_cache()


def load_pipeline(models_dirs: Iterable[str | Path], choice: ModelChoice = ModelChoice(), *, device="auto",
                  dtype=None, offload: str = "none", config_dir=None, det_size: int = 640) -> ModelSwapPipeline:
    """Load every model ``choice`` names from ``models_dirs`` (first folder that has it wins).

    All missing models are reported together, so one run tells the user everything to download.
    ``config_dir`` replaces the SDXL configs shipped for single-file checkpoints. With
    MODELSWAP_COMMERCIAL_ONLY=1 a non-commercial choice is refused before anything loads.
    """
    from . import licence_guard
    from .engines import common, sdxl
    from .engines.faceid import FaceIDFiles

    roots = [Path(r) for r in models_dirs]
    folders = ModelFolders(roots)
    needs = requirements(choice)
    licence_guard.check(needs)
    absent = [(key, name) for key, name in needs if folders.find(key, name) is None]
    if absent:
        spec = model_files.MODELS[absent[0][0]]
        raise MissingModelError(
            "Models missing (searched " + ", ".join(str(r) for r in roots) + "):\n- "
            + "\n- ".join(missing_models(absent, folders)),
            folder=f"models/{spec.folder}", filename=absent[0][1], source=spec.source)

    dev = common.resolve_device(device)
    paths = {key: folders.find(key, name) for key, name in needs}
    faceid = None
    if choice.faceid:
        lora = paths.get("faceid_lora") or paths.get("faceid_plusv2_lora")
        faceid = FaceIDFiles(adapter=paths[model_files.faceid_key(choice.faceid)], lora=lora,
                             image_encoder=paths.get("clip_vision_h"))
    files = sdxl.Files(model=paths[model_files.generator_key(choice.generator)], controlnet=paths.get("controlnet"),
                       faceid=faceid, config=None if config_dir is None else Path(config_dir))
    engine = sdxl.load(files, device=dev, dtype=dtype, offload=offload)
    parser = None
    if choice.parser and model_files.parser_key(choice.parser) == "selfie_segmenter":
        parser = load_selfie_segmenter(paths["selfie_segmenter"])
    elif choice.parser:
        parser = load_parser(paths["human_parser"], dev)
    analyzer = None
    if choice.insightface:
        root = paths[model_files.insightface_key(choice.insightface)].parents[1]
        analyzer = load_face_analyzer(root, choice.insightface, dev, det_size)
    return ModelSwapPipeline(engine, parser=parser, analyzer=analyzer)

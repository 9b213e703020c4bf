"""Assemble a ModelSwapPipeline from ComfyUI-style models folders, loading each model once.

``load_swap`` builds any registered engine from its main model (the Engine Loader's path) with a parser
and a face analyser; ``load_pipeline`` assembles SDXL with its adapters (FaceID, ControlNet) and
insightface. Both find every model under ``<models_dir>/<folder>/<name>`` (the
layout in README's models table), load it on one device, and cache the
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


def load_swap(models_dirs: Iterable[str | Path], engine: str | None = None, *, model: str | None = None,
              parser: str | None = model_files.MODELS["human_parser"].name, faces: str | None = "opencv",
              device="auto", dtype=None, offload: str = "none", det_size: int = 640) -> ModelSwapPipeline:
    """A pipeline on any registered engine (default: the pack's default, FLUX.2 klein), built from its main
    ``model`` (default: the engine's ``DEFAULT_MODEL``) as the Engine Loader builds it; ``parser`` names
    FASHN's parser folder or the selfie segmenter's .tflite; ``faces`` is "opencv" (YuNet + SFace in
    models/facedetection), an insightface pack name, or None. Settings left at 0 are the engine's presets.
    With MODELSWAP_COMMERCIAL_ONLY=1 a non-commercial engine or parser is refused before anything loads."""
    from . import engines, licence_guard
    from .engines import common

    name = engine or engines.DEFAULT_ENGINE
    module = engines.engine_module(name)
    licence_guard.check_engine(module.CAPABILITIES)
    if parser:
        licence_guard.check([(model_files.parser_key(parser), parser)])
    roots = [Path(r) for r in models_dirs]

    def locate(folder: str, filename: str) -> Path:
        found = next((r / folder / filename for r in roots if (r / folder / filename).exists()), None)
        if found is None:
            raise MissingModelError(
                f"{filename} is not in models/{folder} under " + ", ".join(str(r) for r in roots)
                + ": put it there (python scripts/get_models.py lists what goes where).",
                folder=f"models/{folder}", filename=filename)
        return found

    main = model or getattr(module, "DEFAULT_MODEL", None)
    if not main:
        raise MissingModelError(f"The {name} engine names no default model: pass model=<file or folder name>.")
    path = next((r / folder / main for folder in module.MODEL_FOLDERS for r in roots if (r / folder / main).exists()),
                None)
    if path is None:
        locate(module.MODEL_FOLDERS[0], main)  # raises, naming the folder
    dev = common.resolve_device(device)
    generator = module.load_model(path, locate, device=dev, dtype=dtype, offload=offload)
    segmenter = None
    if parser and model_files.parser_key(parser) == "selfie_segmenter":
        segmenter = load_selfie_segmenter(locate("mediapipe", parser))
    elif parser:
        segmenter = load_parser(locate("human_parsing", parser), dev)
    analyzer = None
    if faces == "opencv":
        from .face_opencv import OpenCVFaceAnalyzer

        analyzer = _cached(("opencv", str(locate("facedetection", "").resolve()), det_size),
                           lambda: OpenCVFaceAnalyzer.load(locate("facedetection", ""), det_size=det_size),
                           locate("facedetection", ""))
    elif faces:
        analyzer = load_face_analyzer(locate("insightface", f"models/{faces}").parents[1], faces, dev, det_size)
    return ModelSwapPipeline(generator, parser=segmenter, analyzer=analyzer)

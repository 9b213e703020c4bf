"""An API-format workflow as data: read it, find its image inputs, fill it, and say which models it needs.

Standard library only. :func:`required_models` is the one answer to "which models does this graph
need"; whether they are installed is :func:`nodes.model_folders.missing_models`'s business.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..model_folders import WorkflowError
from ..pipeline import model_files


@dataclass
class Overrides:
    image: Path
    face_reference: Path | None = None
    seed: int | None = None
    num_images: int | None = None
    prompt: str | None = None
    face_reference_mode: str | None = None
    filename_prefix: str | None = None
    settings: list[str] = field(default_factory=list)  # "ClassType.input=value" (value parsed as JSON if it can be)
    values: dict[str, dict[str, object]] = field(default_factory=dict)  # {ClassType: {input: value}}, typed
    mode: str | None = None  # a generation mode (fast/balanced/quality): the graph's engine's preset
    aspect_ratio: str | None = None  # GarmentMask's aspect_ratio (contract.ASPECT_RATIO_CHOICES); None: the graph's


def load_workflow(path: Path) -> dict:
    try:
        graph = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WorkflowError(f"Cannot read the workflow {path}: {exc}") from exc
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise WorkflowError(
            f"{path} is not an API-format workflow (a map of node id -> {{class_type, inputs}}). In ComfyUI use "
            "'Export (API)' or the *_api.json files in workflows/api/.")
    return graph


def _consumers(graph: dict, node_id: str):
    for nid, node in graph.items():
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id):
                yield nid, node["class_type"], name


def image_roles(graph: dict) -> dict[str, str]:
    """LoadImage node id -> 'model' or 'face_reference', read from what each one feeds."""
    roles = {}
    for nid, node in graph.items():
        if node["class_type"] != "LoadImage":
            continue
        uses = {(cls, name) for _, cls, name in _consumers(graph, nid)}
        if any(name == "face_reference" for _, name in uses):
            roles[nid] = "face_reference"
        elif any(cls.endswith("GarmentMask") and name == "image" for cls, name in uses):
            roles[nid] = "model"
    return roles


def apply_overrides(graph: dict, overrides: Overrides, uploaded: dict[str, str]) -> dict:
    """A copy of ``graph`` with the image files, seed, num_images, prompt and mode replaced."""
    graph = copy.deepcopy(graph)
    roles = image_roles(graph)
    if "model" not in roles.values():
        raise WorkflowError("The workflow has no LoadImage feeding GarmentMask's image: nothing to put --image in.")
    for nid, role in roles.items():
        if role == "face_reference" and role not in uploaded:
            raise WorkflowError("This workflow takes a face reference: pass --face-reference FILE "
                                "(or use the workflow without one).")
        graph[nid]["inputs"]["image"] = uploaded[role]
    if "face_reference" in uploaded and "face_reference" not in roles.values():
        raise WorkflowError("--face-reference was given but this workflow has no face reference input: use "
                            "workflows/api/model_swap_face_reference_api.json.")
    for node in graph.values():
        cls, inputs = node["class_type"], node["inputs"]
        if cls.endswith("_Sampler"):
            for key in ("seed", "num_images", "prompt"):
                value = getattr(overrides, key)
                if value is not None:
                    inputs[key] = value
        if cls.endswith("_FaceRefine") and overrides.face_reference_mode:
            inputs["face_reference_mode"] = overrides.face_reference_mode
        if cls.endswith("_GarmentMask") and overrides.aspect_ratio is not None:  # checked by check_values below
            inputs["aspect_ratio"] = overrides.aspect_ratio
        if cls.endswith("SaveImage") and overrides.filename_prefix:  # ComfyUI's or the pack's
            inputs["filename_prefix"] = overrides.filename_prefix
    if overrides.mode:
        _apply_mode(graph, overrides.mode)
    for node_name, values in overrides.values.items():
        for key, value in values.items():
            _set(graph, node_name, key, value, f"{node_name}.{key}")
    for item in overrides.settings:
        _apply_setting(graph, item)
    check_values(graph)
    return graph


def engine_of(graph: dict) -> str | None:
    """The engine the graph's sampler runs: read from the loader feeding its ``generator`` input."""
    from ..pipeline import engines

    for node in graph.values():
        link = node.get("inputs", {}).get("generator") if node.get("class_type") == "ModelSwap_Sampler" else None
        if isinstance(link, list) and str(link[0]) in graph:
            return engines.engine_of_loader(graph[str(link[0])])
    return None


def _apply_mode(graph: dict, mode: str) -> None:
    """Set the sampler's and FaceRefine's counts to the graph's engine's preset for ``mode``."""
    from ..pipeline import engines
    from ..pipeline.engines.base import GENERATION_MODES

    if mode not in GENERATION_MODES:
        raise WorkflowError(f"Generation mode {mode!r}: use one of {', '.join(GENERATION_MODES)}.")
    engine = engine_of(graph)
    if engine is None:
        raise WorkflowError("A generation mode needs the workflow's engine, but no loader of a registered engine "
                            "feeds its ModelSwap_Sampler: set the steps with --set instead.")
    preset = engines.capabilities(engine).settings(mode)
    for node in graph.values():
        if node.get("class_type") == "ModelSwap_Sampler":
            node["inputs"]["steps"] = preset.steps
        if node.get("class_type") == "ModelSwap_FaceRefine":
            node["inputs"].update(steps=preset.refine_steps, work_size=preset.refine_work_size)


def check_values(graph: dict) -> None:
    """Refuse out-of-range or off-step widget values of the pack's nodes with the words their widgets
    and the HTTP API use (pipeline/contract.py), before anything is queued."""
    from ..pipeline import contract

    problems = [problem for node in graph.values()
                for problem in contract.node_problems(node["class_type"], {
                    k: v for k, v in node.get("inputs", {}).items() if not isinstance(v, list)})]
    if problems:
        raise WorkflowError(" ".join(problems))


def _apply_setting(graph: dict, item: str) -> None:
    """``ClassType.input=value`` (or ``Node title.input=value``) sets a widget on every matching node."""
    target, sep, raw = item.partition("=")
    node_name, dot, key = target.rpartition(".")
    if not sep or not dot or not node_name or not key:
        raise WorkflowError(f"--set {item!r}: write it as NodeClass.input=value, e.g. ModelSwap_FaceRefine.strength=0.5")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    _set(graph, node_name, key, value, f"--set {item!r}")


def _set(graph: dict, node_name: str, key: str, value, what: str) -> None:
    """Set input ``key`` of every node whose class or title is ``node_name``."""
    hits = [n for n in graph.values()
            if node_name in (n["class_type"], n.get("_meta", {}).get("title")) and key in n.get("inputs", {})]
    if not hits:
        raise WorkflowError(f"{what}: no node of class or title {node_name!r} has an input {key!r}.")
    for node in hits:
        if isinstance(node["inputs"][key], list):
            raise WorkflowError(f"{what}: {key} is a link from another node, not a value.")
        node["inputs"][key] = value


def required_models(graph: dict) -> list[tuple[str, str]]:
    """(registry key, name) of every model the workflow's loader nodes name, in graph order, once each.

    The one answer to "which models does this graph need": the headless runner's check, the
    installer (scripts/get_models.py) and the editor workflows' ``properties.models`` all use it.
    Which input names which model is the registry's business (``ModelSpec.inputs``,
    :func:`model_files.key_for_input`), so a new loader or model needs no change here.
    """
    needs: list[tuple[str, str]] = []
    for node in graph.values():
        cls, inputs = node.get("class_type", ""), node.get("inputs", {})
        chosen = {name: model_files.key_for_input(cls, name, value) for name, value in inputs.items()}
        unused = {c for key in chosen.values() if key for c in model_files.MODELS[key].covers}
        found = [(key, inputs[name]) for name, key in chosen.items()
                 if key is not None and f"{model_files.short_name(cls)}.{name}" not in unused]
        found += [(key, model_files.MODELS[key].name) for key in model_files.keys_for_node(cls)]
        needs += [need for need in found if need not in needs]
    return needs

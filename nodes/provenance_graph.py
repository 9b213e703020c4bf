"""What an API-format graph says about the images one of its save nodes writes: a provenance Record.

The save node (nodes/save_node.py) and the HTTP API both call :func:`record_for`, on the graph
ComfyUI ran (the node's hidden PROMPT input; the history entry's prompt), so neither needs any other
node to change its outputs. Everything is read from the nodes upstream of the save node's ``images``:
the pack's sampler (seed, steps, prompt), face pass, loaders (engine; every model, with the licence
from the model registry through :func:`workflow_runner.required_models`), and whether a face
reference was connected. Comfy-free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .pipeline import contract, engines, model_files
from .pipeline.provenance import COMPOSITE, ModelUse, Record
from .workflow_runner import required_models

SAVE_NODE = "ModelSwap_SaveImage"


@dataclass(frozen=True)
class GraphRecord:
    """The record shared by every image of one save node, and how image i's seed follows from it."""
    record: Record
    num_images: int | None  # images per input photo (image i uses seed + i % num_images)
    source_image: str | None  # the LoadImage name of the photo that was swapped (the C2PA parent)

    def for_image(self, index: int) -> Record:
        seed, n = self.record.seed, self.num_images
        if seed is None or not n:
            return replace(self.record, seed=None)
        return replace(self.record, seed=(seed + index % n) % (contract.SEED_MAX + 1))


def _links(node: dict, names=None):
    for name, value in node.get("inputs", {}).items():
        if (names is None or name in names) and isinstance(value, list) and len(value) == 2:
            yield name, str(value[0])


def upstream(graph: dict, node_id: str, inputs=("images",)) -> dict[str, dict]:
    """The nodes ``node_id``'s ``inputs`` depend on (directly or not), by id."""
    seen: dict[str, dict] = {}
    todo = [src for _, src in _links(graph.get(str(node_id), {}), inputs)]
    while todo:
        nid = todo.pop()
        if nid in seen or nid not in graph:
            continue
        seen[nid] = graph[nid]
        todo += [src for _, src in _links(graph[nid])]
    return {nid: node for nid, node in graph.items() if nid in seen}  # in graph order


def _one(nodes: dict[str, dict], class_type: str) -> tuple[str, dict] | None:
    found = [(nid, n) for nid, n in nodes.items() if n.get("class_type") == class_type]
    return found[0] if len(found) == 1 else None


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _capabilities(engine: str | None):
    return engines.capabilities(engine) if engine in engines.ENGINES else None


def generation_mode(engine: str | None, steps: int | None, refine_steps: int | None,
                    work_size: int | None) -> str:
    """The generation mode (fast, balanced, quality) whose engine preset these settings are, else 'custom'."""
    caps = _capabilities(engine)
    presets = caps.presets if caps else {}
    for name, preset in presets.items():
        if (preset.steps, preset.refine_steps, preset.refine_work_size) == (steps, refine_steps, work_size):
            return name
    return "custom"


def _resolved(engine: str | None, steps, refine_steps, work_size) -> tuple:
    """0 in a widget means the engine's own value (its default preset): the record says which."""
    caps = _capabilities(engine)
    if caps is None:
        return steps, refine_steps, work_size
    preset = caps.settings(steps=steps or 0, refine_steps=refine_steps or 0,
                                                   refine_work_size=work_size or 0)
    return (preset.steps if steps is not None else None,
            preset.refine_steps if refine_steps is not None else None,
            preset.refine_work_size if work_size is not None else None)


def models_of(nodes: dict[str, dict]) -> tuple[ModelUse, ...]:
    """Every model the loaders among ``nodes`` name, with the registry's title and licence."""
    return tuple(ModelUse(name=name, title=model_files.MODELS[key].title, licence=model_files.MODELS[key].licence,
                          non_commercial=model_files.MODELS[key].non_commercial)
                 for key, name in required_models(nodes))


def record_for(graph: dict, node_id: str, *, record_prompt: bool = False) -> GraphRecord | None:
    """The provenance of what save node ``node_id`` of ``graph`` writes; None when no sampler of the
    pack is upstream (the images were not made by the pack: nothing to declare)."""
    nodes = upstream(graph or {}, node_id)
    found = _one(nodes, "ModelSwap_Sampler")
    if found is None:
        return None
    sampler_id, sampler = found
    inputs = sampler.get("inputs", {})
    loader = next((nodes.get(src) for _, src in _links(sampler, ("generator",))), None) or {}
    engine = engines.engine_of_loader(loader)
    refine = _one(nodes, "ModelSwap_FaceRefine")
    refine_inputs = refine[1].get("inputs", {}) if refine else {}
    refined = refine is not None and refine_inputs.get("enabled", True) is not False
    steps, refine_steps, work_size = _resolved(
        engine, _int(inputs.get("steps")), _int(refine_inputs.get("steps")) if refined else None,
        _int(refine_inputs.get("work_size")) if refined else None)
    prompt = inputs.get("prompt")
    encode = _one(nodes, "ModelSwap_IdentityEncode")
    models = models_of(nodes)
    record = Record(
        source_type=COMPOSITE, engine=engine, models=models, seed=_int(inputs.get("seed")),
        generation_mode=generation_mode(engine, steps, refine_steps, work_size), steps=steps,
        refine_steps=refine_steps, refine_work_size=work_size,
        face_reference=None if encode is None else any(True for _ in _links(encode[1], ("face_reference",))),
        automatic_prompt=(prompt.strip() == "") if isinstance(prompt, str) else None,
        prompt=prompt if record_prompt and isinstance(prompt, str) and prompt.strip() else None)
    return GraphRecord(record, _int(inputs.get("num_images")), _source_image(nodes))


def _source_image(nodes: dict[str, dict]) -> str | None:
    """The LoadImage name feeding GarmentMask's image (the photo whose person was swapped)."""
    mask = _one(nodes, "ModelSwap_GarmentMask")
    src = next((s for _, s in _links(mask[1], ("image",))), None) if mask else None
    node = nodes.get(src) if src else None
    if node and node.get("class_type") == "LoadImage" and isinstance(node["inputs"].get("image"), str):
        return node["inputs"]["image"]
    return None

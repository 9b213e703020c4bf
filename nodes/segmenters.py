"""Which segmenter a workflow's GarmentMask parses with: FASHN's parser or the licence-clean selfie segmenter.

The HTTP API (``MODELSWAP_API_SEGMENTER``) and the headless runner (``--segmenter``) choose with one
word. :func:`use_segmenter` rewrites the graph's parser loader in place (same node id, so
GarmentMask's link and a Licence Guard link still hold); the rest of the graph is unchanged.
Comfy-free: the graph is a plain API-format dict.
"""

from __future__ import annotations

import copy

from .pipeline import model_files

SEGMENTERS = {
    "fashn": ("ModelSwap_HumanParserLoader", "Model Swap Human Parser Loader",
              {"parser": model_files.MODELS["human_parser"].name, "device": "auto"}),
    "selfie": ("ModelSwap_SelfieSegmenterLoader", "Model Swap Selfie Segmenter Loader (licence-clean)",
               {"model": model_files.MODELS["selfie_segmenter"].name, "refine_edges": True}),
}
LOADER_TYPES = {class_type for class_type, _, _ in SEGMENTERS.values()}


def check_name(name: str, setting: str) -> str:
    """``name`` if it names a segmenter ('' keeps the workflow's own); else ValueError naming ``setting``."""
    if name and name not in SEGMENTERS:
        raise ValueError(f"{setting}={name!r}: use one of {', '.join(SEGMENTERS)} (fashn: FASHN's human parser, "
                         "non-commercial; selfie: the MediaPipe selfie segmenter, Apache-2.0).")
    return name


def use_segmenter(graph: dict, name: str) -> dict:
    """A copy of ``graph`` whose parser loaders load segmenter ``name`` ('' or None: ``graph`` unchanged)."""
    if not name:
        return graph
    class_type, title, inputs = SEGMENTERS[check_name(name, "segmenter")]
    out = copy.deepcopy(graph)
    loaders = [node for node in out.values() if node.get("class_type") in LOADER_TYPES]
    if not loaders:
        raise ValueError(f"The workflow has no parser loader ({', '.join(sorted(LOADER_TYPES))}) for the {name} "
                         "segmenter to replace: use a shipped workflow, or connect a loader to GarmentMask's parser.")
    for node in loaders:
        if node["class_type"] == class_type:
            continue
        links = {k: v for k, v in node.get("inputs", {}).items() if isinstance(v, list)}  # e.g. licence_guard
        node["class_type"] = class_type
        node["inputs"] = {**inputs, **links}
        node.setdefault("_meta", {})["title"] = title
    return out

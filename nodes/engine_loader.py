"""The generic Engine Loader: any registered engine (engines/__init__.py) from its main model.

It reads everything from the engine registry: the engines offered, where each finds its model
(``MODEL_FOLDERS``) and how it loads it (``load_model``), so an engine added to the registry (a module
of the pack, ``engines.register`` or ``MODELSWAP_ENGINES``) is loadable in a graph with no change here.
The engine-specific loaders (FLUX.2 klein with its three files, SDXL with FaceID and ControlNet) stay
for what only they can set.
"""

from __future__ import annotations

import os
from pathlib import Path

from comfy_api.latest import io

from . import comfy_glue as glue
from .loader_nodes import DEVICES, GeneratorType, guard_input


def _model_choices() -> list[str]:
    from .pipeline import engines

    folders: list[str] = []
    for name in engines.ENGINES:
        try:
            folders += [f for f in engines.engine_module(name).MODEL_FOLDERS if f not in folders]
        except (ImportError, AttributeError):  # a broken third-party engine must not hide the others
            continue
    found: list[str] = []
    for kind in folders:
        for entry in glue.list_files(kind) + glue.list_subfolders(kind, "model_index.json"):
            if entry not in found:
                found.append(entry)
    return found


class EngineLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from .pipeline import engines

        return io.Schema(
            node_id=f"{glue.PACK}_EngineLoader",
            display_name="Model Swap Engine Loader",
            category=glue.CATEGORY,
            description="Loads any registered generation engine from its main model (FLUX.2 klein: the "
                        "transformer or the diffusers folder, text encoder and VAE at their default names; SDXL: "
                        "the checkpoint or folder, without FaceID or ControlNet; engines added with "
                        "MODELSWAP_ENGINES too). Settings left at 0 on the sampler and FaceRefine use the "
                        "engine's own.",
            inputs=[
                io.Combo.Input("engine", options=list(engines.ENGINES), default=engines.DEFAULT_ENGINE,
                               tooltip="Which engine: each has its own presets and capabilities."),
                io.Combo.Input("model", options=_model_choices(),
                               tooltip="The engine's main model, from the models folders the engine names (FLUX.2 "
                                       "klein: diffusion_models or diffusers; SDXL: checkpoints or diffusers)."),
                io.Combo.Input("device", options=DEVICES, default="auto",
                               tooltip="Where to sample: 'auto' follows ComfyUI's device choice."),
                io.Combo.Input("dtype", options=["auto", "bf16", "fp16", "fp32"], default="auto",
                               tooltip="Compute precision: auto = the engine's choice on CUDA, fp32 on CPU."),
                io.Combo.Input("offload", options=["none", "model"], default="none",
                               tooltip="'model' keeps only the running component on the GPU (slower)."),
                guard_input(),
            ],
            outputs=[GeneratorType.Output("generator", tooltip="The loaded generation engine.")],
        )

    @classmethod
    def execute(cls, engine, model, device, dtype, offload, licence_guard=None):
        from .pipeline import engines, licence_guard as guard
        from .pipeline.errors import MissingModelError

        module = engines.engine_module(engine)
        guard.check_engine(module.CAPABILITIES, graph_guard=licence_guard)
        for kind in module.MODEL_FOLDERS:
            path = glue.model_path(kind, model)
            if os.path.exists(path):
                break
        else:
            where = " or ".join(f"ComfyUI/models/{kind}" for kind in module.MODEL_FOLDERS)
            raise MissingModelError(f"The {engine} engine's model {model!r} is not in {where}: put it there, "
                                    "or pick one of the listed models.", filename=model)
        loaded = module.load_model(Path(path), lambda kind, name: glue.model_path(kind, name),
                                   device=glue.torch_device(device), dtype=None if dtype == "auto" else dtype,
                                   offload=offload)
        return io.NodeOutput(loaded)


ENGINE_LOADERS = [EngineLoader]

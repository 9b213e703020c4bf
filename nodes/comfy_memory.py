"""The pack's torch models in ComfyUI's memory management: loaded, offloaded and counted like its own.

:func:`install` (called when ComfyUI lists the pack's nodes) makes :class:`ComfyHost` the memory
host of the comfy-free core (``pipeline/placement.py``). From then on models are built on the CPU
and, before each use, the core names the torch modules that use needs: an engine's transformer or
UNet, VAE, text encoders, ControlNet and FaceID PlusV2 image encoder; the human parser. The host
wraps each module once in a ``comfy.model_patcher.ModelPatcher``, as ``comfy/clip_vision.py`` wraps
its encoder (load device: the device the loader chose, ComfyUI's by default; offload device:
ComfyUI's for the module's role), and loads them with ``model_management.load_models_gpu``, which
offloads other models only when the room is needed. They stay loaded after the run and ComfyUI
offloads them when one of its own nodes needs the memory (or on "Unload models"), so a pack run
never evicts the models of the user's other workflows, and ``current_loaded_models`` counts ours.

Plain torch modules cannot run partly loaded (ComfyUI's low-VRAM mode works through its own ops),
so each is loaded whole (``force_full_load``). With ``offload="model"`` diffusers moves the
components itself, one at a time; the host then only frees the room the largest needs.
insightface and OpenCV YuNet/SFace run in ONNX Runtime / OpenCV: ComfyUI cannot manage them.
"""

from __future__ import annotations

from typing import Any, Mapping

PATCHER_ATTRIBUTE = "_modelswap_patcher"  # the module's own ModelPatcher (they live and die together)


def install() -> None:
    """Make ComfyUI place the pack's models (idempotent)."""
    from .pipeline import placement

    if not isinstance(placement.current(), ComfyHost):
        placement.install(ComfyHost())


def _module_class():
    import torch

    class ModelSwapModule(torch.nn.Module):
        """What ComfyUI's ModelPatcher holds: one of the pack's modules (diffusers and transformers
        models have a read-only ``device`` property, which the patcher sets on the model it holds)."""

        def __init__(self, module):
            super().__init__()
            self.module = module

    return ModelSwapModule


_HOLDER = None


def _holder(module):
    global _HOLDER
    if _HOLDER is None:
        _HOLDER = _module_class()
    return _HOLDER(module)


def comfy_device(device):
    """``device`` as ComfyUI names it: "cuda" becomes ComfyUI's own "cuda:N", so that ComfyUI's
    ``free_memory(..., device)`` finds our models among its own."""
    import comfy.model_management as mm
    import torch

    dev = torch.device(device)
    if dev.index is None and dev.type != "cpu":
        own = mm.get_torch_device()
        dev = own if own.type == dev.type else torch.device(dev.type, 0)
    return dev


def offload_device(role: str):
    """ComfyUI's offload device for a module's role (see ``pipeline/placement.py``)."""
    import comfy.model_management as mm

    if role.startswith(("text_encoder", "image_encoder")):
        return mm.text_encoder_offload_device()
    if role == "vae":
        return mm.vae_offload_device()
    return mm.unet_offload_device()


def patcher_for(module, device, role: str):
    """The ModelPatcher of ``module`` on ``device``: made once and kept on the module, so every
    engine sharing the module (an SDXL engine and its FaceID twin share text encoders and VAE)
    shares its one entry in ComfyUI's bookkeeping."""
    import comfy.model_patcher

    patcher = module.__dict__.get(PATCHER_ATTRIBUTE)
    if patcher is None or patcher.load_device != device:
        patcher = comfy.model_patcher.ModelPatcher(_holder(module), load_device=device,
                                                   offload_device=offload_device(role))
        module.__dict__[PATCHER_ATTRIBUTE] = patcher
    return patcher


def _on(module, device) -> bool:
    return all(t.device == device for t in module.parameters())


def _forget_moved(patchers) -> None:
    """Drop the bookkeeping entry of a patcher whose weights are no longer where ComfyUI loaded them,
    so ``load_models_gpu`` loads it again. FaceID's UNet shares its parameters with the base UNet:
    when ComfyUI offloads one, the other's weights move too."""
    import comfy.model_management as mm

    for patcher in patchers:
        if patcher.load_device == patcher.offload_device or patcher.loaded_size() == 0 or patcher.model.model_lowvram:
            continue
        if not _on(patcher.model, patcher.load_device):
            for i, loaded in enumerate(mm.current_loaded_models):
                if loaded.model is patcher:
                    mm.current_loaded_models.pop(i).model_unload()
                    break


class ComfyHost:
    """The memory host ``pipeline/placement.py`` calls; see the module docstring."""

    def use(self, device, modules: Mapping[str, Any]) -> None:
        import comfy.model_management as mm

        dev = comfy_device(device)
        patchers = [patcher_for(module, dev, role) for role, module in modules.items()]
        _forget_moved(patchers)
        mm.load_models_gpu(patchers, force_full_load=True)

    def make_room(self, device, nbytes: int) -> None:
        import comfy.model_management as mm

        dev = comfy_device(device)
        if dev.type != "cpu":  # as load_models_gpu: ComfyUI does not free CPU memory for a load
            mm.free_memory(nbytes * 1.1 + mm.minimum_inference_memory(), dev)


def loaded_pack_modules() -> list:
    """The pack's modules ComfyUI counts as loaded now (for tests and diagnostics)."""
    import comfy.model_management as mm

    return [m.model.model.module for m in mm.current_loaded_models
            if m.model is not None and _HOLDER is not None and isinstance(m.model.model, _HOLDER)]

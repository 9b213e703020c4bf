"""Who moves a loaded model's weights between devices: the model itself, or a host's memory manager.

Without a host (the pure-Python API) models place their own weights: an engine puts its modules
on its device at load (or hands them to diffusers' model CPU offload), FLUX.2 klein moves its
text encoder to the device to encode and back to the CPU, the human parser sits on its device.

A host that manages device memory (ComfyUI: ``nodes/comfy_memory.py``) installs itself with
:func:`install`. Then models are built on the CPU and, before each use, name the torch modules
that use needs (:func:`use`, :func:`use_pipeline`); the host puts them on the device, offloading
whatever else it must, and moves them off only when something else needs the room. Models never
move those modules themselves then, so the host's bookkeeping stays true. With diffusers' model
CPU offload (``offload="model"``) diffusers keeps moving the components one at a time and the
host is only asked to make room for the largest (:func:`make_room`).

Modules are named by role, so a host can give each its offload device: ``text_encoder*`` and
``image_encoder`` are encoders, ``vae`` is the autoencoder, anything else a denoiser or parser.
Torch is never imported here.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol


class Host(Protocol):
    def use(self, device: Any, modules: Mapping[str, Any]) -> None:
        """Put ``modules`` (role -> torch module) on ``device`` before they run."""

    def make_room(self, device: Any, nbytes: int) -> None:
        """Free ``nbytes`` on ``device`` for weights the caller moves there itself."""


_host: Host | None = None


def install(host: Host | None) -> Host | None:
    """Make ``host`` place every model's weights from now on (None: models place their own);
    returns the host it replaces. Install before loading: models loaded without a host already
    sit on their device."""
    global _host
    previous, _host = _host, host
    return previous


def current() -> Host | None:
    return _host


def managed() -> bool:
    return _host is not None


def load_device(device: Any) -> Any:
    """Where a model puts its weights when it is built: the CPU under a host, else ``device``."""
    return "cpu" if _host is not None else device


def use(device: Any, modules: Mapping[str, Any]) -> bool:
    """Ask the host to put ``modules`` on ``device``; False when there is no host (the caller
    places them itself). ``None`` entries are skipped."""
    if _host is None:
        return False
    _host.use(device, {name: m for name, m in modules.items() if m is not None})
    return True


def make_room(device: Any, modules: Mapping[str, Any]) -> None:
    """Before diffusers' model CPU offload moves these modules to ``device`` one at a time: ask
    the host for the room the largest needs."""
    if _host is not None and modules:
        _host.make_room(device, max(module_bytes(m) for m in modules.values() if m is not None))


def pipeline_modules(pipe) -> dict[str, Any]:
    """A diffusers pipeline's torch modules by component name (unet or transformer, vae, text
    encoders, controlnet, image_encoder)."""
    return {name: m for name, m in pipe.components.items() if hasattr(m, "parameters") and hasattr(m, "to")}


def use_pipeline(pipe, device: Any, offload: str, **extra: Any) -> None:
    """Before a pipeline call: the host loads the pipeline's modules and ``extra`` ones (an
    adapter's image encoder) with ``offload="none"``, or makes room for the largest with
    ``offload="model"``. Nothing happens without a host."""
    if _host is None:
        return
    modules = {**pipeline_modules(pipe), **{k: m for k, m in extra.items() if m is not None}}
    if offload == "model":
        make_room(device, modules)
    else:
        use(device, modules)


def module_bytes(module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))

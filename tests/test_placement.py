"""The memory-host seam (pipeline/placement.py) on tiny models, with a recording host (no ComfyUI).

Under a host the models are built on the CPU, name the modules each use needs, and never move them
themselves; without one they place their own weights as before. ComfyUI's host is tested in a real
ComfyUI in test_comfy_memory.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny_klein
from comfyui_model_swap.nodes.pipeline import parsing, placement
from comfyui_model_swap.nodes.pipeline.engines import flux2_klein
from comfyui_model_swap.nodes.pipeline.engines.base import InpaintRequest
from tiny_parser import build_colour_keyed_parser

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingHost:
    def __init__(self):
        self.uses: list[tuple[str, dict]] = []
        self.rooms: list[tuple[str, int]] = []

    def use(self, device, modules):
        self.uses.append((str(device), dict(modules)))

    def make_room(self, device, nbytes):
        self.rooms.append((str(device), nbytes))


@pytest.fixture
def host():
    recording = RecordingHost()
    previous = placement.install(recording)
    yield recording
    placement.install(previous)


def _forbid_moves(module, moves: list):
    """Record every ``module.to(...)`` the engine itself makes."""
    original = module.to

    def to(*args, **kwargs):
        moves.append((args, kwargs))
        return original(*args, **kwargs)

    module.to = to


def test_without_a_host_nothing_is_asked_and_models_place_themselves():
    assert placement.current() is None or not isinstance(placement.current(), RecordingHost)
    previous = placement.install(None)
    try:
        assert not placement.use("cpu", {"x": torch.nn.Linear(2, 2)})
        assert placement.load_device("cuda") == "cuda"
    finally:
        placement.install(previous)


def test_klein_under_a_host_names_text_encoder_then_transformer_and_vae_and_moves_none(host, tmp_path_factory):
    paths = tiny_klein.build_once(tmp_path_factory)
    engine = flux2_klein.load(flux2_klein.Files(folder=paths["folder"]), device="cpu")
    moves: list = []
    _forbid_moves(engine.text_encoder, moves)
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), np.float32)
    mask[8:, 8:] = 1.0
    request = InpaintRequest(image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), mask=mask,
                             prompts=("a woman",), seeds=(3,), steps=2)
    engine.inpaint(request)
    roles = [sorted(modules) for _, modules in host.uses]
    assert roles[0] == ["text_encoder"] and host.uses[0][1]["text_encoder"] is engine.text_encoder
    assert ["transformer", "vae"] in roles[1:]  # before sampling (and again before decoding)
    assert all(r in (["text_encoder"], ["transformer", "vae"]) for r in roles)
    assert {device for device, _ in host.uses} == {"cpu"}
    assert moves == []  # the engine left the text encoder to the host
    engine.inpaint(request)  # a cached prompt: the text encoder is not needed again
    assert sum(r == ["text_encoder"] for r in (sorted(m) for _, m in host.uses)) == 1


def test_parser_under_a_host_is_built_on_the_cpu_and_named_before_each_parse(host, tmp_path):
    folder = build_colour_keyed_parser(tmp_path / "fashn-human-parser")
    parser = parsing.HumanParser.load(folder, device="cpu")
    labels = parser.parse(np.zeros((40, 30, 3), np.uint8))
    assert labels.shape == (40, 30)
    assert [list(m) for _, m in host.uses] == [["parser"]] and host.uses[0][1]["parser"] is parser.model
    assert next(parser.model.parameters()).device.type == "cpu"


def test_model_offload_asks_the_host_for_the_room_of_the_largest_module_only(host):
    small, large = torch.nn.Linear(4, 4), torch.nn.Linear(64, 64)

    class Pipe:
        components = {"vae": small, "transformer": large, "scheduler": object(), "text_encoder": None}

    placement.use_pipeline(Pipe(), "cuda", "model")
    assert host.uses == [] and host.rooms == [("cuda", placement.module_bytes(large))]
    placement.use_pipeline(Pipe(), "cuda", "none", image_encoder=small)
    assert sorted(host.uses[0][1]) == ["image_encoder", "transformer", "vae"]

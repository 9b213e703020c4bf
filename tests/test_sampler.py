"""The batched inpainting sampler on tiny SDXL pipelines (9- and 4-channel UNet, ControlNet)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import tiny_sdxl
from comfyui_model_swap.nodes.pipeline import sampler
from comfyui_model_swap.nodes.pipeline.engine import Engine
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _load(folder):
    from diffusers import StableDiffusionXLInpaintPipeline

    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe9(tmp_path_factory):
    return _load(tiny_sdxl.build_sdxl_inpaint_folder(tmp_path_factory.mktemp("sdxl9") / "inpaint9"))


@pytest.fixture(scope="module")
def engine(pipe9):
    return Engine(pipe=pipe9, device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def engine4(tmp_path_factory):
    pipe = _load(tiny_sdxl.build_sdxl_inpaint_folder(tmp_path_factory.mktemp("sdxl4") / "base4", in_channels=4))
    assert pipe.unet.config.in_channels == 4
    return Engine(pipe=pipe, device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def control_engine(pipe9):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetInpaintPipeline

    torch.manual_seed(1)
    unet_kwargs = {k: v for k, v in tiny_sdxl.UNET_KWARGS.items() if k != "up_block_types"}  # no up blocks
    controlnet = ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(8, 16, 16, 16), **unet_kwargs)
    with torch.no_grad():  # its output convs start at zero; give them weights so the control image matters
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                       controlnet.controlnet_cond_embedding.conv_out]:
            module.weight.normal_(0.0, 0.2)
    components = copy.deepcopy(pipe9.components)
    pipe = StableDiffusionXLControlNetInpaintPipeline(**components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return Engine(pipe=pipe, device=torch.device("cpu"), dtype=torch.float32, has_controlnet=True)


def scene(size=(SIZE, SIZE)):
    h, w = size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.float32)
    mask[h // 8: h - h // 8, w // 8: w - w // 8] = 1.0
    return image, mask


def inpaint(engine, seeds, **kw):
    image, mask = scene()
    kw.setdefault("prompt", "a person in a red coat")
    return sampler.inpaint(engine, image, mask, seeds=list(seeds), steps=2, strength=1.0, **kw)


def differs(a, b) -> bool:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) > 0


class CountingPipe:
    """Forwards to a pipeline and records each call's keyword arguments."""

    def __init__(self, pipe):
        self._pipe = pipe
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self._pipe(**kwargs)


def test_one_image(engine):
    (out,) = inpaint(engine, [7])
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8


def test_four_images_come_from_one_batched_call_and_differ(engine):
    counting = Engine(pipe=CountingPipe(engine.pipe), device=engine.device, dtype=engine.dtype)
    outs = inpaint(counting, [11, 12, 13, 14])
    assert len(outs) == 4 and all(o.shape == (SIZE, SIZE, 3) and o.dtype == np.uint8 for o in outs)
    assert len(counting.pipe.calls) == 1
    call = counting.pipe.calls[0]
    assert call["num_images_per_prompt"] == 4 and call["output_type"] == "np"
    assert (call["height"], call["width"]) == (SIZE, SIZE) and "padding_mask_crop" not in call
    assert [g.initial_seed() for g in call["generator"]] == [11, 12, 13, 14]
    assert all(g.device.type == "cpu" for g in call["generator"])
    for i in range(4):
        for j in range(i + 1, 4):
            assert differs(outs[i], outs[j]), (i, j)


def test_same_seeds_give_bit_identical_images(engine):
    a = inpaint(engine, [100, 101])
    b = inpaint(engine, [100, 101])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_first_image_of_a_batch_matches_a_single_run_with_its_seed(engine):
    batch = inpaint(engine, [100, 101])
    (single,) = inpaint(engine, [100])
    other = inpaint(engine, [200])[0]
    close = np.abs(batch[0].astype(np.int16) - single.astype(np.int16)).max()
    far = np.abs(batch[0].astype(np.int16) - other.astype(np.int16)).max()
    assert close <= 2 < far


def test_different_seeds_differ(engine):
    assert differs(inpaint(engine, [1])[0], inpaint(engine, [2])[0])


def test_prompt_per_seed(engine):
    outs = inpaint(engine, [3, 3], prompt=["a red coat", "a blue dress"])
    assert len(outs) == 2 and differs(outs[0], outs[1])  # same seed, the prompt made the difference
    with pytest.raises(InputValidationError, match="one per seed"):
        inpaint(engine, [3, 4, 5], prompt=["a", "b"])


def test_on_step_is_called_once_per_step(engine):
    calls = []
    inpaint(engine, [5], on_step=lambda i, total: calls.append((i, total)))
    assert calls == [(0, 2), (1, 2)]


def test_an_exception_from_on_step_stops_sampling(engine):
    calls = []

    class Cancelled(Exception):
        pass

    def cancel(i, total):
        calls.append(i)
        raise Cancelled("cancel pressed")

    with pytest.raises(Cancelled):
        inpaint(engine, [5, 6], on_step=cancel)
    assert calls == [0]


def test_four_channel_unet_inpaints_too(engine4):
    outs = inpaint(engine4, [1, 2])
    assert len(outs) == 2 and outs[0].shape == (SIZE, SIZE, 3) and differs(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], inpaint(engine4, [1, 2])[0])  # bit-identical on repeat
    # Alone, seed 1 gives the same picture up to batched-convolution rounding (a level or two).
    alone = inpaint(engine4, [1])[0].astype(int)
    assert np.abs(alone - outs[0].astype(int)).max() <= 2


def test_image_sides_must_be_multiples_of_8(engine):
    image, _ = scene((60, 64))
    mask = np.ones((60, 64), np.float32)
    with pytest.raises(InputValidationError) as err:
        sampler.inpaint(engine, image, mask, prompt="x", seeds=[1], steps=2)
    msg = str(err.value)
    assert "64x60" in msg and "multiples of 8" in msg and "pad" in msg


def test_mask_of_the_wrong_size_is_an_error(engine):
    image, _ = scene()
    with pytest.raises(InputValidationError, match="mask is 32x32 but the image is 64x64"):
        sampler.inpaint(engine, image, np.ones((32, 32), np.float32), prompt="x", seeds=[1], steps=2)


@pytest.mark.parametrize("seeds, match", [
    ([], "1 to 4"),
    ([1, 2, 3, 4, 5], "1 to 4"),
    ([-1], "out of range"),
    ([2**32], "out of range"),
    ([1.5], "not an integer"),
    ([True], "not an integer"),
    (7, "list of 1 to 4"),
])
def test_bad_seeds_are_errors(engine, seeds, match):
    image, mask = scene()
    with pytest.raises(InputValidationError, match=match):
        sampler.inpaint(engine, image, mask, prompt="x", seeds=seeds, steps=2)


def test_largest_seed_is_accepted(engine):
    checked = sampler.check_inputs(engine, *scene(), prompt="x", seeds=[0, 2**32 - 1], steps=2)
    assert checked.seeds == [0, 2**32 - 1]


@pytest.mark.parametrize("kw, match", [
    (dict(steps=0), "steps"),
    (dict(strength=0.0), "strength"),
    (dict(strength=1.5), "strength"),
    (dict(steps=2, strength=0.4), "no denoising step"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(controlnet_scale=-1.0), "controlnet_scale"),
    (dict(on_step="progress"), "on_step"),
    (dict(prompt=None), "prompt"),
])
def test_bad_parameters_are_errors(engine, kw, match):
    image, mask = scene()
    args = dict(prompt="x", seeds=[1], steps=2)
    args.update(kw)
    with pytest.raises(InputValidationError, match=match):
        sampler.inpaint(engine, image, mask, **args)


def test_controlnet_engine_requires_a_control_image(control_engine):
    with pytest.raises(InputValidationError, match="control image is required"):
        inpaint(control_engine, [1])


def test_control_image_without_controlnet_is_an_error(engine):
    with pytest.raises(InputValidationError, match="no ControlNet"):
        inpaint(engine, [1], control_image=np.zeros((SIZE, SIZE, 3), np.uint8))


def test_control_image_must_match_the_image_size(control_engine):
    with pytest.raises(InputValidationError, match="resize the control image"):
        inpaint(control_engine, [1], control_image=np.zeros((32, 32, 3), np.uint8))


def test_controlnet_engine_runs_and_follows_the_control_image(control_engine):
    pose_a = np.zeros((SIZE, SIZE, 3), np.uint8)
    pose_b = pose_a.copy()
    pose_b[16:48, 28:36] = 255
    a = inpaint(control_engine, [1, 2], control_image=pose_a, controlnet_scale=0.8)
    b = inpaint(control_engine, [1, 2], control_image=pose_b, controlnet_scale=0.8)
    off = inpaint(control_engine, [1, 2], control_image=pose_b, controlnet_scale=0.0)
    assert len(a) == 2 and a[0].shape == (SIZE, SIZE, 3)
    assert differs(a[0], b[0]) and differs(b[0], off[0])

"""The stages talk to engines only through engines/base.py, and branch on capabilities.

A test double (tests/engine_double.py) stands in where a real tiny model would be too slow: a 1 MP
photo through every stage, and FaceRefine's work size. The real engines run the same stages in
test_pipeline.py and the ComfyUI tests.
"""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models
from engine_double import EngineDouble, with_capabilities
from comfyui_model_swap.nodes.pipeline import engines, face_refine, masks
from comfyui_model_swap.nodes.pipeline import pipeline as stages
from comfyui_model_swap.nodes.pipeline.engines.base import Engine
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError
from comfyui_model_swap.nodes.pipeline.identity import FaceInfo, align_face


class ColourParser:
    """The tiny colour-keyed parser's rule without its network: fast at 1 MP."""

    def parse(self, image):
        palette = masks.PALETTE.astype(np.int32)
        dist = ((image[:, :, None, :].astype(np.int32) - palette[None, None]) ** 2).sum(-1)
        return dist.argmin(-1).astype(np.uint8)


def fake_face(image) -> FaceInfo:
    h, w = image.shape[:2]
    kps = np.array([[0.45, 0.12], [0.55, 0.12], [0.5, 0.15], [0.46, 0.18], [0.54, 0.18]], np.float32) * [w, h]
    return FaceInfo(bbox=np.array([0.4 * w, 0.05 * h, 0.6 * w, 0.22 * h], np.float32), kps=kps, det_score=0.9,
                    embedding=np.ones(512, np.float32) / np.sqrt(512), aligned=align_face(image, kps), age=30,
                    sex="female")


class OneFace:
    def analyze(self, image):
        return [fake_face(image)]


def test_every_engine_in_the_registry_declares_its_capabilities():
    for name in engines.ENGINES:
        caps = engines.capabilities(name)
        assert caps.name == name and caps.side_multiple in (8, 16) and caps.default_steps >= 1
        assert caps.reference_image or caps.embedding_identity
    assert isinstance(EngineDouble(), Engine)
    with pytest.raises(InputValidationError, match="sdxl"):
        engines.engine_module("sd3")


def test_a_megapixel_photo_goes_through_every_stage_in_one_request_per_stage():
    photo = tiny_models.fashion_photo(1000)  # 1 MP: too slow for a tiny real model on 2 CPU cores
    engine = EngineDouble()
    prepared = stages.prepare(ColourParser(), photo)
    encoded = stages.encode(OneFace(), prepared, face_reference=tiny_models.astronaut(256))
    sampled = stages.generate(engine, encoded, stages.GenerateSettings(seed=5, num_images=3, steps=4))
    (req,) = engine.requests
    assert req.seeds == (5, 6, 7) and len(set(req.prompts)) == 3
    assert req.image.shape[0] % 16 == 0 and req.image.shape[1] % 16 == 0  # padded to the engine's multiple
    assert req.identity is not None and req.identity.reference is not None  # the reference image travels
    assert set(np.unique(req.mask)) <= {0.0, np.float32(stages.DEFAULT_BODY_STRENGTH), 1.0}
    refined = face_refine.refine(engine, sampled, face_refine.RefineSettings(work_size=1024, steps=4))
    assert len(engine.requests) == 4 and all(r.image.shape == (1024, 1024, 3) for r in engine.requests[1:])
    # match_reference (the default) strengthens the identity in the face pass
    assert engine.requests[1].identity.scale == pytest.approx(req.identity.scale * 1.5)
    result = stages.finish(refined)
    keep = result.swap_mask.preserve
    assert keep.mean() > 0.2
    for out in result.images:
        assert np.array_equal(out[keep], photo[keep])  # exact outside the band, at 1 MP
    assert sampled.images is not refined.images  # stages return new values
    assert prepared.swap is encoded.prepared.swap and encoded is sampled.encoded


def test_the_same_stage_value_can_be_sampled_twice_without_interference():
    """What ComfyUI's cache does when a later node re-runs: the earlier value must be untouched."""
    photo = tiny_models.fashion_photo(128)
    encoded = stages.encode(OneFace(), stages.prepare(ColourParser(), photo))
    engine = EngineDouble()
    a = stages.generate(engine, encoded, stages.GenerateSettings(seed=1))
    b = stages.generate(engine, encoded, stages.GenerateSettings(seed=2))
    again = stages.generate(engine, encoded, stages.GenerateSettings(seed=1))
    assert np.array_equal(a.images[0], again.images[0]) and not np.array_equal(a.images[0], b.images[0])
    with pytest.raises(AttributeError):
        encoded.base_face = None  # frozen


def test_capabilities_decide_what_an_engine_is_asked_for():
    encoded = stages.encode(OneFace(), stages.prepare(ColourParser(), tiny_models.fashion_photo(128)),
                            face_reference=tiny_models.astronaut(128))
    no_identity = with_capabilities(reference_image=False, embedding_identity=False)
    with pytest.raises(InputValidationError, match="face reference needs an identity-capable engine"):
        stages.generate(no_identity, encoded)
    assert no_identity.requests == []  # refused before any work
    control = np.zeros((128, 128, 3), np.uint8)
    with pytest.raises(InputValidationError, match="takes no control image"):
        stages.generate(EngineDouble(), encoded, control_image=control)
    with_control = with_capabilities(controlnet=True)
    with pytest.raises(InputValidationError, match="ControlNet and a control image go together"):
        stages.generate(with_control, encoded)
    stages.generate(with_control, encoded, control_image=control)
    assert with_control.requests[0].control_image.shape == (128, 128, 3)


def test_every_engine_names_its_default_model_as_the_registry_does():
    from comfyui_model_swap.nodes.pipeline import model_files

    assert engines.engine_module("flux2_klein").DEFAULT_MODEL == model_files.MODELS["flux2_klein_transformer"].name
    assert engines.engine_module("sdxl").DEFAULT_MODEL == model_files.MODELS["sdxl_inpaint"].name


def test_load_swap_builds_the_default_engine_and_a_third_one_from_their_main_models(tiny_models_dir, tmp_path,
                                                                                    monkeypatch):
    import toy_engine
    from comfyui_model_swap.nodes.pipeline.loading import load_swap

    klein = load_swap([tiny_models_dir], device="cpu")
    assert klein.engine.capabilities.name == "flux2_klein" and klein.parser is not None and klein.analyzer
    result = klein.run(tiny_models.astronaut(128), stages.SwapOptions(refine_faces=False))
    assert result.images[0].shape == (128, 128, 3)
    monkeypatch.setitem(engines.ENGINES, "toy", "toy_engine")
    toy_engine.write_model(tmp_path / "diffusion_models" / "toy.safetensors")
    toy = load_swap([tmp_path, tiny_models_dir], "toy", model="toy.safetensors", faces=None, device="cpu")
    assert toy.engine.capabilities.name == "toy" and toy.analyzer is None
    with pytest.raises(Exception, match="names no default model"):
        load_swap([tmp_path], "toy", device="cpu")
    monkeypatch.setenv("MODELSWAP_COMMERCIAL_ONLY", "1")
    with pytest.raises(Exception, match="Licence guard"):
        load_swap([tmp_path, tiny_models_dir], "toy", model="toy.safetensors", faces=None, device="cpu")

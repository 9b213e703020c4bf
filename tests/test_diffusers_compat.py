"""The diffusers adapter (nodes/pipeline/engines/diffusers_compat.py): the one module that uses diffusers'
private internals refuses, when an engine loads, a diffusers outside the tested range or one lacking a
private name, with the installed version, the range and the fix in the message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from comfyui_model_swap.nodes.pipeline.engines import diffusers_compat, flux2_klein, sdxl
from comfyui_model_swap.nodes.pipeline.errors import DependencyError

ROOT = Path(__file__).resolve().parents[1]
FIX = f'pip install "{diffusers_compat.REQUIREMENT}"'


def test_the_installed_diffusers_is_in_range_and_has_every_name_each_engine_uses():
    import diffusers

    low, high = diffusers_compat.SUPPORTED
    assert low <= diffusers_compat._release(diffusers.__version__) < high
    for engine in diffusers_compat.NEEDS:
        diffusers_compat.check(engine)


@pytest.mark.parametrize("version", ["0.37.2", "0.38.0", "0.43.0", "0.43.0.dev0", "1.0.0", "not-a-version"])
def test_a_diffusers_outside_the_tested_range_is_refused_naming_version_range_and_fix(monkeypatch, version):
    monkeypatch.setattr(diffusers_compat, "installed_version", lambda: version)
    with pytest.raises(DependencyError) as err:
        diffusers_compat.check("flux2_klein")
    message = str(err.value)
    assert f"installed diffusers is {version};" in message and ">=0.39,<0.43" in message and FIX in message


@pytest.mark.parametrize("engine, owner, name", [
    ("flux2_klein", "Flux2KleinInpaintPipeline", "_pack_latents"),
    ("flux2_klein", "Flux2KleinInpaintPipeline", "_get_qwen3_prompt_embeds"),
    ("sdxl", "DiffusionPipeline", "_execution_device"),
    ("faceid", "DiffusionPipeline", "_get_signature_keys"),
])
def test_a_diffusers_lacking_a_private_name_is_refused_naming_it_and_the_fix(monkeypatch, engine, owner, name):
    import diffusers

    monkeypatch.delattr(getattr(diffusers, owner), name)
    with pytest.raises(DependencyError) as err:
        diffusers_compat.check(engine)
    message = str(err.value)
    assert name in message and owner in message and diffusers.__version__ in message and FIX in message


def test_a_missing_module_level_helper_is_refused_too(monkeypatch):
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_inpaint as module

    monkeypatch.delattr(module, "retrieve_latents")
    with pytest.raises(DependencyError, match=r"retrieve_latents of diffusers\.pipelines\.stable_diffusion_xl"):
        diffusers_compat.check("sdxl")


def test_engines_check_when_they_load_before_touching_any_file(monkeypatch, tmp_path):
    monkeypatch.setattr(diffusers_compat, "installed_version", lambda: "0.43.1")
    with pytest.raises(DependencyError, match="flux2_klein engine cannot run here.*0.43.1"):
        flux2_klein.load(flux2_klein.Files(folder=tmp_path / "absent"), device="cpu")
    with pytest.raises(DependencyError, match="sdxl engine cannot run here.*0.43.1"):
        sdxl.load(sdxl.Files(model=tmp_path / "absent.safetensors"), device="cpu")


def test_requirements_and_pyproject_state_the_range_the_adapter_checks():
    requirement = re.search(r"^diffusers\S*", (ROOT / "requirements.txt").read_text(), re.M).group(0)
    declared = re.findall(r'"(diffusers[^"]*)"', (ROOT / "pyproject.toml").read_text())
    assert requirement == diffusers_compat.REQUIREMENT and declared == [diffusers_compat.REQUIREMENT]
    low, high = diffusers_compat.SUPPORTED
    assert diffusers_compat.REQUIREMENT == f"diffusers>={low[0]}.{low[1]},<{high[0]}.{high[1]}"


def test_mode_only_encode_makes_the_pipelines_sample_the_mode_and_restores_the_vae():
    from diffusers import AutoencoderKL
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint import retrieve_latents

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, sample_size=16).eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mode = vae.encode(x).latent_dist.mode()
        sampled = retrieve_latents(vae.encode(x), generator=torch.Generator().manual_seed(1))
        assert not torch.equal(sampled, mode)  # without the patch the pipeline samples
        with diffusers_compat.mode_only_encode(vae):
            assert torch.equal(retrieve_latents(vae.encode(x), generator=torch.Generator().manual_seed(1)), mode)
            assert torch.equal(vae.encode(x, return_dict=False)[0].sample(), mode)
    assert "encode" not in vars(vae)  # the class's own encode again

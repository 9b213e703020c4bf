"""What outputs say about how they were made (nodes/pipeline/provenance.py, nodes/provenance_graph.py),
read back with readers independent of the pack: exiftool for XMP, the c2pa library's Reader for the
manifest, validated against a test ES256 chain made here. The runs through ComfyUI, the API and the
runner are checked in test_comfyui_nodes.py, test_api_comfyui.py and test_run_workflow.py."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import provenance_check as pc
from comfyui_model_swap.nodes import provenance_graph
from comfyui_model_swap.nodes.fashn_api.protocol import parse_run_request
from comfyui_model_swap.nodes.fashn_api.workflow_fill import fill
from comfyui_model_swap.nodes.pipeline import model_files, provenance
from comfyui_model_swap.nodes.pipeline.errors import InputValidationError
from comfyui_model_swap.nodes.workflow_runner import required_models

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
PIXELS = np.random.default_rng(5).integers(0, 256, (40, 56, 3), dtype=np.uint8)
RECORD = provenance.Record(
    engine="flux2_klein", seed=7, generation_mode="quality", steps=4, refine_steps=4, refine_work_size=1024,
    face_reference=False, automatic_prompt=False, prompt='a "tall" <woman> & a \x01hat é',
    models=(provenance.ModelUse("fashn-human-parser", "FASHN parser", "NVIDIA SegFormer (non-commercial)", True),
            provenance.ModelUse("flux-2-klein-4b.safetensors", "FLUX.2 klein", "Apache-2.0", False)))


def encoded(fmt: str, pixels=PIXELS, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt.upper(), **kw)
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return pc.make_chain(tmp_path_factory.mktemp("c2pa"))


# ------------------------------------------------------------------------------------------ XMP

@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_exiftool_reads_every_field_of_the_record_and_the_pixels_are_untouched(fmt):
    data = encoded(fmt)
    marked = provenance.add_xmp(data, fmt, provenance.xmp_packet(RECORD))
    tags = pc.exif_xmp(marked)
    assert tags["XMP-iptcExt:DigitalSourceType"] == pc.COMPOSITE
    assert tags["XMP-xmp:CreatorTool"] == f"ComfyUI Model Swap {provenance.pack_version()}"
    assert provenance.pack_version() not in ("", "unknown")
    expected = {"PackVersion": provenance.pack_version(), "Engine": "flux2_klein", "Seed": 7,
                "GenerationMode": "quality", "Steps": 4, "RefineSteps": 4, "RefineWorkSize": 1024,
                "FaceReference": False, "AutomaticPrompt": False, "NonCommercialWeights": True,
                "Prompt": 'a "tall" <woman> & a hat é'}  # the control character XML cannot hold is dropped
    assert {k: tags[f"XMP-modelswap:{k}"] for k in expected} == expected
    assert tags["XMP-modelswap:Models"] == [
        {"Name": m.name, "Title": m.title, "Licence": m.licence, "NonCommercial": m.non_commercial}
        for m in RECORD.models]
    assert np.array_equal(decoded(marked), decoded(data))
    if fmt == "png":  # nothing re-encoded: the same chunks, one iTXt more, right after the header
        assert [c for c in png_chunks(marked) if c[0] != b"iTXt"] == png_chunks(data)
        assert png_chunks(marked)[1][0] == b"iTXt"
    else:  # the scan data after the APP1 segment is byte-identical
        assert marked.endswith(data[data.index(b"\xff\xda"):])


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_marking_again_replaces_the_packet_and_keeps_other_metadata(fmt):
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    data = encoded(fmt, exif=exif.tobytes())
    once = provenance.add_xmp(data, fmt, provenance.xmp_packet(RECORD))
    twice = provenance.add_xmp(once, fmt, provenance.xmp_packet(provenance.Record(seed=8)))
    assert twice.count(b"http://ns.adobe.com/xap/1.0/\x00" if fmt == "jpeg" else b"XML:com.adobe.xmp") == 1
    tags = pc.exif_xmp(twice)
    assert tags["XMP-modelswap:Seed"] == 8 and "XMP-modelswap:Engine" not in tags
    with Image.open(io.BytesIO(twice)) as image:
        assert image.getexif()[0x010F] == "TestCam"
    if fmt == "jpeg":
        assert twice[2:4] == b"\xff\xe0"  # JFIF's APP0 stays first


def test_the_trained_variant_says_trained_algorithmic_media():
    """What the face library's created faces will carry (nothing in the pack writes it yet)."""
    record = provenance.Record(source_type=provenance.TRAINED, engine="flux2_klein", seed=1)
    tags = pc.exif_xmp(provenance.mark(encoded("png"), "png", record))
    assert tags["XMP-iptcExt:DigitalSourceType"] == pc.TRAINED


def test_refuses_bytes_that_are_not_the_format_named():
    with pytest.raises(InputValidationError, match="not a PNG"):
        provenance.add_xmp(encoded("jpeg"), "png", provenance.xmp_packet(RECORD))
    with pytest.raises(InputValidationError, match="webp"):
        provenance.add_xmp(encoded("png"), "webp", provenance.xmp_packet(RECORD))


# ----------------------------------------------------------------------------------------- C2PA

@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_a_signed_manifest_validates_on_the_test_chain_and_says_edited_composite(fmt, chain):
    signing = provenance.signing_from_env(chain.env())
    data = encoded(fmt)
    signed = provenance.mark(data, fmt, RECORD, signing, parent=encoded("png", PIXELS[::-1]))
    manifest, state = pc.c2pa_manifest(signed, chain)
    assert state == "Trusted"  # signature, hashes and the chain up to the test root all check out
    opened, edited = pc.actions(manifest)
    assert opened["action"] == "c2pa.opened" and edited["action"] == "c2pa.edited"
    assert edited["digitalSourceType"] == pc.COMPOSITE and edited["softwareAgent"]["name"] == "ComfyUI Model Swap"
    (ingredient,) = manifest["ingredients"]
    assert ingredient["relationship"] == "parentOf" and ingredient["title"] == "source photo"
    assert "thumbnail" not in ingredient and "thumbnail" not in manifest  # no picture of the source person
    (record,) = [a["data"] for a in manifest["assertions"] if a["label"] == provenance.C2PA_LABEL]
    assert record == json.loads(json.dumps(RECORD.facts()))
    assert pc.exif_xmp(signed)["XMP-iptcExt:DigitalSourceType"] == pc.COMPOSITE  # the XMP survives signing
    assert np.array_equal(decoded(signed), decoded(data))
    tampered = bytearray(signed)
    tampered[-40] ^= 0xFF  # inside the image data, past the manifest
    _, state = pc.c2pa_manifest(bytes(tampered), chain)
    assert state == "Invalid"


def test_without_a_source_photo_or_for_a_created_image_the_action_is_created(chain):
    signing = provenance.signing_from_env(chain.env())
    for record in (RECORD, provenance.Record(source_type=provenance.TRAINED, seed=3)):
        manifest, state = pc.c2pa_manifest(provenance.mark(encoded("png"), "png", record, signing), chain)
        (created,) = pc.actions(manifest)
        assert state == "Trusted" and created["action"] == "c2pa.created"
        assert created["digitalSourceType"] == record.source_type


def test_without_a_certificate_there_is_no_manifest_and_no_error():
    assert provenance.signing_from_env({}) is None
    marked = provenance.mark(encoded("png"), "png", RECORD, provenance.signing_from_env({}))
    assert pc.exif_xmp(marked)["XMP-modelswap:Engine"] == "flux2_klein"
    assert not pc.has_c2pa(marked)


def test_bad_signing_settings_name_the_setting_and_the_fix(chain, tmp_path, monkeypatch):
    cert, key = str(chain.cert_path), str(chain.key_path)
    cases = [({"MODELSWAP_C2PA_CERT": cert}, "MODELSWAP_C2PA_KEY is not"),
             ({"MODELSWAP_C2PA_KEY": key}, "MODELSWAP_C2PA_CERT is not"),
             ({**chain.env(), "MODELSWAP_C2PA_ALG": "md5"}, "use one of es256"),
             ({"MODELSWAP_C2PA_CERT": str(tmp_path / "absent.pem"), "MODELSWAP_C2PA_KEY": key}, "cannot read")]
    for env, words in cases:
        with pytest.raises(InputValidationError, match=words):
            provenance.signing_from_env(env)
    wrong = {"MODELSWAP_C2PA_CERT": cert, "MODELSWAP_C2PA_KEY": cert}  # a certificate where the key belongs
    with pytest.raises(InputValidationError, match="C2PA signing failed"):
        provenance.mark(encoded("png"), "png", RECORD, provenance.signing_from_env(wrong))
    real_find_spec = provenance.importlib.util.find_spec
    monkeypatch.setattr(provenance.importlib.util, "find_spec",
                        lambda name, *a: None if name == "c2pa" else real_find_spec(name, *a))
    with pytest.raises(InputValidationError, match="pip install c2pa-python"):
        provenance.signing_from_env(chain.env())


# ---------------------------------------------------------------------------- the graph's record

@pytest.mark.parametrize("workflow", sorted((WORKFLOWS / "api").glob("*_api.json")), ids=lambda p: p.stem)
def test_the_record_of_a_shipped_workflow_names_its_engine_models_licences_and_seeds(workflow):
    graph = json.loads(workflow.read_text())
    save = next(k for k, n in graph.items() if n["class_type"] == provenance_graph.SAVE_NODE)
    graph = {**graph, **{k: {**n, "inputs": {**n["inputs"], "seed": 5, "num_images": 3}}
                         for k, n in graph.items() if n["class_type"] == "ModelSwap_Sampler"}}
    found = provenance_graph.record_for(graph, save)
    record = found.record
    assert record.engine == ("sdxl" if "sdxl" in workflow.name else "flux2_klein")
    assert record.generation_mode == "quality"  # the shipped workflows hold the quality preset
    assert record.face_reference == ("face_reference" in workflow.name)
    assert record.automatic_prompt is True and record.prompt is None
    needed = required_models(graph)
    assert [(m.name, m.licence) for m in record.models] == [(n, model_files.MODELS[k].licence) for k, n in needed]
    assert record.non_commercial == any(model_files.MODELS[k].non_commercial for k, _ in needed)
    assert record.non_commercial == ("commercial" not in workflow.name)  # FASHN's parser, or the licence-clean pair
    assert [found.for_image(i).seed for i in range(4)] == [5, 6, 7, 5]  # image i: seed + i per input photo
    assert found.source_image == graph["1"]["inputs"]["image"]


def test_the_api_mode_is_recognised_and_the_prompt_is_recorded_only_when_asked():
    request = parse_run_request({"model_name": "model-swap", "inputs": {
        "model_image": "https://example.com/a.jpg", "generation_mode": "fast", "prompt": "a tall woman"}}, None)
    graph = fill(request, {"model": "in/model.png"}, "out/raw")
    save = next(k for k, n in graph.items() if n["class_type"] == provenance_graph.SAVE_NODE)
    record = provenance_graph.record_for(graph, save).record
    assert record.generation_mode == "fast" and record.refine_work_size == 512
    assert record.automatic_prompt is False and record.prompt is None
    assert provenance_graph.record_for(graph, save, record_prompt=True).record.prompt == "a tall woman"
    refine = next(n for n in graph.values() if n["class_type"] == "ModelSwap_FaceRefine")
    refine["inputs"]["enabled"] = False
    record = provenance_graph.record_for(graph, save).record
    assert record.refine_steps is None and record.generation_mode == "custom"


def test_images_that_did_not_come_from_the_sampler_get_no_record():
    graph = json.loads((WORKFLOWS / "api" / "model_swap_api.json").read_text())
    graph["20"] = {"class_type": "ModelSwap_SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
    assert provenance_graph.record_for(graph, "20") is None
    assert provenance.mark(b"any bytes", "png", None) == b"any bytes"


def test_a_loader_with_an_engine_input_names_the_engine():
    graph = json.loads((WORKFLOWS / "api" / "model_swap_api.json").read_text())
    loader = next(n for n in graph.values() if n["class_type"] == "ModelSwap_KleinLoader")
    loader.update(class_type="ModelSwap_EngineLoader", inputs={"engine": "sdxl", "model": "x.safetensors"})
    save = next(k for k, n in graph.items() if n["class_type"] == provenance_graph.SAVE_NODE)
    record = provenance_graph.record_for(graph, save).record
    assert record.engine == "sdxl" and record.steps == 4  # klein's 4 steps are no SDXL preset
    assert record.generation_mode == "custom"

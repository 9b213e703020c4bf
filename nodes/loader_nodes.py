"""Loader nodes: the generation pipeline, the segmenters and the face analysers, each loaded once.

Their outputs are small handles that ComfyUI's output cache keeps alive between
runs; the comfy-free loaders cache the heavy objects too, so a re-queued graph
never reloads weights. Every loader takes the optional ``licence_guard`` of the Licence
Guard node and, with it or with MODELSWAP_COMMERCIAL_ONLY=1, refuses a non-commercial
weight before loading anything (``pipeline/licence_guard.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from comfy_api.latest import io

from . import comfy_glue as glue
from .pipeline import model_files
from .pipeline.contract import SAFETENSORS_SUFFIXES
from .pipeline.model_files import MODELS

GeneratorType = io.Custom("MODELSWAP_GENERATOR")
ParserType = io.Custom("MODELSWAP_PARSER")
FaceAnalyzerType = io.Custom("MODELSWAP_FACE_ANALYZER")
LicenceGuardType = io.Custom("MODELSWAP_LICENCE_GUARD")
NONE = "none"
DEVICES = ["auto", "cuda", "cpu"]


def guard_input():
    return LicenceGuardType.Input("licence_guard", optional=True,
                                  tooltip="From the Licence Guard node: with commercial_only on, this loader refuses "
                                          "a weight whose licence forbids commercial use (as MODELSWAP_COMMERCIAL_ONLY=1 "
                                          "does for every graph).")


def check_licence(node: type, inputs: dict, licence_guard) -> None:
    """Refuse, before loading, a non-commercial model this loader's ``inputs`` name, when the guard is on."""
    from .pipeline import licence_guard as guard
    from .workflow_runner import required_models

    needs = required_models({"0": {"class_type": f"{glue.PACK}_{node.__name__}", "inputs": inputs}})
    guard.check(needs, graph_guard=licence_guard)


class PipelineLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        default = MODELS["sdxl_inpaint"].name
        models = glue.list_subfolders("diffusers", "model_index.json") + glue.list_files("checkpoints")
        return io.Schema(
            node_id=f"{glue.PACK}_PipelineLoader",
            display_name="Model Swap SDXL Pipeline Loader",
            category=glue.CATEGORY,
            description="Loads the SDXL inpainting pipeline (diffusers folder or single-file SDXL checkpoint), "
                        "an optional ControlNet and the optional IP-Adapter FaceID for face references. Folders and "
                        ".bin files the frontend cannot download: python scripts/get_models.py --workflow "
                        "workflows/api/model_swap_sdxl_face_reference_api.json (in the pack's folder).",
            inputs=[
                io.Combo.Input("model", options=glue.with_default(models, default), default=default,
                               tooltip="SDXL inpainting model: a folder in models/diffusers or an SDXL checkpoint "
                                       "in models/checkpoints (base or inpainting)."),
                io.Combo.Input("controlnet", options=[NONE] + glue.list_subfolders("controlnet", "config.json")
                               + glue.list_files("controlnet"), default=NONE,
                               tooltip="Optional SDXL ControlNet (e.g. OpenPose) to hold pose and hands; needs a "
                                       "control image on ModelSwapSampler."),
                io.Combo.Input("faceid", options=[NONE] + glue.with_default(glue.list_files("ipadapter"),
                                                                             MODELS["faceid"].name),
                               default=NONE,
                               tooltip="IP-Adapter FaceID (plain or PlusV2) from models/ipadapter; needed for a "
                                       "face reference."),
                io.Combo.Input("faceid_lora", options=["auto", NONE] + glue.list_files("loras"), default="auto",
                               tooltip="FaceID LoRA from models/loras; 'auto' uses the LoRA inside the FaceID file, "
                                       "'none' runs the adapter without its LoRA."),
                io.Combo.Input("clip_vision", options=[NONE] + glue.list_files("clip_vision"), default=NONE,
                               tooltip="CLIP ViT-H/14 image encoder from models/clip_vision; FaceID PlusV2 only."),
                io.Combo.Input("device", options=DEVICES, default="auto",
                               tooltip="Where to sample: 'auto' follows ComfyUI's device choice."),
                io.Combo.Input("dtype", options=["auto", "fp16", "bf16", "fp32"], default="auto",
                               tooltip="Weights precision: auto = fp16 on CUDA, fp32 on CPU."),
                io.Combo.Input("offload", options=["none", "model"], default="none",
                               tooltip="'model' keeps only the running component on the GPU (low-VRAM cards; "
                                       "slower)."),
                guard_input(),
            ],
            outputs=[GeneratorType.Output("generator", tooltip="The loaded generation pipeline.")],
        )

    @classmethod
    def execute(cls, model, controlnet, faceid, faceid_lora, clip_vision, device, dtype, offload, licence_guard=None):
        check_licence(cls, dict(model=model, controlnet=controlnet, faceid=faceid, faceid_lora=faceid_lora,
                                clip_vision=clip_vision), licence_guard)
        glue.require_module("diffusers", "Model Swap SDXL Pipeline Loader", "diffusers>=0.39,<0.43")
        from .pipeline.engines import sdxl
        from .pipeline.engines.faceid import FaceIDFiles

        kind = "checkpoints" if model_files.generator_key(model) == "sdxl_checkpoint" else "diffusers"
        adapter = None
        if faceid != NONE:
            lora = None if faceid_lora in ("auto", NONE) else Path(glue.model_path("loras", faceid_lora))
            encoder = None if clip_vision == NONE else Path(glue.model_path("clip_vision", clip_vision))
            adapter = FaceIDFiles(adapter=Path(glue.model_path("ipadapter", faceid)), lora=lora,
                                  image_encoder=encoder, lora_scale=0.0 if faceid_lora == NONE else 1.0)
        control = None if controlnet == NONE else Path(glue.model_path("controlnet", controlnet))
        files = sdxl.Files(model=Path(glue.model_path(kind, model)), faceid=adapter, controlnet=control)
        engine = sdxl.load(files, device=glue.torch_device(device), dtype=None if dtype == "auto" else dtype,
                           offload=offload)
        return io.NodeOutput(engine)


class HumanParserLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        default = MODELS["human_parser"].name
        return io.Schema(
            node_id=f"{glue.PACK}_HumanParserLoader",
            display_name="Model Swap Human Parser Loader",
            category=glue.CATEGORY,
            description="Loads FASHN's SegFormer-B4 human parser (18 classes) from models/human_parsing. A folder the "
                        "frontend cannot download: python scripts/get_models.py --model human_parser (in the pack's "
                        "folder).",
            inputs=[
                io.Combo.Input("parser", options=glue.with_default(
                    glue.list_subfolders("human_parsing", "config.json"), default), default=default,
                    tooltip="Folder in models/human_parsing holding config.json and model.safetensors."),
                io.Combo.Input("device", options=DEVICES, default="auto", tooltip="Where the parser runs."),
                guard_input(),
            ],
            outputs=[ParserType.Output("human_parser", display_name="parser", tooltip="The loaded human parser.")],
        )

    @classmethod
    def execute(cls, parser, device, licence_guard=None):
        check_licence(cls, {"parser": parser}, licence_guard)
        glue.require_module("transformers", "Model Swap Human Parser Loader", "transformers>=4.46")
        from .pipeline.loading import load_parser

        return io.NodeOutput(load_parser(glue.model_path("human_parsing", parser), glue.torch_device(device)))


class InsightFaceLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        default = MODELS["antelopev2"].name
        return io.Schema(
            node_id=f"{glue.PACK}_InsightFaceLoader",
            display_name="Model Swap InsightFace Loader",
            category=glue.CATEGORY,
            description="Loads an insightface model pack (antelopev2 or buffalo_l) from models/insightface/models. "
                        "A zip the frontend cannot download: python scripts/get_models.py --model antelopev2 (in "
                        "the pack's folder).",
            inputs=[
                io.Combo.Input("pack", options=glue.with_default(
                    glue.list_subfolders("insightface", "*.onnx", sub="models"), default), default=default,
                    tooltip="Folder in models/insightface/models holding the pack's .onnx files."),
                io.Combo.Input("device", options=DEVICES, default="auto", tooltip="Where face analysis runs."),
                io.Int.Input("det_size", default=640, min=128, max=2048, step=32,
                             tooltip="Detector input size; 640 is what the packs were trained for."),
                guard_input(),
            ],
            outputs=[FaceAnalyzerType.Output("face_analyzer", tooltip="The loaded face analyzer.")],
        )

    @classmethod
    def execute(cls, pack, device, det_size, licence_guard=None):
        check_licence(cls, {"pack": pack}, licence_guard)
        glue.require_module("insightface", "Model Swap InsightFace Loader", "insightface>=0.7.3")
        glue.require_module("onnxruntime", "Model Swap InsightFace Loader", "onnxruntime")
        from .pipeline.loading import load_face_analyzer

        dev = str(glue.torch_device(device))
        root = glue.model_path("insightface", "")
        for candidate in glue.folder_roots("insightface"):
            if os.path.isdir(os.path.join(candidate, "models", pack)):
                root = candidate
                break
        return io.NodeOutput(load_face_analyzer(root, pack, dev, det_size))




class KleinLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        default = MODELS["flux2_klein_transformer"].name
        transformers = [f for f in glue.list_files("diffusion_models") if f.lower().endswith(SAFETENSORS_SUFFIXES)]
        folders = glue.list_subfolders("diffusers", "model_index.json")
        return io.Schema(
            node_id=f"{glue.PACK}_KleinLoader",
            display_name="Model Swap FLUX.2 klein Loader",
            category=glue.CATEGORY,
            description="Loads FLUX.2 [klein] 4B (Apache-2.0, 4 steps; the identity comes from the face reference "
                        "image itself): ComfyUI's single files (transformer, Qwen3-4B, FLUX.2 VAE) or the "
                        "diffusers folder.",
            inputs=[
                io.Combo.Input("model", options=glue.with_default(transformers + folders, default), default=default,
                               tooltip="The klein transformer from models/diffusion_models (bf16, or the FP8 file: "
                                       "it stays FP8 in memory), or a diffusers folder from models/diffusers "
                                       "(FLUX.2-klein-4B; then text_encoder and vae are not used)."),
                io.Combo.Input("text_encoder", options=glue.with_default(
                    glue.list_files("text_encoders"), MODELS["flux2_klein_text_encoder"].name),
                    default=MODELS["flux2_klein_text_encoder"].name,
                    tooltip="Qwen3-4B (bf16) from models/text_encoders; ComfyUI loads it to encode a new "
                            "prompt and offloads it when the memory is needed."),
                io.Combo.Input("vae", options=glue.with_default(glue.list_files("vae"), MODELS["flux2_vae"].name),
                               default=MODELS["flux2_vae"].name, tooltip="The FLUX.2 VAE from models/vae."),
                io.Combo.Input("device", options=DEVICES, default="auto",
                               tooltip="Where to sample: 'auto' follows ComfyUI's device choice."),
                io.Combo.Input("dtype", options=["auto", "bf16", "fp16", "fp32"], default="auto",
                               tooltip="Compute precision: auto = bf16 on CUDA, fp32 on CPU."),
                io.Combo.Input("offload", options=["none", "model"], default="none",
                               tooltip="'model' keeps only the running component on the GPU (about 13 GB in bf16, "
                                       "less with the FP8 transformer; slower)."),
                guard_input(),
            ],
            outputs=[GeneratorType.Output("generator", tooltip="The loaded generation pipeline.")],
        )

    @classmethod
    def execute(cls, model, text_encoder, vae, device, dtype, offload, licence_guard=None):
        check_licence(cls, dict(model=model, text_encoder=text_encoder, vae=vae), licence_guard)
        glue.require_module("diffusers", "Model Swap FLUX.2 klein Loader", "diffusers>=0.39,<0.43")
        from .pipeline.engines import flux2_klein

        if model.lower().endswith(SAFETENSORS_SUFFIXES):
            files = flux2_klein.Files(transformer=Path(glue.model_path("diffusion_models", model)),
                                      text_encoder=Path(glue.model_path("text_encoders", text_encoder)),
                                      vae=Path(glue.model_path("vae", vae)))
        else:
            files = flux2_klein.Files(folder=Path(glue.model_path("diffusers", model)))
        engine = flux2_klein.cached_load(files, device=glue.torch_device(device),
                                         dtype=None if dtype == "auto" else dtype, offload=offload)
        return io.NodeOutput(engine)


class OpenCVFaceLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{glue.PACK}_OpenCVFaceLoader",
            display_name="Model Swap OpenCV Face Loader (YuNet + SFace)",
            category=glue.CATEGORY,
            description="Licence-clean face analysis: OpenCV's YuNet detector (MIT) and SFace recogniser "
                        "(Apache-2.0) from models/facedetection. No age/sex model: set 'person' on the sampler. "
                        "Files the frontend cannot download: python scripts/get_models.py --model yunet --model sface "
                        "(in the pack's folder).",
            inputs=[
                io.Int.Input("det_size", default=640, min=128, max=2048, step=32,
                             tooltip="Images are detected with their long side scaled down to this size."),
                guard_input(),
            ],
            outputs=[FaceAnalyzerType.Output("face_analyzer", tooltip="The loaded face analyzer.")],
        )

    @classmethod
    def execute(cls, det_size, licence_guard=None):
        check_licence(cls, {"det_size": det_size}, licence_guard)
        from .pipeline.face_opencv import OpenCVFaceAnalyzer

        return io.NodeOutput(OpenCVFaceAnalyzer.load(Path(glue.model_path("facedetection", "")), det_size=det_size))


class SelfieSegmenterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        default = MODELS["selfie_segmenter"].name
        return io.Schema(
            node_id=f"{glue.PACK}_SelfieSegmenterLoader",
            display_name="Model Swap Selfie Segmenter Loader (licence-clean)",
            category=glue.CATEGORY,
            description="Loads Google's MediaPipe selfie multiclass segmenter (Apache-2.0; hair, face skin, body skin, "
                        "clothes, accessories) from models/mediapipe, on LiteRT (pip install ai-edge-litert). A "
                        "licence-clean parser for GarmentMask: its 256x256 map is refined along the photo's edges. It "
                        "cannot tell arms from legs or one garment from another (see its help page). Download: "
                        "python scripts/get_models.py --model selfie_segmenter (in the pack's folder).",
            inputs=[
                io.Combo.Input("model", options=glue.with_default(glue.list_files("mediapipe"), default),
                               default=default,
                               tooltip="The segmenter's .tflite file in models/mediapipe "
                                       "(selfie_multiclass_256x256.tflite)."),
                io.Boolean.Input("refine_edges", default=True,
                                 tooltip="Move the class borders onto the photo's own edges (guided filter). Off: the "
                                         "256x256 map, upsampled."),
                guard_input(),
            ],
            outputs=[ParserType.Output("parser", tooltip="The loaded segmenter, for GarmentMask's parser input.")],
        )

    @classmethod
    def execute(cls, model, refine_edges, licence_guard=None):
        check_licence(cls, {"model": model}, licence_guard)
        glue.require_module("ai_edge_litert", "Model Swap Selfie Segmenter Loader", "ai-edge-litert")
        from .pipeline.loading import load_selfie_segmenter

        return io.NodeOutput(load_selfie_segmenter(glue.model_path("mediapipe", model), refine=refine_edges))


class LicenceGuard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{glue.PACK}_LicenceGuard",
            display_name="Model Swap Licence Guard",
            category=glue.CATEGORY,
            description="Connect to the loaders' licence_guard input: with commercial_only on, each refuses a weight "
                        "published for non-commercial use only (FASHN's human parser, insightface, IP-Adapter FaceID), "
                        "naming the model, its licence and the licence-clean alternative. MODELSWAP_COMMERCIAL_ONLY=1 "
                        "turns the same guard on for every graph.",
            inputs=[io.Boolean.Input("commercial_only", default=True,
                                     tooltip="On: the connected loaders load only weights licensed for commercial use. "
                                             "Off does not lift MODELSWAP_COMMERCIAL_ONLY=1.")],
            outputs=[LicenceGuardType.Output("licence_guard", tooltip="For every loader's licence_guard input.")],
        )

    @classmethod
    def execute(cls, commercial_only):
        return io.NodeOutput(bool(commercial_only))


LOADERS = [PipelineLoader, HumanParserLoader, InsightFaceLoader, KleinLoader, OpenCVFaceLoader, SelfieSegmenterLoader,
           LicenceGuard]

"""Save Image (with provenance): ComfyUI's SaveImage, plus what the pack declares about each image.

The PNGs are written by ComfyUI's own save helper (same filename_prefix handling, same workflow and
prompt metadata unless ComfyUI runs with --disable-metadata); then each gets the XMP record of
``pipeline.provenance`` and, when MODELSWAP_C2PA_CERT / MODELSWAP_C2PA_KEY are set, a signed C2PA
manifest. The record is read from the graph ComfyUI runs (the hidden PROMPT input), so no other
node's outputs change.
"""

from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io, ui

from . import comfy_glue as glue


class SaveImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{glue.PACK}_SaveImage",
            display_name="Save Image (with provenance)",
            category=glue.CATEGORY,
            description="Saves PNGs to ComfyUI's output folder like Save Image, each marked as made with a trained "
                        "model: XMP with IPTC's Digital Source Type and the pack's record (engine, models and "
                        "licences, seed, mode, pack version), and a signed C2PA manifest when MODELSWAP_C2PA_CERT "
                        "and MODELSWAP_C2PA_KEY are set. Images not made by the pack's sampler are saved unmarked.",
            inputs=[
                io.Image.Input("images", tooltip="The images to save (from FaceRefine or ModelSwapSampler)."),
                io.String.Input("filename_prefix", default="model_swap",
                                tooltip="The prefix for the files, as in Save Image (may include %date:yyyy-MM-dd% "
                                        "or a sub-folder)."),
                io.Boolean.Input("record_prompt", default=False,
                                 tooltip="Also write the sampler's prompt into the XMP record. Off: the record says "
                                         "only whether the prompt was automatic (ComfyUI's own workflow metadata "
                                         "is separate: --disable-metadata removes it)."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo, io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, filename_prefix, record_prompt=False):
        from .pipeline import provenance
        from .provenance_graph import record_for

        signing = provenance.signing_from_env()  # a bad setting fails before anything is written
        found = record_for(cls.hidden.prompt or {}, str(cls.hidden.unique_id), record_prompt=record_prompt)
        parent = None
        if signing is not None and found is not None and found.source_image:
            source = glue.input_file(found.source_image)
            parent = None if source is None else Path(source).read_bytes()
        results = ui.ImageSaveHelper.save_images(images, filename_prefix=filename_prefix,
                                                 folder_type=io.FolderType.output, cls=cls, compress_level=4)
        if found is not None:
            for i, saved in enumerate(results):
                path = Path(glue.output_file(saved["subfolder"], saved["filename"]))
                path.write_bytes(provenance.mark(path.read_bytes(), "png", found.for_image(i), signing, parent))
        return io.NodeOutput(ui=ui.SavedImages(results))


SAVE_NODES = [SaveImage]

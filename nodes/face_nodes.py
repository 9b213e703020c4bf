"""The face library's nodes: Create Face -> Save Face, and Load Face (a saved face as a face reference).

The work is in the comfy-free ``pipeline/face_library.py``; the library is ComfyUI's ``models/modelswap_faces/``
folder (registered in ``comfy_glue``, so ``extra_model_paths.yaml`` can add or move it). README "Face library".
"""

from __future__ import annotations

import logging
from pathlib import Path

from comfy_api.latest import io, ui

from . import comfy_glue as glue
from . import widgets
from .loader_nodes import FaceAnalyzerType, GeneratorType
from .pipeline import contract as c
from .pipeline import face_library as fl
from .pipeline.prompting import AGE_BANDS, HAIR_COLOURS, SKIN_TONES

FacesType = io.Custom("MODELSWAP_FACES")
log = logging.getLogger("comfyui_model_swap")
NO_FACES = "(no saved faces)"  # Load Face's only choice while the library is empty


def library_dirs() -> list[Path]:
    """The face library's folders, as ComfyUI knows them (new faces go to the first)."""
    return [Path(p) for p in glue.folder_roots(fl.FOLDER)]


class CreateFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{glue.PACK}_CreateFace",
            display_name="Create Face",
            category=glue.CATEGORY,
            description="Makes 1-4 new, wholly generated face portraits from a description and a seed (front-facing, "
                        "neutral light, plain background) with the loaded engine, each checked by the face analyser "
                        "(one clear face large enough for a face reference). Save one with Save Face.",
            inputs=[
                GeneratorType.Input("generator", tooltip="An engine that can draw from a description (FLUX.2 klein "
                                                         "or SDXL, from the Engine Loader)."),
                FaceAnalyzerType.Input("face_analyzer", tooltip="Checks each candidate and gives the identity "
                                                                "embedding saved with it (OpenCV or InsightFace)."),
                io.Combo.Input("person", options=list(fl.PERSONS), default="woman",
                               tooltip="Who to draw: a woman, a man, or a person described without either."),
                io.Combo.Input("age_band", options=[fl.AUTO, *AGE_BANDS], default=fl.AUTO,
                               tooltip="Apparent age; auto draws one from the seed."),
                io.Combo.Input("skin_tone", options=[fl.AUTO, *SKIN_TONES], default=fl.AUTO,
                               tooltip="Skin tone; auto draws one from the seed."),
                io.String.Input("ethnicity", default="",
                                tooltip="Free text, e.g. 'Korean'; empty draws one that goes with the skin tone."),
                io.Combo.Input("hair_colour", options=[fl.AUTO, *HAIR_COLOURS], default=fl.AUTO,
                               tooltip="Hair colour; auto draws one from the seed."),
                io.String.Input("hair_style", default="",
                                tooltip="Free text, e.g. 'short bob'; empty draws one from the seed."),
                io.String.Input("description", default="", multiline=True,
                                tooltip="Anything else about the person, e.g. 'freckles, green eyes'."),
                io.Int.Input("seed", default=c.SEED.default, min=0, max=c.SEED_MAX,
                             tooltip="Candidate i uses seed + i; the same seed and description give the same faces."),
                widgets.number(fl.COUNT),
                widgets.number(fl.SIZE),
            ],
            outputs=[
                io.Image.Output("images", tooltip="The candidates, in seed order."),
                FacesType.Output("faces", tooltip="The candidates with what made them, for Save Face."),
            ],
        )

    @classmethod
    def execute(cls, generator, face_analyzer, person, age_band, skin_tone, ethnicity, hair_colour, hair_style,
                description, seed, count, size):
        wanted = fl.Description(person=person, age_band=age_band, skin_tone=skin_tone, ethnicity=ethnicity,
                                hair_colour=hair_colour, hair_style=hair_style, text=description)
        faces = fl.create_faces(generator, face_analyzer, wanted, seed, count, size=size,
                                on_step=glue.step_callback())
        return io.NodeOutput(glue.tensor_from_images([f.image for f in faces]), faces)


class SaveFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{glue.PACK}_SaveFace",
            display_name="Save Face",
            category=glue.CATEGORY,
            description="Saves one Create Face candidate in the face library (ComfyUI/models/modelswap_faces/<name>/: "
                        "face.png marked as generated, face.json with description, seed, engine and embedding), "
                        "for Load Face, the runner's --face and the API's face_reference \"face:<name>\".",
            inputs=[
                FacesType.Input("faces", tooltip="From Create Face."),
                io.Int.Input("candidate", default=1, min=1, max=fl.COUNT.bounds[1],
                             tooltip="Which candidate to save (1 = the first image)."),
                io.String.Input("name", default="my face",
                                tooltip="The face's name: letters, digits, spaces, '_', '-', '.', up to 64; no paths."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace a saved face of the same name; off: that name is refused."),
            ],
            outputs=[io.Image.Output("image", tooltip="The saved face picture.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo, io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, name, **_):
        try:
            fl.check_name(name)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, faces, candidate, name, overwrite):
        from .pipeline import provenance
        from .pipeline.errors import InputValidationError

        if candidate > len(faces):
            raise InputValidationError(f"candidate={candidate}, but Create Face made {len(faces)}: choose 1 to "
                                       f"{len(faces)}.")
        face = faces[candidate - 1]
        folder = fl.save_face(library_dirs(), name, face, models=_models_upstream(cls.hidden.prompt,
                                                                                 cls.hidden.unique_id),
                              overwrite=overwrite, signing=provenance.signing_from_env())
        image = glue.tensor_from_images([face.image])
        log.info("Model Swap: saved face %r in %s", name, folder)
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


def _models_upstream(graph, node_id) -> tuple:
    """The models feeding the save node (their licences go into the picture's provenance record)."""
    from .provenance_graph import models_of, upstream

    return models_of(upstream(graph or {}, str(node_id), inputs=("faces",)))


class LoadFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = fl.list_faces(library_dirs())
        return io.Schema(
            node_id=f"{glue.PACK}_LoadFace",
            display_name="Load Face",
            category=glue.CATEGORY,
            description="A face saved in the face library (ComfyUI/models/modelswap_faces/), as an image for "
                        "IdentityEncode's face_reference.",
            inputs=[io.Combo.Input("name", options=names or [NO_FACES],
                                   tooltip="A saved face (Save Face writes them; refresh the page after saving).")],
            outputs=[io.Image.Output("face", tooltip="The saved face picture, for IdentityEncode's face_reference.")],
        )

    @classmethod
    def validate_inputs(cls, name):
        if name == NO_FACES:
            return (f"No face is saved in {', '.join(map(str, library_dirs()))}: make one with Create Face + Save Face, "
                    "then refresh the page.")
        try:
            fl.face_folder(library_dirs(), name)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, name):
        return io.NodeOutput(glue.tensor_from_images([fl.load_face(library_dirs(), name).image]))


FACE_NODES = [CreateFace, SaveFace, LoadFace]

"""The face library over HTTP: a local extension of FASHN's protocol (README "Face library").

- ``inputs.face_reference`` may be ``"face:NAME"``, a face saved with Save Face: the name is checked like
  every face name (:func:`protocol` refuses a bad one with 400), an unknown one is refused with 400 listing
  the saved faces, and the saved picture is used as the face reference.
- ``GET /v1/faces`` lists the saved faces (name, description, seed, engine, created; not the embedding).
- ``POST /v1/faces`` ``{"name", "seed", "description": {person, age_band, skin_tone, ethnicity, hair_colour,
  hair_style, text}, "size", "overwrite"}`` creates one face and saves it: a Create Face -> Save Face graph on the
  loaders of the API's engine workflow (the same models the predictions use) is queued in ComfyUI and
  waited for; the answer is the saved face's listing entry, or the graph's error (the analyser's refusal
  names the candidate) as 400 with FASHN's error name.

``dirs`` is a callable giving the library's folders (inside ComfyUI: ``models/modelswap_faces``).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Callable, Sequence

from ..pipeline import contract as c
from ..pipeline import face_library as fl
from ..pipeline.errors import InputValidationError
from ..provenance_graph import upstream
from ..workflow_runner import load_workflow
from .history import history_error
from .protocol import HttpError, bad_request

Dirs = Callable[[], Sequence[Path]]


def saved_name(ref: str | None) -> str | None:
    """NAME of a ``face:NAME`` reference, else None (a URL or data URI)."""
    if isinstance(ref, str) and ref.startswith(fl.REFERENCE_PREFIX):
        return ref[len(fl.REFERENCE_PREFIX):]
    return None


def check_syntax(ref: str, key: str) -> str:
    """The protocol's check of ``face:NAME``: a legal name, else 400."""
    try:
        fl.check_name(saved_name(ref))
    except InputValidationError as exc:
        raise bad_request(f"inputs.{key} {ref[:80]!r}: {exc}") from None
    return ref


def check_saved(ref: str | None, dirs: Dirs) -> None:
    """At request time: a ``face:NAME`` reference names a saved face, else 400 listing the saved ones."""
    name = saved_name(ref)
    if name is not None:
        try:
            fl.face_folder(list(dirs()), name)
        except InputValidationError as exc:
            raise bad_request(f"inputs.face_reference: {exc}") from None


def picture(ref: str, dirs: Dirs) -> bytes:
    return fl.picture_bytes(list(dirs()), saved_name(ref))


def listing(dirs: Dirs) -> dict:
    folders = list(dirs())
    faces = []
    for name in fl.list_faces(folders):
        record = fl.read_record(fl.face_folder(folders, name))
        faces.append({"name": name, "face_reference": fl.REFERENCE_PREFIX + name,
                      **{k: record.get(k) for k in ("description", "seed", "engine", "created", "analyzer")}})
    return {"faces": faces}


def entry(name: str, dirs: Dirs) -> dict:
    folders = list(dirs())
    return next(f for f in listing(lambda: folders)["faces"] if f["name"] == name)




def _creation_request(body: object) -> tuple[str, int, fl.Description, int, bool]:
    if not isinstance(body, dict):
        raise bad_request('The body must be a JSON object: {"name": ..., "seed": ..., "description": {...}}.')
    unknown = sorted(set(body) - {"name", "seed", "description", "size", "overwrite"})
    if unknown:
        raise bad_request(f"Unknown field(s) {', '.join(unknown)}: the fields are name, seed, description, size, "
                          "overwrite.")
    described = body.get("description", {})
    names = [f.name for f in fields(fl.Description)]
    if not isinstance(described, dict) or set(described) - set(names):
        raise bad_request(f"description must be an object with the fields {', '.join(names)}.")
    seed, size, overwrite = body.get("seed", c.SEED.default), body.get("size", 0), body.get("overwrite", False)
    try:
        name = fl.check_name(body.get("name"))
        c.check(c.SEED, seed)
        description = fl.Description(**described)
        description.check()
    except (InputValidationError, TypeError) as exc:
        raise bad_request(str(exc)) from None
    if not isinstance(overwrite, bool):
        raise bad_request("overwrite must be true or false.")
    problem = fl.SIZE.problem(size)  # the Create Face widget's declaration
    if problem is not None:
        raise bad_request(problem)
    return name, seed, description, size, overwrite


def creation_graph(workflow: Path, name: str, seed: int, description: fl.Description, size: int,
                   overwrite: bool) -> dict:
    """Create Face -> Save Face on the loaders (and what they take) of ``workflow``'s sampler and IdentityEncode."""
    graph = load_workflow(workflow)

    def link(class_type: str, key: str) -> list:
        return next(n["inputs"][key] for n in graph.values() if n["class_type"] == class_type)

    generator, analyzer = link("ModelSwap_Sampler", "generator"), link("ModelSwap_IdentityEncode", "face_analyzer")
    needed: dict = {}
    for source in (generator, analyzer):
        nid = str(source[0])
        needed.update({nid: graph[nid], **upstream(graph, nid, tuple(graph[nid]["inputs"]))})
    return {**needed,
            "face_create": {"class_type": "ModelSwap_CreateFace", "inputs": {
                "generator": generator, "face_analyzer": analyzer, **{
                    k: getattr(description, k) for k in ("person", "age_band", "skin_tone", "ethnicity",
                                                         "hair_colour", "hair_style")},
                "description": description.text, "seed": seed, "count": 1, "size": size}},
            "face_save": {"class_type": "ModelSwap_SaveFace", "inputs": {
                "faces": ["face_create", 1], "candidate": 1, "name": name, "overwrite": overwrite}}}


async def create(backend, workflow: Path, body: object, dirs: Dirs, timeout_s: float = 3600.0) -> dict:
    """POST /v1/faces: run the creation graph in ComfyUI and answer the saved face's entry."""
    name, seed, description, size, overwrite = _creation_request(body)
    if not overwrite and name in fl.list_faces(list(dirs())):
        raise bad_request(f"A face named {name!r} is already saved: choose another name, or send overwrite: true.")
    graph = creation_graph(workflow, name, seed, description, size, overwrite)
    prompt_id = await backend.submit(graph, str(uuid.uuid4()))
    end, gone = asyncio.get_running_loop().time() + timeout_s, 0
    while True:
        state, found = (await backend.states([prompt_id]))[prompt_id]
        if state == "done":
            status = (found or {}).get("status", {})
            if status.get("status_str") != "success":
                error, message = history_error(status)
                raise HttpError(400, error, message)
            return entry(name, dirs)
        gone = gone + 1 if state == "gone" else 0  # once can be a race between the queue and history reads
        if gone > 1 or asyncio.get_running_loop().time() > end:
            raise HttpError(500, "PipelineError", "ComfyUI lost the face creation job; see ComfyUI's log.")
        await asyncio.sleep(0.2)

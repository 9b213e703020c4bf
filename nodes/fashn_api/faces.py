"""The face library over HTTP: a local extension of FASHN's protocol (README "Face library").

- ``inputs.face_reference`` may be ``"face:NAME"``, a face saved with Save Face: the name is checked like
  every face name (:func:`protocol` refuses a bad one with 400), an unknown one is refused with 400 listing
  the saved faces, and the saved picture is used as the face reference.
- ``GET /v1/faces`` lists the saved faces (name, description, seed, engine, created; not the embedding).

Creating faces stays in the graph (Create Face -> Save Face): it needs the engine the graph loads.
``dirs`` is a callable giving the library's folders (inside ComfyUI: ``models/modelswap_faces``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..pipeline import face_library as fl
from ..pipeline.errors import InputValidationError
from .protocol import bad_request

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

"""The face library: new, wholly generated faces made from a description, saved once, reused as a face reference.

:func:`create_faces` asks an engine that can draw from nothing (``Capabilities.text_to_image``: a plain canvas
under a full-strength mask) for 1-4 front-facing, evenly lit portraits on a plain background, and checks each
with the face analyser: exactly one clear face, large enough to serve as a face reference, else an error
naming the candidate. :func:`save_face` writes a chosen one to the library, :func:`load_face` reads it back.

Layout (README "Face library"): one folder (inside ComfyUI: ``models/modelswap_faces/``, a registered model
folder, so ``extra_model_paths.yaml`` can move it); each face is a sub-folder ``<name>/`` holding
``face.png`` (marked ``trainedAlgorithmicMedia`` in its XMP, see ``provenance``) and ``face.json`` (the
description, prompt, seed, engine, creation time, the analyser's name and identity embedding). Names follow
:data:`NAME_PATTERN`; a name is never a path. Callers pass the library's folders (``dirs``): new faces go to
the first; a face is looked up in each in turn. Comfy-free.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from . import contract as c
from . import provenance
from .errors import ImageLoadError, InputValidationError, NoFaceError
from .prompting import AGE_BANDS, HAIR_COLOURS, NEGATIVE_PROMPT, SKIN_TONES, random_identity

FOLDER = "modelswap_faces"  # the models sub-folder ComfyUI knows the library by
PICTURE, RECORD = "face.png", "face.json"
REFERENCE_PREFIX = "face:"  # the HTTP API's face_reference "face:NAME" (a local extension of FASHN's protocol)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
AUTO = "auto"  # a description field drawn from the seed
PERSONS = ("woman", "man", "person")
COUNT = c.Param("count", int, 1, (1, 4), meaning="How many candidate faces to make, 1 to 4 (candidate i uses seed + i).")
SIZE = c.Param("size", int, 0, (16, 2048), step=16, multiple=16, engine_default=True,
               meaning="Side of the square portrait in pixels; 0 = the engine's work size (1024).")
FRAMING = ("head-and-shoulders studio portrait photo facing the camera, looking into the lens, face large and "
           "centred, plain light grey background, soft even neutral light")
MIN_FACE_FRACTION = 0.2  # the face box's width must be at least this share of the picture's width
OTHER_FACE_SHARE = 0.1  # a second face at least this share of the main face's area makes the candidate unclear


@dataclass(frozen=True)
class Description:
    """Who to draw. ``auto`` (or empty) fields are drawn from the seed (prompting.random_identity)."""

    person: str = "woman"  # PERSONS
    age_band: str = AUTO  # prompting.AGE_BANDS
    skin_tone: str = AUTO  # prompting.SKIN_TONES
    ethnicity: str = ""  # free text, e.g. "Korean"
    hair_colour: str = AUTO  # prompting.HAIR_COLOURS
    hair_style: str = ""  # free text, e.g. "short bob"
    text: str = ""  # anything else, e.g. "freckles, green eyes"

    def check(self) -> None:
        for name, value, options in (("person", self.person, PERSONS), ("age_band", self.age_band, AGE_BANDS),
                                     ("skin_tone", self.skin_tone, SKIN_TONES),
                                     ("hair_colour", self.hair_colour, HAIR_COLOURS)):
            if value not in options and not (name != "person" and value in (AUTO, "")):
                extra = "" if name == "person" else f"{AUTO}, "
                raise InputValidationError(f"{name}={value!r} is not a choice: use one of {extra}{', '.join(options)}.")
        for name in ("ethnicity", "hair_style", "text"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > 300:
                raise InputValidationError(f"{name} must be text of at most 300 characters.")

    def resolved(self, seed: int) -> "Description":
        """Every ``auto`` field drawn from ``seed``; the given ones kept."""
        sex = {"woman": "female", "man": "male"}.get(self.person)
        drawn = random_identity(seed, sex=sex, skin_tone=None if self.skin_tone in (AUTO, "") else self.skin_tone)
        return replace(self, age_band=self.age_band if self.age_band not in (AUTO, "") else drawn.age_band,
                       skin_tone=drawn.skin_tone, ethnicity=self.ethnicity.strip() or drawn.ethnicity,
                       hair_colour=self.hair_colour if self.hair_colour not in (AUTO, "") else drawn.hair_colour,
                       hair_style=self.hair_style.strip() or drawn.hair_style)

    def prompt(self) -> str:
        """The portrait prompt of a resolved description: front-facing, neutral light, plain background."""
        pronoun = {"woman": "her", "man": "his"}.get(self.person, "their")
        who = (f"a {self.ethnicity} {self.person} in {pronoun} {self.age_band} with {self.skin_tone} skin and "
               f"{self.hair_colour} {self.hair_style} hair")
        extra = f", {self.text.strip()}" if self.text.strip() else ""
        # The framing first: CLIP (SDXL) reads only 77 tokens, and a portrait that is not front-facing on a plain
        # background is of no use as a face reference.
        return (f"{FRAMING}, {who}{extra}, neutral expression, natural skin texture, photorealistic, sharp focus")


@dataclass(frozen=True)
class CreatedFace:
    """One checked candidate: the picture and what made it."""

    image: np.ndarray  # uint8 (H, W, 3)
    description: Description  # resolved (no auto fields)
    prompt: str
    seed: int
    engine: str
    steps: int
    analyzer: str
    embedding: tuple[float, ...]

    def record(self, name: str) -> dict:
        return {"name": name, "description": asdict(self.description), "prompt": self.prompt, "seed": self.seed,
                "engine": self.engine, "steps": self.steps,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "analyzer": self.analyzer, "embedding": list(self.embedding),
                "size": [int(self.image.shape[1]), int(self.image.shape[0])],
                "pack_version": provenance.pack_version()}


@dataclass(frozen=True)
class SavedFace:
    name: str
    folder: Path
    image: np.ndarray  # uint8 (H, W, 3) RGB
    record: dict


# ------------------------------------------------------------------------------------------------ names

def check_name(name: object) -> str:
    """``name`` when it is a legal face name, else an error saying the rule. Never a path."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name or name != name.strip() \
            or name.split(".")[0].strip().lower() in RESERVED or name.endswith("."):
        raise InputValidationError(
            f"Face name {name!r} is not allowed: use 1-64 letters, digits, spaces, '_', '-' or '.', starting with a "
            "letter or digit, without '..', a trailing '.' or space, or a reserved device name (CON, NUL, COM1...).")
    return name


def list_faces(dirs: Sequence[Path]) -> list[str]:
    """The saved faces' names in every library folder, sorted, each once."""
    found = set()
    for folder in map(Path, dirs):
        if folder.is_dir():
            found.update(p.name for p in folder.iterdir() if _NAME.match(p.name) and _is_face(folder, p))
    return sorted(found, key=str.lower)


def _is_face(folder: Path, path: Path) -> bool:
    """A complete face folder directly inside ``folder`` (a link out of the library does not count)."""
    return (path / PICTURE).is_file() and (path / RECORD).is_file() and path.resolve().parent == folder.resolve()


def _missing(name: str, dirs: Sequence[Path]) -> InputValidationError:
    names = list_faces(dirs)
    where = ", ".join(str(d) for d in dirs) or "(no library folder)"
    have = f"saved faces: {', '.join(names)}" if names else "no face is saved yet (make one with Create Face + Save Face)"
    return InputValidationError(f"No saved face named {name!r} in {where}; {have}.")


def face_folder(dirs: Sequence[Path], name: str) -> Path:
    """The folder of saved face ``name`` (checked), else an error listing what exists."""
    check_name(name)
    for folder in map(Path, dirs):
        if _is_face(folder, folder / name):
            return folder / name
    raise _missing(name, dirs)


def read_record(folder: Path) -> dict:
    """A saved face's face.json."""
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"{folder / RECORD} is not readable JSON ({exc}): save the face again.") from None


def load_face(dirs: Sequence[Path], name: str) -> SavedFace:
    folder = face_folder(dirs, name)
    data = np.frombuffer((folder / PICTURE).read_bytes(), np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageLoadError(f"{folder / PICTURE} is not a readable PNG: save the face again.")
    return SavedFace(name, folder, np.ascontiguousarray(bgr[:, :, ::-1]), read_record(folder))


def picture_bytes(dirs: Sequence[Path], name: str) -> bytes:
    """The saved face's PNG file as it is (what the HTTP API and the runner hand on)."""
    return (face_folder(dirs, name) / PICTURE).read_bytes()


def save_face(dirs: Sequence[Path], name: str, face: CreatedFace, *, models: tuple = (), overwrite: bool = False,
              signing: provenance.Signing | None = None) -> Path:
    """Write ``face`` as ``<dirs[0]>/<name>/`` (picture with provenance, record); returns that folder.
    An existing face of that name is replaced only with ``overwrite``."""
    check_name(name)
    if not dirs:
        raise InputValidationError("No face library folder is configured: nowhere to save the face.")
    root = Path(dirs[0])
    target = root / name
    if target.exists() and not overwrite:
        raise InputValidationError(f"A face named {name!r} is already saved in {root}: choose another name, or "
                                   "turn overwrite on to replace it.")
    ok, png = cv2.imencode(".png", np.ascontiguousarray(face.image[:, :, ::-1]))
    if not ok:
        raise ImageLoadError("The face picture could not be encoded as PNG.")
    record = provenance.Record(source_type=provenance.TRAINED, engine=face.engine, models=tuple(models),
                               seed=face.seed, steps=face.steps, automatic_prompt=False)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=root))
    try:
        (staging / PICTURE).write_bytes(provenance.mark(png.tobytes(), "png", record, signing))
        (staging / RECORD).write_text(json.dumps(face.record(name), indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------- creation

def check_candidate(analyzer, image: np.ndarray, index: int, seed: int):
    """The one clear face of candidate ``index``, else an error naming it and what was wrong."""
    faces = list(analyzer.analyze(image))
    label = f"Candidate {index + 1} (seed {seed})"
    fix = "try another seed, or describe the person more plainly"
    if not faces:
        raise NoFaceError(f"{label}: the face analyser found no face: {fix}.")
    main = max(faces, key=lambda f: f.area)
    others = [f for f in faces if f is not main and f.area >= OTHER_FACE_SHARE * main.area]
    if others:
        raise NoFaceError(f"{label}: the face analyser found {1 + len(others)} faces, a face reference needs one: {fix}.")
    width = float(main.bbox[2] - main.bbox[0])
    if width < MIN_FACE_FRACTION * image.shape[1]:
        raise NoFaceError(f"{label}: the face is {width:.0f} px wide in a {image.shape[1]} px picture, under "
                          f"{MIN_FACE_FRACTION:.0%} of it, too small for a face reference: {fix}.")
    if main.embedding is None:
        raise NoFaceError(f"{label}: the face analyser gave no identity embedding (its recognition model is missing).")
    return main


def canvas_side(engine, size: int = 0) -> int:
    """The square side to draw at: ``size`` or the engine's work size, rounded down to its side multiple."""
    caps = engine.capabilities
    side = int(size or caps.work_size)
    return max(caps.side_multiple, side - side % caps.side_multiple)


def create_faces(engine, analyzer, description: Description, seed: int, count: int = 1, *, size: int = 0,
                 steps: int = 0, on_step=None) -> list[CreatedFace]:
    """``count`` new portraits (candidate i from seed + i), each checked by ``analyzer``."""
    from .engines.base import InpaintRequest

    caps = engine.capabilities
    if not getattr(caps, "text_to_image", False):
        raise InputValidationError(f"The loaded {caps.label} engine cannot draw a picture from a description "
                                   "(no text_to_image capability): load FLUX.2 klein or SDXL with the Engine Loader.")
    if analyzer is None:
        raise InputValidationError("Creating a face needs a face analyser to check each candidate: connect the "
                                   "OpenCV Face Loader (YuNet + SFace) or the InsightFace Loader.")
    c.check(COUNT, count)
    c.check(c.SEED, seed)
    description.check()
    seeds = tuple((seed + i) % (c.SEED_MAX + 1) for i in range(count))
    people = [description.resolved(s) for s in seeds]
    prompts = tuple(p.prompt() for p in people)
    side = canvas_side(engine, size)
    run_steps = caps.settings(steps=steps).steps
    canvas = np.full((side, side, 3), 200, np.uint8)  # plain light grey: all of it regenerated
    images = engine.inpaint(InpaintRequest(
        image=canvas, mask=np.ones((side, side), np.float32), prompts=prompts, seeds=seeds, steps=run_steps,
        strength=1.0, negative_prompt=NEGATIVE_PROMPT, guidance_scale=c.GUIDANCE.default), on_step)
    name = getattr(analyzer, "name", type(analyzer).__name__)
    out = []
    for i, (image, person, prompt, s) in enumerate(zip(images, people, prompts, seeds)):
        face = check_candidate(analyzer, image, i, s)
        out.append(CreatedFace(image=np.asarray(image, np.uint8), description=person, prompt=prompt, seed=s,
                               engine=caps.name, steps=run_steps, analyzer=str(name),
                               embedding=tuple(float(v) for v in np.asarray(face.embedding).reshape(-1))))
    return out

"""Consistency, measured: how close each output of a catalogue set is to the face it was made with.

After a run the runner loads the pack's comfy-free face analyser (OpenCV YuNet + SFace,
``pipeline.face_opencv``, on the CPU) from the models folders it already resolves, and for every
photo made with a face (a saved face's name or a ``face_reference`` picture) it writes, per output,
the cosine of the output's largest face's identity embedding to the face's embedding, or
:data:`NO_FACE` when the analyser finds no face in the output. A saved face's ``face.json`` keeps the
embedding its analyser gave; it is used when that analyser is this one (same name), else ``face.png``
is embedded. Each face's outputs are judged together (:func:`drifted`):

- below :data:`FLOOR` (SFace's published same-person threshold on the cosine, 0.363 in opencv_zoo)
  an output is another person whatever the rest of the set does;
- below ``median - 3 x 1.4826 x MAD`` of that face's outputs (at least :data:`MIN_SET` of them, MAD
  taken as at least :data:`MIN_MAD`) an output is far below the set's own level: the scaled MAD is a
  standard deviation that one or two drifted outputs cannot inflate, and 3 of them flag about 1 output
  in 700 of a well-behaved set, so a 300-photo set is not flooded with false alarms.

The drifted ones go to ``rerun.csv`` (their photo, face, a new seed) for a second pass. Without the
analyser's models the runner says once why consistency is not measured and the set is unaffected.
"""

from __future__ import annotations

import csv
import io
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .catalogue import Item, Record

NO_FACE = "no face"
FLOOR = 0.363  # SFace's cosine threshold for "same person" (opencv_zoo face_recognition_sface)
MIN_SET = 5  # fewer outputs of one face: only the floor applies (a median of 3 says little)
MIN_MAD = 0.01  # a set of near-identical outputs must not flag a 0.005 dip
MAD_SIGMAS = 3.0
RERUN_CSV = "rerun.csv"


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def threshold(values: list[float]) -> float:
    """The level below which an output of this face's set counts as drifted (see the module's rule)."""
    if len(values) < MIN_SET:
        return FLOOR
    median = statistics.median(values)
    mad = max(statistics.median(abs(v - median) for v in values), MIN_MAD)
    return max(FLOOR, median - MAD_SIGMAS * 1.4826 * mad)


def drifted(values: list[float]) -> list[bool]:
    level = threshold(values)
    return [v < level for v in values]


def load_analyser(folders):
    """(the OpenCV face analyser, None) from the first facedetection folder holding YuNet and SFace,
    or (None, why not)."""
    try:
        from ..pipeline import face_opencv, model_files
    except ImportError as exc:  # OpenCV missing where the runner runs
        return None, f"the face analyser cannot be imported ({exc})"
    specs = [model_files.MODELS[k] for k in (face_opencv.DETECTOR_KEY, face_opencv.RECOGNIZER_KEY)]
    for folder in folders.dirs(specs[0].folder):
        if all((folder / s.name).is_file() for s in specs):
            try:
                return face_opencv.OpenCVFaceAnalyzer.load(folder), None
            except Exception as exc:  # a broken file: say so, the set itself is fine
                return None, f"the face analyser in {folder} did not load ({exc})"
    return None, (f"the face analyser's models ({', '.join(s.name for s in specs)}) are not in a "
                  f"{specs[0].folder} folder of the models folders given")


def _read_rgb(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception:  # an unreadable output measures as no face
        return None


def embed(analyser, path: Path):
    """The identity embedding of the largest face in the picture at ``path``, or None."""
    image = _read_rgb(Path(path))
    try:
        faces = analyser.analyze(image) if image is not None else []
    except Exception:  # a picture the analyser refuses (e.g. under 16 px) measures as no face
        faces = []
    return None if not faces or faces[0].embedding is None else np.asarray(faces[0].embedding)


def face_embedding(analyser, picture: Path):
    """A face's embedding: a saved face's stored one when its analyser is this one, else its picture's."""
    from ..pipeline import face_library as fl

    picture = Path(picture)
    if picture.name == fl.PICTURE and (picture.parent / fl.RECORD).is_file():
        try:
            record = fl.read_record(picture.parent)
        except Exception:
            record = {}
        if record.get("analyzer") == analyser.name and record.get("embedding"):
            return np.asarray(record["embedding"], np.float32)
    return embed(analyser, picture)


@dataclass
class Report:
    """What :func:`measure` found: per face, its outputs' cosines and the drifted ones."""
    faces: dict = field(default_factory=dict)  # face label -> list of (record name, output, cosine | NO_FACE)
    drifted: list = field(default_factory=list)  # (record, output, cosine, threshold)
    unmeasured: list = field(default_factory=list)  # sentences: a face not measured, and why

    def lines(self) -> list[str]:
        out = []
        for label, rows in self.faces.items():
            values = [v for _, _, v in rows if v != NO_FACE]
            missing = len(rows) - len(values)
            if values:
                out.append(f"Identity to {label}: {len(values)} outputs, median {statistics.median(values):.3f}, "
                           f"min {min(values):.3f}, below {threshold(values):.3f} drifted"
                           + (f"; {missing} with no face" if missing else ""))
            else:
                out.append(f"Identity to {label}: no face found in its {len(rows)} outputs")
        out.extend(self.unmeasured)
        if self.drifted:
            out.append(f"{len(self.drifted)} drifted: " + ", ".join(
                f"{out_name} {value:.3f}" for _, out_name, value, _ in self.drifted))
        return out


def _label(record: Record) -> str | None:
    if record.face:
        return f"face {record.face!r}"
    return f"face reference {Path(record.face_reference).name}" if record.face_reference else None


def measure(analyser, out_dir: Path, records: list[Record], pictures: dict | None = None) -> Report:
    """Fill ``identity`` (one cosine or NO_FACE per output) and ``drifted`` of every made record that has a
    face; records without a face, or whose face's picture holds none, get neither. ``pictures``: saved
    faces' names -> their face.png, for records that name a face but hold no picture path (the API mode)."""
    pictures = pictures or {}
    report, groups, references = Report(), {}, {}
    for r in records:
        r.identity, r.drifted = [], []
        label = _label(r)
        if r.status not in ("ok", "note") or not r.outputs or label is None:
            continue
        key = r.face_reference or pictures.get(r.face)
        if key is None:
            why = f"Identity to {label}: not measured, its picture is not in the models folders given (--models-dir)"
            report.unmeasured += [] if why in report.unmeasured else [why]
            continue
        if key not in references:
            references[key] = face_embedding(analyser, Path(key))
            if references[key] is None:
                report.unmeasured.append(f"Identity to {label}: not measured, the face analyser finds no face "
                                         "in its picture")
        if references[key] is None:
            continue
        for name in r.outputs:
            found = embed(analyser, Path(out_dir) / name)
            r.identity.append(NO_FACE if found is None else round(cosine(found, references[key]), 4))
        groups.setdefault(label, []).append(r)
    for label, rs in groups.items():
        rows = [(r, name, v) for r in rs for name, v in zip(r.outputs, r.identity)]
        report.faces[label] = [(r.name, name, v) for r, name, v in rows]
        values = [v for _, _, v in rows if v != NO_FACE]
        level = threshold(values) if values else FLOOR
        for r, name, v in rows:
            if v != NO_FACE and v < level:
                r.drifted.append(name)
                report.drifted.append((r, name, v, level))
    return report


def rerun_rows(report: Report, items: list[Item]) -> str:
    """A catalogue CSV for the drifted photos: same photo and face, the next seed, a new output name."""
    by_name = {item.name: item for item in items}
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["image", "face", "face_reference", "seed", "output"])
    seen = set()
    for r, _, _, _ in report.drifted:
        if r.name in seen:
            continue
        seen.add(r.name)
        item = by_name.get(r.name)
        seed = "" if r.seed is None else r.seed + 1
        writer.writerow([str(Path(item.image).resolve()) if item else r.input, r.face,
                         "" if r.face else str(Path(r.face_reference).resolve()), seed, f"{r.name}_seed{seed or 'new'}"])
    return text.getvalue()


def measure_set(out_dir: Path, items: list[Item], folders, pictures: dict | None = None,
                rerun_hint: str = "") -> list[str]:
    """The runner's step after a set: measure every made photo that has a face, rewrite the manifest with
    the figures, write (or remove) ``rerun.csv``; returns the summary's lines. ``folders``: the
    :class:`ModelFolders` the runner resolved, or None (then consistency is not measured, said once)."""
    from .catalogue import Manifest

    out_dir = Path(out_dir)
    manifest = Manifest(out_dir)
    order = [item.name for item in items]
    records = [manifest.records[n] for n in order if n in manifest.records]
    if not any(_label(r) for r in records):
        return []
    analyser, why = load_analyser(folders) if folders is not None else (
        None, "the runner has no models folder (give --models-dir with the face analyser's models, "
              "e.g. the ComfyUI's models folder)")
    if analyser is None:
        return [f"Consistency not measured: {why}."]
    report = measure(analyser, out_dir, records, pictures)
    manifest.save(order)
    lines = report.lines()
    rerun = out_dir / RERUN_CSV
    if report.drifted:
        rerun.write_text(rerun_rows(report, items), encoding="utf-8")
        lines.append(f"Re-run the drifted photos with another seed: {rerun} lists them"
                     + (f"; run them: {rerun_hint.replace('{csv}', shlex.quote(str(rerun))).replace('{out}', shlex.quote(str(out_dir / 'rerun')))}"
                        if rerun_hint else ""))
    else:
        rerun.unlink(missing_ok=True)
    return lines

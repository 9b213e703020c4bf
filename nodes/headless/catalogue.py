"""A catalogue run as data: which photos (a folder, a glob or a CSV manifest), what each one's record
says (outputs, seed, status, error, seconds), and the results manifest written after every photo
(``manifest.json`` and ``manifest.csv``, each replaced atomically) that a rerun resumes from.
Standard library only; ``catalogue_run`` drives ComfyUI, ``contact_sheet`` writes the review page.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..model_folders import WorkflowError

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
CSV_COLUMNS = ("image", "face", "face_reference", "seed", "prompt", "aspect_ratio", "output")  # what a CSV manifest may have
STATUSES = ("ok", "note", "error")  # note: an output was made and ComfyUI said something about it
DONE = ("ok", "note")  # a rerun skips these when their outputs are still there
MANIFEST_JSON, MANIFEST_CSV = "manifest.json", "manifest.csv"
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Item:
    """One photo of the set and what to do with it (None: the command's own value)."""
    image: Path
    name: str  # the outputs' file stem, unique in the set
    face_reference: Path | None = None
    face: str | None = None  # a saved face's name (the face library); the runner finds its picture
    seed: int | None = None
    prompt: str | None = None
    aspect_ratio: str | None = None  # a marketplace format (GarmentMask's / the API's aspect_ratio)


@dataclass
class Record:
    """What became of one photo: a row of the results manifest."""
    input: str
    name: str
    status: str = ""
    outputs: list[str] = field(default_factory=list)  # file names inside the output folder
    seed: int | None = None
    face_reference: str = ""
    face: str = ""
    error: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    prompt_id: str = ""
    finished_at: str = ""
    identity: list = field(default_factory=list)  # per output: cosine to the set's face, or "no face" (consistency)
    drifted: list = field(default_factory=list)  # the outputs flagged as drifted from that face


def safe_name(text: str) -> str:
    """A file stem from any text: letters, digits, '.', '_' and '-' only."""
    name = _NAME.sub("_", text).strip("._")
    return name or "photo"


def _unique(items: list[Item]) -> list[Item]:
    seen: dict[str, int] = {}
    for item in items:
        base = item.name
        if base in seen:
            seen[base] += 1
            item.name = f"{base}_{seen[base]}"
        else:
            seen[base] = 1
    return items


def read_source(source: str) -> list[Item]:
    """The photos a catalogue run takes: a folder (its photo files, sorted), a CSV manifest
    (columns in :data:`CSV_COLUMNS`; paths relative to the CSV's folder), or a glob pattern."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        if not files:
            raise WorkflowError(f"The folder {source} has no photos ({', '.join(PHOTO_SUFFIXES)}).")
        return _unique([Item(image=p, name=safe_name(p.stem)) for p in files])
    if path.suffix.lower() == ".csv" and path.is_file():
        return read_csv(path)
    files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    if not files:
        raise WorkflowError(f"{source} is not a folder, a .csv manifest or a glob that matches any file.")
    return _unique([Item(image=p, name=safe_name(p.stem)) for p in files])


def read_csv(path: Path) -> list[Item]:
    """A CSV manifest: one photo a row; ``image`` is required, the other columns optional."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        unknown = [c for c in columns if c not in CSV_COLUMNS]
        if unknown or "image" not in columns:
            problem = f"unknown column(s) {', '.join(unknown)}" if unknown else "no 'image' column"
            raise WorkflowError(f"{path}: {problem}. The columns a catalogue CSV takes: {', '.join(CSV_COLUMNS)} "
                                "(image is required).")
        items = []
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            if not row.get("image"):
                raise WorkflowError(f"{path}, line {line}: the image column is empty.")
            seed = row.get("seed") or None
            if seed is not None and not re.fullmatch(r"\d+", seed):
                raise WorkflowError(f"{path}, line {line}: seed {seed!r} is not a whole number >= 0.")
            ratio = row.get("aspect_ratio") or None
            if ratio is not None:
                from ..pipeline.contract import aspect_ratio_problem

                problem = aspect_ratio_problem(ratio)
                if problem:
                    raise WorkflowError(f"{path}, line {line}: {problem}")
            image = path.parent / row["image"]
            face = path.parent / row["face_reference"] if row.get("face_reference") else None
            if face is not None and row.get("face"):
                raise WorkflowError(f"{path}, line {line}: give face (a saved face's name) or face_reference (a "
                                    "picture), not both.")
            if face is not None and not face.is_file():
                raise WorkflowError(f"{path}, line {line}: face_reference {face} does not exist.")
            items.append(Item(image=image, name=safe_name(row.get("output") or image.stem), face_reference=face,
                              face=row.get("face") or None,
                              seed=int(seed) if seed is not None else None, prompt=row.get("prompt") or None,
                              aspect_ratio=ratio))
    if not items:
        raise WorkflowError(f"{path} lists no photos.")
    return _unique(items)


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a photo ComfyUI can load, or None. Pillow checks it where it is importable
    (it is wherever ComfyUI runs); without it, the file's first bytes must be a known image format."""
    if not path.is_file():
        return f"{path} does not exist"
    try:
        from PIL import Image
    except ImportError:
        head = path.read_bytes()[:12]
        known = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
        if not (head.startswith(known) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
            return f"{path.name} is not an image file (PNG, JPEG, WebP, BMP, TIFF, GIF)"
        return None
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
    except Exception as exc:  # Pillow raises many kinds for a broken file
        return f"{path.name} is not a readable image ({type(exc).__name__}: {exc})"
    return None


class Manifest:
    """The results of a run in ``<out>/manifest.json`` and ``manifest.csv``, by photo name."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.records: dict[str, Record] = {}
        path = self.out_dir / MANIFEST_JSON
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.records = {r["name"]: Record(**r) for r in data.get("photos", [])}
            except (ValueError, TypeError, KeyError) as exc:
                raise WorkflowError(f"{path} is not a catalogue manifest ({exc}): move it away or choose "
                                    "another --out.") from exc

    def finished(self, item: Item) -> Record | None:
        """The record of ``item`` when a rerun can skip it: done, from the same input, outputs present."""
        record = self.records.get(item.name)
        if record is None or record.status not in DONE or not record.outputs or \
                Path(record.input).resolve() != Path(item.image).resolve():
            return None
        return record if all((self.out_dir / f).is_file() for f in record.outputs) else None

    def put(self, record: Record, order: list[str]) -> None:
        """Record one photo and rewrite both files (atomically), rows in the set's ``order``."""
        self.records[record.name] = record
        self.save(order)

    def save(self, order: list[str]) -> None:
        """Rewrite both files (atomically) from the records, rows in the set's ``order``."""
        rows = [self.records[n] for n in order if n in self.records]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _replace(self.out_dir / MANIFEST_JSON, json.dumps({"photos": [asdict(r) for r in rows]}, indent=1))
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["input", "name", "status", "outputs", "seed", "face", "face_reference", "error", "notes",
                         "seconds", "prompt_id", "finished_at", "identity", "drifted"])
        for r in rows:
            writer.writerow([r.input, r.name, r.status, " ".join(r.outputs), "" if r.seed is None else r.seed,
                             r.face, r.face_reference, r.error, " ".join(r.notes), f"{r.seconds:.2f}", r.prompt_id,
                             r.finished_at, "; ".join(str(v) for v in r.identity), " ".join(r.drifted)])
        _replace(self.out_dir / MANIFEST_CSV, text.getvalue())


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader (or a crash) sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

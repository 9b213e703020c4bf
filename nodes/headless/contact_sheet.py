"""The contact sheet of a catalogue run: one self-contained HTML page, a row per photo with the input
beside its outputs, its status, seed, seconds and any error or note. Links are relative (the page
opens from the output folder, moved with it, or served); no script, font or file from elsewhere.
Standard library only.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from .catalogue import Item, Manifest, image_problem

CONTACT_SHEET = "contact_sheet.html"

_STYLE = """
body{font:14px system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:18px;margin:0 0 4px}p.sum{margin:0 0 12px;color:#555}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:6px;vertical-align:top;text-align:left}
th{background:#eee}img{height:120px;width:auto;display:block;background:#ccc}
tr.error td{background:#fde8e8}tr.note td{background:#fff6d8}tr.missing td{background:#f0f0f0}
.outs{display:flex;gap:6px}figure{margin:0}figcaption{font-size:12px;color:#555}
figure.drifted img{outline:3px solid #c00}figure.drifted figcaption{color:#a00;font-weight:bold}.st{font-weight:bold}.err{color:#a00;max-width:360px}.note{color:#7a5a00;max-width:360px}
"""


def write(out_dir: Path, items: list[Item], title: str = "Catalogue run") -> Path:
    """Write ``<out_dir>/contact_sheet.html`` from the manifest there, rows in the set's order."""
    out_dir = Path(out_dir)
    records = Manifest(out_dir).records
    counts: dict[str, int] = {}
    rows = []
    for item in items:
        r = records.get(item.name)
        status = r.status if r else "missing"
        counts[status] = counts.get(status, 0) + 1
        rows.append(_row(out_dir, item, r, status))
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>"
            f"<p class='sum'>{len(items)} photos: {html.escape(summary)}</p>\n<table>\n"
            "<tr><th>#</th><th>input</th><th>outputs</th><th>status</th></tr>\n"
            + "\n".join(f"<tr class='photo {cls}'><td>{i}</td>{cells}</tr>"
                        for i, (cls, cells) in enumerate(rows, start=1))
            + "\n</table></body></html>\n")
    path = out_dir / CONTACT_SHEET
    path.write_text(page, encoding="utf-8")
    return path


def _link(out_dir: Path, target: Path) -> str:
    rel = os.path.relpath(Path(target).resolve(), Path(out_dir).resolve())
    return html.escape(Path(rel).as_posix(), quote=True)


def _row(out_dir: Path, item: Item, r, status: str) -> tuple[str, str]:
    name = html.escape(item.name)
    problem = image_problem(Path(item.image))
    src = f"<img src='{_link(out_dir, item.image)}' alt='input {name}'>" if problem is None else \
        f"<div class='err'>({html.escape(problem)})</div>"
    inp = f"<td>{src}<div>{html.escape(Path(item.image).name)}</div></td>"
    outs = "".join(f"<figure class='out{' drifted' if r and f in r.drifted else ''}'><a href='{html.escape(f, quote=True)}'>"
                   f"<img src='{html.escape(f, quote=True)}' alt='output {html.escape(f)}'></a>{_identity(r, k)}</figure>"
                   for k, f in enumerate(r.outputs if r else []))
    details = [f"<div class='st'>{html.escape(status)}</div>"]
    if r is not None:
        details.append(f"<div>seed {r.seed if r.seed is not None else '-'}, {r.seconds:.1f} s</div>")
        if r.face or r.face_reference:
            details.append(f"<div>face: {html.escape(r.face or Path(r.face_reference).name)}</div>")
        if r.error:
            details.append(f"<div class='err'>{html.escape(r.error)}</div>")
        details.extend(f"<div class='note'>{html.escape(n)}</div>" for n in r.notes)
    else:
        details.append("<div>not made yet: run the command again</div>")
    return status, f"{inp}<td><div class='outs'>{outs}</div></td><td>{''.join(details)}</td>"


def _identity(r, k: int) -> str:
    """The output's identity figure (consistency): cosine to the set's face, "no face", drifted marked."""
    if r is None or k >= len(r.identity):
        return ""
    value = r.identity[k]
    text = f"identity {value:.3f}" if isinstance(value, (int, float)) else f"identity: {value}"
    return f"<figcaption>{html.escape(text)}{' drifted' if r.outputs[k] in r.drifted else ''}</figcaption>"

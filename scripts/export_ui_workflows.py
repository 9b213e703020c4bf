"""Write the editor (UI-format) twins of the shipped API-format workflows.

    python scripts/export_ui_workflows.py             # (re)write workflows/<name>.json
    python scripts/export_ui_workflows.py --pictures  # and workflows/<name>.png (for README)
    python scripts/export_ui_workflows.py --check     # write nothing; exit 1 if a file is out of date
    python scripts/export_ui_workflows.py --examples  # no browser: properties.models and the thumbnails

For every ``workflows/api/<name>_api.json`` this starts a real ComfyUI with this pack (its models
folder filled with the tiny test models, so every dropdown value exists), opens the graph
editor in headless Chromium, loads the API graph with the frontend's own ``app.loadApiJson``
(node ids and ``_meta`` titles carry over), lays the nodes out left to right (images and
loaders on the left, then GarmentMask, IdentityEncode, ModelSwapSampler, FaceRefine and Save
Image), sets the sampler's "control after generate" to ``fixed`` (the twin then queues the
API file's seed whatever the user's widget-control setting), and saves ``app.graph.serialize()``
as ``workflows/<name>.json``: the file a user drags into ComfyUI. Link ids are renumbered from
1, the view (``extra.ds``) fits the graph into a 1920x1080 window, and the written file is
loaded back into the editor and must serialise to itself, so reruns are byte-identical.

``workflows/<name>.png`` (written with ``--pictures``, kept in step with the JSON afterwards) is
the graph as the editor shows it, cropped to the nodes, with the UI workflow in the PNG's
``workflow`` text chunk like ComfyUI's own images: dropping the picture onto ComfyUI opens it.

Every loader node gets ``properties.models``: ``{name, url, directory}`` of each single
``.safetensors``/``.sft`` file it names that the model registry publishes on the hub (the
installer's function ``required_models`` says which), so ComfyUI's missing-models dialog offers
the download. ``workflows/<name>.json`` with ``workflows/<name>.jpg`` (a thumbnail of the picture) are
what ComfyUI's Templates browser lists (the API twins sit in ``workflows/api/``, out of its sight);
``--examples`` rewrites the thumbnails and the models property from the committed files alone.

Nothing here talks to anything but 127.0.0.1 (tests/comfy_harness.py blocks the browser's
other requests).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from _workflow_examples import (API_DIR, _import_pack, embedded_workflow, models_property,  # noqa: E402,F401
                                repicture, sync_examples, thumbnail_bytes, ui_name, with_models, workflow_text)
from _workflow_layout import VIEW, columns, fit_view, layout  # noqa: E402,F401

SEED_CONTROL = "fixed"


# --------------------------------------------------------------------- the editor
_NODES_JS = """() => window.app.graph._nodes.map(n => ({
    id: String(n.id), type: n.type, title: n.title, size: [n.size[0], n.size[1]]}))"""

_APPLY_JS = """([placed, seedControl]) => {
    const graph = window.app.graph;
    for (const [id, box] of Object.entries(placed)) {
        const node = graph.getNodeById(isNaN(+id) ? id : +id);
        node.pos = box.pos;
        node.size = box.size;
        for (const w of node.widgets || []) {
            if (w.name === 'control_after_generate') w.value = seedControl;
        }
    }
    graph.setDirtyCanvas(true, true);
}"""

# JSON.stringify, as the editor's Save does: drops undefined fields
_SERIALIZE_JS = "() => JSON.stringify(window.app.graph.serialize())"


def renumber_links(workflow: dict) -> dict:
    """Link ids 1, 2, ... in ``links`` order (``loadApiJson`` connects every input twice, so its
    ids start past the link count); node inputs/outputs follow."""
    new_id = {link[0]: i for i, link in enumerate(workflow["links"], start=1)}
    for link in workflow["links"]:
        link[0] = new_id[link[0]]
    for node in workflow["nodes"]:
        for slot in node.get("inputs") or []:
            if slot.get("link") is not None:
                slot["link"] = new_id[slot["link"]]
        for slot in node.get("outputs") or []:
            if slot.get("links"):
                slot["links"] = [new_id[i] for i in slot["links"]]
    workflow["last_link_id"] = len(new_id)
    return workflow


def node_boxes(workflow: Mapping[str, Any], title_height: float = 30) -> dict[str, tuple[float, float, float, float]]:
    """``{node id: (x0, y0, x1, y1)}`` of every node in a UI workflow, title bar included."""
    return {
        str(n["id"]): (n["pos"][0], n["pos"][1] - title_height, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        for n in workflow["nodes"]
    }


def overlapping(workflow: Mapping[str, Any], title_height: float = 30) -> list[tuple[str, str]]:
    """Pairs of node ids whose boxes (title bars included) overlap."""
    boxes = sorted(node_boxes(workflow, title_height).items())
    pairs = []
    for i, (a, (ax0, ay0, ax1, ay1)) in enumerate(boxes):
        for b, (bx0, by0, bx1, by1) in boxes[i + 1:]:
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                pairs.append((a, b))
    return pairs


def _expected_nodes(workflow: Mapping[str, Any]) -> list[str]:
    if "nodes" in workflow:
        return sorted(f"{n['id']}:{n['type']}" for n in workflow["nodes"])
    return sorted(f"{k}:{v['class_type']}" for k, v in workflow.items())  # API format


def drop_file(page, content: bytes, file_name: str, mime: str, workflow: Mapping[str, Any],
              timeout: float = 60.0) -> None:
    """Drop a file onto the editor the way a user's drag and drop does: a ``drop`` event carrying
    a ``File`` (the frontend's document drop handler then calls ``app.handleFile``). Waits until
    the graph holds ``workflow``'s nodes (by id and type)."""
    page.evaluate(
        """([data, name, mime]) => {
            window.app.graph.clear();  // so the wait below sees the dropped graph, not this one
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: mime}));
            document.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [base64.b64encode(content).decode(), file_name, mime],
    )
    page.wait_for_function(
        """(expected) => {
            const have = window.app.graph._nodes.map(n => `${n.id}:${n.type}`).sort();
            return JSON.stringify(have) === JSON.stringify(expected);
        }""",
        arg=_expected_nodes(workflow),
        timeout=timeout * 1000,
    )
    page.wait_for_timeout(300)  # the draws and dialogs that loading schedules


def drop_workflow(page, workflow: Mapping[str, Any] | str, file_name: str, timeout: float = 60.0) -> None:
    """Drop a workflow (dict or JSON text) onto the editor as the file ``file_name``."""
    text = workflow if isinstance(workflow, str) else json.dumps(workflow)
    drop_file(page, text.encode(), file_name, "application/json", json.loads(text), timeout)


def save_picture(page, workflow: Mapping[str, Any], target: Path, title_height: float = 30) -> Path:
    """A PNG of the graph as the editor shows it at the workflow's saved view, cropped to the
    nodes, with the workflow in its ``workflow`` text chunk: dropping the picture onto ComfyUI
    opens the workflow."""
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    boxes = list(node_boxes(workflow, title_height).values())
    ds = workflow["extra"]["ds"]
    scale, (ox, oy) = ds["scale"], ds["offset"]
    badge, pad = 24, 16  # the node-source badges sit above the title bars
    x0 = (min(b[0] for b in boxes) + ox) * scale - pad
    y0 = (min(b[1] for b in boxes) - badge + oy) * scale - pad
    x1 = (max(b[2] for b in boxes) + ox) * scale + pad
    y1 = (max(b[3] for b in boxes) + oy) * scale + pad
    clip = {"x": max(0, x0), "y": max(0, y0), "width": min(VIEW[0], x1) - max(0, x0),
            "height": min(VIEW[1], y1) - max(0, y0)}
    page.wait_for_timeout(1000)  # LoadImage previews
    image = Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")
    info = PngInfo()
    info.add_text("workflow", json.dumps(workflow, separators=(",", ":")))
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, pnginfo=info, optimize=True)
    return target


def build_ui_workflow(page, api: Mapping[str, Any], name: str) -> dict:
    """Load an API graph into the editor, lay it out, return the UI-format workflow."""
    import comfy_harness as ch

    ch.close_dialogs(page)
    page.evaluate("async ([api, name]) => { await window.app.loadApiJson(api, name); }", [dict(api), name])
    page.wait_for_function(f"() => window.app.graph._nodes.length === {len(api)}")
    nodes = {n["id"]: n for n in page.evaluate(_NODES_JS)}
    missing = set(map(str, api)) - set(nodes)
    if missing:
        raise RuntimeError(f"{name}: the editor did not create nodes {sorted(missing)} (missing node types?)")
    title_height = page.evaluate("() => window.LiteGraph.NODE_TITLE_HEIGHT")
    placed = layout(api, {k: tuple(v["size"]) for k, v in nodes.items()}, title_height)
    page.evaluate(_APPLY_JS, [placed, SEED_CONTROL])
    workflow = renumber_links(json.loads(page.evaluate(_SERIALIZE_JS)))
    workflow.setdefault("extra", {})["ds"] = fit_view(list(node_boxes(workflow, title_height).values()))
    workflow = with_models(workflow, api)
    if overlapping(workflow, title_height):
        raise RuntimeError(f"{name}: overlapping nodes {overlapping(workflow, title_height)}")
    # What a user's editor makes of the file (it adds fields such as extra.workflowRendererVersion)
    # is what gets written; loading that back must give it again, so reruns are byte-identical.
    drop_workflow(page, workflow, f"{name}.json")
    loaded = json.loads(page.evaluate(_SERIALIZE_JS))
    drop_workflow(page, loaded, f"{name}.json")
    again = json.loads(page.evaluate(_SERIALIZE_JS))
    if again != loaded:
        raise RuntimeError(f"{name}: the workflow does not round-trip through the editor: "
                           f"{differences(loaded, again)[:20]}")
    return loaded


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two JSON values differ (for error messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                found.append(f"{path}/{key}: {a.get(key, '<absent>')!r} != {b.get(key, '<absent>')!r}")
            else:
                found += differences(a[key], b[key], f"{path}/{key}")
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}/{i}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a twin (or an existing picture) is out of date")
    parser.add_argument("--pictures", action="store_true",
                        help="(re)write workflows/<name>.png: the graph, with the workflow embedded")
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="also save <DIR>/<name>.png of the window")
    parser.add_argument("--examples", action="store_true",
                        help="no browser: only properties.models and the thumbnails from the committed files")
    args = parser.parse_args(argv)
    if args.examples:
        stale = sync_examples(check=args.check)
        for path in stale:
            print(f"{path.relative_to(ROOT)}: {'OUT OF DATE' if args.check else 'written'}")
        return 1 if stale and args.check else 0

    _import_pack()
    import comfy_harness as ch
    import numpy as np
    import tiny_models
    from PIL import Image

    api_files = sorted(API_DIR.glob("*_api.json"))
    if not api_files:
        print(f"no *_api.json in {WORKFLOWS}", file=sys.stderr)
        return 1
    started = time.monotonic()
    stale = []
    with tempfile.TemporaryDirectory(prefix="export-ui-workflows-") as tmp:
        tmp = Path(tmp)
        tiny_models.build_all(tmp / "models")
        # no minimap over the bottom-right corner of the pictures
        with ch.ComfyServer(tmp / "comfy", models_dir=tmp / "models",
                            settings={"Comfy.Minimap.Visible": False}) as server:
            if server.import_failed():
                raise SystemExit(f"the pack failed to import:\n{server.log_tail()}")
            # pictures under the workflows' default file names, so LoadImage shows a preview
            Image.fromarray(tiny_models.fashion_photo(256)).save(tmp / "model.png")
            Image.fromarray(np.ascontiguousarray(tiny_models.astronaut(256))).save(tmp / "face_reference.png")
            for picture in ("model.png", "face_reference.png"):
                server.upload_image(tmp / picture)
            with ch.browser_page(server, viewport=VIEW) as page:
                for api_path in api_files:
                    name = ui_name(api_path)
                    target = WORKFLOWS / f"{name}.json"
                    png = WORKFLOWS / f"{name}.png"
                    api = json.loads(api_path.read_text())
                    workflow = build_ui_workflow(page, api, name)
                    text = workflow_text(workflow)
                    if args.screenshots:
                        page.wait_for_timeout(1000)  # image previews
                        print(f"screenshot {ch.screenshot(page, args.screenshots / f'{name}.png')}")
                    current = target.read_text() if target.is_file() else None
                    if current == text:
                        print(f"{target.relative_to(ROOT)}: up to date ({len(api)} nodes)")
                    elif args.check:
                        stale.append(target)
                        print(f"{target.relative_to(ROOT)}: OUT OF DATE")
                    else:
                        target.write_text(text)
                        print(f"wrote {target.relative_to(ROOT)} ({len(api)} nodes, from {api_path.name})")
                    picture_stale = png.is_file() and embedded_workflow(png) != workflow
                    if args.check and picture_stale:
                        stale.append(png)
                        print(f"{png.relative_to(ROOT)}: OUT OF DATE")
                    elif not args.check and (args.pictures or picture_stale):
                        save_picture(page, workflow, png)
                        print(f"wrote {png.relative_to(ROOT)} ({png.stat().st_size // 1024} KiB)")
                log = ch.page_log(page)
                if log.page_errors or log.blocked_requests:
                    raise SystemExit(f"the editor reported page errors {log.page_errors} "
                                     f"or non-loopback requests {log.blocked_requests}")
    examples = sync_examples(check=args.check)
    for path in examples:
        print(f"{path.relative_to(ROOT)}: {'OUT OF DATE' if args.check else 'written'}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 1 if stale or (args.check and examples) else 0


if __name__ == "__main__":
    sys.exit(main())

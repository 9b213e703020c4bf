"""Write the editor (UI-format) twins of the shipped API-format workflows.

    python scripts/export_ui_workflows.py             # (re)write workflows/<name>.json
    python scripts/export_ui_workflows.py --pictures  # and workflows/<name>.png (for README)
    python scripts/export_ui_workflows.py --check     # write nothing; exit 1 if a file is out of date
    python scripts/export_ui_workflows.py --examples  # no browser: properties.models and example_workflows/

For every ``workflows/<name>_api.json`` this starts a real ComfyUI with this pack (its models
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
the download. ``example_workflows/<name>.json`` (identical to ``workflows/<name>.json``) and
``example_workflows/<name>.jpg`` (a thumbnail of the picture) are what ComfyUI's Templates browser
lists; ``--examples`` rewrites them and the models property from the committed files alone.

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
EXAMPLES = ROOT / "example_workflows"
THUMBNAIL = (512, 512)  # at most, aspect kept
FRONTEND_SUFFIXES = (".safetensors", ".sft")  # what ComfyUI's missing-models dialog downloads
sys.path.insert(0, str(ROOT / "tests"))

# The window the saved view (extra.ds) is fitted to, and the editor's viewport here.
VIEW = (1920, 1080)
VIEW_MARGIN = 40
TOP_BAR = 90  # the frontend's tab bar and workflow breadcrumb overlay the top of the canvas
LEFT_BAR = 80  # and its side bar the left
MAX_SCALE = 1.0
COLUMN_GAP = 60
ROW_GAP = 50  # between one node's body and the next node's title bar
LOADERS_DROP = 70  # the loader column starts lower: the image links above it stay in sight
# Sizes [w, h] for nodes that show pictures or long text; others get their computed size,
# widened to the column.
SIZES = {
    "LoadImage": (300, 330),
    "SaveImage": (340, 400),
    "ModelSwap_Sampler": (400, 420),
}
MIN_WIDTH = 300
SEED_CONTROL = "fixed"


def _import_pack() -> None:
    """tests/tiny_models.py imports the pack as ``comfyui_model_swap`` (its folder name varies)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import _pack

    _pack.import_pack()


def models_property(api_node: Mapping[str, Any]) -> list[dict]:
    """``properties.models`` of one node: the published single files it names, for the frontend."""
    from comfyui_model_swap.nodes import workflow_runner as wr

    entries = []
    for key, name in wr.required_models({"1": dict(api_node)}):
        spec = wr.model_files.MODELS[key]
        url = spec.download_url
        if name == spec.name and not spec.is_folder and name.endswith(FRONTEND_SUFFIXES) \
                and url.startswith("https://huggingface.co/"):
            entries.append({"name": name, "url": url, "directory": spec.folder})
    return entries


def with_models(workflow: dict, api: Mapping[str, Any]) -> dict:
    """``workflow`` with ``properties.models`` set on every node that names published files
    (and removed from the others)."""
    for node in workflow["nodes"]:
        entries = models_property(api[str(node["id"])]) if str(node["id"]) in api else []
        properties = node.setdefault("properties", {})
        if entries:
            properties["models"] = entries
        else:
            properties.pop("models", None)
    return workflow


def thumbnail_bytes(png: Path) -> bytes:
    """A JPEG thumbnail of a workflow picture (the Templates browser shows ``<name>.jpg``)."""
    import io

    from PIL import Image

    with Image.open(png) as image:
        image = image.convert("RGB")
        image.thumbnail(THUMBNAIL, Image.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


def repicture(png: Path, workflow: Mapping[str, Any]) -> None:
    """Put ``workflow`` into an existing picture's ``workflow`` text chunk (pixels unchanged)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(png) as image:
        pixels = image.convert("RGB")
    info = PngInfo()
    info.add_text("workflow", json.dumps(workflow, separators=(",", ":")))
    pixels.save(png, pnginfo=info, optimize=True)


def sync_examples(check: bool = False) -> list[Path]:
    """Bring ``properties.models`` of ``workflows/<name>.json`` (and its picture) and
    ``example_workflows/`` in step with the API files; returns the files out of step
    (with ``check``, written otherwise)."""
    _import_pack()
    stale = []
    wanted: dict[Path, bytes] = {}
    for api_path in sorted(WORKFLOWS.glob("*_api.json")):
        name = ui_name(api_path)
        ui_path, png = WORKFLOWS / f"{name}.json", WORKFLOWS / f"{name}.png"
        if not ui_path.is_file():
            continue
        current = ui_path.read_text()
        workflow = with_models(json.loads(current), json.loads(api_path.read_text()))
        text = workflow_text(workflow)
        if text != current:
            stale.append(ui_path)
            if not check:
                ui_path.write_text(text)
        if png.is_file() and embedded_workflow(png) != workflow:
            stale.append(png)
            if not check:
                repicture(png, workflow)
        wanted[EXAMPLES / f"{name}.json"] = text.encode()
        if png.is_file():
            wanted[EXAMPLES / f"{name}.jpg"] = thumbnail_bytes(png)
    present = set(EXAMPLES.glob("*")) if EXAMPLES.is_dir() else set()
    for path in sorted(present - set(wanted)):
        stale.append(path)
        if not check:
            path.unlink()
    for path, content in wanted.items():
        if not path.is_file() or path.read_bytes() != content:
            stale.append(path)
            if not check:
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(content)
    return stale


def ui_name(api_path: Path) -> str:
    """``model_swap_api.json`` -> ``model_swap``."""
    stem = api_path.stem
    return stem[: -len("_api")] if stem.endswith("_api") else stem


# --------------------------------------------------------------------- layout
def _links(api: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """``(source id, target id, target input index)`` of every link, inputs in file order."""
    found = []
    for target, node in api.items():
        for index, value in enumerate(node.get("inputs", {}).values()):
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in api:
                found.append((str(value[0]), str(target), index))
    return found


def columns(api: Mapping[str, Any]) -> dict[str, int]:
    """Column of every node: LoadImage sources 0, other sources (loaders) 1, every other node
    one right of its furthest-right source (so the chain flows left to right)."""
    links = _links(api)
    sources = {str(n): {s for s, t, _ in links if t == str(n)} for n in api}
    col: dict[str, int] = {}

    def place(node_id: str) -> int:
        if node_id not in col:
            if not sources[node_id]:
                col[node_id] = 0 if api[node_id]["class_type"] == "LoadImage" else 1
            else:
                col[node_id] = max(max(place(s) for s in sources[node_id]) + 1, 2)
        return col[node_id]

    for node_id in api:
        place(str(node_id))
    return col


def layout(api: Mapping[str, Any], sizes: Mapping[str, tuple[float, float]], title_height: float) -> dict[str, dict]:
    """``{node id: {"pos": [x, y], "size": [w, h]}}``: one column per :func:`columns` value,
    nodes stacked top to bottom in a column with no overlaps (title bars included).

    ``sizes`` are the nodes' current sizes in the editor. Inside a column, nodes are ordered by
    where their consumers are (column, then input slot), ties by API id, so a loader sits
    level with the first node it feeds.
    """
    col = columns(api)
    links = _links(api)
    size = {}
    for node_id, node in api.items():
        w, h = sizes[node_id]
        fixed = SIZES.get(node["class_type"])
        size[node_id] = [float(fixed[0]), float(max(fixed[1], h))] if fixed else [float(max(w, MIN_WIDTH)), float(h)]
    # one width per column: tidy edges, and long titles never hang over the next column
    for c in set(col.values()):
        members = [n for n in api if col[n] == c]
        width = max(size[n][0] for n in members)
        for n in members:
            size[n][0] = width

    def order_key(node_id: str):
        consumers = sorted((col[t], slot) for s, t, slot in links if s == node_id)
        return (consumers[0] if consumers else (99, 99), int(node_id) if node_id.isdigit() else 0, node_id)

    result = {}
    x = 0.0
    for c in sorted(set(col.values())):
        members = sorted((n for n in api if col[n] == c), key=order_key)
        y = LOADERS_DROP if c == 1 else 0.0
        for n in members:
            result[n] = {"pos": [round(x), round(y + title_height)], "size": [round(v) for v in size[n]]}
            y += title_height + size[n][1] + ROW_GAP
        x += max(size[n][0] for n in members) + COLUMN_GAP
    return result


def fit_view(boxes: list[tuple[float, float, float, float]], view: tuple[int, int] = VIEW) -> dict:
    """``extra.ds`` (canvas scale and offset) that shows every ``(x0, y0, x1, y1)`` box
    in a window of ``view`` pixels, right of the side bar and below the menu bars.
    Screen = (graph + offset) * scale."""
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[2] for b in boxes)
    y1 = max(b[3] for b in boxes)
    width, height = view[0] - LEFT_BAR - 2 * VIEW_MARGIN, view[1] - TOP_BAR - 2 * VIEW_MARGIN
    scale = min(MAX_SCALE, width / (x1 - x0), height / (y1 - y0))
    scale = round(scale, 3)
    left = LEFT_BAR + VIEW_MARGIN + (width - (x1 - x0) * scale) / 2
    top = TOP_BAR + VIEW_MARGIN + (height - (y1 - y0) * scale) / 2
    return {"scale": scale, "offset": [round(left / scale - x0, 1), round(top / scale - y0, 1)]}


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


def embedded_workflow(png: Path) -> dict | None:
    """The UI workflow a PNG carries in its ``workflow`` text chunk (as ComfyUI's own images do)."""
    from PIL import Image

    with Image.open(png) as image:
        text = image.text.get("workflow") if hasattr(image, "text") else None
    return json.loads(text) if text else None


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


def workflow_text(workflow: Mapping[str, Any]) -> str:
    return json.dumps(workflow, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a twin (or an existing picture) is out of date")
    parser.add_argument("--pictures", action="store_true",
                        help="(re)write workflows/<name>.png: the graph, with the workflow embedded")
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="also save <DIR>/<name>.png of the window")
    parser.add_argument("--examples", action="store_true",
                        help="no browser: only properties.models and example_workflows/ from the committed files")
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

    api_files = sorted(WORKFLOWS.glob("*_api.json"))
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

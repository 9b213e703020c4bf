"""How scripts/export_ui_workflows.py lays a workflow out for the graph editor: columns from left
(images, loaders) to right (GarmentMask ... Save Image), and the saved view fitted to a 1920x1080 window."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    "ModelSwap_SaveImage": (340, 400),
    "ModelSwap_Sampler": (400, 420),
}
MIN_WIDTH = 300


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

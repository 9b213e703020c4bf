"""What the scripts share: the repository imported as the package ``comfyui_model_swap``, whatever its
folder is called (inside ComfyUI the pack is imported by its folder name under custom_nodes/; scripts
and tests use this fixed name instead), and the split of ComfyUI's own flags off a command line.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "comfyui_model_swap"


def import_pack():
    if NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(NAME, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[NAME]


def split_comfy_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the script's arguments, ComfyUI's flags after the first ``--``)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def report_missing_models(wr, graph: dict, workflow, comfyui, comfy_args: list[str], models_dirs: list) -> bool:
    """When the model folders ComfyUI will use are known (``--comfyui`` or ``--models-dir``), print every
    model ``graph`` needs that is missing there, with the installer command; True when one is."""
    if not (models_dirs or comfyui):
        return False
    folders = wr.model_folders(comfyui, comfy_args, models_dirs)
    missing = wr.missing_models(wr.required_models(graph), folders)
    if missing:
        print("Models missing; download them with `python scripts/get_models.py --workflow "
              f"{workflow}` (same --comfyui/--models-dir), or place them as follows, then run again:",
              file=sys.stderr)
        for line in missing:
            print(f"  - {line}", file=sys.stderr)
    return bool(missing)

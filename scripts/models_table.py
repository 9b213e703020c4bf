"""Print README's models table from the model registry (nodes/pipeline/model_files.py): key (for
``scripts/get_models.py --model KEY``), title, file or folder, folder, source, size, licence, commercial use.

    python scripts/models_table.py

tests/test_readme.py checks that README.md contains exactly this table.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _registry():
    """Import model_files without importing the pack (its package name depends on the folder)."""
    pkg_spec = importlib.util.spec_from_file_location(
        "_modelswap_pipeline", ROOT / "nodes" / "pipeline" / "__init__.py",
        submodule_search_locations=[str(ROOT / "nodes" / "pipeline")])
    pkg = importlib.util.module_from_spec(pkg_spec)
    sys.modules["_modelswap_pipeline"] = pkg
    pkg_spec.loader.exec_module(pkg)
    return importlib.import_module("_modelswap_pipeline.model_files")


def models_table() -> str:
    mf = _registry()
    rows = ["| Key (`get_models.py --model`) | Model | File or folder | Place in | Source | Size | Licence | "
            "Commercial use | Needed |", "|---|---|---|---|---|---|---|---|---|"]
    for spec in mf.MODELS.values():
        name = f"`{spec.name}/`" if spec.is_folder else f"`{spec.name}`"
        rows.append(f"| `{spec.key}` | {spec.title} | {name} | `ComfyUI/models/{spec.folder}/` | {spec.source} | {spec.size} | "
                    f"{spec.licence} | {'no' if spec.non_commercial else 'yes'} | "
                    f"{'optional' if spec.optional else 'yes'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(models_table())

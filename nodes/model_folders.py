"""Where ComfyUI looks for each models sub-folder, found the way ComfyUI finds it: its models folder
(``--base-directory``), ``extra_model_paths.yaml`` (and ``--extra-model-paths-config``). Standard
library only (PyYAML when a YAML file is read); used by the headless runner, the installer and
``load_pipeline``, which all ask :func:`missing_models`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .pipeline import model_files


class WorkflowError(RuntimeError):
    """A workflow, models folder or ComfyUI setting the headless runner or the installer cannot use."""


# ComfyUI maps these old folder names in extra_model_paths.yaml to today's (folder_paths.map_legacy).
LEGACY_FOLDERS = {"unet": "diffusion_models", "clip": "text_encoders"}


@dataclass
class ModelFolders:
    """Where ComfyUI looks for each models sub-folder, in ComfyUI's order: paths from an
    ``is_default`` entry of extra_model_paths.yaml first, then ``<models dir>/<folder>`` of each
    root, then the other configured paths. :meth:`target` is where a new download goes."""

    roots: list[Path]
    first: dict[str, list[Path]] = field(default_factory=dict)
    last: dict[str, list[Path]] = field(default_factory=dict)

    def dirs(self, folder: str) -> list[Path]:
        top, _, sub = folder.partition("/")
        bases = [*self.first.get(top, []), *(root / top for root in self.roots), *self.last.get(top, [])]
        found: list[Path] = []
        for base in bases:
            path = base / sub if sub else base
            if path not in found:
                found.append(path)
        return found

    def target(self, folder: str) -> Path:
        return self.dirs(folder)[0]

    def find(self, key: str, name: str) -> Path | None:
        """The path holding model ``key`` complete under ``name`` in any of its folders, or None.
        A folder model named by a file name (a single-file SDXL ControlNet) counts when that file is there."""
        single = model_files.MODELS[key].is_folder and name.lower().endswith(model_files.FILE_SUFFIXES)
        for folder in self.dirs(model_files.MODELS[key].folder):
            if single and (folder / name).is_file():
                return folder / name
            try:
                return model_files.require(key, folder / name, name)
            except model_files.MissingModelError:
                continue
        return None


def missing_models(needs: Iterable[tuple[str, str]], folders: ModelFolders | Iterable[str | Path]) -> list[str]:
    """What to download and where: one line per (registry key, name) in ``needs`` that no folder holds
    complete (a folder model lacking one of its files counts as missing), naming the folder it goes to.

    The one check of installed models: the headless runner and the installer pass a workflow's
    ``required_models``, ``load_pipeline`` its ``ModelChoice``'s needs. ``folders`` is a
    :class:`ModelFolders` (``extra_model_paths.yaml`` honoured) or plain models folders."""
    if not isinstance(folders, ModelFolders):
        folders = ModelFolders([Path(d) for d in folders])
    lines = []
    for key, name in needs:
        if folders.find(key, name) is None:
            spec = model_files.MODELS[key]
            lines.append(model_files.describe(spec, name).replace(
                f"ComfyUI/models/{spec.folder}/", f"{folders.target(spec.folder)}/"))
    return lines


def read_extra_model_paths(config: Path, folders: ModelFolders) -> None:
    """Add the folders of one extra_model_paths.yaml to ``folders``, read as ComfyUI reads it
    (utils/extra_config.py): ``base_path`` relative to the file, ``is_default`` entries first,
    several paths per folder one per line."""
    try:
        import yaml
    except ImportError as exc:
        raise WorkflowError(f"reading {config} needs PyYAML (pip install pyyaml), which ComfyUI installs") from exc
    try:
        data = yaml.safe_load(Path(config).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise WorkflowError(f"cannot read the model paths file {config}: {exc}") from exc
    here = Path(config).resolve().parent
    for entry in data.values():
        if not isinstance(entry, dict):
            continue
        entry = dict(entry)
        base = entry.pop("base_path", None)
        if base:
            base = Path(os.path.expandvars(os.path.expanduser(str(base))))
            base = base if base.is_absolute() else here / base
        default = bool(entry.pop("is_default", False))
        for name, value in entry.items():
            if name == "custom_nodes" or not isinstance(value, str):
                continue
            name = LEGACY_FOLDERS.get(name, name)
            for line in value.split("\n"):
                line = line.strip()
                if not line:
                    continue
                path = Path(os.path.expanduser(line))
                path = base / path if base else (path if path.is_absolute() else here / path)
                path = Path(os.path.normpath(path))
                if default:  # ComfyUI inserts is_default paths in front of the others
                    folders.first.setdefault(name, []).insert(0, path)
                else:
                    folders.last.setdefault(name, []).append(path)


def comfy_args_value(comfy_args: list[str], flag: str) -> list[str]:
    """The values ComfyUI's own flag ``flag`` has in ``comfy_args`` (``--flag V`` or ``--flag=V``;
    ``--extra-model-paths-config`` takes several)."""
    values: list[str] = []
    many = flag == "--extra-model-paths-config"
    i = 0
    while i < len(comfy_args):
        arg = comfy_args[i]
        if arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == flag:
            i += 1
            while i < len(comfy_args) and not comfy_args[i].startswith("--"):
                values.append(comfy_args[i])
                i += 1
                if not many:
                    break
            continue
        i += 1
    return values


def model_folders(comfyui: Path | None = None, comfy_args: list[str] | None = None,
                  models_dirs: list[Path] | None = None) -> ModelFolders:
    """ComfyUI's model folders, found the way ComfyUI finds them.

    ``models_dirs`` (given explicitly) are used as they are. Otherwise the models folder is
    ``<--base-directory>/models`` when ``comfy_args`` (ComfyUI's own flags) carry one, else
    ``<comfyui>/models``; ``<comfyui>/extra_model_paths.yaml`` (which ComfyUI reads at start-up)
    and every ``--extra-model-paths-config`` file add theirs.
    """
    comfy_args = list(comfy_args or [])
    if models_dirs:
        return ModelFolders([Path(d) for d in models_dirs])
    base = comfy_args_value(comfy_args, "--base-directory")
    if not base and comfyui is None:
        raise WorkflowError("no models folder: pass --comfyui PATH/TO/ComfyUI (or --models-dir DIR)")
    root = Path(base[-1]) if base else Path(comfyui)
    folders = ModelFolders([root.expanduser().resolve() / "models"])
    configs = [Path(comfyui) / "extra_model_paths.yaml"] if comfyui is not None else []
    configs = [c for c in configs if c.is_file()] + [Path(c) for c in comfy_args_value(comfy_args, "--extra-model-paths-config")]
    for config in configs:
        read_extra_model_paths(config, folders)
    return folders

"""Download every model a workflow needs into ComfyUI's model folders.

    python scripts/get_models.py                        # what workflows/api/model_swap_api.json needs
    python scripts/get_models.py --workflow workflows/api/model_swap_face_reference_api.json
    python scripts/get_models.py --engine sdxl          # an engine's default set (sdxl, flux2_klein)
    python scripts/get_models.py --model buffalo_l      # registry entries by key (repeatable)
    python scripts/get_models.py --list                 # name, size, licence, target; downloads nothing
    python scripts/get_models.py --verify               # also check the SHA-256 of every file in place
        [--comfyui PATH/TO/ComfyUI] [--models-dir DIR] [-- COMFYUI FLAGS such as --base-directory DIR]
        [--accept-non-commercial]

What a workflow needs is read from the workflow itself (``required_models`` in nodes/headless/graph.py,
which the headless runner's check uses too); where each model comes from is the model registry
(nodes/pipeline/model_files.py). The model folders are ComfyUI's: ``<ComfyUI>/models`` (by default the
ComfyUI this pack sits in, two folders up) or ``--base-directory``'s, plus ``extra_model_paths.yaml``
and any ``--extra-model-paths-config`` given after ``--``.

Every file is fetched into ``<models>/.model-swap-downloads/`` and moved into place only when whole and
checked (size, and SHA-256 where it is known: the hub's for its LFS files, the registry's pin for the
insightface zips); a bad download is removed, with a message. An interrupted download resumes in the
next run from the bytes already fetched. Files in place are size-checked against the hub on every run
(a short file is completed, a longer one reported) and hashed with ``--verify``. Non-commercial weights
are listed with their licences before anything is fetched: ``--accept-non-commercial`` accepts them
(or answer the question on a terminal).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _hub  # noqa: E402
from _fetch import (EXIT_FAILED, EXIT_LICENCE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, InstallError,  # noqa: E402
                    download, reason, sha256_of)
from _pack import split_comfy_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKFLOW = ROOT / "workflows" / "api" / "model_swap_api.json"
STAGING = ".model-swap-downloads"  # inside the first models folder: same disk, so finished files are renamed
ENVIRONMENT = """environment:
  HF_TOKEN            a read token for gated repos (or `hf auth login`)
  HF_ENDPOINT         a mirror of the Hugging Face hub, e.g. https://hf-mirror.example (hub files)
  HF_HUB_OFFLINE=1    download nothing
  MODEL_SWAP_PINS     a JSON file {"<key>": {"url": ..., "sha256": ...}}: where a mirror serves a file
                      published outside the hub (the insightface zips: antelopev2, buffalo_l) and its
                      SHA-256; for a hub file served by HF_ENDPOINT, just {"sha256": ...} when the
                      mirror's copy differs from the registry's pinned hash
  MODEL_SWAP_RETRIES  retries of a dropped transfer within a run (default 5); the next run resumes

exit codes: 0 every model in place, 1 a download failed or was corrupt (run again to resume),
2 usage error, 3 cannot be fetched (gated without HF_TOKEN, offline, a file of your own),
4 the licence notice was not accepted."""


def _pack():
    """The runner module (``required_models``, ``model_folders``) and the model registry."""
    import _pack as pack

    pack.import_pack()
    wr = importlib.import_module("comfyui_model_swap.nodes.workflow_runner")
    return wr, wr.model_files


@dataclass
class Item:
    key: str
    name: str  # the file or folder name the workflow uses


# --------------------------------------------------------------------- choosing what to get
def wanted(args, wr, mf) -> list[Item]:
    items: list[Item] = []
    if args.model:
        unknown = [k for k in args.model if k not in mf.MODELS]
        if unknown:
            raise InstallError(f"--model {', '.join(unknown)}: not in the registry; known keys: "
                               f"{', '.join(mf.MODELS)}", EXIT_USAGE)
        items += [Item(k, mf.MODELS[k].name) for k in args.model]
    if args.engine:
        items += [Item(s.key, s.name) for s in mf.MODELS.values() if args.engine in s.engines]
    workflows = args.workflow or ([] if items else [DEFAULT_WORKFLOW])
    for path in workflows:
        if not Path(path).is_file():
            raise InstallError(f"--workflow {path}: no such file (the shipped ones are workflows/api/*_api.json)",
                               EXIT_USAGE)
        try:
            graph = wr.load_workflow(Path(path))
        except wr.WorkflowError as exc:
            raise InstallError(f"--workflow {path}: {exc}", EXIT_USAGE) from exc
        items += [Item(key, name) for key, name in wr.required_models(graph)]
    unique: list[Item] = []
    for item in items:
        if item not in unique:
            unique.append(item)
    return unique


def source_of(spec) -> tuple[str, str]:
    """(url, sha256) of a registry entry after any MODEL_SWAP_PINS override: a mirror's url and hash for
    a file published outside the hub, or just the hash for a hub file served by a mirror."""
    pins_file = os.environ.get("MODEL_SWAP_PINS")
    if pins_file:
        try:
            pins = json.loads(Path(pins_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InstallError(f"MODEL_SWAP_PINS={pins_file}: cannot read it as JSON ({exc})", EXIT_USAGE) from exc
        if spec.key in pins:
            pin = pins[spec.key]
            if (spec.url and not pin.get("url")) or len(pin.get("sha256", "")) != 64:
                raise InstallError(f"MODEL_SWAP_PINS: the entry for {spec.key} needs a 64-digit 'sha256'"
                                   + (" and 'url'" if spec.url else ""), EXIT_USAGE)
            return pin.get("url", spec.url), pin["sha256"].lower()
    return spec.url, spec.sha256


# --------------------------------------------------------------------- files published outside the hub
def unpack(zip_path: Path, spec, name: str, folder: Path) -> None:
    """Unzip so the model's files sit directly in ``folder/name`` (the zips hold a top folder)."""
    work = zip_path.with_suffix(".unzip")
    shutil.rmtree(work, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.namelist():
            if member.startswith(("/", "\\")) or ".." in Path(member).parts:
                raise InstallError(f"{zip_path.name}: unsafe path {member!r} in the archive; nothing was unpacked")
        archive.extractall(work)
    holder = next((d for d in [work, *sorted(p for p in work.rglob("*") if p.is_dir())]
                   if all((d / f).is_file() for f in spec.files)), None)
    if holder is None:
        raise InstallError(f"{zip_path.name} does not hold {', '.join(spec.files)}; it was removed")
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    for item in holder.iterdir():
        if not (target / item.name).exists():
            shutil.move(str(item), str(target / item.name))
    shutil.rmtree(work, ignore_errors=True)


def install_from_url(spec, name: str, folder: Path, staging: Path, report) -> None:
    """A file published outside the hub (an insightface zip): downloaded, SHA-256 checked, unpacked."""
    url, sha = source_of(spec)
    file_name = Path(urllib.parse.urlsplit(url).path).name
    if _hub.offline():
        raise InstallError(f"{spec.title}: offline mode (HF_HUB_OFFLINE) is set, so {url} is not fetched. "
                           "Unset it and run again, or place the files yourself.", EXIT_UNAVAILABLE)
    part = staging / f"{spec.key}-{file_name}.part"
    try:
        download(url, part, label=file_name, report=report)
    except urllib.error.HTTPError as exc:
        raise InstallError(f"{spec.title}: {url} answered HTTP {exc.code}. A mirror can serve it instead: "
                           "MODEL_SWAP_PINS (see --help).") from None
    actual = sha256_of(part)
    if not sha:  # the registry pins no hash for this file (Google's 'latest' selfie segmenter): say what came
        report(f"  {file_name}: SHA-256 {actual} (not pinned; pin it with MODEL_SWAP_PINS to insist on it)")
    elif actual != sha:
        part.unlink()
        raise InstallError(f"{spec.title}: {file_name} from {url} is corrupt (SHA-256 {actual}, expected {sha}); "
                           "it was removed. Run again to download it afresh.")
    if file_name.lower().endswith(".zip"):
        try:
            unpack(part, spec, name, folder)
        except zipfile.BadZipFile as exc:
            raise InstallError(f"{spec.title}: {file_name} is not a readable zip ({exc}); it was removed") from None
        finally:
            part.unlink(missing_ok=True)
    else:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(part), str(folder / name))
    report(f"  got {folder / name}")


# --------------------------------------------------------------------- the command
def licence_ok(items, mf, args) -> bool:
    restricted = [(i, mf.MODELS[i.key]) for i in items if mf.MODELS[i.key].non_commercial]
    if not restricted:
        return True
    print("Licence notice: these weights are published for NON-COMMERCIAL use only:", file=sys.stderr)
    for item, spec in restricted:
        print(f"  - {item.name}: {spec.licence} ({spec.source})", file=sys.stderr)
    if args.accept_non_commercial:
        print("Accepted with --accept-non-commercial.", file=sys.stderr)
        return True
    if sys.stdin is not None and not sys.stdin.closed and sys.stdin.isatty():
        try:
            return input("Download them for non-commercial use? [y/N] ").strip().lower() in ("y", "yes")
        except EOFError:
            pass
    print("Run again with --accept-non-commercial to accept these licences and download them.", file=sys.stderr)
    return False


def parser(engines=("flux2_klein", "sdxl")) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=ENVIRONMENT)
    ap.add_argument("--workflow", type=Path, action="append", default=[],
                    help="an API-format workflow whose models to get (repeatable; default "
                         "workflows/api/model_swap_api.json when neither --engine nor --model is given)")
    ap.add_argument("--engine", choices=engines, help="every model an engine's default set needs")
    ap.add_argument("--model", action="append", default=[], metavar="KEY", help="a registry entry by key (repeatable)")
    ap.add_argument("--list", action="store_true", help="print name, size, licence and target; download nothing")
    ap.add_argument("--verify", action="store_true",
                    help="also check the SHA-256 of every hub file in place (reads them all); a bad one is fetched again")
    ap.add_argument("--comfyui", type=Path, help="the ComfyUI folder (default: the one this pack is installed in)")
    ap.add_argument("--models-dir", type=Path, action="append", default=[],
                    help="a models folder to use instead of ComfyUI's (repeatable; downloads go to the first)")
    ap.add_argument("--accept-non-commercial", action="store_true",
                    help="accept the non-commercial licences of the weights that have one")
    ap.add_argument("--commercial-only", action="store_true",
                    help="install only models whose licence allows commercial use (also MODELSWAP_COMMERCIAL_ONLY=1); "
                         "the others are named with their licence-clean alternative, and the exit code is 4")
    return ap


def default_comfyui() -> Path | None:
    """The ComfyUI this pack is installed in (<ComfyUI>/custom_nodes/<pack>), if any."""
    candidate = ROOT.parent.parent
    return candidate if ROOT.parent.name == "custom_nodes" and (candidate / "main.py").is_file() else None


def plan(item, spec, folders, staging: Path, verify: bool, report) -> list | None:
    """What to fetch for ``item``: [] when it is complete, (remote, target) pairs of hub files, or None
    for the whole of a file published outside the hub. Raises InstallError when it cannot be had."""
    found = folders.find(item.key, item.name)
    folder = folders.target(spec.folder)
    if item.name != spec.name or not (spec.repo or spec.url):
        if found is not None:
            return []
        if item.name != spec.name:
            raise InstallError(f"{item.name}: the workflow names a file of its own, not the published "
                               f"{spec.name}; place it in {folder}/ yourself (or choose {spec.name} in "
                               "the workflow)", EXIT_UNAVAILABLE)
        raise InstallError(f"{spec.title}: no downloadable source; {spec.source}", EXIT_UNAVAILABLE)
    if spec.url:
        if found is not None and verify:
            report(f"  {found}: unpacked from a zip, so checked for its files only")
        return [] if found is not None else None
    if found is not None and _hub.offline():
        report(f"  {found}: not checked against the hub (HF_HUB_OFFLINE is set)")
        return []
    try:
        remotes = _hub.remote_files(spec, "" if spec.is_folder else source_of(spec)[1])
    except InstallError as exc:
        if found is None:
            raise
        report(f"  {found}: not checked against the hub: {exc}")
        return []
    base = found or folder / item.name
    return _hub.check_in_place(spec, [(r, base / r.path if spec.is_folder else base) for r in remotes],
                          staging, verify, report)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, comfy_args = split_comfy_args(argv)
    wr, mf = _pack()
    args = parser(mf.ENGINES).parse_args(own)
    comfyui = args.comfyui or default_comfyui()
    if args.comfyui and not (args.comfyui / "main.py").is_file():
        print(f"error: --comfyui {args.comfyui} is not a ComfyUI folder (no main.py)", file=sys.stderr)
        return EXIT_USAGE
    if comfyui is None and not args.models_dir and not wr.comfy_args_value(comfy_args, "--base-directory"):
        print("error: this pack is not inside a ComfyUI's custom_nodes/ folder, so say where the models go: "
              "--comfyui PATH/TO/ComfyUI or --models-dir DIR", file=sys.stderr)
        return EXIT_USAGE
    try:
        folders = wr.model_folders(comfyui, comfy_args, args.models_dir)
        items = wanted(args, wr, mf)
    except wr.WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code

    guard = importlib.import_module("comfyui_model_swap.nodes.pipeline.licence_guard")
    left_out = []
    try:
        commercial_only = args.commercial_only or guard.env_enabled()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if commercial_only:
        left_out = [i for i in items if mf.MODELS[i.key].non_commercial]
        items = [i for i in items if not mf.MODELS[i.key].non_commercial]
        for item in left_out:
            print(f"not installed: {guard.refusal(item.key, item.name, 'this is a commercial-only install')}",
                  file=sys.stderr)

    if args.list:
        for item in items:
            spec = mf.MODELS[item.key]
            found = folders.find(item.key, item.name)
            where = found or folders.target(spec.folder) / item.name
            print("\t".join((item.name, spec.size, spec.licence, str(where), "present" if found else "missing")))
        return EXIT_OK

    def report(message: str) -> None:
        print(message, file=sys.stderr)

    staging = folders.roots[0] / STAGING
    plans, errors = {}, {}
    for item in items:
        try:
            plans[item.key, item.name] = plan(item, mf.MODELS[item.key], folders, staging, args.verify, report)
        except InstallError as exc:
            errors[item.key, item.name] = exc
        except OSError as exc:  # moving a short file in place aside: a full disk, a read-only folder
            errors[item.key, item.name] = InstallError(f"{item.name}: {reason(exc)}")
    todo = [i for i in items if plans.get((i.key, i.name)) != [] and (i.key, i.name) not in errors]
    for item in items:
        if plans.get((item.key, item.name)) == []:
            report(f"{item.name}: complete in {folders.find(item.key, item.name)}")
    if todo and not licence_ok(todo, mf, args):
        return EXIT_LICENCE
    for item in todo:
        spec = mf.MODELS[item.key]
        folder = folders.target(spec.folder)
        report(f"{item.name} -> {folder}/ ({spec.size}, {spec.licence})")
        try:
            files = plans[item.key, item.name]
            if files is None:
                install_from_url(spec, item.name, folder, staging, report)
            for remote, target in files or []:
                _hub.fetch_hub_file(spec, remote, target, staging, report)
            if folders.find(item.key, item.name) is None:
                raise InstallError(f"{spec.title}: downloaded, but {folder / item.name} is still incomplete "
                                   f"(it needs {', '.join(spec.files) or item.name})")
        except InstallError as exc:
            errors[item.key, item.name] = exc
        except OSError as exc:  # writing or moving into place: a full disk, a read-only folder
            errors[item.key, item.name] = InstallError(f"{item.name}: {reason(exc)}. Run again to resume.")
    for exc in errors.values():
        report(f"error: {exc}")
    if errors:
        codes = [exc.code for exc in errors.values()]
        report(f"{len(errors)} of {len(items)} models are not in place (see the errors above).")
        return EXIT_FAILED if EXIT_FAILED in codes else max(codes)
    shutil.rmtree(staging, ignore_errors=True)  # nothing left to resume
    if left_out:
        report(f"Every commercial-use model is in place; {len(left_out)} non-commercial ones were left out (above).")
        return EXIT_LICENCE
    report("Every model is in place.")
    return EXIT_OK


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nInterrupted; what was downloaded is kept: run the same command again to resume.", file=sys.stderr)
        sys.exit(130)

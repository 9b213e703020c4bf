"""Download every model a workflow needs into ComfyUI's model folders.

    python scripts/get_models.py                        # what workflows/model_swap_api.json needs
    python scripts/get_models.py --workflow workflows/model_swap_face_reference_api.json
    python scripts/get_models.py --engine sdxl          # an engine's default set (sdxl, flux2_klein)
    python scripts/get_models.py --model buffalo_l      # registry entries by key (repeatable)
    python scripts/get_models.py --list                 # name, size, licence, target; downloads nothing
        [--comfyui PATH/TO/ComfyUI] [--models-dir DIR] [-- COMFYUI FLAGS such as --base-directory DIR]
        [--accept-non-commercial]

What a workflow needs is read from the workflow itself, by the same function that makes the
headless runner report missing models (nodes/workflow_runner.py ``required_models``); where each
model comes from is the model registry (nodes/pipeline/model_files.py). The model folders are the
ones ComfyUI uses: ``<ComfyUI>/models`` (by default the ComfyUI this pack sits in, two folders up),
or ``--base-directory``'s, plus ComfyUI's ``extra_model_paths.yaml`` and any
``--extra-model-paths-config`` given after ``--``.

Files on the Hugging Face hub come through ``huggingface_hub`` (resumable, its progress bars,
``HF_TOKEN`` for gated repos, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` honoured). Files published
elsewhere (insightface's zips) come over plain HTTPS, resumed from a ``.part`` file, checked
against the SHA-256 pinned in the registry and unzipped in place (``MODEL_SWAP_PINS`` may name a
JSON file ``{"<key>": {"url": ..., "sha256": ...}}`` to take them from a mirror instead).

A complete file is never downloaded or overwritten again. Every download is checked (size, and
SHA-256 where it is known) before it is moved into place; a bad one is removed, with a message.
Non-commercial weights are listed with their licences before anything is fetched; pass
``--accept-non-commercial`` to accept them (or answer the question on a terminal).

Exit codes: 0 everything is in place, 1 a download failed or was corrupt, 2 usage error,
3 something cannot be fetched (no published source, gated without HF_TOKEN, offline mode),
4 the licence notice was not accepted.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pack import split_comfy_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKFLOW = ROOT / "workflows" / "model_swap_api.json"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_LICENCE = 0, 1, 2, 3, 4
STAGING = ".model-swap-downloads"  # inside the first models folder: same disk, so finished files are renamed
CHUNK = 1 << 20


class InstallError(RuntimeError):
    """One model could not be installed; ``code`` is the exit code it calls for."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def _pack():
    """The runner module (``required_models``, ``model_folders``) and the model registry."""
    sys.path.insert(0, str(ROOT / "scripts"))
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
            raise InstallError(f"--workflow {path}: no such file (the shipped ones are workflows/*_api.json)",
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


# --------------------------------------------------------------------- helpers
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def _hub_error(exc: Exception, spec) -> InstallError:
    """A hub failure as a message that names the fix."""
    from huggingface_hub import errors

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.GatedRepoError) or status in (401, 403):
        return InstallError(
            f"{spec.title}: the hub refused {spec.repo} (HTTP {status}): the repository is gated or private. "
            f"Accept its terms at https://huggingface.co/{spec.repo} with your account, then set HF_TOKEN to "
            f"a read token (export HF_TOKEN=hf_..., or run `hf auth login`) and run this again.", EXIT_UNAVAILABLE)
    if isinstance(exc, errors.OfflineModeIsEnabled) or "offline" in type(exc).__name__.lower():
        return InstallError(f"{spec.title}: HF_HUB_OFFLINE is set, so nothing can be downloaded from the hub. "
                            f"Unset HF_HUB_OFFLINE and run again, or place the files yourself.", EXIT_UNAVAILABLE)
    if isinstance(exc, errors.RepositoryNotFoundError):
        return InstallError(f"{spec.title}: the hub has no repository {spec.repo} (or it is private: set "
                            f"HF_TOKEN).", EXIT_UNAVAILABLE)
    if isinstance(exc, errors.EntryNotFoundError):
        return InstallError(f"{spec.title}: {spec.repo} has no such file: {exc}", EXIT_UNAVAILABLE)
    return InstallError(f"{spec.title}: download from {spec.repo} failed: {exc}. Run again to resume.")


# --------------------------------------------------------------------- the hub
def hub_files(spec, token) -> list[str]:
    """Paths in ``spec.repo`` to fetch: the one file, or every file matching the folder's patterns."""
    if not spec.is_folder:
        return list(spec.repo_files)
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    info = HfApi().model_info(spec.repo, token=token)
    names = [s.rfilename for s in info.siblings or []]
    return sorted(filter_repo_objects(names, allow_patterns=list(spec.repo_files)))


def fetch_hub_file(spec, path_in_repo: str, target: Path, staging: Path, token, report) -> bool:
    """Put ``spec.repo``'s ``path_in_repo`` at ``target``; False when it was already there."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    if target.is_file():
        return False
    meta = get_hf_file_metadata(hf_hub_url(spec.repo, path_in_repo), token=token)
    local_dir = staging / spec.repo.replace("/", "--")
    downloaded = Path(hf_hub_download(spec.repo, path_in_repo, local_dir=local_dir, token=token))
    problem = None
    if meta.size is not None and downloaded.stat().st_size != meta.size:
        problem = f"{downloaded.stat().st_size} bytes instead of {meta.size}"
    else:
        expected = source_of(spec)[1] if not spec.is_folder else ""
        etag = (meta.etag or "").strip('"').lower()
        expected = expected or (etag if len(etag) == 64 else "")  # LFS files: the etag is their SHA-256
        if expected:
            actual = sha256_of(downloaded)
            if actual != expected:
                problem = f"SHA-256 {actual} instead of {expected}"
    metadata = local_dir / ".cache" / "huggingface" / "download" / f"{path_in_repo}.metadata"
    if problem:
        downloaded.unlink(missing_ok=True)
        metadata.unlink(missing_ok=True)
        raise InstallError(f"{spec.title}: the downloaded {path_in_repo} from {spec.repo} is corrupt ({problem}); "
                           f"it was removed. Run again to download it afresh.")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(downloaded), str(target))
    metadata.unlink(missing_ok=True)
    report(f"  got {target} ({human(target.stat().st_size)})")
    return True


def install_from_hub(spec, name: str, folder: Path, staging: Path, report) -> int:
    """Download what is missing of ``spec`` into ``folder``; returns how many files were fetched."""
    from huggingface_hub import errors
    from huggingface_hub.utils import get_token

    token = get_token()
    try:
        paths = hub_files(spec, token)
        if not paths:
            raise InstallError(f"{spec.title}: {spec.repo} holds no file matching {', '.join(spec.repo_files)}")
        fetched = 0
        for path in paths:
            if spec.is_folder:
                target = folder / name / path
            else:
                target = folder / name
            fetched += fetch_hub_file(spec, path, target, staging, token, report)
        return fetched
    except errors.HfHubHTTPError as exc:
        raise _hub_error(exc, spec) from exc
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as exc:
        raise _hub_error(exc, spec) from exc
    except OSError as exc:
        raise InstallError(f"{spec.title}: download from {spec.repo} failed: {exc}. Run again to resume.") from exc


# --------------------------------------------------------------------- plain HTTPS (zips)
def download_url(url: str, dest: Path, report) -> None:
    """Download ``url`` to ``dest``, resuming from ``dest`` where a previous run stopped."""
    from huggingface_hub.utils import tqdm

    have = dest.stat().st_size if dest.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already whole
            return
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the range: start over
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        if have:
            report(f"  resuming {dest.name} at {human(have)}")
        with open(dest, "ab" if have else "wb") as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                             desc=dest.name) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    if total is not None and dest.stat().st_size != total:
        raise InstallError(f"{dest.name}: the connection closed at {dest.stat().st_size} of {total} bytes. "
                           "Run again to resume.")


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


def install_from_url(mf, spec, name: str, folder: Path, staging: Path, report) -> int:
    url, sha = source_of(spec)
    staging.mkdir(parents=True, exist_ok=True)
    part = staging / f"{spec.key}-{Path(url).name}.part"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise InstallError(f"{spec.title}: offline mode (HF_HUB_OFFLINE) is set, so {url} is not fetched. "
                           "Unset it and run again, or place the files yourself.", EXIT_UNAVAILABLE)
    try:
        download_url(url, part, report)
    except (urllib.error.URLError, OSError) as exc:
        raise InstallError(f"{spec.title}: download from {url} failed: {exc}. Run again to resume.") from exc
    actual = sha256_of(part)
    if actual != sha:
        part.unlink()
        raise InstallError(f"{spec.title}: {Path(url).name} from {url} is corrupt (SHA-256 {actual}, expected {sha}); "
                           "it was removed. Run again to download it afresh.")
    if url.lower().endswith(".zip"):
        try:
            unpack(part, spec, name, folder)
        except zipfile.BadZipFile as exc:
            raise InstallError(f"{spec.title}: {Path(url).name} is not a readable zip ({exc}); it was removed") from exc
        finally:
            part.unlink(missing_ok=True)
    else:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(part), str(folder / name))
    report(f"  got {folder / name}")
    return 1


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
    if sys.stdin.isatty():
        answer = input("Download them for non-commercial use? [y/N] ").strip().lower()
        return answer in ("y", "yes")
    print("Run again with --accept-non-commercial to accept these licences and download them.", file=sys.stderr)
    return False


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Exit codes: 0 complete, 1 a download failed or was corrupt, 2 usage, "
                                        "3 cannot be fetched (gated, offline, unpublished), 4 licence not accepted.")
    ap.add_argument("--workflow", type=Path, action="append", default=[],
                    help="an API-format workflow whose models to get (repeatable; default "
                         "workflows/model_swap_api.json when neither --engine nor --model is given)")
    ap.add_argument("--engine", choices=("sdxl", "flux2_klein"), help="every model an engine's default set needs")
    ap.add_argument("--model", action="append", default=[], metavar="KEY", help="a registry entry by key (repeatable)")
    ap.add_argument("--list", action="store_true", help="print name, size, licence and target; download nothing")
    ap.add_argument("--comfyui", type=Path, help="the ComfyUI folder (default: the one this pack is installed in)")
    ap.add_argument("--models-dir", type=Path, action="append", default=[],
                    help="a models folder to use instead of ComfyUI's (repeatable; downloads go to the first)")
    ap.add_argument("--accept-non-commercial", action="store_true",
                    help="accept the non-commercial licences of the weights that have one")
    return ap


def default_comfyui() -> Path | None:
    """The ComfyUI this pack is installed in (<ComfyUI>/custom_nodes/<pack>), if any."""
    candidate = ROOT.parent.parent
    return candidate if ROOT.parent.name == "custom_nodes" and (candidate / "main.py").is_file() else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, comfy_args = split_comfy_args(argv)
    args = parser().parse_args(own)
    wr, mf = _pack()
    comfyui = args.comfyui or default_comfyui()
    if args.comfyui and not (args.comfyui / "main.py").is_file():
        print(f"error: --comfyui {args.comfyui} is not a ComfyUI folder (no main.py)", file=sys.stderr)
        return EXIT_USAGE
    try:
        folders = wr.model_folders(comfyui, comfy_args, args.models_dir)
        items = wanted(args, wr, mf)
    except wr.WorkflowError as exc:
        print(f"error: {exc}. This pack is not inside a ComfyUI's custom_nodes/ folder, so say where: "
              "--comfyui PATH/TO/ComfyUI or --models-dir DIR", file=sys.stderr)
        return EXIT_USAGE
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code

    if args.list:
        for item in items:
            spec = mf.MODELS[item.key]
            found = folders.find(item.key, item.name)
            where = found or folders.target(spec.folder) / item.name
            print("\t".join((item.name, spec.size, spec.licence, str(where), "present" if found else "missing")))
        return EXIT_OK

    todo = [i for i in items if folders.find(i.key, i.name) is None]
    for item in items:
        if item not in todo:
            print(f"{item.name}: complete in {folders.find(item.key, item.name)}", file=sys.stderr)
    if not todo:
        print("Every model is in place.", file=sys.stderr)
        return EXIT_OK
    if not licence_ok(todo, mf, args):
        return EXIT_LICENCE

    staging = folders.roots[0] / STAGING
    codes = []
    for item in todo:
        spec = mf.MODELS[item.key]
        folder = folders.target(spec.folder)
        print(f"{item.name} -> {folder}/ ({spec.size}, {spec.licence})", file=sys.stderr)
        try:
            if item.name != spec.name:
                raise InstallError(f"{item.name}: the workflow names a file of its own, not the published "
                                   f"{spec.name}; place it in {folder}/ yourself (or choose {spec.name} in "
                                   "the workflow)", EXIT_UNAVAILABLE)
            if spec.repo:
                install_from_hub(spec, item.name, folder, staging, lambda m: print(m, file=sys.stderr))
            elif spec.url:
                install_from_url(mf, spec, item.name, folder, staging, lambda m: print(m, file=sys.stderr))
            else:
                raise InstallError(f"{spec.title}: no downloadable source; {mf.describe(spec, item.name)}",
                                   EXIT_UNAVAILABLE)
            if folders.find(item.key, item.name) is None:
                raise InstallError(f"{spec.title}: downloaded, but {folder / item.name} is still incomplete "
                                   f"(it needs {', '.join(spec.files) or item.name})")
        except InstallError as exc:
            print(f"error: {exc}", file=sys.stderr)
            codes.append(exc.code)
    if codes:
        print(f"{len(codes)} of {len(todo)} models are not in place (see the errors above).", file=sys.stderr)
        return EXIT_FAILED if EXIT_FAILED in codes else max(codes)
    shutil.rmtree(staging, ignore_errors=True)  # nothing left to resume
    print("Every model is in place.", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""What the Hugging Face hub (or the mirror that ``HF_ENDPOINT`` names) publishes for a registry entry.

:func:`remote_files` asks the hub once per entry for the files to fetch, each with its URL, size and
hash (the SHA-256 of LFS files, the git object id of small ones), so a file in place is size-checked
on every run and fully checked with ``--verify`` (:func:`check_in_place`); :func:`fetch_hub_file` puts
one in place through ``_fetch.download``, which resumes across runs, and checks it. :func:`hub_error`
turns a refusal into a message that names the fix.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import shutil
import sys
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from _fetch import (EXIT_FAILED, EXIT_UNAVAILABLE, InstallError, download, git_blob_sha1, human, network_errors,
                    reason, sha256_of)


@dataclass(frozen=True)
class Remote:
    path: str  # the file's path in the repo
    url: str
    size: int | None
    sha256: str  # "" when the hub does not say it (files kept outside LFS)
    git_sha1: str  # the git object id ("" when unknown)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def token() -> str | None:
    from huggingface_hub.utils import get_token

    return get_token()


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def remote_files(spec, pinned_sha256: str = "") -> list[Remote]:
    """The files of ``spec.repo`` that the entry takes (its one file, or those its patterns match)."""
    try:
        from huggingface_hub import HfApi, hf_hub_url
    except ImportError:
        raise InstallError("the installer needs huggingface_hub (it comes with diffusers): "
                           f"{sys.executable} -m pip install huggingface_hub", EXIT_UNAVAILABLE) from None
    if offline():
        raise InstallError(f"{spec.title}: HF_HUB_OFFLINE is set, so nothing can be downloaded from the hub. "
                           "Unset HF_HUB_OFFLINE and run again, or place the files yourself.", EXIT_UNAVAILABLE)
    try:
        info = _repo_info(HfApi, spec.repo)
    except Exception as exc:  # the hub's HTTP errors and the transport errors of its HTTP library
        raise hub_error(exc, spec) from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    if spec.is_folder:
        paths = sorted(p for p in siblings if any(fnmatch.fnmatch(p, pat) for pat in spec.repo_files))
    else:
        paths = [p for p in spec.repo_files if p in siblings]
    if not paths:
        raise InstallError(f"{spec.title}: {spec.repo} on {endpoint()} holds no file matching "
                           f"{', '.join(spec.repo_files)}", EXIT_UNAVAILABLE)
    files = []
    for path in paths:
        s = siblings[path]
        lfs = s.lfs or {}
        sha = pinned_sha256 if pinned_sha256 and not spec.is_folder else str(lfs.get("sha256") or "").lower()
        files.append(Remote(path, hf_hub_url(spec.repo, path, revision=info.sha or "main"), s.size, sha,
                            "" if lfs else str(s.blob_id or "").lower()))
    return files


@functools.lru_cache(maxsize=None)
def _repo_info(api_class, repo: str):
    """One API call per repo and run (three klein files share one repo), with sizes and hashes."""
    return api_class().model_info(repo, files_metadata=True, token=token())


def hub_error(exc: BaseException, spec) -> InstallError:
    """A refusal or failure of the hub (an API call or a download) as one line that names the fix."""
    from huggingface_hub import errors

    if isinstance(exc, InstallError):
        return exc
    response = getattr(exc, "response", None)
    status = getattr(exc, "code", None) or getattr(response, "status_code", None)
    headers = getattr(exc, "headers", None) or getattr(response, "headers", None) or {}
    missing_file = isinstance(exc, errors.EntryNotFoundError) or headers.get("X-Error-Code") == "EntryNotFound"
    if isinstance(exc, errors.GatedRepoError) or status in (401, 403):
        return InstallError(
            f"{spec.title}: the hub refused {spec.repo} (HTTP {status}): the repository is gated or private. "
            f"Accept its terms at https://huggingface.co/{spec.repo} with your account, then set HF_TOKEN to "
            f"a read token (export HF_TOKEN=hf_..., or run `hf auth login`) and run this again.", EXIT_UNAVAILABLE)
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return InstallError(f"{spec.title}: HF_HUB_OFFLINE is set, so nothing can be downloaded from the hub. "
                            f"Unset HF_HUB_OFFLINE and run again, or place the files yourself.", EXIT_UNAVAILABLE)
    if missing_file:
        return InstallError(f"{spec.title}: {spec.repo} on {endpoint()} has no such file ({reason(exc)})",
                            EXIT_UNAVAILABLE)
    if isinstance(exc, errors.RepositoryNotFoundError) or status == 404:
        return InstallError(f"{spec.title}: {endpoint()} has no repository {spec.repo} (or it is private: set "
                            f"HF_TOKEN).", EXIT_UNAVAILABLE)
    if isinstance(exc, network_errors()) or isinstance(exc, errors.HfHubHTTPError):
        return InstallError(f"{spec.title}: cannot reach the hub at {endpoint()} ({reason(exc)}). Check the "
                            "connection (and HF_ENDPOINT, if you use a mirror) and run again.", EXIT_FAILED)
    return InstallError(f"{spec.title}: the hub answered unexpectedly for {spec.repo} "
                        f"({type(exc).__name__}: {reason(exc)}); run again, or report this.", EXIT_FAILED)


def hash_problem(path: Path, remote) -> str:
    """'' when ``path`` has the hash the source publishes (SHA-256, or git's object id), else what differs."""
    if remote.sha256:
        actual = sha256_of(path)
        return "" if actual == remote.sha256 else f"SHA-256 {actual} instead of {remote.sha256}"
    if remote.git_sha1:
        actual = git_blob_sha1(path)
        return "" if actual == remote.git_sha1 else f"git object id {actual} instead of {remote.git_sha1}"
    return ""


def part_for(staging: Path, spec, remote) -> Path:
    """Where ``remote`` waits until whole; the hash in the name keeps a part of another version from resuming."""
    tag = (remote.sha256 or remote.git_sha1)[:12]
    return staging / spec.repo.replace("/", "--") / f"{remote.path}{'.' + tag if tag else ''}.part"


def check_in_place(spec, files, staging: Path, verify: bool, report) -> list:
    """The (remote, target) pairs of ``files`` to fetch: absent, short (kept as the part to resume from)
    or, with ``verify``, of the wrong hash (removed). A file longer than the published one is refused."""
    fetch = []
    for remote, target in files:
        if not target.is_file():
            fetch.append((remote, target))
            continue
        size = target.stat().st_size
        if remote.size is not None and size > remote.size:
            raise InstallError(f"{spec.title}: {target} has {size} bytes, the published {remote.path} has "
                               f"{remote.size}: another file holds this name. Move it aside and run again to fetch "
                               "the published one.", EXIT_UNAVAILABLE)
        if remote.size is not None and size < remote.size:
            report(f"  {target}: {human(size)} of {human(remote.size)} in place, incomplete; fetching the rest")
            part = part_for(staging, spec, remote)
            part.parent.mkdir(parents=True, exist_ok=True)
            if part.is_file() and part.stat().st_size >= size:
                target.unlink()
            else:
                shutil.move(str(target), str(part))
            fetch.append((remote, target))
        elif verify and (problem := hash_problem(target, remote)):
            target.unlink()
            report(f"  {target}: {problem}; removed, fetching it again")
            fetch.append((remote, target))
    return fetch


def fetch_hub_file(spec, remote, target: Path, staging: Path, report) -> None:
    part = part_for(staging, spec, remote)
    try:
        download(remote.url, part, label=Path(remote.path).name, size=remote.size, token=token(), report=report)
    except urllib.error.HTTPError as exc:
        raise hub_error(exc, spec) from None
    have = part.stat().st_size
    problem = (f"{have} bytes instead of {remote.size}" if remote.size is not None and have != remote.size
               else hash_problem(part, remote))
    if problem:
        part.unlink(missing_ok=True)
        raise InstallError(f"{spec.title}: the downloaded {remote.path} from {spec.repo} is corrupt ({problem}); "
                           "it was removed. Run again to download it afresh.")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(part), str(target))
    report(f"  got {target} ({human(have)})")

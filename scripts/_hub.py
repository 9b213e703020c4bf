"""What the Hugging Face hub (or the mirror that ``HF_ENDPOINT`` names) publishes for a registry entry.

:func:`remote_files` asks the hub once per entry for the files to fetch, each with its URL, size and
hash (the SHA-256 of LFS files, the git object id of small ones), so a file in place is size-checked
on every run and fully checked with ``--verify``. The transfer itself is ``_fetch.download``, which
resumes across runs. :func:`hub_error` turns a refusal into a message that names the fix.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

from _fetch import EXIT_FAILED, EXIT_UNAVAILABLE, InstallError, network_errors, reason


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
    from huggingface_hub import HfApi, hf_hub_url

    if offline():
        raise InstallError(f"{spec.title}: HF_HUB_OFFLINE is set, so nothing can be downloaded from the hub. "
                           "Unset HF_HUB_OFFLINE and run again, or place the files yourself.", EXIT_UNAVAILABLE)
    try:
        info = HfApi().model_info(spec.repo, files_metadata=True, token=token())
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


def hub_error(exc: BaseException, spec) -> InstallError:
    """A refusal or failure of the hub (an API call or a download) as one line that names the fix."""
    from huggingface_hub import errors

    if isinstance(exc, InstallError):
        return exc
    status = getattr(exc, "code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.GatedRepoError) or status in (401, 403):
        return InstallError(
            f"{spec.title}: the hub refused {spec.repo} (HTTP {status}): the repository is gated or private. "
            f"Accept its terms at https://huggingface.co/{spec.repo} with your account, then set HF_TOKEN to "
            f"a read token (export HF_TOKEN=hf_..., or run `hf auth login`) and run this again.", EXIT_UNAVAILABLE)
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return InstallError(f"{spec.title}: HF_HUB_OFFLINE is set, so nothing can be downloaded from the hub. "
                            f"Unset HF_HUB_OFFLINE and run again, or place the files yourself.", EXIT_UNAVAILABLE)
    if isinstance(exc, errors.RepositoryNotFoundError) or (status == 404 and "Entry" not in type(exc).__name__):
        return InstallError(f"{spec.title}: {endpoint()} has no repository {spec.repo} (or it is private: set "
                            f"HF_TOKEN).", EXIT_UNAVAILABLE)
    if isinstance(exc, errors.EntryNotFoundError):
        return InstallError(f"{spec.title}: {spec.repo} has no such file ({reason(exc)})", EXIT_UNAVAILABLE)
    if isinstance(exc, network_errors()) or isinstance(exc, errors.HfHubHTTPError):
        return InstallError(f"{spec.title}: cannot reach the hub at {endpoint()} ({reason(exc)}). Check the "
                            "connection (and HF_ENDPOINT, if you use a mirror) and run again.", EXIT_FAILED)
    return InstallError(f"{spec.title}: the hub answered unexpectedly for {spec.repo} "
                        f"({type(exc).__name__}: {reason(exc)}); run again, or report this.", EXIT_FAILED)

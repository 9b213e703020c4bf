"""The installer's transfers: one ranged HTTP download that resumes across runs, and the checks of a file.

Every file, from the hub or elsewhere, is fetched into a ``.part`` file by :func:`download`: a run
continues from the bytes the part already holds (a ``Range`` request), a dropped transfer is retried
within the run (``MODEL_SWAP_RETRIES`` times in a row without progress, default 5), and a failure ends
in one :class:`InstallError` line that says what failed and that the next run resumes. Standard
library only (the progress bar is huggingface_hub's tqdm when it is installed).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_LICENCE = 0, 1, 2, 3, 4
CHUNK = 1 << 20
TIMEOUT = 60.0  # seconds without a byte before a transfer counts as dropped
USER_AGENT = "comfyui-model-swap-installer/1"


class InstallError(RuntimeError):
    """One model could not be installed; ``code`` is the exit code it calls for."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def retries() -> int:
    raw = os.environ.get("MODEL_SWAP_RETRIES", "5")
    if not raw.isdigit():
        raise InstallError(f"MODEL_SWAP_RETRIES={raw!r}: give a whole number of retries, e.g. 5", EXIT_USAGE)
    return int(raw)


def network_errors() -> tuple[type[BaseException], ...]:
    """What a failed connection raises: OSError (urllib, requests, a full disk) and http.client's errors, and
    the transport errors of whichever HTTP library huggingface_hub uses (httpx, httpx2) when it is loaded."""
    found: list[type[BaseException]] = [OSError, http.client.HTTPException]
    for module in ("httpx", "httpx2"):
        cls = getattr(sys.modules.get(module), "TransportError", None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def reason(exc: BaseException) -> str:
    """An exception as a short phrase (no traceback, no class path)."""
    inner = getattr(exc, "reason", None)
    text = str(inner if isinstance(inner, (str, BaseException)) else exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's bytes (what the hub reports for files kept outside LFS)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress(name: str, total: int | None, initial: int):
    try:
        from huggingface_hub.utils import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name)


def _attempt(url: str, part: Path, have: int, token: str | None, size: int | None, label: str) -> int | None:
    """One GET of ``url`` from byte ``have`` into ``part``; returns the full size when the server says it."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    if token:  # never follows a redirect to another host (a CDN gets no token)
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)  # noqa: S310 (http/https URLs from the registry)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing past what the part holds: it is whole, or too long
            exc.close()
            return have if size is None else size
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = int(length) + have if length is not None and length.isdigit() else size
        bar = _progress(label, total, have)
        try:
            with open(part, "ab" if have else "wb") as out:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
    return total


def download(url: str, part: Path, *, label: str, size: int | None = None, token: str | None = None,
             report=print) -> None:
    """Make ``part`` hold all of ``url``, continuing from what it holds; InstallError (one line) when the
    transfer keeps failing, the part kept for the next run. HTTP errors other than 5xx/429 propagate."""
    part.parent.mkdir(parents=True, exist_ok=True)
    allowed, failures, last = retries(), 0, ""
    host = urllib.parse.urlsplit(url).netloc
    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()  # longer than the file: not a prefix of it
            have = 0
        if size is not None and have == size:
            return
        if have and failures == 0:
            report(f"  resuming {label} at {human(have)}" + (f" of {human(size)}" if size else ""))
        try:
            total = _attempt(url, part, have, token, size, label)
            now = part.stat().st_size if part.exists() else 0
            if total is None or now == total:
                return
            last = f"the connection closed at {now} of {total} bytes"
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                raise
            last = f"HTTP {exc.code}"
        except network_errors() as exc:
            last = reason(exc)
        now = part.stat().st_size if part.exists() else 0
        failures = 0 if now > have else failures + 1
        if failures > allowed:
            kept = f"; {human(now)} are kept and the next run resumes from there" if now else ""
            raise InstallError(f"{label}: the download from {host} failed ({last}){kept}. Check the connection "
                               "and run the same command again.")
        time.sleep(min(failures, 5))

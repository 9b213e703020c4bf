"""A prediction's record, its JSON form for the stores, and what every store offers.

Two stores keep predictions (chosen by ``MODELSWAP_API_REDIS_URL``): ``store_sqlite`` (one
machine, a file under ComfyUI's user directory) and ``store_redis`` (any number of ComfyUI
instances sharing a Redis server and its job queue). Both write a prediction before its id is
answered and keep it, ended, for the retention time, so a restart never turns an accepted id
into a 404.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

from .protocol import TERMINAL, HttpError, RunRequest, runtime_error, status_response

WEBHOOK_PENDING = "pending"  # the final status is not yet delivered
WEBHOOK_DONE = "done"  # delivered, or given up after the configured attempts


@dataclass
class Prediction:
    id: str
    request: RunRequest
    base_url: str  # where output URLs point (this server, as the client reached it)
    seq: int = 0  # order of arrival
    status: str = "starting"
    output: list[str] | None = None
    error: dict | None = None
    expires: float | None = None  # wall-clock time; set when it ends
    attempts: int = 0  # how many times a worker started it (more than one after a crash)
    prompt_id: str = ""  # the id of its job in ComfyUI's queue
    output_node: str = ""  # the SaveImage node whose images are the outputs
    outputs: list[str] = field(default_factory=list)  # names served under /v1/outputs/<id>/
    webhook: str = ""  # "", WEBHOOK_PENDING or WEBHOOK_DONE

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def payload(self) -> dict:
        return status_response(self.id, self.status, self.output, self.error)

    def to_json(self, *, keep_base64_output: bool = True) -> str:
        """The record; once ended its images are dropped from the stored request, and base64
        outputs are left out unless ``keep_base64_output`` (a store that may not write them to disk)."""
        data = asdict(self)
        if self.done:
            data["request"] = asdict(scrub(self.request))
            if self.request.return_base64 and not keep_base64_output:
                data["output"] = None
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Prediction":
        data = json.loads(text)
        data["request"] = RunRequest(**data["request"])
        return cls(**data)


def scrub(request: RunRequest) -> RunRequest:
    """The request without its input images (kept only while the prediction runs)."""
    return replace(request, model_image="(removed when the prediction ended)",
                   face_reference=None if request.face_reference is None else "(removed)")


def restart_failure(prediction: Prediction, max_attempts: int) -> dict:
    return runtime_error(
        "InternalServerError",
        f"The server restarted or lost the worker while this prediction was running, {prediction.attempts} "
        f"time(s) (limit MODELSWAP_API_MAX_ATTEMPTS={max_attempts}); it is not started again in case it is "
        "what stops the server. Submit it again; if it fails the same way, check ComfyUI's log for a crash "
        "or out-of-memory kill.")


def base64_lost_after_restart() -> dict:
    return runtime_error(
        "InternalServerError",
        "The server restarted after this prediction completed, and its return_base64 outputs were held only "
        "in memory (with return_base64 no image is written to disk). Run it again, or ask for URL outputs "
        "(return_base64 false): those are kept across restarts for the retention time.")


def concurrency_limit(busy: int, limit: int) -> HttpError:
    return HttpError(429, "ConcurrencyLimitExceeded",
                     f"{busy} predictions are already in progress on this server (limit {limit}): "
                     "retry once one completes, or raise MODELSWAP_API_MAX_IN_FLIGHT.")


class Store(Protocol):
    """Where predictions live, and how a prediction reaches a worker (``run_job``)."""

    async def create(self, request: RunRequest, base_url: str) -> Prediction:
        """Write a new prediction (``starting``) and hand it to a worker; 429 when too many are unfinished."""

    async def get(self, prediction_id: str) -> Prediction:
        """The prediction, or ``HttpError`` 404 when unknown or expired."""

    async def save(self, prediction: Prediction) -> None:
        """Record a change of an unfinished prediction (status, attempts)."""

    async def finish(self, prediction: Prediction, keep_s: float) -> bool:
        """Record the end (kept ``keep_s`` seconds); False when another worker ended it first."""

    async def webhook_sent(self, prediction: Prediction) -> None: ...

    async def put_output(self, prediction: Prediction, name: str, data: bytes, keep_s: float) -> None: ...

    async def read_output(self, prediction_id: str, name: str) -> bytes | None: ...

    async def start(self, run_job: Callable[[Prediction], Awaitable[None]],
                    deliver: Callable[[Prediction], Awaitable[None]]) -> None:
        """Begin handing predictions to ``run_job``: resumed ones first; retry undelivered webhooks."""

    async def close(self) -> None: ...

"""Predictions in memory: their lifecycle, the in-flight limit and how long results are kept."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .protocol import TERMINAL, HttpError, RunRequest, not_found, status_response


@dataclass
class Prediction:
    id: str
    request: RunRequest
    base_url: str  # where output URLs point (this server, as the client reached it)
    status: str = "starting"
    output: list[str] | None = None
    error: dict | None = None
    expires: float | None = None  # set when it ends
    prompt_id: str = ""  # the id of its job in ComfyUI's queue
    output_node: str = ""  # the SaveImage node whose images are the outputs
    files: dict[str, Path] = field(default_factory=dict)  # served output name -> file
    work_dirs: list[Path] = field(default_factory=list)  # removed when the prediction goes

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def payload(self) -> dict:
        return status_response(self.id, self.status, self.output, self.error)


class PredictionStore:
    """Every prediction this server knows, by id. Runs on the server's event loop (no locking)."""

    def __init__(self, *, max_in_flight: int, clock: Callable[[], float] = time.monotonic,
                 on_expire: Callable[[Prediction], None] = lambda p: None):
        self.max_in_flight = max_in_flight
        self.clock = clock
        self.on_expire = on_expire
        self._items: dict[str, Prediction] = {}

    def in_flight(self) -> int:
        return sum(not p.done for p in self._items.values())

    def create(self, request: RunRequest, base_url: str) -> Prediction:
        """A new prediction, or 429 ConcurrencyLimitExceeded when too many are unfinished."""
        self.sweep()
        busy = self.in_flight()
        if busy >= self.max_in_flight:
            raise HttpError(429, "ConcurrencyLimitExceeded",
                            f"{busy} predictions are already in progress on this server (limit {self.max_in_flight}): "
                            "retry once one completes, or raise MODELSWAP_API_MAX_IN_FLIGHT.")
        prediction = Prediction(id=str(uuid.uuid4()), request=request, base_url=base_url)
        self._items[prediction.id] = prediction
        return prediction

    def get(self, prediction_id: str) -> Prediction:
        self.sweep()
        prediction = self._items.get(prediction_id)
        if prediction is None:
            raise not_found(prediction_id)
        return prediction

    def finish(self, prediction: Prediction, *, keep_s: float) -> None:
        prediction.expires = self.clock() + keep_s

    def sweep(self) -> None:
        """Forget predictions whose results expired, removing their files."""
        now = self.clock()
        for pid in [pid for pid, p in self._items.items() if p.expires is not None and p.expires <= now]:
            self.on_expire(self._items.pop(pid))

    def all(self) -> list[Prediction]:
        return list(self._items.values())

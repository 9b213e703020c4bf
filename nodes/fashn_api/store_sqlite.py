"""The embedded prediction store: one SQLite file (WAL) under ComfyUI's user directory.

Every prediction is written before its id is answered, and each change of status after. On
start-up, predictions that were accepted but had not ended are started again from their stored
request (``start``); ended ones keep answering until their retention time is over, and URL
outputs stay in ComfyUI's output folder for that time. Input images live in the row only while
the prediction runs; ``secure_delete`` and a WAL checkpoint then overwrite them on disk.
``return_base64`` outputs are never written here: they are held in memory (the stored record has
none), so after a restart such
a prediction answers a clear error instead of its images.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from .predictions import (WEBHOOK_DONE, WEBHOOK_PENDING, Prediction, base64_lost_after_restart,
                          concurrency_limit)
from .protocol import RunRequest, not_found

log = logging.getLogger("comfyui_model_swap.api")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
)"""


class SqliteStore:
    def __init__(self, path: Path | str, output_root: Path, *, max_in_flight: int,
                 clock: Callable[[], float] = time.time):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.output_root = Path(output_root)  # URL outputs: <output_root>/<id>/<name>
        self.max_in_flight = max_in_flight
        self.clock = clock
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "secure_delete=ON"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(SCHEMA)
        self._items: dict[str, Prediction] = {}
        self._run_job: Callable[[Prediction], Awaitable[None]] | None = None
        self._backlog: list[Prediction] = []  # accepted before start()
        self._tasks: set[asyncio.Task] = set()
        self._load()

    def _load(self) -> None:
        for (text,) in self._db.execute("SELECT record FROM predictions ORDER BY seq"):
            prediction = Prediction.from_json(text)
            if prediction.done and prediction.request.return_base64 and prediction.output is None \
                    and prediction.status == "completed":
                prediction.status, prediction.error = "failed", base64_lost_after_restart()
            self._items[prediction.id] = prediction

    # ---------------------------------------------------------------------------- records
    def _write(self, prediction: Prediction) -> None:
        text = prediction.to_json(keep_base64_output=False)
        self._db.execute("INSERT INTO predictions (id, record) VALUES (?, ?) "
                         "ON CONFLICT(id) DO UPDATE SET record = excluded.record", (prediction.id, text))

    async def create(self, request: RunRequest, base_url: str) -> Prediction:
        self.sweep()
        busy = sum(not p.done for p in self._items.values())
        if busy >= self.max_in_flight:
            raise concurrency_limit(busy, self.max_in_flight)
        prediction = Prediction(id=str(uuid.uuid4()), request=request, base_url=base_url)
        self._write(prediction)
        prediction.seq = self._db.execute("SELECT seq FROM predictions WHERE id = ?", (prediction.id,)).fetchone()[0]
        self._items[prediction.id] = prediction
        if self._run_job is None:
            self._backlog.append(prediction)
        else:
            self._spawn(self._run_job(prediction))
        return prediction

    async def get(self, prediction_id: str) -> Prediction:
        self.sweep()
        prediction = self._items.get(prediction_id)
        if prediction is None:
            raise not_found(prediction_id)
        return prediction

    async def save(self, prediction: Prediction) -> None:
        self._write(prediction)

    async def finish(self, prediction: Prediction, keep_s: float) -> bool:
        prediction.expires = self.clock() + keep_s
        if prediction.request.webhook_url:
            prediction.webhook = WEBHOOK_PENDING
        self._write(prediction)
        if prediction.request.return_base64 or _has_data_uri(prediction):
            self._overwrite_wal()
        return True

    async def webhook_sent(self, prediction: Prediction) -> None:
        prediction.webhook = WEBHOOK_DONE
        self._write(prediction)

    def _overwrite_wal(self) -> None:
        """The WAL still holds the page with the input images: copy it back into the (secure-deleted)
        database and truncate it, so no image of the prediction stays on disk."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ---------------------------------------------------------------------------- outputs
    async def put_output(self, prediction: Prediction, name: str, data: bytes, keep_s: float) -> None:
        folder = self.output_root / prediction.id
        folder.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread((folder / name).write_bytes, data)

    async def read_output(self, prediction_id: str, name: str) -> bytes | None:
        prediction = await self.get(prediction_id)
        if name not in prediction.outputs:
            return None
        path = self.output_root / prediction_id / name
        return await asyncio.to_thread(path.read_bytes) if path.is_file() else None

    def kept_ids(self) -> set[str]:
        """Predictions whose URL outputs must stay on disk (completed, not expired)."""
        return {p.id for p in self._items.values() if p.status == "completed" and p.outputs}

    # ---------------------------------------------------------------------------- expiry
    def sweep(self) -> None:
        """Forget predictions whose results expired, with their files."""
        now = self.clock()
        gone = [pid for pid, p in self._items.items() if p.expires is not None and p.expires <= now]
        for pid in gone:
            del self._items[pid]
            self._db.execute("DELETE FROM predictions WHERE id = ?", (pid,))
            shutil.rmtree(self.output_root / pid, ignore_errors=True)

    def all(self) -> list[Prediction]:
        return list(self._items.values())

    # ---------------------------------------------------------------------------- workers
    async def start(self, run_job: Callable[[Prediction], Awaitable[None]],
                    deliver: Callable[[Prediction], Awaitable[None]]) -> None:
        """Resume unfinished predictions in order of arrival (they lost their place in ComfyUI's
        queue with the process), then those accepted while starting; retry undelivered webhooks."""
        resumed = [p for p in self._items.values() if not p.done and p not in self._backlog]
        if resumed:
            log.warning("model-swap API: resuming %d prediction(s) accepted before a restart", len(resumed))
        self._run_job = run_job
        for prediction in sorted(resumed, key=lambda p: p.seq) + self._backlog:
            self._spawn(run_job(prediction))
        self._backlog = []
        for prediction in self._items.values():
            if prediction.done and prediction.webhook == WEBHOOK_PENDING:
                self._spawn(deliver(prediction))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._db.close()


def _has_data_uri(prediction: Prediction) -> bool:
    return any(ref is not None and ref[:5].lower() == "data:"
               for ref in (prediction.request.model_image, prediction.request.face_reference))

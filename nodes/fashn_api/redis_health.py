"""Redis as an operator sees it: one log line when an outage begins, one when it ends; ``GET /v1/cluster``.

An outage is Redis unreachable (connection refused or lost, a timeout) or Redis come back empty (it
restarted without persistence, or was flushed: the job stream and its consumer group are gone, or the
queue's epoch token changed). While it lasts the job queue is retried every second without another
line; when Redis answers, the stream and group are made again if they are missing (idempotent, so every
instance may try) and one line says that it is back and whether its data was lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("comfyui_model_swap.api")
RETRY_S = 1.0  # between tries of the job queue while Redis is out


def redis_trouble(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def queue_missing(exc: BaseException) -> bool:
    """The stream or its consumer group does not exist (Redis lost its data)."""
    return isinstance(exc, ResponseError) and ("NOGROUP" in str(exc) or "no such key" in str(exc))


class Health:
    """One instance's view of Redis. ``check_queue`` makes the stream and group unless they exist and
    returns ``(created, epoch)``; a changed epoch means Redis lost the queue since the last check."""

    def __init__(self, worker: str, where: str, check_queue: Callable[[], Awaitable[tuple[bool, str]]]):
        self.worker = worker
        self.where = where  # host:port or socket path, never the password
        self._check_queue = check_queue
        self.epoch: str | None = None
        self.outages = 0
        self.last_error = ""
        self.last_error_at: float | None = None
        self._outage: tuple[float, str] | None = None  # (monotonic start, why)
        self._lock = asyncio.Lock()

    @property
    def in_outage(self) -> bool:
        return self._outage is not None

    async def failed(self, exc: BaseException) -> None:
        """A Redis call failed: note it; the first failure of an outage is logged, later ones are not."""
        if not isinstance(exc, (RedisError, OSError)):  # a bug, not Redis: keep its traceback
            log.error("model-swap API: worker %s: unexpected error in the job queue", self.worker, exc_info=exc)
            return
        self._note(exc)
        if queue_missing(exc):
            try:
                await self.check()
                return
            except (RedisError, OSError) as again:
                self._note(again)
                exc = again
        self._begin(f"Redis at {self.where} fails ({redis_trouble(exc)})")

    async def ok(self) -> None:
        """A Redis call succeeded: during an outage, check the queue and end the outage."""
        if self._outage is not None:
            try:
                await self.check()
            except (RedisError, OSError) as exc:
                self._note(exc)

    async def check(self) -> None:
        """Make sure the queue exists (again); say so once if Redis lost it; end an outage."""
        async with self._lock:
            created, epoch = await self._check_queue()
            lost = self.epoch is not None and (created or epoch != self.epoch)
            if lost and self._outage is None:
                self._begin(f"Redis at {self.where} restarted or was emptied: the job queue was gone")
            if self._outage is not None:
                since, _ = self._outage
                self._outage = None
                log.warning("model-swap API: Redis at %s is back for worker %s after %.1f s%s", self.where,
                            self.worker, time.monotonic() - since,
                            "; it had lost its data, so the job queue was made again: predictions accepted "
                            "before answer 404 (keep them with Redis persistence, see README 'Several GPUs')"
                            if lost else "; the job queue is intact")
            self.epoch = epoch

    def _note(self, exc: BaseException) -> None:
        self.last_error = redis_trouble(exc)[:300]
        self.last_error_at = time.time()

    def _begin(self, why: str) -> None:
        if self._outage is not None:
            return
        self._outage = (time.monotonic(), why)
        self.outages += 1
        log.warning("model-swap API: Redis outage for worker %s: %s. It takes no jobs until Redis answers; "
                    "retrying every second, and the next line says when Redis is back.", self.worker, why)

    def status(self) -> dict:
        return {"redis_outage_s": None if self._outage is None else round(time.monotonic() - self._outage[0], 1),
                "redis_outages": self.outages, "last_redis_error": self.last_error,
                "last_redis_error_at": None if self.last_error_at is None else
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_error_at))}


async def cluster_view(store) -> dict:
    """What ``GET /v1/cluster`` answers for a ``RedisStore``: this instance, the live instances (their
    counters, listed by each one every tick) and the queue's sizes; Redis unreachable says why."""
    mine = store.instance_status()
    jobs = store.key("jobs")
    try:
        async with store.redis.pipeline(transaction=False) as pipe:
            pipe.scard(store.key("unfinished"))
            pipe.xlen(jobs)
            pipe.get(store.key("ended"))
            pipe.zcard(store.key("webhooks"))
            pipe.zrange(store.key("instances"), 0, -1)
            in_flight, entries, ended, webhooks, names = await pipe.execute()
        try:
            pending = {c["name"]: c["pending"] for c in await store.redis.xinfo_consumers(jobs, store.group)}
        except ResponseError as exc:
            if not queue_missing(exc):
                raise
            pending = {}
        infos = await store.redis.mget([store.key("instance", n.decode()) for n in names]) if names else []
    except (RedisError, OSError) as exc:
        return {"redis": {"address": store.health.where, "reachable": False, "error": redis_trouble(exc)},
                "this_instance": mine}
    instances = [{**json.loads(info), "jobs_pending_in_redis": pending.get(name, 0)}
                 for name, info in zip(names, infos) if info]
    return {"redis": {"address": store.health.where, "reachable": True, "in_flight": in_flight,
                      "max_in_flight": store.max_in_flight, "stream_entries": entries, "ended": int(ended or 0),
                      "webhooks_pending": webhooks, "workers_in_group": len(pending)},
            "this_instance": mine, "instances": instances}

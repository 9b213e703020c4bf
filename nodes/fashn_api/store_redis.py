"""The shared prediction store and job queue: one Redis server, any number of ComfyUI instances.

Keys (all under ``MODELSWAP_API_REDIS_PREFIX``, default ``modelswap``):

- ``<p>:pred:<id>``       the prediction's JSON record (expires with the results);
- ``<p>:out:<id>:<name>`` each URL output's bytes, so any instance serves any output;
- ``<p>:jobs``            a stream with one entry per accepted prediction, read by the consumer
                          group ``workers``; an entry is acknowledged only once its prediction
                          has ended (at-least-once delivery);
- ``<p>:unfinished``      ids accepted and not ended (the cluster-wide in-flight limit);
- ``<p>:webhooks``        ended predictions whose webhook is not yet delivered (by time);
- ``<p>:ended``           how many predictions ended (each counted once).

Each instance reads a job only while it holds fewer than ``MODELSWAP_API_WORKER_SLOTS``, so a
busy GPU takes nothing more. A worker renews its claim every third of ``MODELSWAP_API_CLAIM_S``;
a claim left idle that long (its worker died) is taken over by another instance (XAUTOCLAIM).
Ending is a compare-and-set: a prediction is ended once, even if two workers ran it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import ResponseError, WatchError

from .predictions import WEBHOOK_DONE, WEBHOOK_PENDING, Prediction, concurrency_limit
from .protocol import RunRequest, not_found

log = logging.getLogger("comfyui_model_swap.api")
GROUP = "workers"


class RedisStore:
    def __init__(self, url: str, *, prefix: str, max_in_flight: int, slots: int, claim_s: float,
                 keep_running_s: float, clock: Callable[[], float] = time.time):
        self.redis = aioredis.Redis.from_url(url, decode_responses=False)
        self.prefix = prefix
        self.max_in_flight = max_in_flight
        self.slots = slots
        self.claim_ms = max(1, int(claim_s * 1000))
        self.keep_running_s = keep_running_s  # how long a record lives while unfinished
        self.clock = clock
        self.consumer = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._held: dict[bytes, str] = {}  # stream entry id -> prediction id, claimed here
        self._free: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # ---------------------------------------------------------------------------- records
    async def create(self, request: RunRequest, base_url: str) -> Prediction:
        busy = await self.redis.scard(self.key("unfinished"))
        if busy >= self.max_in_flight:
            raise concurrency_limit(busy, self.max_in_flight)
        prediction = Prediction(id=str(uuid.uuid4()), request=request, base_url=base_url)
        prediction.seq = time.time_ns()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key("pred", prediction.id), prediction.to_json(), ex=int(self.keep_running_s))
            pipe.sadd(self.key("unfinished"), prediction.id)
            pipe.xadd(self.key("jobs"), {"id": prediction.id})
            await pipe.execute()
        return prediction

    async def get(self, prediction_id: str) -> Prediction:
        text = await self.redis.get(self.key("pred", prediction_id))
        if text is None:
            raise not_found(prediction_id)
        return Prediction.from_json(text)

    async def save(self, prediction: Prediction) -> None:
        await self._unless_ended(prediction, lambda pipe: pipe.set(
            self.key("pred", prediction.id), prediction.to_json(), ex=int(self.keep_running_s)))

    async def finish(self, prediction: Prediction, keep_s: float) -> bool:
        prediction.expires = self.clock() + keep_s
        if prediction.request.webhook_url:
            prediction.webhook = WEBHOOK_PENDING

        def write(pipe):
            pipe.set(self.key("pred", prediction.id), prediction.to_json(), ex=max(1, int(keep_s)))
            pipe.srem(self.key("unfinished"), prediction.id)
            pipe.incr(self.key("ended"))
            if prediction.webhook == WEBHOOK_PENDING:
                pipe.zadd(self.key("webhooks"), {prediction.id: self.clock()})

        if await self._unless_ended(prediction, write):
            return True
        log.info("model-swap API: prediction %s was already ended by another worker", prediction.id)
        return False

    async def _unless_ended(self, prediction: Prediction, write: Callable) -> bool:
        """Run ``write(pipeline)`` atomically unless the stored prediction has ended (a worker whose
        claim was taken over must not overwrite the result of the one that took it)."""
        key = self.key("pred", prediction.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    current = await pipe.get(key)
                    if current is not None and Prediction.from_json(current).done:
                        await pipe.unwatch()
                        return False
                    pipe.multi()
                    write(pipe)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def webhook_sent(self, prediction: Prediction) -> None:
        prediction.webhook = WEBHOOK_DONE
        key = self.key("pred", prediction.id)
        ttl = await self.redis.ttl(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            if ttl and ttl > 0:
                pipe.set(key, prediction.to_json(), ex=ttl)
            pipe.zrem(self.key("webhooks"), prediction.id)
            await pipe.execute()

    async def put_output(self, prediction: Prediction, name: str, data: bytes, keep_s: float) -> None:
        await self.redis.set(self.key("out", prediction.id, name), data, ex=max(1, int(keep_s)))

    async def read_output(self, prediction_id: str, name: str) -> bytes | None:
        prediction = await self.get(prediction_id)
        if name not in prediction.outputs:
            return None
        return await self.redis.get(self.key("out", prediction_id, name))

    # ---------------------------------------------------------------------------- workers
    async def start(self, run_job: Callable[[Prediction], Awaitable[None]],
                    deliver: Callable[[Prediction], Awaitable[None]]) -> None:
        try:
            await self.redis.xgroup_create(self.key("jobs"), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        stale = await self.redis.zrangebyscore(self.key("webhooks"), "-inf", self.clock() - self.claim_ms / 1000)
        for raw in stale:
            try:
                prediction = await self.get(raw.decode())
            except Exception:  # noqa: BLE001 - expired meanwhile
                await self.redis.zrem(self.key("webhooks"), raw)
                continue
            self._spawn(deliver(prediction))
        self._free = asyncio.Semaphore(self.slots)
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._take_jobs(run_job)), loop.create_task(self._renew())]
        log.info("model-swap API: worker %s reads jobs from Redis (%d slots, claims expire after %.0f s)",
                 self.consumer, self.slots, self.claim_ms / 1000)

    async def _take_jobs(self, run_job) -> None:
        """With a free slot: first a job whose claim expired (its worker died), else a new one."""
        while True:
            await self._free.acquire()
            try:
                reply = await self.redis.xautoclaim(self.key("jobs"), GROUP, self.consumer, self.claim_ms, "0-0",
                                                    count=1)
                # an entry of this worker's own is only late in being renewed (a busy event loop)
                entries = [e for e in (reply[1] if len(reply) > 1 else []) if e and e[1] and e[0] not in self._held]
                if entries:
                    log.warning("model-swap API: taking over job %s whose worker stopped renewing its claim",
                                entries[0][1].get(b"id", b"?").decode())
                else:
                    reply = await self.redis.xreadgroup(GROUP, self.consumer, {self.key("jobs"): ">"}, count=1,
                                                        block=max(100, min(1000, self.claim_ms // 3)))
                    entries = reply[0][1] if reply else []
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis briefly unreachable: try again
                log.exception("model-swap API: reading the job queue failed")
                entries = []
                await asyncio.sleep(1.0)
            if not entries:
                self._free.release()
                continue
            entry_id, fields = entries[0]
            self._take(entry_id, fields, run_job)

    async def _renew(self) -> None:
        """Renew this worker's claims (reset their idle time) every third of the claim time."""
        while True:
            await asyncio.sleep(self.claim_ms / 3000)
            if not self._held:
                continue
            try:
                await self.redis.xclaim(self.key("jobs"), GROUP, self.consumer, 0, list(self._held), justid=True)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("model-swap API: renewing job claims failed")

    def _take(self, entry_id: bytes, fields: dict, run_job) -> None:
        prediction_id = fields[b"id"].decode()
        self._held[entry_id] = prediction_id
        self._spawn(self._run(entry_id, prediction_id, run_job))

    async def _run(self, entry_id: bytes, prediction_id: str, run_job) -> None:
        try:
            try:
                prediction = await self.get(prediction_id)
            except Exception:  # noqa: BLE001 - expired or unknown: nothing to run
                prediction = None
            if prediction is not None and not prediction.done:
                await run_job(prediction)
            await self.redis.xack(self.key("jobs"), GROUP, entry_id)
            await self.redis.xdel(self.key("jobs"), entry_id)
        finally:
            self._held.pop(entry_id, None)
            self._free.release()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        await self.redis.aclose()

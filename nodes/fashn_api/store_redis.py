"""The shared prediction store and job queue: one Redis server, any number of ComfyUI instances.

Keys (all under ``MODELSWAP_API_REDIS_PREFIX``, default ``modelswap``); each has a bounded size or life:

- ``<p>:pred:<id>``       the prediction's JSON record; expires (while unfinished, the URL-output
                          retention after its last change; once ended, its retention time);
- ``<p>:out:<id>:<name>`` each URL output's bytes (so any instance serves any output); expires with it;
- ``<p>:jobs``            a stream with one entry per accepted, unfinished prediction, read by the
                          consumer group ``workers``; an entry is acknowledged and deleted in one step
                          once its prediction has ended (at-least-once delivery), so the stream holds
                          only jobs waiting or pending: about ``MODELSWAP_API_MAX_IN_FLIGHT`` at most;
- ``<p>:unfinished``      ids accepted and not ended: at most ``MODELSWAP_API_MAX_IN_FLIGHT`` (the cap
                          is checked and taken in one script);
- ``<p>:webhooks``        ended predictions whose webhook is not yet delivered (an entry goes when it
                          is delivered or its record expires);
- ``<p>:ended``           one integer: how many predictions ended (each counted once);
- ``<p>:epoch``           one short token, set when the queue is created: a different one means Redis
                          lost its data (restarted without persistence) and the queue was made again;
- ``<p>:instances``, ``<p>:instance:<worker>``  the live instances and their counters (``GET
                          /v1/cluster``); an instance silent for ``MODELSWAP_API_CLAIM_S`` drops out.

Each instance reads a job only while it holds fewer than ``MODELSWAP_API_WORKER_SLOTS``, so a busy
GPU takes nothing more. A worker renews its claims every second (at most a third of
``MODELSWAP_API_CLAIM_S``); a claim left idle that long (its worker died) is taken over by another
instance (XAUTOCLAIM), and the dead worker is then removed from the group. Ending is a compare-and-set:
a prediction is ended once, even if two workers ran it. Redis trouble (unreachable, restarted, come back
empty) is one log line per outage and one when it is over (``redis_health``), never a traceback a second;
the queue is made again when Redis comes back empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .predictions import WEBHOOK_DONE, WEBHOOK_PENDING, Prediction, concurrency_limit
from .protocol import HttpError, RunRequest, not_found
from .redis_health import RETRY_S, Health, cluster_view, redis_trouble

log = logging.getLogger("comfyui_model_swap.api")
GROUP = "workers"  # the consumer group every instance reads the job stream with
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# Check the cluster-wide cap and take a place under it in one step: no burst on any number of
# instances gets past it. KEYS: unfinished, the record, the stream; ARGV: cap, record, ttl, id.
CREATE = """
local busy = redis.call('SCARD', KEYS[1])
if busy >= tonumber(ARGV[1]) then return busy end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[4])
redis.call('XADD', KEYS[3], '*', 'id', ARGV[4])
return -1
"""

# Housekeeping, atomic so a worker cannot take a job between the check and the removal. Removes
# consumers with no pending job, idle past the claim time and no live instance (their jobs were taken
# over); unfinished ids and webhook entries whose record is gone. KEYS: stream, unfinished, webhooks;
# ARGV: group, claim ms, record key prefix, instance key prefix. Returns the removed consumers.
SWEEP = """
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] > tonumber(ARGV[2]) and redis.call('EXISTS', ARGV[4] .. f['name']) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed[#removed + 1] = f['name']
  end
end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[3] .. id) == 0 then redis.call('SREM', KEYS[2], id) end
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, 99)) do
  if redis.call('EXISTS', ARGV[3] .. id) == 0 then redis.call('ZREM', KEYS[3], id) end
end
return removed
"""

WRITTEN, ENDED, GONE = "written", "ended", "gone"


class RedisStore:
    def __init__(self, url: str, *, prefix: str, max_in_flight: int, slots: int, claim_s: float,
                 keep_running_s: float, clock: Callable[[], float] = time.time):
        self.redis = aioredis.Redis.from_url(url, decode_responses=False)
        self.prefix = prefix
        self.group = GROUP
        self.max_in_flight = max_in_flight
        self.slots = slots
        self.claim_ms = max(1, int(claim_s * 1000))
        self.tick_s = min(1.0, self.claim_ms / 3000)  # claims renewed, Redis checked, instance listed
        self.keep_running_s = keep_running_s  # how long a record lives while unfinished
        self.clock = clock
        self.consumer = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        kwargs = self.redis.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        self.health = Health(self.consumer, where, self._check_queue)
        self._create = self.redis.register_script(CREATE)
        self._sweep = self.redis.register_script(SWEEP)
        self._held: dict[bytes, str] = {}  # stream entry id -> prediction id, claimed here
        self.taken_over = 0  # jobs this instance took over from a dead worker
        self.removed = 0  # dead workers this instance removed from the group
        self._free: asyncio.Semaphore | None = None
        self._deliver: Callable[[Prediction], Awaitable[None]] | None = None
        self._webhooks_checked = False
        self._tasks: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # ---------------------------------------------------------------------------- records
    async def create(self, request: RunRequest, base_url: str) -> Prediction:
        prediction = Prediction(id=str(uuid.uuid4()), request=request, base_url=base_url)
        prediction.seq = time.time_ns()
        async with self._answering():
            busy = await self._create(keys=[self.key("unfinished"), self.key("pred", prediction.id),
                                            self.key("jobs")],
                                      args=[self.max_in_flight, prediction.to_json(), int(self.keep_running_s),
                                            prediction.id])
        if busy >= 0:
            raise concurrency_limit(busy, self.max_in_flight)
        return prediction

    async def get(self, prediction_id: str) -> Prediction:
        async with self._answering():
            prediction = await self._load(prediction_id)
        if prediction is None:
            raise not_found(prediction_id)
        return prediction

    async def _load(self, prediction_id: str) -> Prediction | None:
        text = await self.redis.get(self.key("pred", prediction_id))
        return None if text is None else Prediction.from_json(text)

    @contextlib.asynccontextmanager
    async def _answering(self):
        """For request handlers: Redis unreachable answers FASHN's 500 with the reason (no traceback)."""
        try:
            yield
        except UNREACHABLE as exc:
            await self.health.failed(exc)
            raise HttpError(500, "InternalServerError", f"The prediction store (Redis at {self.health.where}) does "
                            f"not answer ({redis_trouble(exc)}); retry in a few seconds.") from None

    async def save(self, prediction: Prediction) -> None:
        """Record a status step; with Redis unreachable the step is skipped (the end is what counts)."""
        try:
            await self._unless_ended(prediction, lambda pipe: pipe.set(
                self.key("pred", prediction.id), prediction.to_json(), ex=int(self.keep_running_s)))
        except UNREACHABLE as exc:
            await self.health.failed(exc)

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

        while True:  # the end is kept for Redis: wait for it to answer (one log line, not one a try)
            try:
                outcome = await self._unless_ended(prediction, write)
                break
            except UNREACHABLE as exc:
                await self.health.failed(exc)
                await asyncio.sleep(RETRY_S)
        if outcome == WRITTEN:
            return True
        if outcome == GONE:
            log.warning("model-swap API: prediction %s ended, but Redis no longer has its record (Redis restarted "
                        "without persistence, or the record expired): its result is dropped and its id answers 404",
                        prediction.id)
            if prediction.outputs:  # unreachable without the record; they would only wait for their expiry
                with contextlib.suppress(*UNREACHABLE):
                    await self.redis.delete(*(self.key("out", prediction.id, name) for name in prediction.outputs))
        else:
            log.info("model-swap API: prediction %s was already ended by another worker", prediction.id)
        return False

    async def _unless_ended(self, prediction: Prediction, write: Callable) -> str:
        """Run ``write(pipeline)`` atomically while the stored prediction exists and has not ended (a
        worker whose claim was taken over must not overwrite the result of the one that took it; a
        record Redis lost is not written again)."""
        key = self.key("pred", prediction.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    current = await pipe.get(key)
                    if current is None or Prediction.from_json(current).done:
                        await pipe.unwatch()
                        return GONE if current is None else ENDED
                    pipe.multi()
                    write(pipe)
                    await pipe.execute()
                    return WRITTEN
                except WatchError:
                    continue

    async def webhook_sent(self, prediction: Prediction) -> None:
        prediction.webhook = WEBHOOK_DONE
        key = self.key("pred", prediction.id)
        try:
            ttl = await self.redis.ttl(key)
            async with self.redis.pipeline(transaction=True) as pipe:
                if ttl and ttl > 0:
                    pipe.set(key, prediction.to_json(), ex=ttl)
                pipe.zrem(self.key("webhooks"), prediction.id)
                await pipe.execute()
        except UNREACHABLE as exc:  # delivered; only the note is missing (sent again after a restart)
            await self.health.failed(exc)

    async def put_output(self, prediction: Prediction, name: str, data: bytes, keep_s: float) -> None:
        await self.redis.set(self.key("out", prediction.id, name), data, ex=max(1, int(keep_s)))

    async def read_output(self, prediction_id: str, name: str) -> bytes | None:
        prediction = await self.get(prediction_id)
        if name not in prediction.outputs:
            return None
        async with self._answering():
            return await self.redis.get(self.key("out", prediction_id, name))

    # ---------------------------------------------------------------------------- the queue
    async def _check_queue(self) -> tuple[bool, str]:
        """Create the stream and consumer group unless they exist (idempotent: any instance may, at
        any time); returns whether they were created and the queue's epoch token."""
        try:
            await self.redis.xgroup_create(self.key("jobs"), GROUP, id="0", mkstream=True)
            created = True  # from id 0: jobs accepted before the group was made are read too
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            created = False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key("epoch"), f"{int(self.clock())}-{uuid.uuid4().hex[:8]}", nx=True)
            pipe.get(self.key("epoch"))
            _, epoch = await pipe.execute()
        return created, epoch.decode()

    # ---------------------------------------------------------------------------- workers
    async def start(self, run_job: Callable[[Prediction], Awaitable[None]],
                    deliver: Callable[[Prediction], Awaitable[None]]) -> None:
        self._deliver = deliver
        self._free = asyncio.Semaphore(self.slots)
        try:
            await self.health.check()
            await self._retry_webhooks()
        except Exception as exc:  # noqa: BLE001 - Redis not up yet: the loops wait for it, saying so once
            await self.health.failed(exc)
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._take_jobs(run_job)), loop.create_task(self._upkeep())]
        log.info("model-swap API: worker %s reads jobs from Redis (%d slots, claims expire after %g s)",
                 self.consumer, self.slots, self.claim_ms / 1000)

    async def _retry_webhooks(self) -> None:
        """Once: deliver the webhooks of predictions whose deliverer stopped (an instance crashed)."""
        stale = await self.redis.zrangebyscore(self.key("webhooks"), "-inf", self.clock() - self.claim_ms / 1000)
        for raw in stale:
            prediction = await self._load(raw.decode())
            if prediction is None:  # expired meanwhile
                await self.redis.zrem(self.key("webhooks"), raw)
                continue
            self._spawn(self._deliver(prediction))
        self._webhooks_checked = True

    async def _take_jobs(self, run_job) -> None:
        """With a free slot: first a job whose claim expired (its worker died), else a new one."""
        while True:
            await self._free.acquire()
            try:
                entries = await self._next_job()
                await self.health.ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis unreachable or emptied: said once, retried
                entries = []
                await self.health.failed(exc)
                await asyncio.sleep(RETRY_S)
            if not entries:
                self._free.release()
                continue
            entry_id, fields = entries[0]
            self._take(entry_id, fields, run_job)

    async def _next_job(self) -> list:
        reply = await self.redis.xautoclaim(self.key("jobs"), GROUP, self.consumer, self.claim_ms, "0-0", count=1)
        # an entry of this worker's own is only late in being renewed (a busy event loop)
        entries = [e for e in (reply[1] if len(reply) > 1 else []) if e and e[1] and e[0] not in self._held]
        if entries:
            self.taken_over += 1
            log.warning("model-swap API: taking over job %s whose worker stopped renewing its claim",
                        entries[0][1].get(b"id", b"?").decode())
            return entries
        reply = await self.redis.xreadgroup(GROUP, self.consumer, {self.key("jobs"): ">"}, count=1,
                                            block=max(100, int(self.tick_s * 1000)))
        return reply[0][1] if reply else []

    async def _upkeep(self) -> None:
        """Every tick: renew this worker's claims (reset their idle time), notice a Redis that came back
        empty, list this instance, remove dead workers and stale ids; deliver crashed instances' webhooks."""
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                if self._held:
                    await self.redis.xclaim(self.key("jobs"), GROUP, self.consumer, 0, list(self._held), justid=True)
                epoch = await self.redis.get(self.key("epoch"))
                if self.health.in_outage or epoch is None or epoch.decode() != self.health.epoch:
                    await self.health.check()
                await self._list_instance()
                removed = await self._sweep(keys=[self.key("jobs"), self.key("unfinished"), self.key("webhooks")],
                                            args=[GROUP, self.claim_ms, self.key("pred", ""),
                                                  self.key("instance", "")])
                for name in removed:
                    self.removed += 1
                    log.info("model-swap API: removed worker %s from the job queue's group: no job pending, silent "
                             "for over %g s (its jobs were taken over)", name.decode(), self.claim_ms / 1000)
                if not self._webhooks_checked:
                    await self._retry_webhooks()
                await self.health.ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                await self.health.failed(exc)

    async def _list_instance(self) -> None:
        now = self.clock()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.key("instances"), {self.consumer: now})
            pipe.zremrangebyscore(self.key("instances"), "-inf", now - self.claim_ms / 1000)
            pipe.set(self.key("instance", self.consumer), json.dumps(self.instance_status()), px=self.claim_ms)
            await pipe.execute()

    def _take(self, entry_id: bytes, fields: dict, run_job) -> None:
        prediction_id = fields[b"id"].decode()
        self._held[entry_id] = prediction_id
        self._spawn(self._run(entry_id, prediction_id, run_job))

    async def _run(self, entry_id: bytes, prediction_id: str, run_job) -> None:
        try:
            prediction = await self._load(prediction_id)  # None: expired, or lost with Redis's data
            if prediction is not None and not prediction.done:
                await run_job(prediction)
            async with self.redis.pipeline(transaction=True) as pipe:  # the stream keeps only open jobs
                pipe.xack(self.key("jobs"), GROUP, entry_id)
                pipe.xdel(self.key("jobs"), entry_id)
                if prediction is None:
                    pipe.srem(self.key("unfinished"), prediction_id)
                await pipe.execute()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - not acknowledged: the claim lapses and a worker runs it again
            await self.health.failed(exc)
        finally:
            self._held.pop(entry_id, None)
            self._free.release()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------------------- operators
    def instance_status(self) -> dict:
        return {"worker": self.consumer, "slots": self.slots, "jobs_held": len(self._held),
                "jobs_taken_over": self.taken_over, "dead_workers_removed": self.removed, **self.health.status()}

    async def cluster_status(self) -> dict:
        return await cluster_view(self)

    async def close(self) -> None:
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        await self.redis.aclose()

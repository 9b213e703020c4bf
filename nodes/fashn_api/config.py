"""The API's settings, read from environment variables when ComfyUI starts (see README, "HTTP API")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..pipeline.engines import DEFAULT_ENGINE
from .image_input import MAX_INPUT_BYTES, MAX_INPUT_PIXELS
from .net import UrlPolicy

PREFIX = "MODELSWAP_API_"


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool = True
    api_key: str = ""  # empty: no key needed (then keep ComfyUI on loopback)
    max_in_flight: int = 32  # predictions not yet completed/failed; more answer 429
    keep_url_outputs_s: float = 72 * 3600  # FASHN keeps CDN outputs 72 h
    keep_base64_s: float = 60 * 60  # and base64 results 60 min
    fetch_max_bytes: int = MAX_INPUT_BYTES
    fetch_timeout_s: float = 20.0
    max_input_pixels: int = MAX_INPUT_PIXELS
    fetch_policy: UrlPolicy = field(default_factory=UrlPolicy)
    public_url: str = ""  # base of output URLs; empty: the scheme and Host of the request
    webhook_attempts: int = 4
    fetch_concurrency: int = 8  # URL fetches at once; a slow host delays only its own prediction
    store_path: str = ""  # SQLite file; empty: <ComfyUI user directory>/modelswap_api/predictions.sqlite3
    redis_url: str = ""  # set: predictions and jobs are shared through this Redis server
    redis_prefix: str = "modelswap"
    worker_slots: int = 2  # Redis mode: jobs this instance holds at once (one running, one ready)
    claim_s: float = 60.0  # Redis mode: a job whose worker stops renewing its claim this long is taken over
    max_attempts: int = 3  # times a prediction is started before a restart fails it
    engine: str = DEFAULT_ENGINE  # whose workflows and presets requests use: one of engines.ENGINES
    segmenter: str = ""  # GarmentMask's parser: "fashn", "selfie" (licence-clean); "": the workflow's own, or
    # "selfie" when MODELSWAP_COMMERCIAL_ONLY=1 (the licence guard refuses FASHN's parser)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ApiConfig":
        """Settings from ``MODELSWAP_API_*``; a malformed value raises ValueError naming the variable."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(PREFIX + name)
            return None if value is None or not value.strip() else value.strip()

        def number(name: str, kind, default, low):
            raw = get(name)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{PREFIX}{name}={raw!r} is not a number.") from None
            if value < low:
                raise ValueError(f"{PREFIX}{name}={raw!r} must be at least {low}.")
            return value

        try:
            policy = UrlPolicy.from_setting(get("FETCH_ALLOW") or "")
        except ValueError as exc:
            raise ValueError(f"{PREFIX}FETCH_ALLOW: {exc}") from None
        d = cls()
        return cls(
            enabled=(get("ENABLED") or "1").lower() not in ("0", "false", "no", "off"),
            api_key=get("KEY") or "",
            max_in_flight=number("MAX_IN_FLIGHT", int, d.max_in_flight, 1),
            keep_url_outputs_s=number("KEEP_URL_OUTPUTS_S", float, d.keep_url_outputs_s, 1),
            keep_base64_s=number("KEEP_BASE64_S", float, d.keep_base64_s, 1),
            fetch_max_bytes=number("FETCH_MAX_BYTES", int, d.fetch_max_bytes, 1024),
            fetch_timeout_s=number("FETCH_TIMEOUT_S", float, d.fetch_timeout_s, 0.1),
            max_input_pixels=number("MAX_INPUT_PIXELS", int, d.max_input_pixels, 64 * 64),
            fetch_policy=policy,
            public_url=(get("PUBLIC_URL") or "").rstrip("/"),
            webhook_attempts=number("WEBHOOK_ATTEMPTS", int, d.webhook_attempts, 1),
            fetch_concurrency=number("FETCH_CONCURRENCY", int, d.fetch_concurrency, 1),
            store_path=get("STORE") or "",
            redis_url=_redis_url(get("REDIS_URL") or ""),
            redis_prefix=get("REDIS_PREFIX") or d.redis_prefix,
            worker_slots=number("WORKER_SLOTS", int, d.worker_slots, 1),
            claim_s=number("CLAIM_S", float, d.claim_s, 0.5),
            max_attempts=number("MAX_ATTEMPTS", int, d.max_attempts, 1),
            engine=_engine(get("ENGINE") or d.engine),
            segmenter=_segmenter(get("SEGMENTER") or "", env),
        )


def _redis_url(value: str) -> str:
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{PREFIX}REDIS_URL={value!r} is not a Redis URL: use redis://host:6379/0 "
                         "(or rediss:// for TLS, unix:///path/to/redis.sock).")
    return value


def _segmenter(value: str, env: Mapping[str, str]) -> str:
    from ..pipeline import licence_guard
    from ..segmenters import check_name

    return check_name(value, f"{PREFIX}SEGMENTER") or ("selfie" if licence_guard.env_enabled(env) else "")


def _engine(value: str) -> str:
    from ..pipeline.engines import ENGINES

    if value not in ENGINES:
        raise ValueError(f"{PREFIX}ENGINE={value!r}: use one of {', '.join(ENGINES)}.")
    return value

"""FASHN's request, response and error shapes for ``model-swap``, and the request validation.

A request that breaks the schema (malformed JSON, a missing or unknown field, a wrong type, a
value out of range, another model name) is answered at once with HTTP 400 ``BadRequest`` and
creates no prediction. Problems found while running (an image that cannot be fetched or decoded,
no face in the reference) fail the prediction with FASHN's runtime error names instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from ..pipeline.contract import ASPECT_RATIOS, MODES, NUM_IMAGES, RESOLUTIONS, SEED
from ..pipeline.engines.base import GENERATION_MODES

MODEL_NAME = "model-swap"
STATUSES = ("starting", "in_queue", "processing", "completed", "failed")
TERMINAL = ("completed", "failed")
FORMATS = ("png", "jpeg")
MAX_PROMPT_CHARS = 2000
MAX_URL_CHARS = 4096


@dataclass(frozen=True)
class RunRequest:
    """A validated ``model-swap`` request; defaults are FASHN's."""

    model_image: str
    prompt: str = ""
    face_reference: str | None = None
    face_reference_mode: str = "match_reference"
    seed: int = SEED.default
    num_images: int = NUM_IMAGES.default
    output_format: str = "png"
    return_base64: bool = False
    generation_mode: str = "balanced"
    resolution: str = "1k"
    aspect_ratio: str | None = None  # one of contract.ASPECT_RATIOS; None keeps the photo's frame
    webhook_url: str | None = None

    def summary(self) -> dict:
        """The request without its images, for logs."""
        out = asdict(self)
        out["model_image"] = _describe_image(self.model_image)
        out["face_reference"] = None if self.face_reference is None else _describe_image(self.face_reference)
        return out


class HttpError(Exception):
    """An HTTP-level error: FASHN's body ``{"error": name, "message": ...}`` with ``status``."""

    def __init__(self, status: int, name: str, message: str):
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message

    def body(self) -> dict:
        return {"error": self.name, "message": self.message}


def bad_request(message: str) -> HttpError:
    return HttpError(400, "BadRequest", message)


def not_found(prediction_id: str) -> HttpError:
    return HttpError(404, "NotFound", f"No prediction with id {prediction_id!r}: the id is wrong, or its results "
                                      "expired (kept for the retention time set on this server).")


def unauthorized(message: str) -> HttpError:
    return HttpError(401, "UnauthorizedAccess", message)


# --------------------------------------------------------------------------------- responses

def run_response(prediction_id: str) -> dict:
    return {"id": prediction_id, "error": None}


def status_response(prediction_id: str, status: str, output: list[str] | None, error: dict | None) -> dict:
    return {"id": prediction_id, "status": status, "output": output, "error": error}


def runtime_error(name: str, message: str) -> dict:
    return {"name": name, "message": message}


# --------------------------------------------------------------------------------- validation

_TOP_LEVEL = {"model_name", "inputs", "webhook_url"}
# Client-side options of FASHN's TypeScript SDK (npm fashn 0.11): ``predictions.subscribe`` sends its
# whole parameter object as the body of POST /v1/run, so these polling settings arrive with it. They
# mean nothing to the server and are ignored. (Its callbacks, onEnqueued and onQueueUpdate, are
# functions, which JSON leaves out; the Python SDK 0.9 sends none of its options in the body.)
SDK_CLIENT_FIELDS = frozenset({"pollInterval", "timeout", "maxRetries"})
_INPUTS = {"model_image", "prompt", "face_reference", "face_reference_mode", "seed", "num_images",
           "output_format", "return_base64", "generation_mode", "resolution", "aspect_ratio"}


def parse_run_request(body: object, webhook_query: str | None = None) -> RunRequest:
    """Validate a decoded ``POST /v1/run`` body; raise ``HttpError`` 400 naming the field and the fix.

    FASHN's SDKs send ``webhook_url`` as a query parameter (``webhook_query``); it is also
    accepted in the body."""
    if not isinstance(body, dict):
        raise bad_request('The body must be a JSON object: {"model_name": "model-swap", "inputs": {...}}.')
    unknown = sorted(set(body) - _TOP_LEVEL - SDK_CLIENT_FIELDS)
    if unknown:
        raise bad_request(f"Unknown field(s) {', '.join(map(repr, unknown))} in the body: the body takes model_name, "
                          "inputs and optionally webhook_url.")
    if "model_name" not in body:
        raise bad_request('model_name is missing: send "model_name": "model-swap".')
    name = body["model_name"]
    if name != MODEL_NAME:
        raise bad_request(f"model_name {name!r} is not served here: this local server runs only {MODEL_NAME!r}.")
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        raise bad_request('inputs is missing or not an object: send "inputs": {"model_image": "<URL or data URI>"}.')
    unknown = sorted(set(inputs) - _INPUTS)
    if unknown:
        raise bad_request(f"Unknown input(s) {', '.join(map(repr, unknown))} for model-swap: the inputs are "
                          f"{', '.join(sorted(_INPUTS))}.")
    if "model_image" not in inputs:
        raise bad_request("inputs.model_image is missing: give the model photo as an http(s) URL or as "
                          "data:image/<format>;base64,<data>.")
    webhook = _optional(body, "webhook_url", str, "an http(s) URL")
    if webhook_query is not None:
        if webhook is not None and webhook != webhook_query:
            raise bad_request("webhook_url is given twice (query and body) with different values: give it once.")
        webhook = webhook_query
    if webhook is not None:
        _check_url_syntax(webhook, "webhook_url")
    face_reference = _optional(inputs, "face_reference", str, "an http(s) URL or data URI")
    return RunRequest(
        model_image=_image_ref(inputs["model_image"], "model_image"),
        prompt=_prompt(inputs.get("prompt", "")),
        face_reference=None if face_reference is None else _image_ref(face_reference, "face_reference"),
        face_reference_mode=_choice(inputs, "face_reference_mode", MODES, "match_reference"),
        seed=_integer(inputs, SEED),
        num_images=_integer(inputs, NUM_IMAGES),
        output_format=_choice(inputs, "output_format", FORMATS, "png"),
        return_base64=_boolean(inputs, "return_base64", False),
        generation_mode=_choice(inputs, "generation_mode", GENERATION_MODES, "balanced"),
        resolution=_choice(inputs, "resolution", RESOLUTIONS, "1k"),
        aspect_ratio=_aspect_ratio(inputs.get("aspect_ratio")),
        webhook_url=webhook,
    )


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _optional(mapping: dict, key: str, kind: type, wanted: str):
    value = mapping.get(key)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise bad_request(f"{key} must be {wanted}, not {_type_name(value)}.")
    return value


def _integer(inputs: dict, param) -> int:
    """An integer input checked by its declaration in contract.py (the same refusal as the node's widget
    and the runner's override, prefixed with where it was: ``inputs.``)."""
    value = inputs.get(param.name, param.default)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        lo, hi = param.bounds
        raise bad_request(f"inputs.{param.name} must be an integer from {lo} to {hi}, not {_type_name(value)}.")
    problem = param.problem(value)
    if problem is not None:
        raise bad_request(f"inputs.{problem}")
    return value


def _choice(inputs: dict, key: str, options: tuple[str, ...], default: str) -> str:
    value = inputs.get(key, default)
    if value not in options or not isinstance(value, str):
        raise bad_request(f"inputs.{key}={value!r} is not allowed: use one of {', '.join(options)}.")
    return value


def _aspect_ratio(value: object) -> str | None:
    """FASHN's aspect_ratio: one of its ten width:height values, or absent/null for the photo's own frame."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in ASPECT_RATIOS:
        raise bad_request(f"inputs.aspect_ratio={value!r} is not allowed: use one of {', '.join(ASPECT_RATIOS)} "
                          "(width:height; the photo is extended to it, never cropped), or leave it out to keep "
                          "the photo's frame.")
    return value


def _boolean(inputs: dict, key: str, default: bool) -> bool:
    value = inputs.get(key, default)
    if not isinstance(value, bool):
        raise bad_request(f"inputs.{key} must be true or false, not {_type_name(value)}.")
    return value


def _prompt(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"inputs.prompt must be a string, not {_type_name(value)}.")
    if len(value) > MAX_PROMPT_CHARS:
        raise bad_request(f"inputs.prompt has {len(value)} characters: keep it under {MAX_PROMPT_CHARS}.")
    return value


def _image_ref(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"inputs.{key} must be a string (an http(s) URL or a data URI), not {_type_name(value)}.")
    text = value.strip()
    if key == "face_reference" and text.startswith("face:"):  # a saved face: a local extension (faces.py)
        from .faces import check_syntax

        return check_syntax(text, key)
    if text[:5].lower() == "data:":
        return text
    _check_url_syntax(text, f"inputs.{key}")
    return text


def _check_url_syntax(url: str, key: str) -> None:
    if len(url) > MAX_URL_CHARS:
        raise bad_request(f"{key} is a URL of {len(url)} characters: the limit is {MAX_URL_CHARS}.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise bad_request(f"{key} is not a valid URL ({exc}).") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise bad_request(f"{key} must be an http(s) URL or a data:image/...;base64 URI; got {url[:80]!r}.")


def _describe_image(value: str) -> str:
    if value[:5].lower() == "data:":
        return f"{value.split(',', 1)[0]},... ({len(value)} chars)"
    return value

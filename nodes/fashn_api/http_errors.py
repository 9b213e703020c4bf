"""Reading a request body and answering errors in FASHN's JSON shape (for the API's handlers)."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from .protocol import HttpError, bad_request

log = logging.getLogger("comfyui_model_swap.api")


def fashn_errors(handler):
    """A handler's ``HttpError`` answers FASHN's error body with its status; an unexpected error
    answers FASHN's 500 body, not aiohttp's HTML page."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as exc:
            return web.json_response(exc.body(), status=exc.status)
        except web.HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("model-swap API: %s %s failed", request.method, request.path)
            return web.json_response(HttpError(500, "InternalServerError", f"{type(exc).__name__}: {exc}").body(),
                                     status=500)

    wrapped.__name__ = handler.__name__
    return wrapped


async def read_json(request: web.Request):
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        size = f"{request.content_length:,} bytes" if request.content_length else "too large"
        raise HttpError(413, "PayloadTooLarge",
                        f"The request body is {size}: {exc.text} Send the images as http(s) URLs, or smaller "
                        "data URIs (JPEG or WEBP), or start ComfyUI with a larger --max-upload-size (in MB)."
                        ) from None
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise bad_request("The JSON body is nested too deeply to read: send a flat object "
                          '{"model_name": "model-swap", "inputs": {...}}.') from None
    except ValueError as exc:
        raise bad_request(f"The body is not valid JSON ({exc}): send a JSON object with model_name and "
                          "inputs.") from None


def _refuse_constant(name):
    raise ValueError(f"{name} is not valid JSON")

"""Errors raised by the model-swap pipeline.

Every error names the problem and the fix. ``api_name`` is the FASHN error name
the HTTP layer reports for it, so the API and the graph tell the same story.
"""

from __future__ import annotations


class ModelSwapError(Exception):
    """Base class of every error this pack raises on purpose."""

    api_name = "PipelineError"


class InputValidationError(ModelSwapError, ValueError):
    """A parameter value, or a combination of them, is invalid."""

    api_name = "InputValidationError"


class ImageLoadError(ModelSwapError, ValueError):
    """An input image is empty, corrupt or of an unusable shape."""

    api_name = "ImageLoadError"


class NoFaceError(InputValidationError):
    """The face reference image contains no detectable face."""


class DependencyError(ModelSwapError, RuntimeError):
    """An installed library is missing or of a version this pack was not tested with; the message
    names the version found, the supported range and the pip command that fixes it."""


class MissingModelError(ModelSwapError, FileNotFoundError):
    """A model file or folder the pipeline needs is not installed.

    The message names the folder to place it in, the file name and where the
    model is published.
    """

    def __init__(self, message: str, *, folder: str = "", filename: str = "", source: str = ""):
        super().__init__(message)
        self.folder = folder
        self.filename = filename
        self.source = source

    def __str__(self) -> str:  # OSError would format "[Errno None] ..." from ``filename``
        return str(self.args[0]) if self.args else ""

"""The `triton_python_backend_utils` module when running inside Triton's Python backend, else None.

Only the Triton stub provides that module; everything else in `backend/` must import without it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

try:  # pragma: no cover - only inside tritonserver
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]
except ImportError:  # unit tests, clients
    pb_utils = None


class InputError(ValueError):
    """A request the model cannot serve; the message names the problem and goes back to the client."""


def get_logger(name: str) -> type[pb_utils.Logger] | logging.Logger:
    """Triton's logger inside the server (its log file / stdout), the standard logger elsewhere."""
    if pb_utils is not None:
        return pb_utils.Logger
    return logging.getLogger(name)


def log_warn(logger: type[pb_utils.Logger] | logging.Logger, msg: str) -> None:
    if pb_utils is not None and logger is pb_utils.Logger:
        logger.log_warn(msg)
    else:
        logger.warning(msg)


def log_info(logger: type[pb_utils.Logger] | logging.Logger, msg: str) -> None:
    if pb_utils is not None and logger is pb_utils.Logger:
        logger.log_info(msg)
    else:
        logger.info(msg)


def input_array(request: pb_utils.InferenceRequest, name: str) -> np.ndarray | None:
    """The numpy value of input `name` of a pb_utils request, or None when not sent."""
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def error_response(message: str, code_name: str = "INVALID_ARG") -> pb_utils.InferenceResponse:
    """A response carrying an error: INVALID_ARG becomes HTTP 400 / gRPC INVALID_ARGUMENT for the client,
    UNAVAILABLE (a full queue) HTTP 503 / gRPC UNAVAILABLE."""
    code = getattr(pb_utils.TritonError, code_name, None)
    err = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)

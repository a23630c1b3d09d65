"""A stand-in for `triton_python_backend_utils`, enough to drive backend/ models in-process (unit tests)."""

from __future__ import annotations

import json
import threading
import types

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonError(Exception):
    INVALID_ARG = 3

    def __init__(self, msg, code=None):
        super().__init__(msg)
        self.msg = msg

    def message(self):
        return self.msg


class Tensor:
    def __init__(self, name, array):
        self._name, self._a = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._a


class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self.tensors = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


class Sender:
    def __init__(self):
        self.responses: list[tuple[InferenceResponse, int]] = []
        self.done = threading.Event()

    def send(self, response=None, flags=0):
        self.responses.append((response, flags))
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self.done.set()


class Request:
    def __init__(self, inputs: dict, request_id: str = ""):
        self.inputs = {k: np.asarray(v) for k, v in inputs.items()}
        self._id = request_id
        self.sender = Sender()
        self.cancelled = False

    def request_id(self):
        return self._id

    def get_response_sender(self):
        return self.sender

    def is_cancelled(self):
        return self.cancelled


def get_input_tensor_by_name(request, name):
    a = request.inputs.get(name)
    return None if a is None else Tensor(name, a)


def get_output_config_by_name(model_config, name):
    for o in model_config.get("output", []):
        if o["name"] == name:
            return o
    return None


def triton_string_to_numpy(s):
    return {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_BF16": np.float32}[s]


def using_decoupled_model_transaction_policy(model_config):
    return model_config.get("model_transaction_policy", {}).get("decoupled", False)


Logger = types.SimpleNamespace(log_info=print, log_warn=print, log_error=print, log_verbose=print)


def model_args(config: dict) -> dict:
    return {"model_config": json.dumps(config), "model_name": config.get("name", "m"), "model_version": "1"}

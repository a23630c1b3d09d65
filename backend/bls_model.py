"""The `tensorrt_llm_bls` model: the ensemble's text API in Python (Business Logic Scripting).

It tokenizes, calls the `tensorrt_llm` model with a BLS request (decoupled: one response per streamed chunk),
and detokenizes incrementally, so streamed text is exact. With `tokenizer_dir` set it tokenizes in-process
(the preprocessing logic) and keeps an `IncrementalDetokenizer` per request; without it (the TensorRT-LLM
backend's README fills no `tokenizer_dir` here) it calls the `preprocessing` and `postprocessing` models by
BLS, as the TensorRT-LLM BLS does, giving postprocessing each chunk's prefix (`STREAM_PREFIX_IDS`) so that
the stream stays exact. Each request runs on a worker thread: one BLS instance serves many concurrent
streams (the TensorRT-LLM BLS blocks an instance per request).

Differences from the TensorRT-LLM BLS: stop words are matched on token ids by the engine (not again on the
decoded text); no draft-model speculation or multimodal encoders (their inputs are rejected).
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from backend.detokenizer import IncrementalDetokenizer, decode
from backend.interface import check_rejected, rejected_inputs, unsupported_parameter_warnings
from backend.params import Params
from backend.preprocessing_model import PreprocessingModel
from backend.text_front import PASS_THROUGH
from backend.triton_utils import InputError, error_response, get_logger, input_array, log_info, log_warn, pb_utils
from backend.wire import PERF_OUTPUTS

# The TensorRT-LLM BLS calls these by these names (lib/triton_decoder.py defaults; no config parameter).
PREPROCESSING_MODEL = "preprocessing"
POSTPROCESSING_MODEL = "postprocessing"
PREPROCESSING_OUTPUTS = [
    "INPUT_ID",
    "REQUEST_INPUT_LEN",
    "REQUEST_OUTPUT_LEN",
    "OUT_END_ID",
    "OUT_PAD_ID",
    "STOP_WORDS_IDS",
    "BAD_WORDS_IDS",
    "EMBEDDING_BIAS",
]

TEXT_INPUTS = [
    "text_input",
    "max_tokens",
    "bad_words",
    "stop_words",
    "embedding_bias_words",
    "embedding_bias_weights",
    "end_id",
    "pad_id",
]
BLS_ONLY = set(rejected_inputs("tensorrt_llm_bls")) - set(PASS_THROUGH) - set(TEXT_INPUTS)
FORWARDED_OUTPUTS = ["cum_log_probs", "output_log_probs", "batch_index", "sequence_index"]


def _flag(arr) -> bool:
    return arr is not None and np.asarray(arr).size > 0 and bool(np.asarray(arr).reshape(-1)[0])


def _call(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """One non-decoupled BLS request; its error (an invalid input, mostly) goes back to the client."""
    request = pb_utils.InferenceRequest(
        model_name=model,
        inputs=[pb_utils.Tensor(k, np.asarray(v)) for k, v in inputs.items() if v is not None],
        requested_output_names=outputs,
    )
    response = request.exec()
    if response.has_error():
        raise InputError(response.error().message())
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


class PostprocessingDetokenizer:
    """`IncrementalDetokenizer`'s interface over the `postprocessing` model: each chunk is decoded there,
    statelessly, with the tokens streamed before it (`STREAM_PREFIX_IDS`), so the chunks concatenate to
    exactly the whole text."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.emitted = ""
        self.done = False

    def add(self, new_ids: list[int], final: bool = False) -> str:
        out = _call(
            POSTPROCESSING_MODEL,
            {
                "TOKENS_BATCH": np.array([[new_ids]], dtype=np.int32).reshape(1, 1, len(new_ids)),
                "SEQUENCE_LENGTH": np.array([[len(new_ids)]], dtype=np.int32),
                "STREAM_PREFIX_IDS": np.array(self.ids, dtype=np.int32).reshape(1, -1),
                "STREAM_FINAL": np.array([[final]], dtype=bool),
            },
            ["OUTPUT"],
        )
        delta = bytes(out["OUTPUT"].reshape(-1)[0]).decode("utf-8")
        self.ids.extend(int(i) for i in new_ids)
        self.emitted += delta
        self.done = final
        return delta

    def finish(self) -> str:
        """Flush what was held back, unless the last chunk was already decoded as final."""
        return "" if self.done else self.add([], final=True)

    @property
    def text(self) -> str:
        return self.emitted


def _text_output(texts: list[str]):
    """`text_output`, 1-D (one element per beam) like the TensorRT-LLM BLS's (postprocessing's OUTPUT)."""
    return pb_utils.Tensor("text_output", np.array([s.encode("utf-8") for s in texts], dtype=object))


class IteratorGraveyard:
    """Keeps finished decoupled BLS response iterators alive until the stub has dropped its own reference.

    Triton 2.51's Python stub keeps a second reference to each `exec(decoupled=True)` iterator in a map. When
    the iterator yields its last response it queues a clean-up to the stub's stub-to-parent thread, which
    erases the map entry there, without the GIL. If that erase drops the last reference (the model has already
    let go of the iterator), the iterator is destroyed on that thread, and with it every response's numpy
    arrays: Python objects freed without the GIL, which corrupts the interpreter's heap and kills the stub
    with SIGSEGV some requests later. Abandoned streams make it likely (the model lets go of the iterators of
    cancelled requests at once), so a storm of client disconnects killed the stub (docs/reliability.md).

    That thread serves its queue in order, one message at a time, and a `request.is_cancelled()` call that
    returns False went through that queue and waited for its answer (a True answer may be cached in the stub).
    So an iterator retired before such a call began has been erased from the map once the call returns, and
    dropping it then destroys it here, with the GIL. `retire` holds iterators; `ticket` / `flushed` bracket
    each `is_cancelled()` call that returned False and release what was retired before it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets = 0
        self._held: deque[tuple[int, tuple]] = deque()

    def ticket(self) -> int:
        with self._lock:
            self._tickets += 1
            return self._tickets

    def retire(self, *objs) -> None:
        with self._lock:
            self._held.append((self._tickets, objs))

    def flushed(self, ticket: int) -> None:
        """A round trip through the stub-to-parent queue that began after `ticket` was issued has ended."""
        released = []
        with self._lock:
            while self._held and self._held[0][0] < ticket:
                released.append(self._held.popleft())
        del released  # destroyed here, with the GIL, outside the lock

    def __len__(self) -> int:
        return len(self._held)


class BlsModel:
    def initialize(self, args: dict) -> None:
        self.logger = get_logger(__name__)
        self.model_config = json.loads(args["model_config"])
        params = Params(self.model_config, warn=lambda m: log_warn(self.logger, m))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(self.model_config)
        self.accumulate = params.bool("accumulate_tokens", False)
        self.engine_model = params.str("tensorrt_llm_model_name", "tensorrt_llm") or "tensorrt_llm"
        for message in unsupported_parameter_warnings(params.raw, "tensorrt_llm_bls"):
            log_warn(self.logger, message)
        self.pre: PreprocessingModel | None = None
        self.tokenizer = None
        self.skip_special_tokens = True
        if params.is_set("tokenizer_dir"):
            self.pre = PreprocessingModel()
            self.pre.initialize(args)  # same tokenizer_dir / add_special_tokens parameters
            self.tokenizer = self.pre.tokenizer
            self.skip_special_tokens = params.bool("skip_special_tokens", True)
        else:  # add_special_tokens / skip_special_tokens are then those of the two models
            log_info(
                self.logger,
                f"tensorrt_llm_bls: no tokenizer_dir, so tokenizing with the {PREPROCESSING_MODEL!r} model and "
                f"detokenizing with the {POSTPROCESSING_MODEL!r} model (BLS calls), as the TensorRT-LLM BLS does",
            )
        self.pool = ThreadPoolExecutor(max_workers=params.int("max_concurrent_requests", 256), thread_name_prefix="bls")
        self._closing = threading.Event()
        self.graveyard = IteratorGraveyard()

    def _is_cancelled(self, request) -> bool:
        """`request.is_cancelled()`; when False, it also releases the iterators retired before it (see
        `IteratorGraveyard`). Never after the request's final response: its addresses are gone by then."""
        ticket = self.graveyard.ticket()
        cancelled = request.is_cancelled()
        if not cancelled:
            self.graveyard.flushed(ticket)
        return cancelled

    def execute(self, requests: list):
        if self.decoupled:
            for request in requests:
                self.pool.submit(self._serve, request)
            return None
        return [self._serve(request) for request in requests]

    def _serve(self, request):
        sender = request.get_response_sender() if self.decoupled else None
        try:
            return self._run(request, sender)
        except InputError as e:
            return self._fail(sender, str(e))
        except Exception as e:  # never leave a decoupled request without its final response
            return self._fail(sender, f"tensorrt_llm_bls: {e}")

    def _fail(self, sender, message: str, code_name: str = "INVALID_ARG"):
        response = error_response(message, code_name)
        if sender is None:
            return response
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _engine_request(self, request) -> tuple:
        # What the BLS does not pass on to the engine it refuses itself (the engine refuses the rest).
        check_rejected(lambda n: input_array(request, n), "tensorrt_llm_bls", only=BLS_ONLY)
        text = input_array(request, "text_input")
        if text is None:
            raise InputError("input text_input is required")
        if np.asarray(text).reshape(-1).size != 1:
            raise InputError("tensorrt_llm_bls takes one text_input per request")
        raw = {
            "QUERY": text,
            "REQUEST_OUTPUT_LEN": input_array(request, "max_tokens"),
            "BAD_WORDS_DICT": input_array(request, "bad_words"),
            "STOP_WORDS_DICT": input_array(request, "stop_words"),
            "EMBEDDING_BIAS_WORDS": input_array(request, "embedding_bias_words"),
            "EMBEDDING_BIAS_WEIGHTS": input_array(request, "embedding_bias_weights"),
            "END_ID": input_array(request, "end_id"),
            "PAD_ID": input_array(request, "pad_id"),
        }
        if raw["REQUEST_OUTPUT_LEN"] is None:
            raise InputError("input max_tokens is required")
        if int(np.asarray(raw["REQUEST_OUTPUT_LEN"]).reshape(-1)[0]) <= 0:
            raise InputError(f"max_tokens={int(np.asarray(raw['REQUEST_OUTPUT_LEN']).reshape(-1)[0])} must be > 0")
        pre = self.pre.process(raw) if self.pre is not None else _call(PREPROCESSING_MODEL, raw, PREPROCESSING_OUTPUTS)
        t = pb_utils.Tensor
        tensors = [
            t("input_ids", pre["INPUT_ID"]),
            t("input_lengths", pre["REQUEST_INPUT_LEN"]),
            t("request_output_len", pre["REQUEST_OUTPUT_LEN"]),
            t("end_id", pre["OUT_END_ID"]),
            t("pad_id", pre["OUT_PAD_ID"]),
            t("stop_words_list", pre["STOP_WORDS_IDS"]),
            t("bad_words_list", pre["BAD_WORDS_IDS"]),
        ]
        if pre["EMBEDDING_BIAS"].size:
            tensors.append(t("embedding_bias", pre["EMBEDDING_BIAS"]))
        for src, dst in PASS_THROUGH.items():
            a = input_array(request, src)
            if a is not None:
                tensors.append(t(dst, a))
        streaming = _flag(input_array(request, "stream"))
        exclude = _flag(input_array(request, "exclude_input_in_output"))
        return tensors, streaming, exclude

    def _run(self, request, sender):
        tensors, streaming, exclude = self._engine_request(request)
        if streaming and not self.decoupled:
            raise InputError("streaming is only supported if the model is deployed in decoupled mode")
        engine_id = f"bls-{uuid.uuid4().hex}"
        # Asked for only when wanted: an engine model whose config predates them does not declare them.
        perf = PERF_OUTPUTS if _flag(input_array(request, "return_perf_metrics")) else ()
        engine_req = pb_utils.InferenceRequest(
            model_name=self.engine_model,
            inputs=tensors,
            requested_output_names=["output_ids", "sequence_length", "stream_final", *FORWARDED_OUTPUTS, *perf],
            # Our own unique id, so that a cancelled client's engine request can be stopped by id.
            request_id=engine_id,
        )
        detok = (
            IncrementalDetokenizer(self.tokenizer, self.skip_special_tokens)
            if self.tokenizer is not None
            else PostprocessingDetokenizer()
        )
        t = pb_utils.Tensor
        last = None
        error = None
        stopped = False
        responses = engine_req.exec(decoupled=True)
        finished = [responses]  # the iterators to retire (IteratorGraveyard), run to their end or error
        try:
            for resp in responses:
                if not stopped and self._is_cancelled(request):
                    # The client is gone: stop the engine request too (same id, stop=true), then drain.
                    finished.append(self._stop_engine(engine_id))
                    stopped = True
                if resp.has_error():
                    # The engine's error is final, but Triton 2.51's stub marks no error as the last response:
                    # waiting for the stream's end would wait for ever. (The unfinished iterator stays in the
                    # stub's map, never cleaned up: a small leak per failed engine request, not a crash.)
                    error = resp.error().message()
                    break
                outs = {o.name(): o.as_numpy() for o in resp.output_tensors()}
                if "output_ids" not in outs:
                    continue  # the empty final response
                ids, lens = outs["output_ids"], outs["sequence_length"]
                if streaming:
                    final = _flag(outs.get("stream_final"))
                    delta = detok.add(ids[0, 0, : int(lens[0, 0])].tolist(), final=final)
                    piece = detok.text if self.accumulate else delta
                    extras = [t(n, outs[n]) for n in (*FORWARDED_OUTPUTS, *perf) if n in outs]
                    if delta or self.accumulate:
                        sender.send(pb_utils.InferenceResponse(output_tensors=[_text_output([piece]), *extras]))
                last = outs
        except BaseException:
            # Stop the engine request and run its stream to the end before the error goes to the client.
            with contextlib.suppress(Exception):
                if not stopped:
                    finished.append(self._stop_engine(engine_id))
                for resp in responses:
                    if resp.has_error():
                        break
            raise
        finally:
            self.graveyard.retire(*finished)
            del finished, responses
            self._is_cancelled(request)  # releases them at once, unless the request is cancelled
        if error is not None:
            return self._fail(sender, error)
        if streaming and not stopped and not (last is not None and _flag(last.get("stream_final"))):
            # The engine's stream ended without its last chunk: its error did not come through the BLS
            # stream (Triton 2.51's Python backend drops it), so the client must not get a clean end.
            return self._fail(
                sender, "tensorrt_llm_bls: the engine request ended without its final output", "UNAVAILABLE"
            )
        if streaming:
            # Like the TensorRT-LLM BLS, the stream ends with the final flag alone: an empty response would
            # reach clients as an event without text_output.
            tail = detok.finish()
            if tail:
                piece = detok.text if self.accumulate else tail
                sender.send(
                    pb_utils.InferenceResponse(output_tensors=[_text_output([piece])]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
            else:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
        if last is None:
            return self._fail(sender, "the engine returned no output")
        ids, lens = last["output_ids"], last["sequence_length"]
        if self.tokenizer is not None:
            texts = [
                decode(self.tokenizer, ids[0, k, : int(lens[0, k])].tolist(), self.skip_special_tokens)
                for k in range(ids.shape[1])
            ]
            text_output = _text_output(texts)
        else:
            out = _call(POSTPROCESSING_MODEL, {"TOKENS_BATCH": ids, "SEQUENCE_LENGTH": lens}, ["OUTPUT"])
            text_output = t("text_output", out["OUTPUT"].reshape(-1))
        response = pb_utils.InferenceResponse(
            output_tensors=[text_output, *[t(n, last[n]) for n in (*FORWARDED_OUTPUTS, *perf) if n in last]]
        )
        if sender is None:
            return response
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _stop_engine(self, rid: str):
        """Stops the engine request `rid`; returns the stop request's finished iterator, to retire."""
        t = pb_utils.Tensor
        stop = pb_utils.InferenceRequest(
            model_name=self.engine_model,
            inputs=[
                t("input_ids", np.zeros((1, 1), np.int32)),
                t("input_lengths", np.ones((1, 1), np.int32)),
                t("request_output_len", np.zeros((1, 1), np.int32)),
                t("stop", np.array([[True]])),
            ],
            requested_output_names=[],
            request_id=rid,
        )
        responses = stop.exec(decoupled=True)
        for resp in responses:
            if resp.has_error():
                break  # no error is the last response (see _run)
        return responses

    def finalize(self) -> None:
        self._closing.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

"""The wire between the native `tensorrtllm` backend (C++, in tritonserver) and the engine process (Python).

One Unix stream socket per model instance. A frame is `u32 length | u8 type | payload` (length counts the
type byte and the payload; little-endian throughout). `backend/native/wire.h` is the C++ side of this file:
change both together (`tests/server/test_native_wire.py` checks that they agree).

Backend -> engine:
- CONFIG: JSON `{"model_config": {...}, "model_name": str, "model_version": str}`, first frame.
- REQUESTS: `u32 n`, then per request `u64 slot | u32 front | u32 id_len | id | u32 n_inputs`, then per
  input `u16 name_len | name | u8 dtype (TRITONSERVER_DataType) | u8 ndims | i64 dims[ndims] | u64 nbytes |
  data`. One frame carries every request of one `execute` call. `front` 0: a request to the engine model
  (token ids in, token ids out); k > 0: a request to text front k (below), in that model's input names.
- FRONT: `u32 front | JSON {"name", "decoupled", "preprocessing": model config, "postprocessing": model
  config, "config": the front's own model config}`: a text front (the `ensemble` model served by this
  backend) attaches to this engine. Sent before the front's first request, and again to a restarted engine
  process.
- CANCEL: `u64 slot` (the client cancelled or went away).
- SHUTDOWN: `f64 drain_seconds`.

Engine -> backend:
- READY: text, `key=value` lines (role, decoupled, logits_dtype, cancel_ms) and `family=name|kind|help`
  lines declaring the custom metric families.
- RESPONSES: `u32 n`, then n records (below). One frame per executor step, for all requests of the step.
- METRICS: text lines `kind\\tfamily\\tlabel_key\\tlabel_value\\tvalue` (kind g: gauge, c: counter total,
  h: histogram observation).
- FATAL: UTF-8 text; the engine could not start (the backend fails the model load with it).

A response record: `u64 slot | i32 batch_index | u32 flags | u32 beams | u32 tokens_per_beam`, then
`i32 tokens[beams * tokens_per_beam] | i32 sequence_length[beams]`; with LOGPROBS `u32 n |
f32 cum_log_probs[beams] | f32 log_probs[beams * n]`; with TEXT (a text front's record; no tokens, width 0)
`(u32 len | utf-8 bytes)[beams]`; with ERROR `u32 code (TRITONSERVER_Error_Code) |
u32 len | message`; with PERF (`return_perf_metrics`) `u32 kv_cache_alloc_new_blocks | u32 kv_cache_reused_blocks |
u32 kv_cache_alloc_total_blocks | i64 arrival_time_ns | i64 first_scheduled_time_ns | i64 first_token_time_ns |
i64 last_token_time_ns` after the TEXT part. Flags: FINAL (the Triton request's last response), STREAM (a
streamed chunk: new tokens only; the backend keeps the prefix for `stream_prefix_ids`), ROW_END
(`stream_final`: this batch row is done), ERROR, LOGPROBS, EMPTY (no outputs: the final flag alone), TEXT, PERF.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from array import array
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from inflight_batcher.request import PerfMetrics

# Frame types.
CONFIG, REQUESTS, CANCEL, SHUTDOWN, FRONT = 1, 2, 3, 4, 5
READY, RESPONSES, METRICS, FATAL = 11, 12, 13, 14

# Response record flags.
FINAL, STREAM, ROW_END, ERROR, LOGPROBS, EMPTY, TEXT, PERF = 1, 2, 4, 8, 16, 32, 64, 128
# The outputs of `return_perf_metrics` (TensorRT-LLM's names): the PERF part of a record, then three the
# backend fills with zeros (there is no speculative decoding).
PERF_OUTPUTS = (
    "kv_cache_alloc_new_blocks",
    "kv_cache_reused_blocks",
    "kv_cache_alloc_total_blocks",
    "arrival_time_ns",
    "first_scheduled_time_ns",
    "first_token_time_ns",
    "last_token_time_ns",
    "acceptance_rate",
    "total_accepted_draft_tokens",
    "total_draft_tokens",
)

# TRITONSERVER_Error_Code values.
ERR_INTERNAL, ERR_NOT_FOUND, ERR_INVALID_ARG, ERR_UNAVAILABLE, ERR_UNSUPPORTED = 1, 2, 3, 4, 5

# TRITONSERVER_DataType -> numpy (BYTES is decoded by hand).
DTYPES = {
    1: np.bool_,
    2: np.uint8,
    3: np.uint16,
    4: np.uint32,
    5: np.uint64,
    6: np.int8,
    7: np.int16,
    8: np.int32,
    9: np.int64,
    10: np.float16,
    11: np.float32,
    12: np.float64,
}
TYPE_BYTES, TYPE_BF16 = 13, 14


def declares_perf_outputs(model_config: dict) -> bool:
    """Whether a model's config declares the `return_perf_metrics` outputs (older configs do not)."""
    names = {o.get("name") for o in model_config.get("output", [])}
    return all(n in names for n in PERF_OUTPUTS)


_FRAME = struct.Struct("<IB")
_TOKEN = struct.Struct("<ii")  # one token, its sequence length (1)
_RECORD = struct.Struct("<QiIII")
_REQUEST_HEAD = struct.Struct("<QII")
_PERF = struct.Struct("<IIIqqqq")


class Connection:
    """Framed messages over a connected stream socket. `send` may be called from several threads."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._rfile = sock.makefile("rb", buffering=1 << 20)

    def send(self, kind: int, payload: bytes | bytearray = b"") -> None:
        self.sock.sendall(_FRAME.pack(len(payload) + 1, kind) + payload)

    def recv(self) -> tuple[int, memoryview] | None:
        """The next frame, or None when the peer closed the socket."""
        head = self._rfile.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return None
        length, kind = _FRAME.unpack(head)
        body = self._rfile.read(length - 1)
        if len(body) < length - 1:
            return None
        return kind, memoryview(body)


def _bytes_tensor(data: memoryview, count: int) -> np.ndarray:
    """A Triton BYTES tensor's elements (`u32 len | bytes` each) as a numpy object array."""
    out = np.empty(count, dtype=object)
    off = 0
    for i in range(count):
        (n,) = struct.unpack_from("<I", data, off)
        out[i] = bytes(data[off + 4 : off + 4 + n])
        off += 4 + n
    return out


def decode_requests(payload: memoryview) -> list[tuple[int, int, str, dict[str, np.ndarray]]]:
    """A REQUESTS frame -> `[(slot, front, triton request id, {input name: array})]`; arrays keep Triton's shapes
    (leading batch dimension included) and are read-only views of the frame."""
    (n,) = struct.unpack_from("<I", payload, 0)
    off = 4
    requests = []
    for _ in range(n):
        slot, front, id_len = _REQUEST_HEAD.unpack_from(payload, off)
        off += _REQUEST_HEAD.size
        rid = bytes(payload[off : off + id_len]).decode("utf-8", "replace")
        off += id_len
        (n_inputs,) = struct.unpack_from("<I", payload, off)
        off += 4
        inputs: dict[str, np.ndarray] = {}
        for _ in range(n_inputs):
            (name_len,) = struct.unpack_from("<H", payload, off)
            off += 2
            name = bytes(payload[off : off + name_len]).decode()
            off += name_len
            dtype, ndims = struct.unpack_from("<BB", payload, off)
            off += 2
            dims = struct.unpack_from(f"<{ndims}q", payload, off)
            off += 8 * ndims
            (nbytes,) = struct.unpack_from("<Q", payload, off)
            off += 8
            data = payload[off : off + nbytes]
            off += nbytes
            count = math.prod(dims)  # 1 for a scalar (no dims); np.prod costs ~7 µs a call
            if dtype == TYPE_BYTES:
                inputs[name] = _bytes_tensor(data, count).reshape(dims)
            elif dtype in DTYPES:
                inputs[name] = np.frombuffer(data, dtype=DTYPES[dtype]).reshape(dims)
            else:  # BF16 and anything newer: no numpy type; the parser rejects what it cannot use
                inputs[name] = np.frombuffer(data, dtype=np.uint16).reshape(dims)
        requests.append((slot, front, rid, inputs))
    return requests


def encode_requests(requests: list[tuple]) -> bytes:
    """The inverse of `decode_requests` (what the backend sends; used by tests and tools): tuples
    `(slot, front, id, inputs)`, or `(slot, id, inputs)` for the engine model (front 0)."""
    numpy_to_type = {np.dtype(v): k for k, v in DTYPES.items()}
    out = bytearray(struct.pack("<I", len(requests)))
    for request in requests:
        slot, front, rid, inputs = request if len(request) == 4 else (request[0], 0, *request[1:])
        b = rid.encode()
        out += _REQUEST_HEAD.pack(slot, front, len(b)) + b + struct.pack("<I", len(inputs))
        for name, a in inputs.items():
            a = np.asarray(a)
            if a.dtype == object:
                data = b"".join(struct.pack("<I", len(x)) + x for x in (bytes(v) for v in a.reshape(-1)))
                dtype = TYPE_BYTES
            else:
                data, dtype = np.ascontiguousarray(a).tobytes(), numpy_to_type[a.dtype]
            nb = name.encode()
            out += struct.pack("<H", len(nb)) + nb + struct.pack("<BB", dtype, a.ndim)
            out += struct.pack(f"<{a.ndim}q", *a.shape) + struct.pack("<Q", len(data)) + data
    return bytes(out)


def encode_record(
    out: bytearray,
    slot: int,
    batch_index: int,
    flags: int,
    beams: list[list[int]] = (),
    seq_lens: list[int] = (),
    cum_log_probs: list[float] | None = None,
    log_probs: list[list[float]] | None = None,
    error: tuple[int, str] | None = None,
    texts: list[bytes] | None = None,
    perf: PerfMetrics | None = None,
) -> None:
    """Appends one response record to `out`. `beams` are equally long (the caller pads). With `texts`
    (flag TEXT), `beams` is empty and `seq_lens` has one entry per text. `perf`: an
    `inflight_batcher.PerfMetrics` (sets flag PERF)."""
    if perf is not None:
        flags |= PERF
    width = len(beams[0]) if beams else 0
    out += _RECORD.pack(slot, batch_index, flags, len(texts) if flags & TEXT else len(beams), width)
    if len(beams) == 1:
        out += array("i", beams[0]).tobytes()
    else:
        for b in beams:
            out += array("i", b).tobytes()
    out += array("i", seq_lens).tobytes()
    if flags & LOGPROBS:
        n = len(log_probs[0]) if log_probs else 0
        out += struct.pack("<I", n) + array("f", cum_log_probs).tobytes()
        for lp in log_probs:
            out += array("f", lp).tobytes()
    if flags & TEXT:
        for t in texts:
            out += struct.pack("<I", len(t)) + t
    if flags & PERF:
        p = perf
        out += _PERF.pack(
            p.kv_alloc_new_blocks, p.kv_reused_blocks, p.kv_alloc_total_blocks, p.arrival_time_ns,
            p.first_scheduled_time_ns, p.first_token_time_ns, p.last_token_time_ns,
        )  # fmt: skip
    if flags & ERROR:
        code, message = error
        b = message.encode()
        out += struct.pack("<II", code, len(b)) + b


def encode_front(front: int, spec: dict) -> bytes:
    return struct.pack("<I", front) + json.dumps(spec).encode()


def decode_front(payload: memoryview) -> tuple[int, dict]:
    (front,) = struct.unpack_from("<I", payload, 0)
    return front, json.loads(bytes(payload[4:]))


_TEXT_ONLY = struct.Struct("<QiIIIiI")  # a record of one text (flag TEXT): head, seq_lens [0], the text's length


def encode_text_record(out: bytearray, slot: int, batch_index: int, flags: int, text: bytes) -> None:
    """`encode_record` of one text without log-probs or perf, in one pack: a streamed step of a text front,
    once per request per step."""
    out += _TEXT_ONLY.pack(slot, batch_index, flags | TEXT, 1, 0, 0, len(text))
    out += text


def encode_token_record(out: bytearray, slot: int, batch_index: int, flags: int, token: int) -> None:
    """`encode_record` of one beam holding one token, in one pack: the streaming case, once per request
    per step."""
    out += _RECORD.pack(slot, batch_index, flags, 1, 1) + _TOKEN.pack(token, 1)


def decode_records(payload: memoryview | bytes) -> list[dict]:
    """A RESPONSES frame -> records as dicts (what the backend reads; used by tests)."""
    (n,) = struct.unpack_from("<I", payload, 0)
    off = 4
    records = []
    for _ in range(n):
        slot, batch_index, flags, beams, width = _RECORD.unpack_from(payload, off)
        off += _RECORD.size
        toks = np.frombuffer(payload, np.int32, beams * width, off).reshape(beams, width).tolist()
        off += 4 * beams * width
        lens = np.frombuffer(payload, np.int32, beams, off).tolist()
        off += 4 * beams
        rec = dict(slot=slot, batch_index=batch_index, flags=flags, tokens=toks, seq_lens=lens)
        if flags & LOGPROBS:
            (k,) = struct.unpack_from("<I", payload, off)
            off += 4
            rec["cum_log_probs"] = np.frombuffer(payload, np.float32, beams, off).tolist()
            off += 4 * beams
            rec["log_probs"] = np.frombuffer(payload, np.float32, beams * k, off).reshape(beams, k).tolist()
            off += 4 * beams * k
        if flags & TEXT:
            rec["texts"] = []
            for _ in range(beams):
                (length,) = struct.unpack_from("<I", payload, off)
                rec["texts"].append(bytes(payload[off + 4 : off + 4 + length]))
                off += 4 + length
        if flags & PERF:
            rec["perf"] = dict(zip(PERF_OUTPUTS, _PERF.unpack_from(payload, off), strict=False))
            off += _PERF.size
        if flags & ERROR:
            code, length = struct.unpack_from("<II", payload, off)
            off += 8
            rec["error"] = (code, bytes(payload[off : off + length]).decode())
            off += length
        records.append(rec)
    return records

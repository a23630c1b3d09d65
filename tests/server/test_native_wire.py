"""The two ends of the wire agree: records encoded by backend/wire.py decode in the C++ backend's parser
(backend/native/wire.h, through build/wire_test), and a REQUESTS frame written by the C++ side decodes in
Python. Needs the native build (scripts/setup.sh)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from backend import wire
from inflight_batcher.request import PerfMetrics

WIRE_TEST = Path(__file__).resolve().parents[2] / "build" / "wire_test"
pytestmark = pytest.mark.skipif(not WIRE_TEST.exists(), reason="native backend not built: bash scripts/setup.sh")


def test_cpp_self_checks():
    r = subprocess.run([str(WIRE_TEST)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_python_records_decode_in_cpp(tmp_path):
    buf = bytearray(struct.pack("<I", 5))
    wire.encode_record(buf, 9, 0, wire.STREAM, [[11]], [1])
    wire.encode_record(buf, 2**40, 1, wire.FINAL | wire.ROW_END | wire.LOGPROBS, [[1, 2, 3], [4, 5, 0]], [3, 2],
                       [-1.5, -2.0], [[-0.5, -1.0], [-1.0, -1.0]])  # fmt: skip
    wire.encode_record(buf, 3, 0, wire.FINAL | wire.ERROR, error=(wire.ERR_INVALID_ARG, "bad input_ids"))
    wire.encode_record(buf, 5, 0, wire.FINAL | wire.TEXT, [], [2, 1], texts=[b"ab", "é".encode()])
    perf = PerfMetrics(4, 2, 6, 2**62, 11, 12, 13)
    wire.encode_record(buf, 6, 0, wire.STREAM, [[7]], [1], perf=perf)
    (tmp_path / "records.bin").write_bytes(bytes(buf))
    r = subprocess.run([str(WIRE_TEST), "decode", str(tmp_path / "records.bin")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines() == [
        "9 0 2 1 1 | 11 | 1 | | | | 0 ",
        f"{2**40} 1 21 2 3 | 1 2 3 4 5 0 | 3 2 | -1.5 -2 | -0.5 -1 -1 -1 | | 0 ",
        "3 0 9 0 0 | | | | | | 3 bad input_ids",
        "5 0 65 2 0 | | 2 1 | | | ab é | 0 ",
        f"6 0 130 1 1 | 7 | 1 | | | | 0  | perf 4 2 6 {2**62} 11 12 13",
    ]
    records = wire.decode_records(bytes(buf))
    assert [r["slot"] for r in records] == [9, 2**40, 3, 5, 6]
    assert records[4]["perf"] == dict(zip(wire.PERF_OUTPUTS, [4, 2, 6, 2**62, 11, 12, 13], strict=False))
    assert records[3]["texts"] == [b"ab", "é".encode()]


def test_cpp_requests_decode_in_python(tmp_path):
    path = tmp_path / "requests.bin"
    subprocess.run([str(WIRE_TEST), "requests", str(path)], check=True)
    ((slot, front, rid, inputs),) = wire.decode_requests(memoryview(path.read_bytes()))
    assert (slot, front, rid) == (7, 2, "abc")
    np.testing.assert_array_equal(inputs["input_ids"], np.array([[1, 2, 3, 4]], dtype=np.int32))
    assert inputs["stop_words"].shape == (1, 1) and inputs["stop_words"][0, 0] == b"hi"
    # And Python's own encoder (tests' stand-in for the backend) round-trips.
    again = wire.decode_requests(memoryview(wire.encode_requests([(slot, front, rid, inputs)])))
    assert again[0][:3] == (slot, front, rid)
    np.testing.assert_array_equal(again[0][3]["input_ids"], inputs["input_ids"])


def test_token_record_is_the_general_record_of_one_token():
    fast, general = bytearray(), bytearray()
    wire.encode_token_record(fast, 7, 2, wire.STREAM | wire.FINAL, 12345)
    wire.encode_record(general, 7, 2, wire.STREAM | wire.FINAL, [[12345]], [1])
    assert fast == general


def test_text_record_is_the_general_record_of_one_text():
    for text in (b"", b" hello", "\u00e9\u4e2d".encode()):
        fast, general = bytearray(), bytearray()
        wire.encode_text_record(fast, 7, 2, wire.FINAL | wire.ROW_END, text)
        wire.encode_record(general, 7, 2, wire.FINAL | wire.ROW_END | wire.TEXT, [], [0], texts=[text])
        assert fast == general

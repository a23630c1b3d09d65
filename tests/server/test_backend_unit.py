"""Unit tests of the launcher, fill_template, request parsing and the engine model, without tritonserver."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backend.params import Params
from backend.request_parsing import EngineLimits, parse_request
from backend.tokenization import to_word_list_format
from backend.triton_utils import InputError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import fill_template  # noqa: E402
import launch_triton_server as launcher  # noqa: E402


# -- fill_template (spec section 6) -------------------------------------------------------------------
def test_fill_template_semantics():
    text = "a: ${x}\nb: $y\nc: ${unknown}\nd: $$literal\nq: ${max_queue_size}"
    out = fill_template.fill(text, "x:1,y:hello")
    assert out == "a: 1\nb: hello\nc: ${unknown}\nd: $literal\nq: 0"


def test_fill_template_escapes_and_errors():
    assert fill_template.fill("${p}", r"p:/a\,b\:c") == "/a,b:c"
    with pytest.raises(ValueError, match="exactly one"):
        fill_template.fill("${p}", "p:a:b")
    with pytest.raises(ValueError, match="does not appear"):
        fill_template.fill("${p}", "q:1")


def test_fill_template_cli_in_place(tmp_path):
    f = tmp_path / "config.pbtxt"
    f.write_text("decoupled: ${decoupled_mode}\nmax_batch_size: ${triton_max_batch_size}\n")
    assert fill_template.main(["-i", str(f), "decoupled_mode:true,triton_max_batch_size:64"]) == 0
    assert f.read_text() == "decoupled: true\nmax_batch_size: 64\n"


# -- launcher (spec section 5) ------------------------------------------------------------------------
def _args(**kw):
    base = dict(
        world_size=2,
        model_repo="/repo",
        http_port=8000,
        grpc_port=8001,
        metrics_port=8002,
        log=True,
        log_file="triton_log.txt",
        tensorrt_llm_model_name="tensorrt_llm,other",
        no_mpi=False,
        oversubscribe=True,
        multimodal_gpu0_cuda_mem_pool_bytes=0,
    )
    return argparse.Namespace(**{**base, **kw})


def test_launcher_owns_the_repository_api_unless_the_user_chose_a_mode():
    """With a key, rank 0 runs in explicit mode with every model loaded and the repository API (load, unload,
    index) restricted to that key: the stub watchdog can reload a model, clients cannot unload one."""
    cmd = launcher.rank_command(_args(repository_key="k3y"), Path("/bin/tritonserver"), 0, [])
    assert "--model-control-mode=explicit" in cmd and "--load-model=*" in cmd
    assert "--http-restricted-api=model-repository:triton-launcher-key=k3y" in cmd
    assert "--grpc-restricted-protocol=model-repository:triton-launcher-key=k3y" in cmd
    own = launcher.rank_command(
        _args(repository_key="k3y"), Path("/bin/tritonserver"), 0, ["--model-control-mode=poll"]
    )
    assert not any("restricted" in a or a == "--model-control-mode=explicit" for a in own)


def test_stub_watchdog_keeps_a_dead_stubs_model_pending_while_the_server_does_not_answer():
    """A ready check that gets no answer (a busy server) must not forget the model: it would stay broken."""
    import stub_watchdog

    answers = {"busy": [0, 0, 200], "unloaded": [400], "gone": [0]}
    calls, logs = [], []
    w = stub_watchdog.StubWatchdog(1, "k", log=logs.append)
    w._call = lambda method, path, timeout: answers[path.split("/")[3]].pop(0) if method == "GET" else 200
    w.reload = calls.append
    pending = {
        "busy": ([11], time.monotonic()),
        "unloaded": ([12], time.monotonic()),
        "gone": ([13], time.monotonic() - 1000),
    }
    w.check(pending)  # "gone" has waited past give_up_s with no answer: dropped
    assert pending.keys() == {"busy"} and calls == []
    w.check(pending)
    assert pending.keys() == {"busy"} and calls == []
    w.check(pending)
    assert pending == {} and calls == ["busy"]
    assert logs == ["stub watchdog: the Python stub of model 'busy' (pid [11]) died; reloading it"]


def test_launcher_mpmd_command():
    cmd = launcher.build_command(_args(), Path("/bin/tritonserver"), ["--backend-directory=/b"])
    assert cmd[:3] == ["mpirun", "--allow-run-as-root", "--oversubscribe"]
    assert cmd.count("-n") == 2 and cmd.count(":") == 2 and cmd[-1] == ":"
    rank0 = cmd[cmd.index("-n") + 2 : cmd.index(":")]
    rank1 = cmd[cmd.index(":") + 3 : -1]
    assert "--backend-config=python,shm-region-prefix-name=prefix0_" in rank0
    assert "--backend-config=python,shm-region-prefix-name=prefix1_" in rank1
    assert "--log-verbose=3" in rank0 and "--log-verbose=3" not in rank1
    assert "--model-control-mode=explicit" in rank1 and "--model-control-mode=explicit" not in rank0  # no key
    assert "--load-model=tensorrt_llm" in rank1 and "--load-model=other" in rank1
    for r in (rank0, rank1):  # every rank gets the same ports (only rank 0 ever serves)
        assert "--http-port=8000" in r and "--grpc-port=8001" in r and "--metrics-port=8002" in r
        assert "--disable-auto-complete-config" in r


def test_launcher_no_mpi_and_world_size_checks():
    cmd = launcher.build_command(_args(world_size=1, no_mpi=True), Path("/bin/tritonserver"), [])
    assert cmd[0] == "/bin/tritonserver"
    with pytest.raises(SystemExit):
        launcher.parse_args(["--no-mpi", "--world_size", "2"])


def test_launcher_finds_wheel_server_and_prepares_backend(tmp_path):
    pytest.importorskip("pytriton")
    exe = launcher.find_tritonserver()
    env, extra = launcher.prepare_environment(exe, tmp_path / "backends")
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert str(ROOT) in env["PYTHONPATH"].split(":")
    assert (tmp_path / "backends" / "python" / "triton_python_backend_stub").exists()
    assert (tmp_path / "backends" / "python" / "libtriton_python.so").exists()
    assert (tmp_path / "backends" / "tensorrtllm" / "libtriton_tensorrtllm.so").exists()
    assert f"--backend-directory={tmp_path / 'backends'}" in extra


# -- parameters and request parsing -------------------------------------------------------------------
def test_params_defaults_for_unfilled_placeholders():
    warnings = []
    p = Params(
        {
            "parameters": {
                "a": {"string_value": "${a}"},
                "b": {"string_value": "True"},
                "c": {"string_value": "0.5"},
                "d": {"string_value": "x"},
            }
        },
        warnings.append,
    )
    assert p.int("a", 7) == 7 and p.bool("b") is True and p.float("c") == 0.5 and p.int("d", 3) == 3
    assert len(warnings) == 2
    with pytest.raises(ValueError, match="required"):
        p.str("a", required=True)


LIMITS = EngineLimits(vocab_size=100, max_input_len=8, max_seq_len=16, max_beam_width=1, eos_token_id=2)


def _req(**kw):
    base = {
        "input_ids": np.array([[5, 6, 7]], np.int32),
        "input_lengths": np.array([3], np.int32),
        "request_output_len": np.array([4], np.int32),
    }
    return {**base, **kw}


def test_parse_request_basic_and_word_lists():
    words = to_word_list_format([([5, 6, 7], [2, 3])])
    p = parse_request(_req(stop_words_list=words, streaming=np.array([True])), LIMITS)
    row = p.rows[0]
    assert p.streaming and row.input_ids == [5, 6, 7] and row.max_new_tokens == 4 and row.end_id is None
    assert row.stop_words == [[5, 6], [7]] and row.sampling["temperature"] is None


@pytest.mark.parametrize(
    "inputs,match",
    [
        (_req(input_lengths=np.array([0])), "empty"),
        (_req(input_ids=np.array([[5, 100, 7]])), "vocabulary"),
        (_req(input_ids=np.array([[5, -1, 7]])), "vocabulary"),
        (_req(input_ids=np.zeros((1, 9), np.int32), input_lengths=np.array([9])), "max_input_len"),
        (_req(request_output_len=np.array([0])), "request_output_len"),
        (_req(temperature=np.array([np.nan], np.float32)), "temperature"),
        (_req(runtime_top_p=np.array([1.5], np.float32)), "top_p"),
        (_req(beam_width=np.array([2])), "beam_width"),
        (_req(lora_task_id=np.array([3], np.uint64)), "LoRA"),
        (_req(return_context_logits=np.array([True])), "context logits"),
        (_req(stop_words_list=np.array([[[5, 6], [3, 1]]], np.int32)), "offsets"),
    ],
)
def test_parse_request_rejects(inputs, match):
    with pytest.raises(InputError, match=match):
        parse_request(inputs, LIMITS)


def test_parse_request_clips_to_max_seq_len_and_stop():
    row = parse_request(_req(request_output_len=np.array([100])), LIMITS).rows[0]
    assert row.max_new_tokens == 13 and row.clipped_from == 100
    assert parse_request(_req(stop=np.array([True])), LIMITS).stop


# -- the engine process over its socket (what the native backend talks to) -------------------------------
@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    from tests.helpers import build_engine, make_tiny_llama

    d = tmp_path_factory.mktemp("unit_engine")
    make_tiny_llama(d / "hf")
    return build_engine(d / "hf", d / "engine", max_batch_size=4)


class _Backend:
    """The backend's end of the socket: sends CONFIG, requests and cancels; collects response records."""

    def __init__(self, engine_dir, decoupled: bool, outputs: tuple[str, ...] = ()):
        import json
        import socket
        import threading

        from backend import engine_core, wire

        ours, theirs = socket.socketpair()
        self.conn = wire.Connection(ours)
        cfg = {
            "model_transaction_policy": {"decoupled": decoupled},
            "parameters": {
                "gpt_model_path": {"string_value": str(engine_dir)},
                "device": {"string_value": "cpu"},
                "stats_check_period_ms": {"string_value": "20"},
            },
            "output": [{"name": n} for n in outputs],
        }
        self.conn.send(wire.CONFIG, json.dumps({"model_config": cfg}).encode())
        self.thread = threading.Thread(target=engine_core.main, args=(["--fd", str(theirs.detach())],), daemon=True)
        self.thread.start()
        kind, payload = self.conn.recv()
        assert kind == wire.READY, bytes(payload)
        self.ready = bytes(payload).decode()
        self.records: list[dict] = []
        self.metrics: list[str] = []

    def send(self, slot: int, inputs: dict, rid: str = "") -> None:
        from backend import wire

        self.conn.send(wire.REQUESTS, wire.encode_requests([(slot, rid, inputs)]))

    def until_final(self, slot: int) -> list[dict]:
        from backend import wire

        while not any(r["slot"] == slot and r["flags"] & wire.FINAL for r in self.records):
            kind, payload = self.conn.recv()
            if kind == wire.RESPONSES:
                self.records += wire.decode_records(payload)
            elif kind == wire.METRICS:
                self.metrics.append(bytes(payload).decode())
        return [r for r in self.records if r["slot"] == slot]

    def close(self) -> None:
        import struct

        from backend import wire

        self.conn.send(wire.SHUTDOWN, struct.pack("<d", 0.0))
        self.thread.join(30)


def _ids(*tokens):
    return {
        "input_ids": np.array([list(tokens)], dtype=np.int32),
        "input_lengths": np.array([[len(tokens)]], dtype=np.int32),
    }


def test_engine_core_non_decoupled(engine_dir):
    from backend import wire

    b = _Backend(engine_dir, decoupled=False)
    try:
        assert "decoupled=0" in b.ready and "family=nv_trt_llm_request_metrics|g|" in b.ready
        b.send(1, {**_ids(1, 5, 6), "request_output_len": np.array([[4]], dtype=np.int32)})
        b.send(2, {**_ids(1, 5), "request_output_len": np.array([[4]], np.int32), "streaming": np.array([[True]])})
        b.send(3, {**_ids(1, 5), "request_output_len": np.array([[0]], dtype=np.int32)})
        (ok,) = b.until_final(1)
        assert ok["flags"] == wire.FINAL | wire.ROW_END
        assert ok["tokens"][0][:3] == [1, 5, 6] and ok["seq_lens"] == [7]
        (streaming,) = b.until_final(2)
        assert streaming["flags"] & wire.ERROR and "decoupled" in streaming["error"][1]
        (bad,) = b.until_final(3)
        assert bad["error"][0] == wire.ERR_INVALID_ARG and "request_output_len" in bad["error"][1]
    finally:
        b.close()


def test_engine_core_streams_stops_and_cancels(engine_dir):
    import struct

    from backend import wire

    b = _Backend(engine_dir, decoupled=True)
    try:
        b.send(1, {**_ids(1, 5, 6), "request_output_len": np.array([[6]], np.int32), "streaming": np.array([[1]])})
        chunks = b.until_final(1)
        assert all(c["flags"] & wire.STREAM for c in chunks)
        assert sum(c["seq_lens"][0] for c in chunks) == 6 and chunks[-1]["flags"] & wire.ROW_END
        # A stop request (same id) ends a running request; it gets the final flag alone.
        long = {**_ids(1, 5, 6), "request_output_len": np.array([[200]], np.int32), "streaming": np.array([[1]])}
        b.send(2, long, rid="r2")
        b.send(3, {**_ids(1), "request_output_len": np.array([[1]], np.int32), "stop": np.array([[True]])}, rid="r2")
        assert b.until_final(3)[-1]["flags"] == wire.FINAL | wire.EMPTY
        assert sum(c["seq_lens"][0] for c in b.until_final(2)) < 200
        # A cancel (client gone) ends one too.
        b.send(4, long)
        b.conn.send(wire.CANCEL, struct.pack("<Q", 4))
        assert sum(c["seq_lens"][0] for c in b.until_final(4)) < 200
        b.metrics.clear()
        while not b.metrics:  # the next METRICS frame counts both cancellations
            kind, payload = b.conn.recv()
            if kind == wire.METRICS:
                b.metrics.append(bytes(payload).decode())
        assert "c\tnv_trt_llm_request_outcome_metrics\toutcome\tcancelled\t2.0" in b.metrics[0]
    finally:
        b.close()


def test_orphan_shared_memory_regions_are_removed_and_live_ones_kept():
    import mmap
    import uuid

    if not launcher.SHM_DIR.is_dir():
        pytest.skip("no /dev/shm")
    tag = uuid.uuid4().hex
    orphan, live, young = (launcher.SHM_DIR / f"prefix97_{tag}_{k}" for k in ("orphan", "live", "young"))
    for f in (orphan, live, young):
        f.write_bytes(b"\0" * 4096)
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    os.utime(live, (old, old))
    with open(live, "r+b") as fh, mmap.mmap(fh.fileno(), 4096) as region:  # a stub's region in use
        try:
            removed = launcher.remove_orphan_shm(min_age_s=60)
            assert orphan.name in removed and not orphan.exists()
            assert live.exists() and young.exists()  # mapped; too young to judge
            region[0] = 1
        finally:
            for f in (orphan, live, young):
                f.unlink(missing_ok=True)


def test_perf_metrics_only_where_the_model_declares_their_outputs(engine_dir):
    from backend import wire

    ask = {**_ids(1, 5, 6), "request_output_len": np.array([[3]], np.int32), "return_perf_metrics": np.array([[1]])}
    b = _Backend(engine_dir, decoupled=True)  # a config.pbtxt from before these outputs existed
    try:
        b.send(1, ask)
        (bad,) = b.until_final(1)
        assert bad["error"][0] == wire.ERR_INVALID_ARG
        assert "return_perf_metrics" in bad["error"][1] and "kv_cache_reused_blocks" in bad["error"][1]
        b.send(2, {**ask, "return_perf_metrics": np.array([[0]])})  # asking for none is fine
        (ok,) = b.until_final(2)
        assert "perf" not in ok and "error" not in ok
    finally:
        b.close()
    b = _Backend(engine_dir, decoupled=True, outputs=wire.PERF_OUTPUTS)
    try:
        b.send(1, {**ask, "streaming": np.array([[1]])})
        chunks = b.until_final(1)
        assert len(chunks) == 3 and all(c["flags"] & wire.PERF for c in chunks)
        last = chunks[-1]["perf"]
        assert last["kv_cache_alloc_total_blocks"] >= 1 and last["kv_cache_reused_blocks"] == 0
        assert 0 < last["arrival_time_ns"] <= last["first_scheduled_time_ns"] <= last["first_token_time_ns"]
        assert chunks[0]["perf"]["last_token_time_ns"] <= last["last_token_time_ns"]
    finally:
        b.close()

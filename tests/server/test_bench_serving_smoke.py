"""`benchmarks/bench_serving.py` end to end on CPU (tiny model, real tritonserver): the script the GPU sessions
run, so a broken option costs CPU minutes here instead of device time there. Its figures mean nothing on CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.server.conftest import ROOT

pytestmark = pytest.mark.server


@pytest.mark.parametrize("mode", [["--phases"], ["--turns", "2", "--kv-cache-reuse", "--prefix-words", "20"]])
def test_bench_serving_runs_on_cpu(tmp_path, mode):
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (tritonserver): pip install -e '.[serve]'")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_serving.py"), "--model", "tiny", "--device", "cpu"]
    cmd += ["--target", "core", "--concurrency", "2", "--requests", "2", "--repeats", "1", "--input-len", "16"]
    cmd += ["--output-len", "8", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *mode]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (result,) = (tmp_path / "out").glob("bench_serving_tiny_core*.txt")
    rows = [ln.split() for ln in result.read_text().splitlines() if ln.split()[:1] == ["2"]]
    assert rows and float(rows[0][1]) > 0 and float(rows[0][2]) > 0  # tokens/s on both sides
    if "--phases" in mode:  # every phase on both sides
        text = result.read_text()
        assert "2 engine  ingest" in text and "2 server  ingest" in text and "egress" in text
    else:
        assert result.name == "bench_serving_tiny_core_prefix20_reuse1_chat2.txt"

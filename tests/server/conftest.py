"""One real `tritonserver` per test session, started with the project's launcher on a tiny model.

Skipped (not failed) when the nvidia-pytriton wheel or tritonclient is not installed:
`pip install -e '.[serve]'`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def settled(read) -> float:
    """`read()` once the backend's statistics thread (a 100 ms period) has posted every finished request: a
    histogram's count lands a moment after the response, so an earlier test's last request can still be on its way."""
    last = read()
    while True:
        time.sleep(0.5)
        now = read()
        if now == last:
            return now
        last = now


@contextlib.contextmanager
def openai_front_end(grpc_port: int, *args: str):
    """`python -m openai_frontend` on its own against a running server (`args`: more of its flags); yields its
    base URL once it lists its models, and stops it after."""
    (port,) = _free_ports(1)
    cmd = [sys.executable, "-m", "openai_frontend", "--triton_grpc_url", f"localhost:{grpc_port}"]
    cmd += ["--port", str(port), "--log_level", "warning", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    base = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/v1/models", timeout=10).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the front end did not start"
                time.sleep(0.25)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


class Server:
    def __init__(self, http: int, grpc: int, metrics: int, model_dir: Path, engine_dir: Path, log: Path):
        self.http_port, self.grpc_port, self.metrics_port = http, grpc, metrics
        self.http_url = f"http://localhost:{http}"
        self.grpc_url = f"localhost:{grpc}"
        self.metrics_url = f"http://localhost:{metrics}/metrics"
        self.model_dir, self.engine_dir, self.log = model_dir, engine_dir, log

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def children(self) -> list[tuple[int, str]]:
        """(pid, command line) of the processes whose parent is this server's tritonserver (other servers
        may run): its Python stubs and its engine process."""
        rows = [line.split(None, 2) for line in subprocess.run(
            ["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True
        ).stdout.splitlines()]  # fmt: skip
        servers = {int(p) for p, _, args in rows if "tritonserver" in args and f"--http-port={self.http_port}" in args}
        return [(int(p), args) for p, pp, args in rows if int(pp) in servers]

    def engine_pids(self) -> list[int]:
        return [p for p, args in self.children() if "backend.engine_core" in args]

    def metric(self, family: str, label: str, model: str = "tensorrt_llm") -> float:
        for line in self.metrics().splitlines():
            if line.startswith(family + "{") and f'"{label}"' in line and f'model="{model}"' in line:
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(f"{family} {label}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed server test carries the tail of its server's log: on a CI machine that log is gone after
    the run, and a crash of tritonserver shows only there."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Server) and value.log.exists():
                report.sections.append(("server log (tail)", value.log.read_text(errors="replace")[-6000:]))
    return report


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from tests.helpers import build_engine, make_tiny_llama

    d = tmp_path_factory.mktemp("tiny")
    make_tiny_llama(d / "hf")
    build_engine(d / "hf", d / "engine", max_batch_size=8)
    return d / "hf", d / "engine"


@pytest.fixture(scope="session")
def server(tiny_model, tmp_path_factory):
    yield from start_server(tiny_model, tmp_path_factory.mktemp("server"), decoupled=True)


def start_server(tiny_model, work: Path, decoupled: bool, extra: dict | None = None, world_size: int = 1):
    """Fill the templates, start the launcher, yield a `Server` once ready, stop it with SIGTERM."""
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (tritonserver): pip install -e '.[serve]'")
    pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[all]")
    from quickstart_server import make_model_repo

    model_dir, engine_dir = tiny_model
    repo = make_model_repo(
        work / "repo", engine_dir, model_dir, decoupled=decoupled, triton_max_batch_size=64, extra=extra
    )
    yield from serve_repo(repo, tiny_model, work, world_size=world_size)


def serve_repo(repo: Path, tiny_model, work: Path, world_size: int = 1):
    """Start the launcher on a model repository filled by the caller, yield a `Server` once ready, stop it
    with SIGTERM."""
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (tritonserver): pip install -e '.[serve]'")
    pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[all]")
    model_dir, engine_dir = tiny_model
    http, grpc, metrics = _free_ports(3)
    log = work / "server.log"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "launch_triton_server.py"),
        "--model_repo",
        str(repo),
        "--http_port",
        str(http),
        "--grpc_port",
        str(grpc),
        "--metrics_port",
        str(metrics),
        "--force",
        "--ready-timeout",
        "300",
        "--backend-directory",
        str(work / "backends"),
        "--world_size",
        str(world_size),
    ]
    env = {**os.environ, "TRTLLM_DEVICE": "cpu"}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    srv = Server(http, grpc, metrics, model_dir, engine_dir, log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the launcher exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if "tritonserver ready" in log.read_text():
            break
        time.sleep(0.5)
    else:
        proc.send_signal(signal.SIGTERM)
        pytest.fail(f"server not ready:\n{log.read_text()[-4000:]}")
    yield srv
    proc.send_signal(signal.SIGTERM)  # the launcher stops tritonserver cleanly
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def reference(tiny_model):
    """The engine's own greedy output, computed in the test process: prompt text -> generated token ids."""
    from transformers import AutoTokenizer

    from inflight_batcher import Executor, ExecutorConfig, Request

    model_dir, engine_dir = tiny_model
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ex = Executor.from_engine_dir(engine_dir, ExecutorConfig(), device="cpu")
    cache: dict = {}

    def generate(prompt: str, max_tokens: int, **kw) -> list[int]:
        key = (prompt, max_tokens, repr(sorted(kw.items())))
        if key not in cache:
            ids = tok.encode(prompt)
            cache[key] = ex.generate([Request(input_ids=ids, max_new_tokens=max_tokens, **kw)])[0].tokens[0]
        return cache[key]

    generate.tokenizer = tok
    yield generate
    ex.shutdown()

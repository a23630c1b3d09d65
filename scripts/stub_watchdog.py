"""Replaces a dead Python-backend stub by reloading its model.

Triton 2.51's Python backend never restarts a stub that died (an OOM kill, a crash): the model stays
"ready" and every request gets HTTP 400 "Stub process '<model>_0_0' is not healthy" until a person acts.
The launcher runs this watchdog beside rank 0's tritonserver, started with explicit model control and its
repository API restricted to a key only the launcher holds (`repository_flags`): when a stub process
disappears while its model still reports ready, the model is unloaded and loaded again (seconds), which
starts new stubs. Linux only (/proc).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

KEY_HEADER = "triton-launcher-key"
KEY_ENV = "TRTLLM_REPOSITORY_KEY"  # "header=value", for the OpenAI front end's repository index calls
GRPC_KEY_HEADER = f"triton-grpc-protocol-{KEY_HEADER}"  # the name tritonserver expects over gRPC
STUB_COMM = "triton_python_b"  # /proc/PID/comm of triton_python_backend_stub (cut to 15 characters)


def new_key() -> str:
    return secrets.token_hex(16)


def repository_flags(key: str) -> list[str]:
    """tritonserver flags: explicit model control with every model loaded (as the default mode), and the
    repository API (index, load, unload) only for requests carrying the launcher's key, over HTTP and gRPC,
    so that clients cannot unload models."""
    return [
        "--model-control-mode=explicit",
        "--load-model=*",
        f"--http-restricted-api=model-repository:{KEY_HEADER}={key}",
        f"--grpc-restricted-protocol=model-repository:{KEY_HEADER}={key}",
    ]


def _stat(pid: int | str) -> tuple[str, str, int]:
    """(comm, state, ppid) of a process, from /proc/PID/stat (OSError when it is gone)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
    return stat[stat.index("(") + 1 : stat.rindex(")")], state, int(ppid)


def _alive(pid: int | str) -> bool:
    """Whether `pid` runs: a zombie (dead, not yet reaped) does not."""
    try:
        return _stat(pid)[1] not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def proc_rows() -> list[tuple[int, int, str, list[str]]]:
    """(pid, ppid, comm, argv) of every live process."""
    rows = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            comm, state, ppid = _stat(d.name)
            if state in ("Z", "X"):
                continue
            argv = (d / "cmdline").read_bytes().split(b"\0")
            rows.append((int(d.name), ppid, comm, [a.decode(errors="replace") for a in argv if a]))
    return rows


def stubs_of(http_port: int) -> dict[int, str]:
    """{stub pid: model name} of the tritonserver(s) serving `http_port`; the model is read from the stub's
    first argument, `<repository>/<model>/<version>/model.py`."""
    rows = proc_rows()
    servers = {pid for pid, _, comm, argv in rows if comm == "tritonserver" and f"--http-port={http_port}" in argv}
    return {pid: Path(argv[1]).parents[1].name for pid, ppid, comm, argv in rows
            if ppid in servers and comm == STUB_COMM and len(argv) > 1}  # fmt: skip


class StubWatchdog(threading.Thread):
    def __init__(self, http_port: int, key: str, interval: float = 1.0, log: Callable[[str], None] = print):
        super().__init__(daemon=True, name="stub-watchdog")
        self.url = f"http://localhost:{http_port}"
        self.http_port, self.key, self.interval, self.log = http_port, key, interval, log
        self.stopping = threading.Event()

    def _call(self, method: str, path: str, timeout: float) -> int:
        req = urllib.request.Request(self.url + path, method=method, headers={KEY_HEADER: self.key})
        try:
            with urllib.request.urlopen(req, data=b"" if method == "POST" else None, timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def reload(self, model: str) -> None:
        t0 = time.monotonic()
        # A load of a loaded model whose files did not change does nothing: unload first. The unload
        # waits for the model's requests in flight; a dead stub's requests have already ended.
        if self._call("POST", f"/v2/repository/models/{model}/unload", timeout=120) != 200:
            self.log(f"stub watchdog: could not unload '{model}'")
            return
        ok = self._call("POST", f"/v2/repository/models/{model}/load", timeout=600) == 200
        took = time.monotonic() - t0
        self.log(f"stub watchdog: model '{model}' {'reloaded' if ok else 'failed to reload'} in {took:.1f} s")

    def run(self) -> None:
        known = stubs_of(self.http_port)
        pending: dict[str, tuple[list[int], float]] = {}  # model -> (dead stub pids, when first seen)
        while not self.stopping.wait(self.interval):
            now = stubs_of(self.http_port)
            for pid, model in known.items():
                if pid not in now and not _alive(pid):
                    pids, since = pending.get(model, ([], time.monotonic()))
                    pending[model] = (sorted({*pids, pid}), since)
            known = now
            if pending and not self.stopping.is_set():
                self.check(pending)
                known = stubs_of(self.http_port)

    def check(self, pending: dict[str, tuple[list[int], float]], give_up_s: float = 300.0) -> None:
        """Reloads each model of `pending` (those with a dead stub) that still claims to be ready, and forgets
        it; one that is not ready was unloaded on purpose, or the server is stopping: forgotten too. A server
        too busy to answer keeps the model pending for the next round (forgetting it then would leave the
        model broken for good), up to `give_up_s`."""
        for model in sorted(pending):
            pids, since = pending[model]
            status = self._call("GET", f"/v2/models/{model}/ready", timeout=5)
            if status == 0 and time.monotonic() - since < give_up_s:
                continue
            del pending[model]
            if status == 200:
                self.log(f"stub watchdog: the Python stub of model '{model}' (pid {pids}) died; reloading it")
                self.reload(model)

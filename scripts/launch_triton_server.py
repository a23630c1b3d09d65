#!/usr/bin/env python3
"""Start Triton Inference Server on a model repository: one `tritonserver` per rank.

Flags follow the TensorRT-LLM backend's launcher (spec/triton_interface.md section 5). Differences:
- it finds `tritonserver` on PATH, in `/opt/tritonserver`, or inside the `nvidia-pytriton` wheel, and sets up
  what that wheel's binary needs (run bits, its libs on LD_LIBRARY_PATH, the environment's `bin/` first on
  PATH, the Python backend stub in a backend directory) so users never do;
- it puts the project root on PYTHONPATH so that model files can `import backend`;
- by default it stays in the foreground: waits until `/v2/health/ready`, prints where the server listens, and
  stops the server cleanly on Ctrl-C / SIGTERM. `--detach` returns once ready and leaves the server running
  (the original script's behaviour, minus the readiness wait).
- world_size 1 without `mpirun` on PATH runs a plain server (as `--no-mpi`); a larger world_size without
  `mpirun` starts one tritonserver per rank itself (this machine only), each told its rank by `RANK` and
  `WORLD_SIZE`, as mpirun's variables would.
- `--openai_port PORT` also starts the OpenAI-compatible API (`openai_frontend`) once the server is ready,
  talking to it over gRPC, and stops it with the server.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from stub_watchdog import GRPC_KEY_HEADER, KEY_ENV, StubWatchdog, new_key, repository_flags

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPO = ROOT / "all_models" / "inflight_batcher_llm"


def _wheel_dir() -> Path | None:
    """The `pytriton/tritonserver` folder of an installed nvidia-pytriton wheel, if any."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return d if (d / "bin" / "tritonserver").exists() else None


def find_tritonserver(explicit: str | None = None) -> Path:
    """`--tritonserver`, else PATH, else /opt/tritonserver, else the nvidia-pytriton wheel."""
    if explicit:
        p = Path(explicit)
        if not p.exists():
            raise FileNotFoundError(f"--tritonserver {explicit}: no such file")
        return p.resolve()
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path).resolve()
    opt = Path("/opt/tritonserver/bin/tritonserver")
    if opt.exists():
        return opt
    wheel = _wheel_dir()
    if wheel is not None:
        return wheel / "bin" / "tritonserver"
    raise FileNotFoundError(
        "tritonserver not found: not on PATH, not in /opt/tritonserver, and the nvidia-pytriton wheel is not "
        "installed (pip install 'nvidia-pytriton==0.7.0'); or pass --tritonserver PATH"
    )


def _python_version_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def prepare_environment(tritonserver: Path, backend_dir: Path | None = None) -> tuple[dict, list[str]]:
    """Environment variables and extra tritonserver arguments the binary needs.

    For the wheel's binary (`.../pytriton/tritonserver/bin/tritonserver`): make the binary and the stub
    executable (unzipping drops run bits), put the wheel's `nvidia_pytriton.libs` on LD_LIBRARY_PATH, and
    build a backend directory holding the Python backend plus the stub for this Python, because the stub
    embeds `libpython3.X` and the wheel ships one stub per Python version beside, not inside, the backend.
    """
    env = dict(os.environ)
    # The stub imports packages from the first python3 on PATH: make it this environment's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Model files `import backend` (and backend imports inflight_batcher / tensorrt_llm).
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    extra: list[str] = []
    wheel = tritonserver.parent.parent
    stubs = wheel / "python_backend_stubs"
    env["TRTLLM_PYTHON"] = sys.executable  # the engine processes run in this environment
    if not stubs.is_dir():
        # A regular Triton install (container): its own backends, beside ours.
        if backend_dir is None:
            backend_dir = Path(tempfile.gettempdir()) / "trtllm_triton_backends"
        backend_dir.mkdir(parents=True, exist_ok=True)
        for src in sorted((wheel / "backends").glob("*")):
            dst = backend_dir / src.name
            if src.is_dir() and src.name != "tensorrtllm" and not dst.exists():
                dst.symlink_to(src)
        install_native_backend(backend_dir)
        return env, [f"--backend-directory={backend_dir}"]

    # The wheel's stub (Triton 2.51) was built for numpy 1: under numpy 2 its tensors come out garbled
    # (seen: "unpack_from requires a buffer of at least 993737535 bytes" on the first text request).
    numpy_version = importlib.metadata.version("numpy")
    if int(numpy_version.split(".")[0]) >= 2:
        raise RuntimeError(
            f"the nvidia-pytriton tritonserver's Python backend needs numpy < 2, and {sys.executable} has numpy "
            f"{numpy_version}: install numpy<2 in this environment (pip install 'numpy<2'), or run from an "
            "environment that has it"
        )
    libs = wheel.parent.parent / "nvidia_pytriton.libs"
    lib_path = [str(libs)] if libs.is_dir() else []
    # The stub links `libpython3.X.so.1.0`; without help it finds the system one, whose patch level may
    # differ from this interpreter's standard library (seen: Debian 3.11.2 libpython vs pyenv 3.11.7,
    # "_ssl...so: undefined symbol: _PyModule_Add"). This interpreter's own shared libpython comes first.
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib and (Path(libdir) / ldlib).exists():
        lib_path.insert(0, libdir)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [*lib_path, env.get("LD_LIBRARY_PATH", "")] if p)
    stub = stubs / _python_version_tag() / "triton_python_backend_stub"
    if not stub.exists():
        raise FileNotFoundError(
            f"the nvidia-pytriton wheel has no Python backend stub for Python {_python_version_tag()} ({stub})"
        )
    for exe in (tritonserver, stub):
        if not os.access(exe, os.X_OK):
            exe.chmod(exe.stat().st_mode | 0o111)

    if backend_dir is None:
        backend_dir = Path(tempfile.gettempdir()) / f"trtllm_triton_backends_py{_python_version_tag()}"
    py_dir = backend_dir / "python"
    py_dir.mkdir(parents=True, exist_ok=True)
    for src in [*sorted((wheel / "backends" / "python").glob("*")), stub]:
        if src.is_file():
            dst = py_dir / src.name
            # Copy only when changed: another server may be running from this directory.
            if not dst.exists() or dst.stat().st_size != src.stat().st_size:
                tmp = py_dir / (src.name + f".tmp{os.getpid()}")
                shutil.copy2(src, tmp)
                os.replace(tmp, dst)
    install_native_backend(backend_dir)
    extra.append(f"--backend-directory={backend_dir}")
    caches = wheel / "caches"
    if caches.is_dir():
        extra.append(f"--cache-directory={caches}")
    if not gpu_present():
        # Nothing here needs CUDA: no pinned pool, no GPU metrics (DCGM / NVML), so no errors about them.
        extra += ["--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"]
    return env, extra


def gpu_present() -> bool:
    return Path("/dev/nvidiactl").exists()


# What tritonserver 2.51 still says on a machine without a GPU whatever its flags (it tries CUDA once at
# start and once per ensemble): harmless there, and hidden there so that a clean start shows no error.
NO_GPU_NOISE = ("CudaDriverHelper has not been initialized", "unable to create stream for ensemble: CUDA driver")


def _forward_output(src, dst) -> None:
    hidden = 0
    for line in iter(src.readline, b""):
        if any(n.encode() in line for n in NO_GPU_NOISE):
            hidden += 1
            if hidden == 1:
                dst.write(b"(no GPU here: tritonserver's CUDA start-up messages are hidden)\n")
            continue
        dst.write(line)
        dst.flush()


NATIVE_BACKEND = ROOT / "build" / "libtriton_tensorrtllm.so"


def install_native_backend(backend_dir: Path) -> None:
    """Puts the native `tensorrtllm` backend (built by scripts/setup.sh) where tritonserver looks for it."""
    if not NATIVE_BACKEND.exists():
        raise FileNotFoundError(
            f"the native tensorrtllm backend is not built ({NATIVE_BACKEND}): run bash scripts/setup.sh"
        )
    d = backend_dir / "tensorrtllm"
    d.mkdir(parents=True, exist_ok=True)
    dst = d / "libtriton_tensorrtllm.so"
    # Replace atomically, never write in place: a running server may have the old file mapped.
    tmp = d / f".libtriton_tensorrtllm.so.tmp{os.getpid()}"
    shutil.copy2(NATIVE_BACKEND, tmp)
    os.replace(tmp, dst)


def rank_command(args: argparse.Namespace, tritonserver: Path, rank: int, extra: list[str]) -> list[str]:
    """The tritonserver command line of one rank (spec section 5)."""
    cmd = [
        str(tritonserver),
        f"--model-repository={args.model_repo}",
        f"--grpc-port={args.grpc_port}",
        f"--http-port={args.http_port}",
        f"--metrics-port={args.metrics_port}",
        "--disable-auto-complete-config",
        f"--backend-config=python,shm-region-prefix-name=prefix{rank}_",
        *extra,
    ]
    if rank == 0 and args.log:
        cmd += ["--log-verbose=3", f"--log-file={args.log_file}"]
    if rank == 0 and getattr(args, "repository_key", None) and not _sets_control_mode(extra):
        cmd += repository_flags(args.repository_key)  # so that the stub watchdog can reload a model
    if rank != 0:
        # Workers load only the engine model; they block in its initialize and never serve.
        cmd += ["--model-control-mode=explicit"]
        cmd += [f"--load-model={name}" for name in args.tensorrt_llm_model_name.split(",")]
    if rank == 0 and args.multimodal_gpu0_cuda_mem_pool_bytes:
        cmd += [f"--cuda-memory-pool-byte-size=0:{args.multimodal_gpu0_cuda_mem_pool_bytes}"]
    return cmd


def _sets_control_mode(extra: list[str]) -> bool:
    return any(a.startswith("--model-control-mode") for a in extra)


def build_command(args: argparse.Namespace, tritonserver: Path, extra: list[str]) -> list[str]:
    # Site-specific tritonserver options pass through unchanged (e.g. memory pool sizes).
    extra = extra + os.environ.get("TRTLLM_TRITONSERVER_ARGS", "").split()
    if args.no_mpi:
        return rank_command(args, tritonserver, 0, extra)
    cmd = ["mpirun", "--allow-run-as-root"]
    if args.oversubscribe:
        cmd.append("--oversubscribe")
    cmd += ["-x", "MASTER_ADDR", "-x", "MASTER_PORT"]  # where the ranks' engine processes meet
    for rank in range(args.world_size):
        cmd += ["-n", "1", *rank_command(args, tritonserver, rank, extra), ":"]
    return cmd


def rank_processes(args: argparse.Namespace, tritonserver: Path, extra: list[str]) -> list[tuple[list[str], dict]]:
    """The processes to start, each with its own environment additions: one (mpirun, or a plain server),
    or, without mpirun, one tritonserver per rank (rank 0 first)."""
    if not args.spawn_ranks:
        return [(build_command(args, tritonserver, extra), {})]
    extra = extra + os.environ.get("TRTLLM_TRITONSERVER_ARGS", "").split()
    return [
        (rank_command(args, tritonserver, r, extra), {"RANK": str(r), "WORLD_SIZE": str(args.world_size)})
        for r in range(args.world_size)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_running() -> bool:
    try:
        out = subprocess.run(["pgrep", "-x", "tritonserver"], capture_output=True, text=True)
    except FileNotFoundError:  # no procps: cannot tell, do not block the start
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def is_ready(http_port: int, host: str = "localhost") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{http_port}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(procs: list[subprocess.Popen], http_port: int, timeout: float) -> None:
    """Poll readiness; fail as soon as a server process dies (a model failing to load ends it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {proc.returncode} before becoming ready")
        if is_ready(http_port):
            return
        time.sleep(0.25)
    raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM to tritonserver (or mpirun, which forwards it), then SIGKILL of the process group after
    `timeout`. Only the server gets the SIGTERM: it stops admitting, lets in-flight requests finish, then
    unloads the models; a signal to the whole group would kill the Python stubs under running requests."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


SHM_DIR = Path("/dev/shm")


def _mapped_shm() -> set[str]:
    """Names of the /dev/shm files some process maps or holds open."""
    held: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            held.update(
                line.rsplit("/", 1)[-1].strip()
                for line in (proc / "maps").read_text().splitlines()
                if "/dev/shm/" in line
            )
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("/dev/shm/"):
                        held.add(target.rsplit("/", 1)[-1])
    return held


def remove_orphan_shm(min_age_s: float = 60.0) -> list[str]:
    """Removes the Python backend's shared-memory regions (`prefix<rank>_*`, the prefix the launcher gives)
    that no process maps or holds open: what a killed tritonserver or stub left behind. Regions younger
    than `min_age_s` are left alone (a server starting now may not have mapped them yet)."""
    if not SHM_DIR.is_dir():
        return []
    candidates = [f for f in SHM_DIR.glob("prefix*_*") if f.is_file()]
    if not candidates:
        return []
    held, now, removed = _mapped_shm(), time.time(), []
    for f in candidates:
        with contextlib.suppress(OSError):
            if f.name not in held and now - f.stat().st_mtime >= min_age_s:
                f.unlink()
                removed.append(f.name)
    return removed


def openai_command(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        "openai_frontend",
        "--triton_grpc_url",
        f"localhost:{args.grpc_port}",
        "--triton_metrics_url",
        f"http://localhost:{args.metrics_port}/metrics",
        "--host",
        args.openai_host,
        "--port",
        str(args.openai_port),
        "--workers",
        str(args.openai_workers),
        *shlex.split(args.openai_args),
    ]


def start_openai(args: argparse.Namespace, env: dict) -> subprocess.Popen:
    """The OpenAI front end, once tritonserver is ready; returns when it answers /health."""
    # Its own session, as the servers': Ctrl-C reaches the launcher, which stops everything in order.
    frontend = subprocess.Popen(openai_command(args), env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + args.ready_timeout
    while time.monotonic() < deadline:
        if frontend.poll() is not None:
            raise RuntimeError(f"the OpenAI front end exited with code {frontend.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(f"http://localhost:{args.openai_port}/health", timeout=2) as r:
                if r.status == 200:
                    return frontend
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    stop(frontend, timeout=10.0)
    raise TimeoutError(f"the OpenAI front end not ready after {args.ready_timeout:.0f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world_size", type=int, default=1, help="number of ranks (= TP x PP)")
    p.add_argument(
        "--tritonserver",
        default=None,
        help="tritonserver binary (default: PATH, /opt/tritonserver/bin/tritonserver, then the nvidia-pytriton wheel)",
    )
    p.add_argument("--model_repo", default=str(DEFAULT_MODEL_REPO), help="model repository")
    p.add_argument("--log", action="store_true", help="rank 0 logs verbosely to --log-file")
    p.add_argument("--log-file", dest="log_file", default="triton_log.txt")
    p.add_argument("--force", "-f", action="store_true", help="start even if a tritonserver is running")
    p.add_argument("--http_port", type=int, default=8000)
    p.add_argument("--grpc_port", type=int, default=8001)
    p.add_argument("--metrics_port", type=int, default=8002)
    p.add_argument(
        "--tensorrt_llm_model_name",
        default="tensorrt_llm",
        help="engine model name(s), comma separated; worker ranks load only these",
    )
    p.add_argument(
        "--multi-model",
        dest="multi_model",
        action="store_true",
        help="orchestrator mode (TRTLLM_ORCHESTRATOR=1); world_size must be 1",
    )
    p.add_argument("--disable-spawn-processes", dest="disable_spawn_processes", action="store_true")
    p.add_argument("--oversubscribe", action="store_true", help="pass --oversubscribe to mpirun")
    p.add_argument("--no-mpi", dest="no_mpi", action="store_true", help="plain tritonserver (world_size 1)")
    p.add_argument("--multimodal_gpu0_cuda_mem_pool_bytes", type=int, default=0)
    p.add_argument(
        "--backend-directory",
        dest="backend_directory",
        default=None,
        help="where to assemble the Python backend for a wheel-installed tritonserver",
    )
    p.add_argument(
        "--detach", action="store_true", help="return once ready and leave the server running (prints its pid)"
    )
    p.add_argument(
        "--openai_port",
        type=int,
        default=None,
        help="also serve the OpenAI-compatible API (python -m openai_frontend) on this port, stopped with the "
        "server (with --detach, left running too)",
    )
    p.add_argument("--openai_host", default="0.0.0.0", help="the OpenAI API's listening address")
    p.add_argument(
        "--max_restarts",
        type=int,
        default=5,
        help="times a crashed or killed server (any rank) is started again, every rank, before giving up",
    )
    p.add_argument(
        "--openai_workers", type=int, default=1, help="OpenAI front-end processes (its --workers) sharing the port"
    )
    p.add_argument(
        "--openai_args",
        default="",
        help="more arguments for the OpenAI front end, given with '=': --openai_args='--enable_prompt_tokens_details "
        "--default_max_tokens 512' (python -m openai_frontend --help)",
    )
    p.add_argument(
        "--ready-timeout", dest="ready_timeout", type=float, default=600.0, help="seconds to wait for /v2/health/ready"
    )
    p.add_argument(
        "--print-command",
        dest="print_command",
        action="store_true",
        help="print the command and environment, start nothing",
    )
    args = p.parse_args(argv)
    args.model_repo = str(Path(args.model_repo).resolve())
    if args.world_size < 1:
        p.error("--world_size must be >= 1")
    if args.world_size == 1 and not args.no_mpi and shutil.which("mpirun") is None:
        args.no_mpi = True  # nothing to coordinate: run the plain server rather than fail for lack of MPI
    if args.no_mpi and args.world_size != 1:
        p.error("--no-mpi needs --world_size 1")
    # Without mpirun, the ranks are started here, on this machine (the same commands, RANK in their env).
    args.spawn_ranks = not args.no_mpi and shutil.which("mpirun") is None
    if args.multi_model and args.world_size != 1 and not args.disable_spawn_processes:
        p.error("--multi-model needs --world_size 1 unless --disable-spawn-processes")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.force and server_running():
        print("tritonserver is already running; stop it or pass --force", file=sys.stderr)
        return 1
    tritonserver = find_tritonserver(args.tritonserver)
    backend_dir = Path(args.backend_directory) if args.backend_directory else None
    try:
        env, extra = prepare_environment(tritonserver, backend_dir)
    except (RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.multi_model:
        env["TRTLLM_ORCHESTRATOR"] = "1"
        env["TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES"] = "0" if args.disable_spawn_processes else "1"
    args.repository_key = new_key()
    user_flags = extra + os.environ.get("TRTLLM_TRITONSERVER_ARGS", "").split()
    if not _sets_control_mode(user_flags):
        env[KEY_ENV] = f"{GRPC_KEY_HEADER}={args.repository_key}"  # the OpenAI front end lists the repository
    # Models can be reloaded when the launcher chose the control mode, or the user chose explicit.
    reloadable = KEY_ENV in env or "--model-control-mode=explicit" in user_flags
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(_free_port()))
    processes = rank_processes(args, tritonserver, extra)
    if args.print_command:
        for cmd, add in processes:
            print(" ".join([*(f"{k}={v}" for k, v in add.items()), *cmd]))
        if args.openai_port:
            print(" ".join(openai_command(args)))
        for k in ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH"):
            print(f"{k}={env.get(k, '')}")
        return 0
    if args.spawn_ranks:
        print(f"mpirun not found: starting the {args.world_size} ranks here, one tritonserver each", flush=True)

    remove_orphan_shm()  # what earlier servers killed on this machine left
    # Own process group: signals reach mpirun / tritonserver and their stubs together.
    quiet = not gpu_present() and not args.detach  # a detached server outlives the reader of its pipe
    out = subprocess.PIPE if quiet else None

    def start_ranks() -> list[subprocess.Popen]:
        started = [
            subprocess.Popen(cmd, env={**env, **add}, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
            for cmd, add in processes
        ]
        if quiet:
            for p in started:
                threading.Thread(target=_forward_output, args=(p.stdout, sys.stdout.buffer), daemon=True).start()
        return started

    def start_watchdog() -> StubWatchdog | None:
        if not reloadable or args.detach:
            return None
        w = StubWatchdog(args.http_port, args.repository_key, log=lambda m: print(m, flush=True))
        w.start()
        return w

    procs = start_ranks()  # procs[0]: mpirun, or rank 0's server: the one that serves

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    frontend: list[subprocess.Popen] = []  # the OpenAI front end, once started: stopped first
    watchdog = None
    try:
        wait_ready(procs, args.http_port, args.ready_timeout)
        watchdog = start_watchdog()
        print(
            f"tritonserver ready (pid {procs[0].pid}): HTTP localhost:{args.http_port}, "
            f"gRPC localhost:{args.grpc_port}, metrics localhost:{args.metrics_port}/metrics, "
            f"model repository {args.model_repo}",
            flush=True,
        )
        if args.openai_port:
            frontend.append(start_openai(args, env))
            print(f"OpenAI API ready (pid {frontend[0].pid}): http://localhost:{args.openai_port}/v1", flush=True)
        if args.detach:
            return 0
        restarts = 0
        while True:
            if frontend and frontend[0].poll() is not None:
                # A server without its front end is not the service asked for: end both.
                print(f"error: the OpenAI front end exited with code {frontend[0].returncode}", file=sys.stderr)
                stop_all(procs, frontend, watchdog)
                return 1
            ended = [(rank, p) for rank, p in enumerate(procs) if p.poll() is not None]
            if ended and all(p.returncode == 0 for _, p in ended):  # stopped on purpose (a signal to it)
                stop_all(procs, frontend, watchdog)
                return 0
            if ended:
                # A crash, or a killed rank: the others cannot go on without it (the leader's collectives
                # fail or hang), so every rank starts again; the front end stays and reconnects.
                rank, p = ended[0]
                what = "mpirun" if not args.no_mpi and not args.spawn_ranks else f"rank {rank}'s tritonserver"
                if restarts >= args.max_restarts:
                    print(f"error: {what} (pid {p.pid}) exited with code {p.returncode}; "
                          f"{restarts} restarts already: giving up", file=sys.stderr, flush=True)  # fmt: skip
                    stop_all(procs, frontend, watchdog)
                    return 1
                restarts += 1
                print(f"{what} (pid {p.pid}) exited with code {p.returncode}: restarting every rank "
                      f"({restarts}/{args.max_restarts})", flush=True)  # fmt: skip
                stop_all(procs, watchdog=watchdog, timeout=5.0)  # broken already: no drain
                procs = start_ranks()
                wait_ready(procs, args.http_port, args.ready_timeout)
                watchdog = start_watchdog()
                print(f"tritonserver restarted and ready (pid {procs[0].pid})", flush=True)
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping tritonserver ...", flush=True)
        stop_all(procs, frontend, watchdog)
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        stop_all(procs, frontend, watchdog)
        return 1


def stop_all(
    procs: list[subprocess.Popen],
    frontend: list[subprocess.Popen] = (),
    watchdog: StubWatchdog | None = None,
    timeout: float = 30.0,
) -> None:
    """In order: the stub watchdog (stubs end now: not to be replaced), the OpenAI front end (if any), then
    rank 0 (its drain time, `timeout`), whose engine's shutdown releases the followers, whose servers then
    end by themselves; then the shared-memory regions a killed server or stub left (a clean exit leaves
    none)."""
    if watchdog is not None:
        watchdog.stopping.set()
    for f in frontend:
        stop(f, timeout=10.0)
    stop(procs[0], timeout=timeout)
    for p in procs[1:]:
        stop(p, timeout=min(timeout, 15.0))
    removed = remove_orphan_shm(min_age_s=0.0)
    if removed:
        print(f"removed {len(removed)} shared-memory regions left in /dev/shm", flush=True)


if __name__ == "__main__":
    sys.exit(main())

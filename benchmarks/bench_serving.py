"""Serving through tritonserver against the engine driven directly, under the same load.

The same prompts (client/benchmark_serving.py's generator), the same output lengths, the same
concurrency, both loaded at once and run alternately (`--repeats` each, median kept): the in-process
executor (streaming callbacks), and the real `tritonserver`: HTTP generate_stream on the engine model
(`--target core`, token ids) or on the ensemble (`--target ensemble`, tokenizer and detokenizer included),
from several client processes. Prints TTFT, inter-token latency, output tokens/s and the ratio
server ÷ engine.

    python benchmarks/bench_serving.py [--model llama3.2-1b] [--concurrency 1,16,64] [--out DIR]

Needs the nvidia-pytriton wheel (tritonserver) importable; random weights, no download.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "client"))

from benchmark_serving import WORDS, make_lengths, percentile, sse_events  # noqa: E402

from benchmarks.bench_engine import SHAPES  # noqa: E402
from inflight_batcher import Executor, ExecutorConfig, Request  # noqa: E402
from inflight_batcher.request import PerfMetrics, SamplingParams  # noqa: E402
from tensorrt_llm.tools.tiny_model import tiny_llama_config  # noqa: E402

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from transformers import PreTrainedTokenizerBase

SHAPES = dict(
    SHAPES,
    **{
        "llama3.2-1b": dict(
            SHAPES["llama3-8b"], hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
        ),
    },
    # `--device cpu` smoke runs of this script (the CPU tokenizer's 384 ids; not a measurement)
    tiny=dict(tiny_llama_config(max_position_embeddings=8192).to_dict(), architectures=["LlamaForCausalLM"]),
)  # fmt: skip


def workload(n: int, in_len: int, out_len: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Exactly the prompts and lengths client/benchmark_serving.py sends with the same arguments."""
    rng = random.Random(seed)
    in_lens = make_lengths(n, in_len, 0.0, rng)
    out_lens = make_lengths(n, out_len, 0.0, rng)
    return [" ".join(rng.choice(WORDS) for _ in range(k)) for k in in_lens], out_lens


CLIENT_PROCS = 8


def per_token_gaps(gap: float, n: int) -> list[float]:
    """Inter-token latency of a chunk of `n` tokens that came `gap` s after the previous one: the server
    merges a stream's queued tokens into one response under load, so a chunk counts as n tokens, each
    gap / n apart (the same rule on both sides)."""
    return [gap / n] * n


PHASE_EVERY = 8  # with --phases, every 8th request asks for its timestamps (return_perf_metrics)
PHASES = (  # the first token's way, between wall-clock stamps (time.time_ns: one clock for every process)
    ("ingest", "send", "arrival"),  # client -> the executor's enqueue (HTTP, tritonserver, IPC, parsing)
    ("queue", "arrival", "scheduled"),  # enqueue -> the first step that takes it
    ("compute", "scheduled", "first_token"),  # that step -> its first token read on the host
    ("egress", "first_token", "recv"),  # -> the client has it (output encoding, IPC, HTTP, SSE parsing)
)


def phase_stamps(send_ns: int, recv_ns: int, perf: PerfMetrics | dict[str, int]) -> dict:
    """One request's stamps from its first output's perf metrics (an Output's PerfMetrics or a response's
    fields); `recv` is when the client had the first token."""
    get = (lambda k: perf[k]) if isinstance(perf, dict) else (lambda k: getattr(perf, k))  # noqa: E731
    return {"send": send_ns, "recv": recv_ns, "arrival": get("arrival_time_ns"),
            "scheduled": get("first_scheduled_time_ns"), "first_token": get("first_token_time_ns")}  # fmt: skip


def summarize(ttft: list[float], itl: list[float], tokens: int, duration: float, stamps: list | None = None) -> dict:
    ms = lambda xs, q: 1000 * percentile(xs, q)  # noqa: E731
    r = {
        "output_token_throughput": tokens / duration,
        "ttft_ms": {"p50": ms(ttft, 50), "p99": ms(ttft, 99), "mean": 1000 * statistics.fmean(ttft)},
        "itl_ms": {"p50": ms(itl, 50), "p99": ms(itl, 99), "mean": 1000 * statistics.fmean(itl)},
    }
    if stamps:
        r["phases_ms"] = {
            name: {q: percentile([(st[b] - st[a]) / 1e6 for st in stamps], int(q[1:])) for q in ("p50", "p90")}
            for name, a, b in PHASES
        }
    return r


def run_direct(
    executor: Executor, jobs: list[list[list[int]]], out_lens: list[int], concurrency: int, phases: bool = False
) -> dict:
    """Streams `jobs` through the executor, at most `concurrency` at a time. A job is one request (one prompt)
    or a conversation (several messages: each turn's prompt is the conversation so far, replies included,
    sent when the turn before ended); `out_lens[j]` tokens a turn of job j."""
    lock, done = threading.Lock(), queue.SimpleQueue()
    ttft, itl, produced, stamps, sent = [], [], [0], [], [0]

    def submit(j: int, prompt: list[int]) -> None:
        t0, send_ns, last = time.perf_counter(), time.time_ns(), [None]

        def cb(out) -> None:
            now = time.perf_counter()
            n = len(out.new_tokens[0]) if out.new_tokens else 0
            with lock:
                if n:
                    if last[0] is None:
                        ttft.append(now - t0)
                        if out.perf is not None:
                            stamps.append(phase_stamps(send_ns, time.time_ns(), out.perf))
                    else:
                        itl.extend(per_token_gaps(now - last[0], n))
                    last[0] = now
                    produced[0] += n
            if out.finished:  # the conversation so far, for its next turn
                done.put((j, prompt + list(out.tokens[0]) if len(jobs[j]) > 1 else None))

        n, perf = out_lens[j], phases and sent[0] % PHASE_EVERY == 0
        sent[0] += 1
        executor.enqueue(
            Request(
                prompt,
                max_new_tokens=n,
                streaming=True,
                sampling=SamplingParams(min_length=n),
                callback=cb,
                return_perf_metrics=perf,
            )  # fmt: skip
        )

    t0 = time.perf_counter()
    turn, started = [0] * len(jobs), min(concurrency, len(jobs))
    for j in range(started):
        submit(j, jobs[j][0])
    live = started
    while live:
        j, history = done.get()
        turn[j] += 1
        if turn[j] < len(jobs[j]):
            submit(j, history + jobs[j][turn[j]])
            continue
        live -= 1
        if started < len(jobs):  # a finished job's seat goes to the next one
            submit(started, jobs[started][0])
            started, live = started + 1, live + 1
    return summarize(ttft, itl, produced[0], time.perf_counter() - t0, stamps)


async def _stream_one(
    session, url: str, body: dict, n: int, reply: list[int] | None = None
) -> tuple[float, list[float], int, dict | None]:
    """One streamed request; `n` tokens are asked for (min_length = max tokens). A core-model event counts
    its `output_ids`, an OpenAI chunk the growth of its `usage`; an ensemble event (text) counts as one
    token, which it is (no merging on this path: the native backend sends one response per step), and the
    request as its `n` tokens. With return_perf_metrics, also the first token's phase stamps. `reply`
    (core target) collects the output ids."""
    t0, last, ttft, itl, count, stamps = time.perf_counter(), None, 0.0, [], 0, None
    send_ns = time.time_ns()
    async for event in sse_events(session, url, body):
        now = time.perf_counter()
        if stamps is None and "arrival_time_ns" in event:
            flat = {k: int(torch.tensor(v).flatten()[0]) for k, v in event.items() if k.endswith("_time_ns")}
            stamps = phase_stamps(send_ns, time.time_ns(), flat)
        if "output_ids" in event:
            out = torch.tensor(event["output_ids"]).flatten()  # one token comes as a bare number
            new = len(out)
            if reply is not None:
                reply.extend(out.tolist())
        elif "choices" in event:  # OpenAI: every chunk's `usage` (continuous_usage_stats) counts its tokens
            new = event["usage"]["completion_tokens"] - count
        else:
            # Random weights over a small trained tokenizer: many ids decode to "" (outside its vocabulary),
            # so the event, not its text, is the token.
            new = 1 if "text_output" in event else 0
        if new == 0:
            continue
        if last is None:
            ttft = now - t0
        else:
            itl.extend(per_token_gaps(now - last, new))
        last, count = now, count + new
    return ttft, itl, n if "text_input" in body else count, stamps


def _client_process(url: str, jobs: list[list[tuple[dict, int]]], concurrency: int, chain: bool = False):
    """One load-generating process: its share of the jobs, at most `concurrency` of them in flight. A job is
    one request or, with `chain` (core target), a conversation whose turns go in order, each body's
    `input_ids` after the conversation so far (replies included). Returns its results and when its load
    started and ended (perf_counter is CLOCK_MONOTONIC: one clock for every process), so process start-up and
    result passing stay out of the measured time."""
    import asyncio

    import aiohttp

    async def go():
        sem = asyncio.Semaphore(concurrency)
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600), connector=conn) as session:

            async def task(job):
                results, history = [], []
                async with sem:
                    for body, n in job:
                        reply = None
                        if chain:
                            ids, reply = history + body["input_ids"], []
                            body = {**body, "input_ids": ids, "input_lengths": len(ids)}
                        results.append(await _stream_one(session, url, body, n, reply))
                        if chain:
                            history = ids + reply
                return results

            t0 = time.perf_counter()
            results = await asyncio.gather(*(task(job) for job in jobs))
            return [r for rs in results for r in rs], t0, time.perf_counter()

    return asyncio.run(go())


def chat_workload(
    convs: int, turns: int, in_len: int, tok: PreTrainedTokenizerBase, prefix: str, seed: int = 0
) -> list[list[list[int]]]:
    """Multi-turn chat replay: per conversation, each turn's new user message as token ids (the first after
    the shared system prompt `prefix`). Turn k's prompt is turn k-1's prompt + its reply + this message."""
    rng = random.Random(seed)
    msg = lambda: " ".join(rng.choice(WORDS) for _ in range(in_len))  # noqa: E731
    return [[tok.encode((prefix if t == 0 else "") + msg()) for t in range(turns)] for _ in range(convs)]


def _import_client(_: int) -> None:
    import aiohttp  # noqa: F401  (imported once per worker, before any clock runs)

    time.sleep(0.5)  # long enough that every worker takes one


def client_pool() -> ProcessPoolExecutor:
    """The load generators, started and warm (aiohttp imported): one Python process parsing every SSE
    event would cap what it measures (16 streams per process at most)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    pool = ProcessPoolExecutor(CLIENT_PROCS, mp_context=get_context("spawn"))
    list(pool.map(_import_client, range(CLIENT_PROCS)))
    return pool


def run_server(
    pool: ProcessPoolExecutor, url: str, jobs: list[list[tuple[dict, int]]], concurrency: int, chain: bool = False
) -> dict:
    """The same load as `run_direct`, through tritonserver, from the client processes of `pool`; timed
    from the first process's start to the last one's end."""
    procs = max(1, min(CLIENT_PROCS, concurrency // 16))
    shares = [concurrency // procs + (k < concurrency % procs) for k in range(procs)]
    parts = list(pool.map(_client_process, [url] * procs, [jobs[k::procs] for k in range(procs)], shares,
                          [chain] * procs))  # fmt: skip
    results = [r for part, _, _ in parts for r in part]
    dur = max(p[2] for p in parts) - min(p[1] for p in parts)
    stamps = [r[3] for r in results if r[3] is not None]
    return summarize(
        [r[0] for r in results], [x for r in results for x in r[1]], sum(r[2] for r in results), dur, stamps
    )


def core_jobs(jobs: list[list[list[int]]], lens: list[int], phases: bool = False) -> list[list[tuple[dict, int]]]:
    """The core target's bodies of `jobs` (each a prompt, or a conversation's messages), `lens[j]` tokens a turn."""
    flat = request_bodies("core", [], [m for job in jobs for m in job], [n for job, n in zip(jobs, lens, strict=True)
                                                                        for _ in job], phases)  # fmt: skip
    it = iter(flat)
    return [[(next(it), n) for _ in job] for job, n in zip(jobs, lens, strict=True)]


def one_run(
    side: str, jobs: list[list[list[int]]], lens: list[int], *, executor: Executor | None, pool: ProcessPoolExecutor,
    core_url: str, url: str, target: str, prompts: list[str], concurrency: int, phases: bool, chain: bool,
) -> dict:  # fmt: skip
    """One measured run of one side: "engine" (the executor in-process, or with no executor the same server's
    engine model over `core_url`) or "server" (`target` at `url`). `prompts`: the text of single-prompt jobs."""
    if side == "engine" and executor is not None:
        return run_direct(executor, jobs, lens, concurrency, phases)
    if side == "engine" or target == "core":
        at = core_url if side == "engine" else url
        return run_server(pool, at, core_jobs(jobs, lens, phases), concurrency, chain)
    ids = [job[0] for job in jobs]
    return run_server(pool, url, singles(request_bodies(target, prompts, ids, lens, phases), lens), concurrency)


def singles(bodies: list[dict], out_lens: list[int]) -> list[list[tuple[dict, int]]]:
    """Requests as one-turn jobs."""
    return [[(b, n)] for b, n in zip(bodies, out_lens, strict=True)]


def run_guidellm(
    python: str, work: Path, concurrency: int, n: int, prompt_tokens: int, output_tokens: int, port: int = 18003
) -> dict:
    """The same load from guidellm (a standard OpenAI-API load generator: its own synthetic prompts of
    `prompt_tokens` tokens, `ignore_eos` to `output_tokens`, continuous usage counting the tokens), as a
    cross-check of this script's client. None of its figures feed the ratio column."""
    out = work / f"guidellm_c{concurrency}.json"
    cmd = [python, "-m", "guidellm", "run", "--disable-console",
           "--backend", f"kind=openai_http,target=http://localhost:{port},model=ensemble,request_format=/v1/completions",
           "--profile", f"kind=concurrent,streams={concurrency}", "--constraint", f"kind=max_requests,count={n}",
           "--data", f"kind=synthetic_text,prompt_tokens={prompt_tokens},output_tokens={output_tokens}",
           "--tokenizer", f"kind=hf_auto,model={work / 'tokenizer'}", "--output", f"kind=json,path={out}"]  # fmt: skip
    with open(work / "guidellm.log", "a") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=900)
    bench = json.loads(out.read_text())["benchmarks"][0]
    m = bench["metrics"]
    dist = lambda k: m[k]["successful"]  # noqa: E731
    return {
        "output_token_throughput": dist("output_token_count")["total_sum"] / bench["duration"],
        "ttft_ms": {
            "p50": dist("time_to_first_token_ms")["median"],
            "p99": dist("time_to_first_token_ms")["percentiles"]["p99"],
        },
        "itl_ms": {
            "p50": dist("inter_token_latency_ms")["median"],
            "p99": dist("inter_token_latency_ms")["percentiles"]["p99"],
        },
        "requests": m["request_totals"],
    }


def median_run(runs: list[dict]) -> dict:
    """The run of median throughput (its latencies with it), and every run's throughput beside it."""
    ordered = sorted(runs, key=lambda r: r["output_token_throughput"])
    return dict(ordered[len(ordered) // 2], runs=[round(r["output_token_throughput"]) for r in runs])


def wait_ready(server: subprocess.Popen, work: Path, url: str = "http://localhost:18000/v2/health/ready") -> None:
    import urllib.request

    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError(f"{url} did not answer; see {work / 'server.log'}") from None
            time.sleep(1)


@contextlib.contextmanager
def sampled(py_spy: str | None, pid: int, out: Path | None, name: str) -> Iterator[None]:
    """py-spy samples every thread of `pid` while the block runs (collapsed stacks), twice over: `{name}_idle`
    samples every thread at all times (where each thread's wall time goes, waits included), `{name}_gil` only
    the thread holding the GIL (who keeps the others waiting). Same on both sides, so the executor thread's
    time can be split the same way in-process and behind tritonserver."""
    if not py_spy:
        yield
        return
    rate = os.environ.get("PYSPY_RATE", "200")  # samples a second
    cmd = [py_spy, "record", "--pid", str(pid), "--threads", "--nonblocking", "-r", rate, "-f", "raw"]
    spies = [
        subprocess.Popen([*cmd, flag, "-o", str(out / f"{name}_{flag[2:]}.txt")], stdout=subprocess.DEVNULL)
        for flag in ("--idle", "--gil")
    ]
    time.sleep(1.0)  # attached before the measured run
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for spy in spies:
            spy.wait(60)


def top_functions(raw: Path, thread: str = "inflight-batcher", n: int = 25) -> list[str]:
    """The functions holding the most of `thread`'s samples (inclusive) in a py-spy raw file."""
    total, incl = 0, collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if thread not in frames[0]:
            continue
        total += int(count)
        for f in {f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] for f in frames[1:]}:
            incl[f] += int(count)
    return [f"  {c / max(total, 1):6.1%} {f}" for f, c in incl.most_common(n)]


def thread_shares(raw: Path) -> list[str]:
    """Each thread's share of a py-spy raw file's samples (of the GIL, for a `_gil` file)."""
    per = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        per[stack.split(";")[0]] += int(count)
    total = sum(per.values()) or 1
    return [f"  {c / total:6.1%} {t}" for t, c in per.most_common()]


def engine_pid() -> int:
    """The server's engine process (`python -m backend.engine_core`)."""
    from stub_watchdog import proc_rows

    (pid,) = [pid for pid, _, _, argv in proc_rows() if "backend.engine_core" in argv]
    return pid


def request_bodies(
    target: str, prompts: list[str], ids: list[list[int]], out_lens: list[int], phases: bool = False
) -> list[dict]:
    if target == "openai":  # the OpenAI front end over the engine model; ignore_eos as min_length elsewhere
        return [
            {
                "model": "ensemble",
                "prompt": t,
                "max_tokens": n,
                "ignore_eos": True,
                "stream": True,
                "temperature": 0,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            }
            for t, n in zip(prompts, out_lens, strict=True)
        ]
    if target == "core":  # token ids to the engine model itself, no tokenizer
        return [
            {"input_ids": x, "input_lengths": len(x), "request_output_len": n, "min_length": n, "streaming": True,
             "exclude_input_in_output": True, **({"return_perf_metrics": True} if timed else {})}
            for i, (x, n) in enumerate(zip(ids, out_lens, strict=True))
            for timed in [phases and i % PHASE_EVERY == 0]
        ]  # fmt: skip
    return [
        {"text_input": t, "max_tokens": n, "min_length": n, "stream": True, "exclude_input_in_output": True}
        for t, n in zip(prompts, out_lens, strict=True)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="llama3.2-1b", choices=SHAPES)
    p.add_argument("--concurrency", default="1,16,64,256")
    p.add_argument("--input-len", type=int, default=128, help="prompt words")
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--work", default="/tmp/bench_serving")
    p.add_argument("--target", default="ensemble", choices=["ensemble", "core", "openai"],
                   help="ensemble: text, tokenizer and detokenizer; core: token ids to tensorrt_llm; "
                        "openai: /v1/completions of the OpenAI front end (--openai_port)")  # fmt: skip
    p.add_argument("--server-python", default=sys.executable,
                   help="the Python that runs the launcher (and so the backend stubs): one with numpy < 2")  # fmt: skip
    p.add_argument("--instances", type=int, default=1, help="preprocessing and postprocessing instance count")
    p.add_argument("--prefix-words", type=int, default=0, help="a shared system prompt of this many words")
    p.add_argument("--kv-cache-reuse", action="store_true", help="enable_kv_cache_reuse on both sides")
    p.add_argument("--requests", type=int, default=8, help="requests per run: this many per concurrency slot")
    p.add_argument("--repeats", type=int, default=3, help="alternated runs per side and concurrency (median kept)")
    p.add_argument("--baseline", default="engine", choices=["engine", "core"],
                   help="what the server target is divided by: engine, the executor in this process; core, the "
                        "same server's engine model over generate_stream (for --target openai)")  # fmt: skip
    p.add_argument("--openai-workers", type=int, default=1, help="the OpenAI front end's processes")
    p.add_argument("--guidellm", default=None, metavar="PYTHON",
                   help="also run guidellm (with this Python) on the OpenAI front end at each level")  # fmt: skip
    p.add_argument(
        "--py-spy",
        default=None,
        metavar="BIN",
        help="py-spy binary: sample the engine process in the last server run at the last concurrency",
    )
    p.add_argument(
        "--phases",
        action="store_true",
        help="core target: every 8th request returns its perf metrics, so the first token's time splits into "
        "ingest / queue / compute / egress on both sides",
    )
    p.add_argument(
        "--turns",
        type=int,
        default=0,
        help="core target: a multi-turn chat replay instead (this many turns per conversation, each turn's prompt "
        "the conversation so far + a new message of --input-len words; --prefix-words before the first)",
    )
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of this script (with --model tiny)")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.turns and (args.target != "core" or args.phases or args.baseline != "engine"):
        p.error("--turns needs --target core against the in-process engine, without --phases")
    if args.phases and args.target != "core":
        p.error("--phases needs --target core (the engine model's perf metrics outputs)")
    if args.guidellm and args.target != "openai":
        p.error("--guidellm needs --target openai")
    if args.baseline == "core" and args.target == "ensemble":
        p.error("--baseline core compares the OpenAI front end with the engine model it calls: use --target openai")
    from quickstart_server import make_model_repo

    from tensorrt_llm.builder import BuildConfig, build_engine
    from tensorrt_llm.runtime import Engine
    from tensorrt_llm.tools.tiny_model import train_tokenizer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(work / "tokenizer")
    # A chat replay's prompts grow by a message and a reply each turn; a system prompt lengthens every prompt.
    max_input = 4096 if args.turns or args.prefix_words else 1024
    build = BuildConfig(max_batch_size=256, max_input_len=max_input, max_seq_len=max_input + 1024, max_num_tokens=8192)
    t0 = time.perf_counter()
    dtype = "float16" if args.device == "cuda" else "float32"
    build_engine(work / "engine", hf_config=SHAPES[args.model], dtype=dtype, build=build, device=args.device)
    build_s = time.perf_counter() - t0
    levels = [int(c) for c in args.concurrency.split(",")]
    # Chat-like traffic: one system prompt of `--prefix-words` words before every prompt.
    prefix = (
        " ".join(random.Random(1).choice(WORDS) for _ in range(args.prefix_words)) + " " if args.prefix_words else ""
    )
    rows = {}

    def report() -> str:
        """The table of the levels measured so far, written to --out (after every level: a run stopped by a
        time limit keeps what it measured)."""
        lines = [
            f"GPU: {torch.cuda.get_device_name() if args.device == 'cuda' else 'none (CPU)'}; {args.model} shape "
            f"{dtype}, random weights; prompts of "
            f"{args.input_len} words, {args.output_len} output tokens; engine build {build_s:.1f} s; "
            f"server target: {args.target}; pre/postprocessing instances: {args.instances}; shared prefix "
            f"{args.prefix_words} words; KV cache reuse {'on' if args.kv_cache_reuse else 'off'}; "
            + (f"multi-turn chat replay, {args.turns} turns a conversation; " if args.turns else "")
            + "runs alternated, "
            f"{args.repeats} per side, median shown (all runs' tok/s at the end of the line); baseline ('engine' "
            f"columns): "
            + ("core, the same server over generate_stream" if executor is None else "the executor in-process")
            + (f"; OpenAI front-end workers: {args.openai_workers}" if args.target == "openai" else ""),
            f"{'conc':>4} {'engine tok/s':>12} {'server tok/s':>12} {'ratio':>6} {'TTFT p50/p99 engine':>20} "
            f"{'TTFT p50/p99 server':>20} {'ITL p50/p99 engine':>19} {'ITL p50/p99 server':>19}",
        ]
        f = lambda d, k: f"{d[k]['p50']:.1f}/{d[k]['p99']:.1f} ms"  # noqa: E731
        for c, r in rows.items():
            e, s = r["engine"], r.get("server")
            if s is None:
                continue
            lines.append(
                f"{c:>4} {e['output_token_throughput']:>12.0f} {s['output_token_throughput']:>12.0f} "
                f"{s['output_token_throughput'] / e['output_token_throughput']:>6.0%} {f(e, 'ttft_ms'):>20} "
                f"{f(s, 'ttft_ms'):>20} {f(e, 'itl_ms'):>19} {f(s, 'itl_ms'):>19}   "
                f"engine {e['runs']} server {s['runs']}"
            )
        if any("phases_ms" in r["engine"] for r in rows.values()):
            lines.append("first token's way, p50/p90 ms (every 8th request, median run): " + ", ".join(
                f"{name} = {a} -> {b}" for name, a, b in PHASES))  # fmt: skip
            for c, r in rows.items():
                for side in ("engine", "server"):
                    ph = r.get(side, {}).get("phases_ms")
                    if ph:
                        lines.append(f"{c:>4} {side:<7} " + "  ".join(
                            f"{k} {v['p50']:.1f}/{v['p90']:.1f}" for k, v in ph.items()))  # fmt: skip
        if any("guidellm" in r for r in rows.values()):
            lines.append("guidellm on the same front end (its own prompts of as many tokens; one run):")
            for c, r in rows.items():
                if "guidellm" in r:
                    g = r["guidellm"]
                    lines.append(
                        f"{c:>4} {g['output_token_throughput']:>12.0f} tok/s  TTFT p50/p99 {f(g, 'ttft_ms')}  "
                        f"ITL p50/p99 {f(g, 'itl_ms')}  requests {g['requests']}"
                    )
        text = "\n".join(lines)
        tag = (
            f"_prefix{args.prefix_words}_reuse{int(args.kv_cache_reuse)}"
            if args.prefix_words or args.kv_cache_reuse
            else ""
        )
        tag += "_vs_core" if args.baseline == "core" else ""
        tag += f"_chat{args.turns}" if args.turns else ""
        Path(args.out, f"bench_serving_{args.model}_{args.target}{tag}.txt").write_text(text + "\n")
        return text

    # Both sides loaded at once, runs alternated (engine, server, engine, ...) and the median kept: on this
    # machine two runs of the same side differ by up to 15 % (GPU clocks, host noise), more than the gap
    # being measured when the two sides ran minutes apart.
    executor = None
    if args.baseline == "engine":
        engine = Engine.from_dir(work / "engine", device=args.device)
        executor = Executor(
            engine, ExecutorConfig(max_tokens_in_paged_kv_cache=262144, enable_kv_cache_reuse=args.kv_cache_reuse)
        )
    # The executor's configuration on both sides: the same KV cache.
    repo = make_model_repo(
        work / "repo",
        work / "engine",
        work / "tokenizer",
        device=args.device,
        triton_max_batch_size=64,
        extra={
            "max_tokens_in_paged_kv_cache": "262144",
            "enable_kv_cache_reuse": str(args.kv_cache_reuse).lower(),
            "preprocessing_instance_count": str(args.instances),
            "postprocessing_instance_count": str(args.instances),
        },
    )
    log = open(work / "server.log", "w")  # noqa: SIM115 (lives as long as the server)
    env = dict(os.environ)
    if args.target == "core":  # the engine model alone: no tokenizer models to load
        env["TRTLLM_TRITONSERVER_ARGS"] = "--model-control-mode=explicit --load-model=tensorrt_llm"
    openai = ["--openai_port", "18003", "--openai_workers", str(args.openai_workers)] if args.target == "openai" else []
    server = subprocess.Popen(
        [args.server_python, str(ROOT / "scripts" / "launch_triton_server.py"), "--model_repo", str(repo), "--no-mpi",
         "--http_port", "18000", "--grpc_port", "18001", "--metrics_port", "18002", "--force", *openai],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    pool = client_pool()
    try:
        wait_ready(server, work)
        model = "tensorrt_llm" if args.target == "core" else "ensemble"
        url = f"http://localhost:18000/v2/models/{model}/generate_stream"
        core_url = "http://localhost:18000/v2/models/tensorrt_llm/generate_stream"
        if args.target == "openai":
            wait_ready(server, work, "http://localhost:18003/health")
            url = "http://localhost:18003/v1/completions"
        for c in levels:
            # Each run long enough (seconds) that its ramp-up and ramp-down stay small next to it.
            prompts, out_lens = workload(max(32, args.requests * c), args.input_len, args.output_len)
            prompts = [prefix + p for p in prompts]
            ids = [tok.encode(t) for t in prompts]

            # Jobs of run k (0: the warm-up): the prompts, or with --turns conversations of their own for every
            # run (the same on both sides), so that a repeat does not find the last run's in the prefix cache.
            jobs = [[[x] for x in ids]] * (1 + args.repeats)
            if args.turns:  # the same number of requests, as conversations of --turns turns
                n_conv = max(c, len(ids) // args.turns)
                jobs = [
                    chat_workload(n_conv, args.turns, args.input_len, tok, prefix, k) for k in range(1 + args.repeats)
                ]
                longest = max(sum(map(len, cv)) + (args.turns - 1) * args.output_len for run in jobs for cv in run)
                if longest > max_input:
                    raise SystemExit(f"a last turn's prompt would be {longest} tokens, over {max_input}: fewer turns")
                out_lens = [args.output_len] * n_conv
            short = [16] * len(jobs[0])
            sides = dict(executor=executor, pool=pool, core_url=core_url, url=url, target=args.target, prompts=prompts,
                         concurrency=c, phases=args.phases, chain=bool(args.turns))  # fmt: skip
            one_run("engine", jobs[0], short, **sides)  # warm-up: the same batch shapes
            one_run("server", jobs[0], short, **sides)
            runs = {"engine": [], "server": []}
            for i in range(args.repeats):
                spy = args.py_spy if c == levels[-1] and i == args.repeats - 1 else None
                # The in-process side is this process (its executor thread); the server side the engine process.
                with sampled(spy if executor is not None else None, os.getpid(), Path(args.out), f"pyspy_inproc_c{c}"):
                    runs["engine"].append(one_run("engine", jobs[1 + i], out_lens, **sides))
                with sampled(spy, engine_pid() if spy else 0, Path(args.out), f"pyspy_engine_c{c}"):
                    runs["server"].append(one_run("server", jobs[1 + i], out_lens, **sides))
            rows[c] = {side: median_run(r) for side, r in runs.items()}
            if args.guidellm:
                try:
                    mean_prompt = round(statistics.fmean(len(x) for x in ids))
                    rows[c]["guidellm"] = run_guidellm(args.guidellm, work, c, len(ids), mean_prompt, args.output_len)
                except (subprocess.SubprocessError, OSError, KeyError, ValueError) as e:
                    print(f"guidellm at {c}: {e!r}; see {work / 'guidellm.log'}", flush=True)
            print(c, json.dumps(rows[c]), flush=True)
            report()
            if args.py_spy and c == levels[-1]:  # where each side's threads spend wall time and the GIL
                for side in ("inproc", "engine"):
                    for kind in ("idle", "gil"):
                        raw = Path(args.out, f"pyspy_{side}_c{c}_{kind}.txt")
                        if raw.exists():
                            print(f"py-spy {side} {kind}: threads", *thread_shares(raw), sep="\n")
                            print("executor thread:", *top_functions(raw, n=30), sep="\n", flush=True)
    finally:
        pool.shutdown()
        if executor is not None:
            executor.shutdown()
        server.terminate()
        server.wait(60)

    print(report())


if __name__ == "__main__":
    main()

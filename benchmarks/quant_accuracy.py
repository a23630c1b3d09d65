"""Quantization accuracy: perplexity and greedy agreement of engines built with each quantization mode.

Builds one engine per mode from a trained checkpoint (`benchmarks/train_tiny_llama.py`) through the
`trtllm-build` command line, then for each engine:
  * perplexity on held-out text: teacher-forced, non-overlapping windows (the same windows for every mode),
    from the engine's logits of every position (a context step with all logits);
  * greedy agreement with the `float` engine: prompts from the held-out text, N tokens generated greedily
    with `ModelRunner`; the share of generated tokens equal to the float engine's until the first divergence
    (prefix) and position-wise over all (overall).
The float engine's perplexity is checked against Hugging Face's own forward on the same windows (the
correctness oracle). A build that fails (a flag the builder does not know yet) is reported and skipped.

    python benchmarks/quant_accuracy.py --model_dir /tmp/tiny_llama_trained --work /tmp/quant_acc \
        [--modes float int8_wo ...] [--device cpu|cuda] [--dtype float16]

Writes WORK/results.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.train_tiny_llama import BOS, EOS, eval_windows, hf_eval, load_corpus, nll_from_logits  # noqa: E402

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from inflight_batcher.runner import ModelRunner
    from tensorrt_llm.runtime import Engine

# trtllm-build flags of each mode.
MODES: dict[str, list[str]] = {
    "float": [],
    "int8_wo": ["--use_weight_only", "--weight_only_precision", "int8"],
    "int4_wo": ["--use_weight_only", "--weight_only_precision", "int4", "--group_size", "128"],
    "fp8": ["--quant_algo", "FP8"],
    "fp8_kv": ["--quant_algo", "FP8", "--kv_cache_quant_algo", "FP8"],
    "int8_kv": ["--kv_cache_quant_algo", "INT8"],
    "sq": ["--use_smooth_quant", "--per_token", "--per_channel"],
    # Built from a quantized checkpoint directory (--gptq_dir / --awq_dir) instead of --model_dir.
    "gptq": [],
    "awq": [],
}
CALIBRATED = {"fp8", "fp8_kv", "int8_kv", "sq"}
DEFAULT_MODES = ["float", "int8_wo", "int4_wo", "fp8", "fp8_kv", "int8_kv", "sq", "gptq", "awq"]


# -- data ---------------------------------------------------------------------------------------------
def eval_docs(model_dir: Path) -> list[str]:
    path = model_dir / "eval_docs.json"
    if path.is_file():
        return json.loads(path.read_text())
    return load_corpus()[1]  # deterministic for this Python version


def calib_file(model_dir: Path, work: Path) -> Path:
    """The training split, blank-line-separated documents, in WORK (for --calib_dataset)."""
    out = work / "calib.txt"
    src = model_dir / "calib_text.txt"
    out.write_text(src.read_text() if src.is_file() else "\n\n".join(load_corpus()[0]) + "\n")
    return out


def token_stream(tokenizer: PreTrainedTokenizerBase, docs: list[str]) -> list[int]:
    out: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        out += [BOS, *ids, EOS]
    return out


def greedy_prompts(stream: list[int], n: int, length: int) -> list[list[int]]:
    """n prompts of `length` tokens at evenly spaced offsets of the held-out stream."""
    last = len(stream) - length - 1
    return [stream[i * last // max(n - 1, 1) :][:length] for i in range(n)]


# -- engine measurements ----------------------------------------------------------------------------
@torch.inference_mode()
def engine_perplexity(engine: Engine, windows: torch.Tensor, batch: int = 4, chunk: int | None = None) -> dict:
    """Teacher-forced perplexity of `engine` over `windows` [W, S]: `batch` windows per step (each its own
    sequence, from position 0), logits of every position. With `chunk`, each window goes in context steps
    of `chunk` tokens, so that later tokens attend to keys and values read back from the (possibly
    quantized) KV cache; without, in one context step."""
    from tensorrt_llm.runtime import build_step_input

    tpb = engine.config.build.tokens_per_block
    S = windows.shape[1]
    chunk = chunk or S
    per_seq = -(-S // tpb)
    kv = engine.make_kv_cache(batch * per_seq)
    total, n = 0.0, 0
    for i in range(0, len(windows), batch):
        x = windows[i : i + batch]
        tables = [list(range(b * per_seq, (b + 1) * per_seq)) for b in range(len(x))]
        parts = []
        for start in range(0, S, chunk):
            c = x[:, start : start + chunk]
            step = build_step_input(c.tolist(), [start] * len(x), tables, tpb, engine.device, all_logits=True)
            parts.append(engine.forward(step, kv).float().cpu().view(len(x), c.shape[1], -1))
        logits = torch.cat(parts, dim=1)
        for b in range(len(x)):
            s, c = nll_from_logits(logits[b], x[b])
            total, n = total + s, n + c
    return {"ppl": math.exp(total / n), "nll": total / n, "tokens": n}


def greedy(runner: ModelRunner, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    out = runner.generate(prompts, max_new_tokens=new_tokens, end_id=-1, pad_id=0, return_dict=True)
    ids = out["output_ids"][:, 0]
    return [ids[i, len(p) : len(p) + new_tokens].tolist() for i, p in enumerate(prompts)]


def agreement(ref: list[list[int]], got: list[list[int]]) -> dict:
    prefix, overall, total = 0, 0, 0
    for r, g in zip(ref, got, strict=True):
        k = next((i for i, (a, b) in enumerate(zip(r, g, strict=True)) if a != b), len(r))
        prefix += k
        overall += sum(a == b for a, b in zip(r, g, strict=True))
        total += len(r)
    return {"greedy_prefix_match": prefix / total, "greedy_overall_match": overall / total}


def weight_bytes(engine_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in sorted(engine_dir.glob("rank*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open is not iterable
                t = f.get_slice(k)
                numel = math.prod(t.get_shape())
                total += numel * _DTYPE_BYTES.get(t.get_dtype(), 4)
    return total


_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


# -- building ---------------------------------------------------------------------------------------
def build(mode: str, src: Path, out: Path, a: argparse.Namespace, calib: Path, log: Path) -> tuple[bool, str, float]:
    cmd = [
        sys.executable, "-m", "tensorrt_llm.commands.build", "--model_dir", str(src), "--output_dir", str(out),
        "--dtype", a.dtype, "--max_batch_size", str(max(a.prompts, a.eval_batch)),
        "--max_input_len", str(a.seq_len), "--max_seq_len", str(max(a.seq_len, a.prompt_len + a.new_tokens)),
        "--max_num_tokens", str(max(a.eval_batch * a.seq_len, a.prompts * a.prompt_len)),
        "--tokens_per_block", str(a.tokens_per_block), "--device", a.device, *MODES[mode],
    ]  # fmt: skip
    if mode in CALIBRATED:
        cmd += ["--calib_dataset", str(calib)]
    shutil.rmtree(out, ignore_errors=True)  # no stale engine from an earlier run
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")
    if r.returncode != 0:
        err = (r.stderr.strip() or r.stdout.strip()).splitlines()
        return False, "\n".join(err[-6:]) or f"exit status {r.returncode}", dt
    return True, r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "", dt


# -- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="trained checkpoint (benchmarks/train_tiny_llama.py)")
    p.add_argument("--work", required=True, help="directory for engines, logs, calib.txt and results.json")
    p.add_argument("--modes", nargs="+", default=DEFAULT_MODES, choices=list(MODES))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--gptq_dir", help="GPTQ-quantized checkpoint of the model (mode gptq)")
    p.add_argument("--awq_dir", help="AWQ-quantized checkpoint of the model (mode awq)")
    p.add_argument("--seq_len", type=int, default=256, help="perplexity window")
    p.add_argument("--windows", type=int, default=64, help="perplexity windows (at most; the held-out text has ~36)")
    p.add_argument("--eval_batch", type=int, default=4, help="windows per context step")
    p.add_argument(
        "--chunk", type=int, default=16,
        help="also perplexity with windows fed in context chunks of this many tokens, so that attention reads "
        "K/V back from the cache (what KV-cache quantization changes); 0: off",
    )  # fmt: skip
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--tokens_per_block", type=int, default=32)
    a = p.parse_args(argv)

    from transformers import AutoTokenizer, LlamaForCausalLM

    from tensorrt_llm.runtime import Engine, ModelRunner

    torch.set_num_threads(os.cpu_count() or 1)
    model_dir, work = Path(a.model_dir).resolve(), Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    modes = list(dict.fromkeys(a.modes))
    if "float" not in modes:
        modes.insert(0, "float")  # the reference of Δppl and greedy agreement
    else:
        modes.remove("float")
        modes.insert(0, "float")

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    stream = token_stream(tokenizer, eval_docs(model_dir))
    windows = eval_windows(torch.tensor(stream).numpy(), a.seq_len, a.windows)
    prompts = greedy_prompts(stream, a.prompts, a.prompt_len)
    calib = calib_file(model_dir, work) if CALIBRATED & set(modes) else None
    train_info_path = model_dir / "train_info.json"
    train_info = json.loads(train_info_path.read_text()) if train_info_path.is_file() else {}
    train_info.pop("history", None)

    t0 = time.perf_counter()
    hf = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    hf_ref = hf_eval(hf, windows)
    del hf
    print(
        f"held-out: {len(windows)} windows of {a.seq_len} tokens ({hf_ref['eval_tokens']} predicted); "
        f"HF float32 ppl {hf_ref['eval_ppl']:.4f} ({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )

    results: dict[str, dict] = {}
    ref_tokens: list[list[int]] | None = None
    for mode in modes:
        r: dict = {"flags": MODES[mode]}
        results[mode] = r
        src = model_dir
        if mode in ("gptq", "awq"):
            d = a.gptq_dir if mode == "gptq" else a.awq_dir
            if not d:
                r["status"] = "skipped"
                r["error"] = f"no --{mode}_dir checkpoint given"
                print(f"[{mode}] skipped: {r['error']}", flush=True)
                continue
            src = Path(d)
        engine_dir = work / "engines" / mode
        ok, msg, r["build_s"] = build(mode, src, engine_dir, a, calib, work / f"build_{mode}.log")
        if not ok:
            r["status"] = "build_failed"
            r["error"] = msg
            print(f"[{mode}] build failed ({r['build_s']:.1f} s):\n    " + msg.replace("\n", "\n    "), flush=True)
            continue
        print(f"[{mode}] {msg}", flush=True)
        try:
            cfg = json.loads((engine_dir / "config.json").read_text())
            r["quantization"] = cfg.get("quantization")
            r["weight_bytes"] = weight_bytes(engine_dir)
            t = time.perf_counter()
            engine = Engine.from_dir(engine_dir, device=a.device)
            r.update(engine_perplexity(engine, windows, a.eval_batch))
            if a.chunk:
                r["ppl_chunked"] = engine_perplexity(engine, windows, a.eval_batch, a.chunk)["ppl"]
            r["ppl_s"] = time.perf_counter() - t
            t = time.perf_counter()
            tpb = engine.config.build.tokens_per_block
            blocks = a.prompts * -(-(a.prompt_len + a.new_tokens) // tpb)
            runner = ModelRunner(engine, blocks, cuda_graphs=a.device == "cuda")
            toks = greedy(runner, prompts, a.new_tokens)
            r["greedy_s"] = time.perf_counter() - t
            del runner, engine
            if a.device == "cuda":
                torch.cuda.empty_cache()
            if ref_tokens is None and mode == "float":
                ref_tokens = toks
            if ref_tokens is not None:
                r.update(agreement(ref_tokens, toks))
            r["greedy_tokens"] = toks
            r["status"] = "ok"
            print(
                f"[{mode}] ppl {r['ppl']:.4f}"
                + (f" (chunked {r['ppl_chunked']:.4f})" if "ppl_chunked" in r else "")
                + f"  ppl {r['ppl_s']:.1f} s  greedy {r['greedy_s']:.1f} s"
                + (f"  match {100 * r['greedy_prefix_match']:.1f} %" if "greedy_prefix_match" in r else ""),
                flush=True,
            )
        except Exception as e:  # noqa: BLE001 - one mode's failure must not stop the others
            r["status"] = "eval_failed"
            r["error"] = f"{type(e).__name__}: {e}"
            print(f"[{mode}] evaluation failed: {r['error']}\n{traceback.format_exc()}", flush=True)

    base, base_chunked = results["float"].get("ppl"), results["float"].get("ppl_chunked")
    for r in results.values():
        if base and "ppl" in r:
            r["ppl_delta_pct"] = 100 * (r["ppl"] / base - 1)
        if base_chunked and "ppl_chunked" in r:
            r["ppl_chunked_delta_pct"] = 100 * (r["ppl_chunked"] / base_chunked - 1)
    oracle = {"hf_ppl": hf_ref["eval_ppl"], "engine_float_ppl": base, "engine_float_ppl_chunked": base_chunked}
    if base:
        oracle["rel_diff_pct"] = 100 * (base / hf_ref["eval_ppl"] - 1)
        diffs = [oracle["rel_diff_pct"]]
        if base_chunked:
            oracle["chunked_rel_diff_pct"] = 100 * (base_chunked / hf_ref["eval_ppl"] - 1)
            diffs.append(oracle["chunked_rel_diff_pct"])
        oracle["ok"] = max(map(abs, diffs)) <= 0.1

    chunked = f"ppl, chunks of {a.chunk} (Δ %)"
    lines = [
        f"model {model_dir} ({train_info.get('parameters', '?')} parameters), engines {a.dtype} on {a.device}; "
        f"{hf_ref['eval_tokens']} held-out tokens in {len(windows)} windows of {a.seq_len}; greedy: "
        f"{a.prompts} prompts of {a.prompt_len} tokens, {a.new_tokens} new tokens. Weight bytes: all engine "
        "tensors (embedding and lm_head stay float).",
        "",
        f"| mode | weight bytes | ppl | Δppl % | {chunked} | greedy match % (prefix / overall) | build s | eval s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, r in results.items():
        if r.get("status") != "ok":
            lines.append(f"| {mode} | {r.get('status')} | | | | | {r.get('build_s', 0):.1f} | |")
            continue
        match = (
            f"{100 * r['greedy_prefix_match']:.1f} / {100 * r['greedy_overall_match']:.1f}"
            if "greedy_prefix_match" in r
            else "n/a"
        )
        ch = (
            f"{r['ppl_chunked']:.3f} ({r.get('ppl_chunked_delta_pct', float('nan')):+.2f})"
            if "ppl_chunked" in r
            else "n/a"
        )
        lines.append(
            f"| {mode} | {r['weight_bytes']:,} | {r['ppl']:.3f} | {r.get('ppl_delta_pct', float('nan')):+.2f} | "
            f"{ch} | {match} | {r['build_s']:.1f} | {r['ppl_s'] + r['greedy_s']:.1f} |"
        )
    lines.append("")
    if base:
        lines.append(
            f"oracle: HF float32 forward ppl {hf_ref['eval_ppl']:.4f}, float engine ({a.dtype}) {base:.4f} "
            f"({oracle['rel_diff_pct']:+.3f} %)"
            + (f", in chunks {base_chunked:.4f} ({oracle['chunked_rel_diff_pct']:+.3f} %)" if base_chunked else "")
            + (": OK" if oracle["ok"] else ": MISMATCH, over 0.1 %")
        )
    else:
        lines.append("oracle: the float engine gave no perplexity")
    table = "\n".join(lines)
    print("\n" + table)
    out = {
        "model_dir": str(model_dir),
        "train_info": train_info,
        "device": a.device,
        "dtype": a.dtype,
        "seq_len": a.seq_len,
        "windows": len(windows),
        "eval_tokens": hf_ref["eval_tokens"],
        "prompts": a.prompts,
        "prompt_len": a.prompt_len,
        "new_tokens": a.new_tokens,
        "oracle": oracle,
        "modes": results,
        "table": table,
    }
    (work / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nresults: {work / 'results.json'}")
    return 0 if oracle.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

"""Trains a small Llama on English text that ships with Python, on CPU, for quantization accuracy tests.

Random weights say little about quantization error; a model that has learned something does. The text is
the standard library's reference topics (`pydoc_data.topics`, the `help("if")` pages) plus the docstrings of
the standard library's modules; every 10th topic (sorted by name) is held out as eval text and never
trained on. A byte-level BPE tokenizer is trained on the training split. No downloads.

    python benchmarks/train_tiny_llama.py --out .cache/tiny_llama_trained [--minutes 15]

DIR then holds a Hugging Face checkpoint (safetensors, float32) with its tokenizer, `eval_docs.json` (the
held-out documents), `calib_text.txt` (the training split, blank-line-separated documents) and `train_info.json`
(steps, losses, eval perplexity by Hugging Face's own forward). `benchmarks/quant_accuracy.py` reads them.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import sysconfig
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
BOS, EOS = 1, 2
EVAL_EVERY = 10  # every 10th topic is eval text
SEQ_LEN = 256


def load_corpus() -> tuple[list[str], list[str]]:
    """(train documents, eval documents), deterministic for a Python version. Eval: every 10th topic of
    `pydoc_data.topics` by sorted name; train: the other topics and the standard library's docstrings."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    eval_docs = [topics[k].strip() for i, k in enumerate(names) if i % EVAL_EVERY == EVAL_EVERY // 2]
    train_docs = [topics[k].strip() for i, k in enumerate(names) if i % EVAL_EVERY != EVAL_EVERY // 2]
    held = set(eval_docs)
    lib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "pydoc_data", "__pycache__"}
    for path in sorted(lib.rglob("*.py")):
        if skip & set(path.relative_to(lib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200 and doc not in held:
                    train_docs.append(doc.strip())
    return train_docs, eval_docs


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(docs, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def token_stream(tokenizer: PreTrainedTokenizerBase, docs: list[str]) -> np.ndarray:
    """Documents as one token stream: <s> doc </s> <s> doc </s> ..."""
    out = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        out += [BOS, *ids, EOS]
    return np.asarray(out, dtype=np.int64)


def eval_windows(stream: np.ndarray, seq_len: int = SEQ_LEN, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows [W, seq_len] from the start of the stream (the tail that does not fill one
    is dropped)."""
    w = len(stream) // seq_len
    if max_windows is not None:
        w = min(w, max_windows)
    return torch.from_numpy(stream[: w * seq_len].reshape(w, seq_len).copy())


def nll_from_logits(logits: torch.Tensor, window: torch.Tensor) -> tuple[float, int]:
    """Summed negative log-likelihood (float64) of tokens 1.. of `window` given logits [S, V] of every
    position, and the number of predicted tokens."""
    lp = torch.log_softmax(logits[:-1].double(), dim=-1)
    nll = -lp.gather(1, window[1:].long().view(-1, 1)).sum()
    return float(nll), int(window.numel() - 1)


@torch.no_grad()
def hf_eval(model: PreTrainedModel, windows: torch.Tensor, batch: int = 8) -> dict:
    """Perplexity of HF's forward over the windows (teacher-forced, each window on its own)."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(windows), batch):
        x = windows[i : i + batch]
        logits = model(input_ids=x).logits.float()
        for b in range(len(x)):
            s, c = nll_from_logits(logits[b], x[b])
            total, n = total + s, n + c
    return {"eval_ppl": math.exp(total / n), "eval_nll": total / n, "eval_tokens": n, "eval_windows": len(windows)}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--minutes", type=float, default=15.0, help="training time budget (the schedule fits it)")
    p.add_argument("--steps", type=int, default=None, help="fixed number of steps (overrides --minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab_size", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=SEQ_LEN)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args(argv)

    import transformers

    t_start = time.perf_counter()
    seed_everything(a.seed)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    train_docs, eval_docs = load_corpus()
    tokenizer = train_tokenizer(train_docs, a.vocab_size)
    tokenizer.save_pretrained(str(out))
    train = token_stream(tokenizer, train_docs)
    evals = token_stream(tokenizer, eval_docs)
    windows = eval_windows(evals, a.seq_len)
    (out / "eval_docs.json").write_text(json.dumps(eval_docs, indent=0) + "\n")
    (out / "calib_text.txt").write_text("\n\n".join(train_docs) + "\n")
    print(
        f"corpus: {len(train_docs)} train docs ({sum(map(len, train_docs))} chars, {len(train)} tokens), "
        f"{len(eval_docs)} eval docs ({sum(map(len, eval_docs))} chars, {len(evals)} tokens, {len(windows)} windows)",
        flush=True,
    )

    cfg = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        head_dim=a.hidden // a.heads, max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=3, tie_word_embeddings=False, torch_dtype="float32",
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
    )  # fmt: skip
    gen = np.random.default_rng(a.seed)
    starts_max = len(train) - a.seq_len - 1

    def batch() -> torch.Tensor:
        starts = gen.integers(0, starts_max, a.batch)
        return torch.from_numpy(np.stack([train[s : s + a.seq_len] for s in starts]))

    def train_step(step: int, progress: float) -> float:
        """One step; `progress` in [0, 1] drives the schedule (warm-up, then cosine to 10 %)."""
        warm = 50
        if step < warm:
            lr = a.lr * (step + 1) / warm
        else:
            lr = a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        x = batch()
        model.train()
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    # With --steps the schedule runs by step (deterministic); with --minutes by the time spent, so that it
    # finishes in the budget whatever else the machine is doing.
    reserve = 30.0 + 0.02 * len(windows)  # final eval and save
    budget = a.minutes * 60.0 - (time.perf_counter() - t_start) - reserve
    step, losses, history = 0, [], []
    t_train = time.perf_counter()
    last_log = t_train
    log_every_s = budget / 20
    while True:
        el = time.perf_counter() - t_train
        if a.steps is not None:
            progress = step / a.steps
        else:
            progress = el / budget
        if progress >= 1.0:
            break
        losses.append(train_step(step, progress))
        step += 1
        now = time.perf_counter()
        if (a.steps is not None and (step % max(1, a.steps // 20) == 0)) or (
            a.steps is None and now - last_log >= log_every_s
        ):
            n_avg = min(len(losses), 25)
            avg = sum(losses[-n_avg:]) / n_avg
            print(f"step {step}  loss {avg:.3f}  progress {progress:.2f}  {(now - t_train) / 60:.1f} min", flush=True)
            history.append({"step": step, "train_loss": avg, "minutes": (now - t_train) / 60})
            last_log = now
    train_s = time.perf_counter() - t_train

    model.eval()
    ev = hf_eval(model, windows)
    print(f"eval: ppl {ev['eval_ppl']:.2f} over {ev['eval_tokens']} tokens (uniform: {len(tokenizer)})", flush=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tail = losses[-max(1, min(50, len(losses))) :]
    info = {
        "steps": step,
        "batch": a.batch,
        "seq_len": a.seq_len,
        "tokens_seen": step * a.batch * a.seq_len,
        "final_train_loss": sum(tail) / len(tail),
        "train_seconds": train_s,
        "parameters": n_params,
        "train_tokens": int(len(train)),
        "eval_docs": len(eval_docs),
        **ev,
        "lr": a.lr,
        "seed": a.seed,
        "threads": a.threads,
        "python": sysconfig.get_python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "history": history,
    }
    (out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"saved to {out} ({(time.perf_counter() - t_start) / 60:.1f} min in all)")


if __name__ == "__main__":
    main()

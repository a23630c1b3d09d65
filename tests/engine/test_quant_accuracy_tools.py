"""The perplexity and agreement measures of benchmarks/quant_accuracy.py, against Hugging Face's forward."""

import torch

from benchmarks.quant_accuracy import agreement, engine_perplexity, greedy_prompts
from benchmarks.train_tiny_llama import hf_eval, nll_from_logits
from tensorrt_llm.runtime import Engine
from tests.helpers import build_engine, make_tiny_llama


def test_nll_from_logits_is_shifted_cross_entropy():
    torch.manual_seed(0)
    logits, window = torch.randn(9, 11), torch.randint(0, 11, (9,))
    s, n = nll_from_logits(logits, window)
    ref = torch.nn.functional.cross_entropy(logits[:-1], window[1:], reduction="sum")
    assert n == 8 and abs(s - float(ref)) < 1e-4


def test_engine_perplexity_matches_hf(tmp_path):
    hf = make_tiny_llama(tmp_path / "hf", with_tokenizer=False, vocab_size=384, num_key_value_heads=2)
    build_engine(tmp_path / "hf", tmp_path / "engine", max_batch_size=4, max_num_tokens=512)
    engine = Engine.from_dir(tmp_path / "engine", device="cpu")
    torch.manual_seed(1)
    windows = torch.randint(4, 384, (5, 40))  # 5 windows, batches of 2: a short last step, 40 % 8 != 0
    ours = engine_perplexity(engine, windows, batch=2)
    ref = hf_eval(hf, windows, batch=3)
    assert ours["tokens"] == ref["eval_tokens"] == 5 * 39
    assert abs(ours["ppl"] / ref["eval_ppl"] - 1) < 1e-4
    chunked = engine_perplexity(engine, windows, batch=2, chunk=16)  # chunks 16, 16, 8: reads the cache
    assert chunked["tokens"] == ours["tokens"]
    assert abs(chunked["ppl"] / ref["eval_ppl"] - 1) < 1e-4


def test_agreement_and_prompts():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8]]
    got = [[1, 2, 9, 4], [5, 6, 7, 8]]
    m = agreement(ref, got)
    assert m["greedy_prefix_match"] == (2 + 4) / 8
    assert m["greedy_overall_match"] == 7 / 8
    ps = greedy_prompts(list(range(100)), 4, 10)
    assert [p[0] for p in ps] == [0, 29, 59, 89] and all(len(p) == 10 for p in ps)

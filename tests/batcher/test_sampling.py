"""Decoding options through the executor against straightforward reference computations on the Hugging
Face model (full forward per token, then the rule applied by hand), and beam search against
Hugging Face `generate(num_beams=...)`."""

import pytest
import torch

from inflight_batcher import Output, Request, SamplingParams
from tests.batcher.conftest import DEVICE, TEST_CONFIG, hf_greedy, prompts

P = [17, 201, 33, 94, 5, 150, 61]


@torch.no_grad()
def ref_decode(hf, prompt, n, process=lambda logits, toks, out: logits, end_id=None):
    """Greedy decoding with `process(logits[V], prompt+generated, generated)` applied before argmax;
    returns (tokens, log-probs of the processed distribution)."""
    toks, out, lps = list(prompt), [], []
    for _ in range(n):
        logits = process(hf(torch.tensor([toks])).logits[0, -1].float().clone(), toks, out)
        t = int(logits.argmax())
        if t == end_id:
            break
        lps.append(float(logits.log_softmax(-1)[t]))
        toks.append(t)
        out.append(t)
    return out, lps


@pytest.fixture(scope="module")
def ex(engine_dir):
    from inflight_batcher import Executor, ExecutorConfig

    e = Executor.from_engine_dir(engine_dir, ExecutorConfig(max_beam_width=4, **TEST_CONFIG), device=DEVICE)
    yield e
    e.shutdown()
    e.block_manager.check([])


def run(ex, **kw) -> Output:
    kw.setdefault("end_id", -1)
    return ex.generate([Request(kw.pop("input_ids", P), **kw)])[0]


def test_stop_words(ex, hf_model):
    free = hf_greedy(hf_model, P, 12)
    i = 4
    word = free[i : i + 2]
    first = next(k for k in range(len(free) - 1) if free[k : k + 2] == word)
    out = run(ex, max_new_tokens=12, stop_words=[[399 % 384, 1], word])
    assert out.finish_reason == "stop_words" and out.tokens[0] == free[: first + 2]


def test_bad_words_single_and_multi_token(ex, hf_model):
    free = hf_greedy(hf_model, P, 10)
    bad = [[free[0]], free[2:4]]

    def ban(logits, toks, out):
        for w in bad:
            if toks[len(toks) - len(w) + 1 :] == w[:-1] or len(w) == 1:
                logits[w[-1]] = -float("inf")
        return logits

    ref, _ = ref_decode(hf_model, P, 10, ban)
    out = run(ex, max_new_tokens=10, bad_words=bad)
    assert out.tokens[0] == ref and out.tokens[0][0] != free[0]


def test_min_length_holds_back_end_id(ex, hf_model):
    free = hf_greedy(hf_model, P, 10)
    end = free[1]  # would stop after 1 token
    assert run(ex, max_new_tokens=10, end_id=end).tokens[0] == free[:1]

    def hold(logits, toks, out):
        if len(out) < 6:
            logits[end] = -float("inf")
        return logits

    ref, _ = ref_decode(hf_model, P, 10, hold, end_id=end)
    out = run(ex, max_new_tokens=10, end_id=end, sampling=SamplingParams(min_length=6))
    assert out.tokens[0] == ref and len(ref) >= 6


def test_penalties_match_reference(ex, hf_model):
    rep, pres, freq = 1.5, 0.7, 0.4

    def penalize(logits, toks, out):
        for t in set(toks):  # repetition: prompt + generated (CTRL / Hugging Face)
            logits[t] = logits[t] / rep if logits[t] > 0 else logits[t] * rep
        for t in set(out):  # presence, frequency: generated only
            logits[t] -= pres + freq * out.count(t)
        return logits

    ref, ref_lp = ref_decode(hf_model, P, 16, penalize)
    sp = SamplingParams(repetition_penalty=rep, presence_penalty=pres, frequency_penalty=freq)
    out = run(ex, max_new_tokens=16, sampling=sp, return_log_probs=True)
    assert out.tokens[0] == ref
    assert out.log_probs[0] == pytest.approx(ref_lp, abs=1e-3)
    # Repetition penalty alone is Hugging Face's RepetitionPenaltyLogitsProcessor.
    with torch.no_grad():
        hf = hf_model.generate(torch.tensor([P]), max_new_tokens=16, do_sample=False, repetition_penalty=rep,
                               eos_token_id=None, pad_token_id=3)[0, len(P):].tolist()  # fmt: skip
    assert run(ex, max_new_tokens=16, sampling=SamplingParams(repetition_penalty=rep)).tokens[0] == hf


def test_greedy_log_probs(ex, hf_model):
    ref, ref_lp = ref_decode(hf_model, P, 8)
    out = run(ex, max_new_tokens=8, return_log_probs=True)
    assert out.tokens[0] == ref
    assert out.log_probs[0] == pytest.approx(ref_lp, abs=1e-3)
    assert out.cum_log_probs[0] == pytest.approx(sum(ref_lp), abs=1e-3)


@torch.no_grad()
def test_sampled_log_probs_are_of_the_tempered_distribution(ex, hf_model):
    sp = SamplingParams(temperature=0.7, top_k=50, random_seed=7)
    out = run(ex, max_new_tokens=8, sampling=sp, return_log_probs=True)
    toks = P + out.tokens[0]
    logits = hf_model(torch.tensor([toks])).logits[0, len(P) - 1 : -1].float() / 0.7
    ref = logits.log_softmax(-1).gather(1, torch.tensor(out.tokens[0])[:, None])[:, 0].tolist()
    assert out.log_probs[0] == pytest.approx(ref, abs=1e-3)


def test_seed_gives_same_tokens_alone_or_batched(ex):
    def req(seed, **kw):
        return Request(
            P, max_new_tokens=20, end_id=-1, sampling=SamplingParams(temperature=1.0, random_seed=seed, **kw)
        )

    alone = ex.generate([req(123)])[0].tokens
    others = [Request(p, max_new_tokens=15, end_id=-1, sampling=SamplingParams(temperature=1.2)) for p in prompts(6)]
    batched = ex.generate(others[:3] + [req(123)] + others[3:])[3].tokens
    assert batched == alone
    assert ex.generate([req(124)])[0].tokens != alone
    # top-k and top-p paths are seeded too.
    for kw in (dict(top_k=5), dict(top_p=0.5)):
        assert ex.generate([req(9, **kw)])[0].tokens == ex.generate([req(9, **kw)])[0].tokens


def test_top_k_one_and_temperature_zero_are_greedy(ex, hf_model):
    free = hf_greedy(hf_model, P, 8)
    for sp in (SamplingParams(top_k=1, temperature=3.0), SamplingParams(temperature=0.0, top_p=0.9)):
        assert run(ex, max_new_tokens=8, sampling=sp).tokens[0] == free


@torch.no_grad()
def hf_beams(hf, prompt, width, n, end_id, length_penalty):
    out = hf.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        num_beams=width, num_return_sequences=width, do_sample=False, max_new_tokens=n,
        eos_token_id=end_id, pad_token_id=end_id, length_penalty=length_penalty, early_stopping=False,
    )[:, len(prompt):].tolist()  # fmt: skip
    return [o[: o.index(end_id)] if end_id in o else o for o in out]


@pytest.mark.parametrize(
    "width, plen, lp, n",
    [(2, 7, 1.0, 12), (3, 8, 1.0, 10), (4, 13, 0.5, 14), (4, 5, 1.2, 9)],
)
def test_beam_search_matches_hf(ex, hf_model, width, plen, lp, n):
    prompt = prompts(1, lo=plen, hi=plen + 1, seed=plen)[0]
    # An end id the beams actually meet: the 3rd token of greedy decoding.
    end = hf_greedy(hf_model, prompt, 3)[2]
    ref = hf_beams(hf_model, prompt, width, n, end, lp)
    out = run(ex, input_ids=prompt, max_new_tokens=n, end_id=end, return_log_probs=True,
              sampling=SamplingParams(beam_width=width, length_penalty=lp))  # fmt: skip
    assert out.tokens == ref
    assert len(out.cum_log_probs) == width
    for lps, cum in zip(out.log_probs, out.cum_log_probs, strict=True):
        assert sum(lps) == pytest.approx(cum, abs=1e-4)


def test_beam_search_batched_with_greedy_is_invariant(ex, hf_model):
    prompt = prompts(1, lo=11, hi=12, seed=5)[0]
    ref = hf_beams(hf_model, prompt, 3, 10, 2, 1.0)
    greedy = [Request(p, max_new_tokens=12, end_id=-1) for p in prompts(5, seed=8)]
    beam = Request(prompt, max_new_tokens=10, end_id=2, sampling=SamplingParams(beam_width=3))
    outs = ex.generate(greedy[:2] + [beam] + greedy[2:])
    assert outs[2].tokens == ref
    for r, o in zip(greedy, outs[:2] + outs[3:], strict=True):
        assert o.tokens[0] == hf_greedy(hf_model, r.input_ids, 12)

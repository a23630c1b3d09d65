"""`ModelRunner` (and `trtllm-run`) run the executor: beam search, sampling, words and end ids give what
the executor gives for the same requests (and Hugging Face where it is the oracle); TensorRT-LLM's
shapes; streaming; a pool smaller than the batch; and what the runner refuses."""

import csv
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from inflight_batcher import ModelRunner, Request, SamplingParams, run
from tests.batcher.conftest import DEVICE, TEST_CONFIG, hf_greedy, prompts
from tests.batcher.test_sampling import hf_beams


@pytest.fixture(scope="module")
def runner(engine_dir):
    return ModelRunner.from_dir(
        engine_dir, device=DEVICE, max_tokens_in_paged_kv_cache=32 * 256, cuda_graphs=TEST_CONFIG["cuda_graphs"]
    )


def _gen(out: dict, i: int, beam: int, prompt_len: int) -> list[int]:
    return out["output_ids"][i, beam, prompt_len : out["sequence_lengths"][i, beam]].tolist()


@pytest.mark.parametrize("width, lp", [(2, 1.0), (3, 0.6)])
def test_beam_search_matches_the_executor_and_hf(runner, solo, hf_model, width, lp):
    ps = prompts(3, lo=6, hi=14, seed=11)
    end = hf_greedy(hf_model, ps[0], 3)[2]  # an end id the beams meet
    out = runner.generate(
        ps, max_new_tokens=10, end_id=end, pad_id=0, num_beams=width, length_penalty=lp, output_log_probs=True,
        return_dict=True,
    )  # fmt: skip
    L = max(map(len, ps)) + 10
    assert out["output_ids"].shape == (3, width, L) and out["sequence_lengths"].shape == (3, width)
    assert out["log_probs"].shape == (3, width, 10) and out["cum_log_probs"].shape == (3, width)
    for i, p in enumerate(ps):
        beams = [_gen(out, i, b, len(p)) for b in range(width)]
        assert beams == hf_beams(hf_model, p, width, 10, end, lp)
        ref = solo(Request(p, max_new_tokens=10, end_id=end, return_log_probs=True,
                           sampling=SamplingParams(beam_width=width, length_penalty=lp)))  # fmt: skip
        assert beams == ref.tokens
        for b in range(width):
            assert out["output_ids"][i, b, : len(p)].tolist() == p  # every beam starts with the prompt
            assert (out["output_ids"][i, b, out["sequence_lengths"][i, b] :] == 0).all()
            n = len(beams[b])
            assert out["log_probs"][i, b, :n].tolist() == pytest.approx(ref.log_probs[b], abs=1e-5)
            assert float(out["cum_log_probs"][i, b]) == pytest.approx(ref.cum_log_probs[b], abs=1e-4)


def test_trtllm_run_prints_and_writes_every_beam(runner, engine_dir, tmp_path, capsys):
    ps = prompts(2, lo=5, hi=9, seed=4)
    src = tmp_path / "in.csv"
    csv.writer(src.open("w", newline="")).writerows(ps)
    npy, out_csv = tmp_path / "out.npy", tmp_path / "out.csv"
    args = ["--engine_dir", str(engine_dir), "--input_file", str(src), "--max_output_len", "8", "--end_id", "-1",
            "--pad_id", "0", "--num_beams", "3", "--output_npy", str(npy), "--output_csv", str(out_csv)]  # fmt: skip
    if DEVICE == "cpu":
        args += ["--device", "cpu"]
    assert run.main(args) == 0
    text = capsys.readouterr().out
    assert text.count("Input [Text") == 2 and "Output [Text 1 Beam 2]:" in text
    arr = np.load(npy)
    expected = runner.generate(ps, max_new_tokens=8, end_id=-1, pad_id=0, num_beams=3)
    assert arr.shape == (2, 3, max(map(len, ps)) + 8) and (arr == expected.numpy()).all()
    rows = [[int(t) for t in r] for r in csv.reader(out_csv.open())]
    assert rows == [expected[i, b, len(p) :].tolist() for i, p in enumerate(ps) for b in range(3)]


def test_sampling_words_and_log_probs_are_the_executors(runner, solo):
    """Every knob ModelRunner maps, against the executor's output for the same Request."""
    ps = prompts(4, lo=3, hi=20, seed=3)
    cases = [
        (dict(temperature=0.8, top_k=0, random_seed=7),
         lambda i: dict(sampling=SamplingParams(temperature=0.8, random_seed=7 + i))),
        (dict(temperature=1.2, top_k=20, top_p=0.9, random_seed=1),
         lambda i: dict(sampling=SamplingParams(temperature=1.2, top_k=20, top_p=0.9, random_seed=1 + i))),
        (dict(presence_penalty=0.7, frequency_penalty=0.3, repetition_penalty=1.2),
         lambda i: dict(sampling=SamplingParams(top_k=1, temperature=1.0, presence_penalty=0.7,
                                                frequency_penalty=0.3, repetition_penalty=1.2))),
        (dict(bad_words_list=[[50], [60, 61], [200, 201, 202]], stop_words_list=[[7, 8]]),
         lambda i: dict(bad_words=[[50], [60, 61], [200, 201, 202]], stop_words=[[7, 8]])),
        (dict(min_length=5, end_id=3), lambda i: dict(end_id=3, sampling=SamplingParams(min_length=5))),
    ]  # fmt: skip
    for kw, req_kw in cases:
        kw = {"end_id": -1, **kw}
        out = runner.generate(ps, max_new_tokens=12, pad_id=0, output_log_probs=True, return_dict=True, **kw)
        for i, p in enumerate(ps):
            rkw = {"end_id": -1, **req_kw(i)}
            ref = solo(Request(p, max_new_tokens=12, return_log_probs=True, **rkw))
            assert _gen(out, i, 0, len(p)) == ref.tokens[0], kw
            n = len(ref.tokens[0])
            assert out["log_probs"][0 + i, 0, :n].tolist() == pytest.approx(ref.log_probs[0], abs=1e-5)


def test_end_id_pad_id_and_stop_words(runner, hf_model):
    p = prompts(1, lo=9, hi=10, seed=2)[0]
    free = hf_greedy(hf_model, p, 16)
    end = free[5]
    out = runner.generate([p, p[:4]], max_new_tokens=16, end_id=end, pad_id=2, return_dict=True)
    assert _gen(out, 0, 0, len(p)) == free[: free.index(end)]  # the end id ends it and is not output
    assert (out["output_ids"][0, 0, out["sequence_lengths"][0, 0] :] == 2).all()
    # pad_id defaults to the end id
    out = runner.generate([p], max_new_tokens=16, end_id=end, return_dict=True)
    assert (out["output_ids"][0, 0, out["sequence_lengths"][0, 0] :] == end).all()
    # end_id -1: nothing ends a sequence; a stop word does, and is output
    word = free[3:5]
    first = next(k for k in range(len(free)) if free[k : k + 2] == word)
    out = runner.generate([p], max_new_tokens=16, end_id=-1, stop_words_list=[word], return_dict=True)
    assert _gen(out, 0, 0, len(p)) == free[: first + 2]


def test_streaming_yields_growing_outputs(runner):
    ps = prompts(3, lo=2, hi=25, seed=9)
    kw = dict(max_new_tokens=9, end_id=-1, pad_id=0, return_dict=True, output_log_probs=True)
    final = runner.generate(ps, **kw)
    steps = list(runner.generate(ps, streaming=True, **kw))
    assert len(steps) == 9  # one per step: the first step runs every prompt
    lens = [s["sequence_lengths"][:, 0].tolist() for s in steps]
    assert lens == [[len(p) + k for p in ps] for k in range(1, 10)]
    for s in steps:  # each a snapshot: a prefix of the final output, padded after it
        for i in range(len(ps)):
            n = int(s["sequence_lengths"][i, 0])
            assert torch.equal(s["output_ids"][i, 0, :n], final["output_ids"][i, 0, :n])
            assert (s["output_ids"][i, 0, n:] == 0).all()
    assert torch.equal(steps[-1]["output_ids"], final["output_ids"])
    assert torch.equal(steps[-1]["log_probs"], final["log_probs"])


def test_calls_batch_together_and_a_closed_stream_ends_its_requests(runner):
    ps = prompts(2, lo=3, hi=9, seed=1)
    kw = dict(end_id=-1, pad_id=0)
    alone = runner.generate(ps, max_new_tokens=6, **kw)
    stream = runner.generate(ps, max_new_tokens=30, streaming=True, **kw)
    first = next(stream)
    assert first.shape == (2, 1, max(map(len, ps)) + 30)
    assert torch.equal(runner.generate(ps, max_new_tokens=6, **kw), alone)  # ran beside the open stream
    stream.close()  # its requests are cancelled
    deadline = time.monotonic() + 30
    while runner.executor.stats().active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.executor.stats().active == 0 and runner.executor.stats().cancelled >= 2
    again = runner.generate(ps, max_new_tokens=4, return_dict=True, **kw)
    assert again["sequence_lengths"][:, 0].tolist() == [len(p) + 4 for p in ps]


def test_a_batch_larger_than_the_pool_runs_in_waves(engine_dir, runner):
    """The runner once refused a batch whose KV blocks exceeded its pool; the executor queues it."""
    ps = prompts(6, lo=20, hi=40, seed=6)
    small = ModelRunner.from_dir(engine_dir, device=DEVICE, max_tokens_in_paged_kv_cache=8 * 16, cuda_graphs=False)
    assert small.kv.num_blocks == 16  # ~6 blocks per sequence: two at a time
    kw = dict(max_new_tokens=12, end_id=-1, pad_id=0)
    assert torch.equal(small.generate(ps, **kw), runner.generate(ps, **kw))


def test_what_the_runner_refuses(runner):
    with pytest.raises(ValueError, match="beam_width=5 is out of range: max_beam_width is 4"):
        runner.generate([[5, 6]], num_beams=5)
    with pytest.raises(ValueError, match="streaming is not supported with beam_width=2"):
        runner.generate([[5, 6]], num_beams=2, streaming=True)
    with pytest.raises(ValueError, match="max_new_tokens=0 is out of range"):
        runner.generate([[5, 6]], max_new_tokens=0)
    with pytest.raises(ValueError, match="end_id=384 is out of range"):
        runner.generate([[5, 6]], end_id=384)
    with pytest.raises(ValueError, match=r"bad_words\[0\]\[0\]=999 is out of range"):
        runner.generate([[5, 6]], bad_words_list=[[999]])
    with pytest.raises(ValueError, match="temperature=-1.0 is out of range"):
        runner.generate([[5, 6]], temperature=-1.0)
    assert runner.generate([[5, 6]], max_new_tokens=2, end_id=-1).shape == (1, 1, 4)  # still usable


def test_tensorrt_llm_runtime_names_it_lazily():
    """`from tensorrt_llm.runtime import ModelRunner` works (TensorRT-LLM's path), and importing
    tensorrt_llm.runtime alone does not import the batcher."""
    import tensorrt_llm.runtime

    assert tensorrt_llm.runtime.ModelRunner is ModelRunner
    code = "import sys, tensorrt_llm.runtime; assert 'inflight_batcher' not in sys.modules, 'imported the batcher'"
    subprocess.run([sys.executable, "-c", code], check=True)

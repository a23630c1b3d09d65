"""build_step_input: the host-side facts a step carries for kernel choices."""

import dataclasses
import random

import pytest
import torch

from tensorrt_llm.runtime import build_step_input


def test_num_decode_tail_counts_trailing_one_token_sequences():
    tables = [[0, 1], [2], [3], [4]]
    mk = lambda toks, cached: build_step_input(toks, cached, tables[: len(toks)], 8)  # noqa: E731
    assert mk([[1, 2, 3], [4], [5]], [0, 3, 4]).num_decode_tail == 2  # prompt, then generation rows
    assert mk([[4], [5], [6]], [3, 4, 1]).num_decode_tail == 3  # generation only
    assert mk([[4], [1, 2], [6]], [3, 0, 1]).num_decode_tail == 1  # a one-token row before a prompt stays
    assert mk([[1, 2], [3, 4]], [0, 0]).num_decode_tail == 0  # prompts only


def _random_step(rng, tpb: int) -> tuple[list[list[int]], list[int], list[list[int]]]:
    B = rng.randint(1, 6)
    tokens = [[rng.randrange(1000) for _ in range(rng.choice([1, 1, 2, 5]))] for _ in range(B)]
    cached = [rng.randrange(20) for _ in range(B)]
    tables = []
    for toks, c in zip(tokens, cached, strict=True):
        need = -(-(c + len(toks)) // tpb) + rng.randrange(3)  # extra blocks: tables of different widths
        tables.append(rng.sample(range(100), need))
    return tokens, cached, tables


@pytest.mark.parametrize("tpb", [1, 4, 8])
@pytest.mark.parametrize("all_logits", [False, True])
def test_small_steps_pack_as_large_ones_do(monkeypatch, tpb, all_logits):
    """A step of few tokens is packed in plain lists, a larger one with numpy: the same StepInput either way."""
    import tensorrt_llm.runtime.step as step

    rng = random.Random(tpb * 2 + all_logits)
    for _ in range(50):
        args = (*_random_step(rng, tpb), tpb)
        monkeypatch.setattr(step, "SMALL_STEP_TOKENS", 10**9)
        small = step.build_step_input(*args, all_logits=all_logits)
        monkeypatch.setattr(step, "SMALL_STEP_TOKENS", 0)
        large = step.build_step_input(*args, all_logits=all_logits)
        for f in dataclasses.fields(step.StepInput):
            a, b = getattr(small, f.name), getattr(large, f.name)
            if isinstance(a, torch.Tensor):
                assert a.dtype == b.dtype and torch.equal(a, b), f.name
            else:
                assert a == b, f.name


def test_both_packings_refuse_a_short_table(monkeypatch):
    import tensorrt_llm.runtime.step as step

    for limit in (0, 10**9):
        monkeypatch.setattr(step, "SMALL_STEP_TOKENS", limit)
        with pytest.raises(ValueError, match="block table of 1 blocks too short for 9 tokens"):
            step.build_step_input([[1], [2, 3]], [3, 7], [[0], [1]], 8)
        with pytest.raises(ValueError, match="at least one new token"):
            step.build_step_input([[1], []], [3, 7], [[0], [1]], 8)
